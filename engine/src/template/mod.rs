//! `<<...>>` templates: typed substitution and escaping by destination.
//!
//! Every string in a step (URL, header and query values, bodies) may contain
//! placeholders written `<<expr>>`. `expr` is a [minijinja] expression
//! (Jinja syntax): dotted names, `[...]` lookups, literals, operators and
//! filters, e.g. `<<input.email | lower>>` or `<<input.x | default("y")>>`.
//!
//! # Example
//!
//! ```
//! use conveyor_engine::template::{Dest, Renderer};
//! use serde_json::json;
//!
//! let r = Renderer::new();
//! let ctx = json!({
//!     "input": {"id": "a/b c", "age": 36},
//!     "settings": {"base_url": "https://x.test/api"},
//! });
//! assert_eq!(
//!     r.render_str("<<settings.base_url>>/users/<<input.id>>", &ctx, Dest::Url)
//!         .unwrap(),
//!     "https://x.test/api/users/a%2Fb%20c"
//! );
//! assert_eq!(r.render_value("<<input.age>>", &ctx).unwrap(), json!(36));
//! assert_eq!(
//!     r.render_value("age: <<input.age>>", &ctx).unwrap(),
//!     json!("age: 36")
//! );
//! assert_eq!(
//!     r.render_str("<<input.emial>>", &ctx, Dest::Text).unwrap_err().to_string(),
//!     "`input.emial` is not defined"
//! );
//! ```
//!
//! # Syntax
//!
//! - **Placeholders only.** `<<` and `>>` are the variable delimiters. Jinja
//!   blocks (`{% if %}`, loops, `set`, macros) and comments are *disabled*:
//!   minijinja cannot switch them off, so their delimiters are set to the
//!   Unicode noncharacters U+FDD0/U+FDD1 (blocks) and U+FDD2/U+FDD3
//!   (comments), and a template containing U+FDD0 or U+FDD2 is rejected as a
//!   syntax error. `{{`, `{%` and `{#` are therefore ordinary text, which
//!   keeps JSON and other payloads free of surprises.
//! - **Literal `<<`.** Every `<<` in a template opens a placeholder. To write a
//!   literal `<<`, use a placeholder whose expression is a string literal:
//!   `<<"<<">>` renders `<<`. A lone `>>` outside a placeholder is plain text.
//! - **Whitespace control** works as in Jinja: a `-` right after `<<` or right
//!   before `>>` strips the whitespace before or after the placeholder, and
//!   `+` is accepted there too. So `<<-1>>` renders `1`; write `<< -1 >>` for
//!   minus one.
//! - A trailing newline of the template is kept.
//!
//! # Names in scope
//!
//! Names come from the context object passed in: `input.*`,
//! `steps.<name>.{status,headers,body,extract.<field>}`,
//! `credentials.<name>.<field>`, `settings.*`, `execution.id`,
//! `execution.attempt`, `connector.id` and `workspace.id`. The renderer does
//! not restrict names (the connector validator does, using
//! [`Renderer::references`]). Besides the context, the minijinja built-in
//! filters, tests and the functions `range`, `dict` and `namespace` are
//! available (the `debug` function is removed: it dumps the whole context).
//! `tojson` (compact JSON; `indent` optional) and `urlencode` (RFC 3986
//! unreserved characters kept; a map becomes `k=v&...`) are provided by this
//! module.
//!
//! # Missing names
//!
//! Undefined behaviour is strict: a reference to a missing name is a
//! [`TemplateError::Undefined`] naming the missing path (for
//! `<<input.emial>>`: "`input.emial` is not defined"), never a silent empty
//! string. `default` works: `<<input.x | default("y")>>` renders `y` when
//! `input` has no `x` (the parent, `input`, must exist).
//!
//! # Typed substitution
//!
//! [`Renderer::render_value`] (and [`Renderer::render_json`] for every string
//! leaf of a JSON body) evaluates a string that is exactly one placeholder —
//! `<<expr>>`, with any whitespace or whitespace control inside the
//! delimiters and nothing outside — as an expression and keeps the JSON type
//! of its value: a number stays a number, an object stays an object. Any
//! other string is rendered as text and becomes a JSON string.
//!
//! # How values render as text
//!
//! Strings are inserted as they are; numbers and booleans in their JSON form
//! (`1`, `1.5`, `true`); `null` (and a missing `else` of an inline `if`) as
//! the empty string; arrays and objects as compact JSON
//! (`{"a":1,"b":[true]}`, keys sorted). Non-finite numbers are an error.
//!
//! # Escaping by destination ([`Dest`])
//!
//! The renderer asks minijinja which output bytes came from placeholders and
//! which from the template's literal text ([`minijinja::Template::render_with_spans`]),
//! so escaping is decided out of band: no marker characters are inserted into
//! the output and no value can spoof one. Then, per destination:
//!
//! - [`Dest::Text`]: values inserted as they are.
//! - [`Dest::Header`]: as text, but a final value containing CR or LF is
//!   rejected with [`TemplateError::HeaderNewline`].
//! - [`Dest::Xml`]: values XML-escaped (`&` `<` `>` `"` `'`); literal template
//!   text untouched.
//! - [`Dest::Url`]: the position in the URL is tracked over everything
//!   emitted so far. While still in the scheme/authority part (before the
//!   first `/` after `scheme://host`, or the first `?`/`#`), values are
//!   inserted raw, so `<<settings.base_url>>/v1/contacts` works with a base
//!   URL that has a path of its own; only put trusted values (settings) there.
//!   In the path, query and fragment, values are percent-encoded as a
//!   component: everything except the RFC 3986 unreserved characters
//!   `A-Z a-z 0-9 - . _ ~` is encoded (`/`, `?`, `#`, `&`, `=`, `+`, `%`,
//!   space, ...). A value that would make a whole path segment `.` or `..`
//!   is rejected ([`TemplateError::UrlDotSegment`]), as URL normalisation
//!   would otherwise turn it into path traversal. `|safe` does not bypass
//!   destination escaping.
//!
//! # Limits
//!
//! Every render and every typed evaluation gets a fuel budget
//! ([`DEFAULT_FUEL`], see [`minijinja::Environment::set_fuel`]): instructions,
//! bytes produced and items visited all cost fuel, and running out is
//! [`TemplateError::OutOfFuel`]. The recursion limit is lowered too.
//!
//! # Errors never carry values
//!
//! Values may be secrets, so error messages name template paths and quote
//! template text, never rendered values.

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{
    AutoEscape, Environment, ErrorKind, Output, OutputSpan, OutputSpanKind, State,
    UndefinedBehavior, Value,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value as Json;

/// The default fuel budget of one render or typed evaluation.
///
/// One fuel pays for about one instruction or 64 bytes of produced data, so
/// this allows roughly half a million instructions or 32 MB of data.
pub const DEFAULT_FUEL: u64 = 500_000;

/// Runtime recursion limit (minijinja's default is 500).
const RECURSION_LIMIT: usize = 64;

/// Block delimiters: noncharacters, so blocks are effectively disabled.
const BLOCK_START: char = '\u{FDD0}';
const BLOCK_END: char = '\u{FDD1}';
/// Comment delimiters: noncharacters, so comments are effectively disabled.
const COMMENT_START: char = '\u{FDD2}';
const COMMENT_END: char = '\u{FDD3}';

/// minijinja charges fuel in units of 1/64 fuel; one byte costs one unit.
const UNITS_PER_FUEL: u64 = 64;
/// Cost of one node (array item, map entry, scalar) when converting a value
/// to JSON.
const NODE_UNITS: u64 = 32;
/// Deepest value converted to JSON and deepest JSON tree walked.
const MAX_DEPTH: usize = 256;
/// Longest piece of template text quoted in an error message.
const MAX_QUOTE_CHARS: usize = 80;

/// Characters percent-encoded in a URL component: all but RFC 3986
/// unreserved ones.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where a rendered string lands; decides how placeholder values are escaped.
///
/// Literal template text is never changed; only the values of placeholders
/// are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest {
    /// Plain text (raw bodies, query and form values that the HTTP client
    /// encodes itself): values inserted as they are.
    Text,
    /// A URL: values raw while in the scheme/authority part, percent-encoded
    /// as a component in the path, query and fragment.
    Url,
    /// An XML document: values XML-escaped.
    Xml,
    /// An HTTP header value: like [`Dest::Text`], but a result containing CR
    /// or LF is rejected.
    Header,
}

/// An error from checking or rendering a template.
///
/// Messages name template paths and quote template text, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The template does not parse.
    #[error("syntax error: {message}")]
    Syntax {
        /// What is wrong and where (line and column).
        message: String,
        /// Byte offset of the problem in the template, when known.
        offset: Option<usize>,
    },
    /// A referenced name is missing from the context (and no `default` was
    /// given).
    #[error("`{path}` is not defined")]
    Undefined {
        /// The missing path, e.g. `input.emial`.
        path: String,
    },
    /// A header value would contain CR or LF.
    #[error("header value contains a line break (CR or LF)")]
    HeaderNewline,
    /// A value inserted into a URL path would form a `.` or `..` segment.
    #[error("a value inserted into the URL path forms a `.` or `..` segment")]
    UrlDotSegment,
    /// The template used up its fuel (work budget).
    #[error("template does too much work (its fuel budget is used up)")]
    OutOfFuel,
    /// Any other evaluation error (unknown filter, bad operand types, ...).
    #[error("{0}")]
    Render(String),
    /// An error inside a JSON tree, at `path` (e.g. `.user.email` or `[0]`)
    /// relative to the tree's root.
    #[error("{error} (at `{path}`)")]
    At {
        /// Where in the JSON tree, as a suffix such as `.user.email`.
        path: String,
        /// The error there.
        error: Box<TemplateError>,
    },
}

impl TemplateError {
    /// The error itself, without the [`TemplateError::At`] location wrapper.
    pub fn innermost(&self) -> &TemplateError {
        match self {
            TemplateError::At { error, .. } => error.innermost(),
            other => other,
        }
    }

    fn at(path: &str, error: TemplateError) -> TemplateError {
        if path.is_empty() {
            error
        } else {
            TemplateError::At {
                path: path.to_owned(),
                error: Box::new(error),
            }
        }
    }
}

/// The template references found in a JSON tree by
/// [`Renderer::json_references`].
///
/// Paths are suffixes relative to the tree's root, such as `.user.email`,
/// `[0]` or `["content-type"]` (empty for the root itself); an object key's
/// template is reported at the path of its member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonReferences {
    /// `(path, reference)` for every reference of every string leaf and key,
    /// e.g. `(".user.email", "input.email")`.
    pub references: Vec<(String, String)>,
    /// `(path, error)` for every string that is not a valid template.
    pub errors: Vec<(String, TemplateError)>,
}

/// A context converted for rendering.
///
/// Converting takes time proportional to the context's size; prepare it
/// once when rendering many templates (URL, headers, body) against the same
/// context, and use the `*_in` methods of [`Renderer`].
///
/// Its `Debug` output is redacted: the context holds secrets.
#[derive(Clone)]
pub struct Context(Value);

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Context(<redacted>)")
    }
}

impl Context {
    /// Converts a JSON context (normally an object with `input`, `steps`,
    /// `credentials`, ...).
    pub fn new(ctx: &Json) -> Self {
        Context(Value::from(Serde(ctx)))
    }
}

impl From<&Json> for Context {
    fn from(ctx: &Json) -> Self {
        Context::new(ctx)
    }
}

/// Renders `<<...>>` templates. Configure once, share freely (it is
/// `Send + Sync`; rendering takes `&self`).
#[derive(Clone)]
pub struct Renderer {
    env: Environment<'static>,
    fuel: u64,
    /// Names of the environment's global functions (`range`, ...), which are
    /// not context references.
    globals: BTreeSet<String>,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer")
            .field("fuel", &self.fuel)
            .finish_non_exhaustive()
    }
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    /// A renderer with the [`DEFAULT_FUEL`] budget.
    pub fn new() -> Self {
        Self::with_fuel(DEFAULT_FUEL)
    }

    /// A renderer whose renders and typed evaluations each get `fuel` (at
    /// least 1).
    pub fn with_fuel(fuel: u64) -> Self {
        let fuel = fuel.max(1);
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .variable_delimiters("<<", ">>")
            .block_delimiters(BLOCK_START.to_string(), BLOCK_END.to_string())
            .comment_delimiters(COMMENT_START.to_string(), COMMENT_END.to_string())
            .keep_trailing_newline(true)
            .build()
            .expect("the template delimiters are distinct and non-empty");
        env.set_syntax(syntax);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(fuel));
        env.set_recursion_limit(RECURSION_LIMIT);
        // Debug info would copy context values (secrets) into errors.
        env.set_debug(false);
        env.set_formatter(format_value);
        env.remove_global("debug");
        env.add_filter("tojson", tojson_filter);
        env.add_filter("urlencode", urlencode_filter);
        let globals = env.globals().map(|(name, _)| name.to_owned()).collect();
        Renderer { env, fuel, globals }
    }

    /// Syntax-checks `template` and returns the dotted context paths it
    /// references, sorted and without duplicates, e.g.
    /// `["input.email", "steps.create.extract.id"]`.
    ///
    /// A lookup with `[...]` ends the path (`input[k]` yields `input` and
    /// whatever `k` references). Global functions such as `range` are not
    /// references. Known gap (minijinja 3.1): the sliced value of a slice
    /// (`input.name[0:2]`) is not reported; rendering still fails if it is
    /// missing.
    pub fn references(&self, template: &str) -> Result<Vec<String>, TemplateError> {
        if is_literal(template) {
            return Ok(Vec::new());
        }
        check_reserved(template)?;
        let env: &Environment<'_> = &self.env;
        let compiled = env
            .template_from_str(template)
            .map_err(|e| convert_error(&e, template, 0, |_| None))?;
        let refs: BTreeSet<String> = compiled.undeclared_variables(true).into_iter().collect();
        Ok(refs
            .into_iter()
            .filter(|r| {
                let root = r.split('.').next().unwrap_or_default();
                !self.globals.contains(root)
            })
            .collect())
    }

    /// Collects the references of every string leaf and object key of a
    /// JSON tree, with the location of each, plus the location of every
    /// string that is not a valid template.
    pub fn json_references(&self, value: &Json) -> JsonReferences {
        let mut found = JsonReferences::default();
        let mut path = String::new();
        self.collect_json_references(value, &mut path, 0, &mut found);
        found
    }

    fn collect_json_references(
        &self,
        value: &Json,
        path: &mut String,
        depth: usize,
        found: &mut JsonReferences,
    ) {
        if depth > MAX_DEPTH {
            found.errors.push((path.clone(), too_deep()));
            return;
        }
        let check = |path: &str, template: &str, found: &mut JsonReferences| match self
            .references(template)
        {
            Ok(refs) => found
                .references
                .extend(refs.into_iter().map(|r| (path.to_owned(), r))),
            Err(e) => found.errors.push((path.to_owned(), e)),
        };
        match value {
            Json::String(s) => check(path, s, found),
            Json::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    push_index(path, i);
                    self.collect_json_references(item, path, depth + 1, found);
                    path.truncate(len);
                }
            }
            Json::Object(map) => {
                for (key, item) in map {
                    let len = path.len();
                    push_key(path, key);
                    check(path, key, found);
                    self.collect_json_references(item, path, depth + 1, found);
                    path.truncate(len);
                }
            }
            Json::Null | Json::Bool(_) | Json::Number(_) => {}
        }
    }

    /// Renders `template` against `ctx` as a string, escaping placeholder
    /// values for `dest` (see the [module docs](crate::template)).
    pub fn render_str(
        &self,
        template: &str,
        ctx: &Json,
        dest: Dest,
    ) -> Result<String, TemplateError> {
        if is_literal(template) {
            return finish_literal(template, dest);
        }
        self.render_with_root(template, &Context::new(ctx).0, dest)
    }

    /// [`render_str`](Self::render_str) with a prepared [`Context`].
    pub fn render_str_in(
        &self,
        template: &str,
        ctx: &Context,
        dest: Dest,
    ) -> Result<String, TemplateError> {
        self.render_with_root(template, &ctx.0, dest)
    }

    /// Typed render: a template that is exactly one placeholder evaluates to
    /// its value with its JSON type kept; any other template renders as text
    /// ([`Dest::Text`]) into a JSON string.
    pub fn render_value(&self, template: &str, ctx: &Json) -> Result<Json, TemplateError> {
        if is_literal(template) {
            return Ok(Json::String(template.to_owned()));
        }
        self.value_with_root(template, &Context::new(ctx).0)
    }

    /// [`render_value`](Self::render_value) with a prepared [`Context`].
    pub fn render_value_in(&self, template: &str, ctx: &Context) -> Result<Json, TemplateError> {
        self.value_with_root(template, &ctx.0)
    }

    /// Renders every string leaf of a JSON tree with
    /// [`render_value`](Self::render_value) and every object key as text;
    /// numbers, booleans and null are kept. Errors are wrapped in
    /// [`TemplateError::At`] naming the location (e.g. `.user.email`).
    pub fn render_json(&self, value: &Json, ctx: &Json) -> Result<Json, TemplateError> {
        self.render_json_in(value, &Context::new(ctx))
    }

    /// [`render_json`](Self::render_json) with a prepared [`Context`].
    pub fn render_json_in(&self, value: &Json, ctx: &Context) -> Result<Json, TemplateError> {
        let mut path = String::new();
        self.render_json_at(value, &ctx.0, &mut path, 0)
    }

    fn render_json_at(
        &self,
        value: &Json,
        root: &Value,
        path: &mut String,
        depth: usize,
    ) -> Result<Json, TemplateError> {
        if depth > MAX_DEPTH {
            return Err(TemplateError::at(path, too_deep()));
        }
        match value {
            Json::String(s) => self
                .value_with_root(s, root)
                .map_err(|e| TemplateError::at(path, e)),
            Json::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    push_index(path, i);
                    out.push(self.render_json_at(item, root, path, depth + 1)?);
                    path.truncate(len);
                }
                Ok(Json::Array(out))
            }
            Json::Object(map) => {
                let mut out = serde_json::Map::new();
                for (key, item) in map {
                    let len = path.len();
                    push_key(path, key);
                    let new_key = self
                        .render_with_root(key, root, Dest::Text)
                        .map_err(|e| TemplateError::at(path, e))?;
                    let new_item = self.render_json_at(item, root, path, depth + 1)?;
                    if out.insert(new_key, new_item).is_some() {
                        return Err(TemplateError::at(
                            path,
                            TemplateError::Render(
                                "two keys of this object render to the same name".into(),
                            ),
                        ));
                    }
                    path.truncate(len);
                }
                Ok(Json::Object(out))
            }
            Json::Null | Json::Bool(_) | Json::Number(_) => Ok(value.clone()),
        }
    }

    fn value_with_root(&self, template: &str, root: &Value) -> Result<Json, TemplateError> {
        if is_literal(template) {
            return Ok(Json::String(template.to_owned()));
        }
        check_reserved(template)?;
        if let Some((expr, offset)) = single_placeholder(template) {
            let env: &Environment<'_> = &self.env;
            // If the inside does not parse as one expression, the string is
            // not a single placeholder (`<<a>> and <<b>>`) or is invalid; the
            // text render below tells which.
            if let Ok(compiled) = env.compile_expression(expr) {
                let value = compiled
                    .eval(root.clone())
                    .map_err(|e| self.convert_error(&e, template, offset, root))?;
                if value.is_undefined() {
                    // `eval` does not apply strict undefined handling; the
                    // text render does and names the missing path. If it
                    // renders (an inline `if` without `else`), it is null.
                    return self
                        .render_with_root(template, root, Dest::Text)
                        .map(|_| Json::Null);
                }
                let mut budget = self.fuel.saturating_mul(UNITS_PER_FUEL);
                return to_json(&value, &mut budget, 0).map_err(|e| match e {
                    ConvError::Undefined => TemplateError::Undefined {
                        path: self
                            .missing_path(template, root)
                            .unwrap_or_else(|| quote(expr.trim())),
                    },
                    ConvError::OutOfFuel => TemplateError::OutOfFuel,
                    ConvError::Invalid(e) => self.convert_error(&e, template, offset, root),
                    ConvError::Unsupported(what) => {
                        TemplateError::Render(format!("{what} (in `{}`)", quote(template)))
                    }
                });
            }
        }
        self.render_with_root(template, root, Dest::Text)
            .map(Json::String)
    }

    fn render_with_root(
        &self,
        template: &str,
        root: &Value,
        dest: Dest,
    ) -> Result<String, TemplateError> {
        if is_literal(template) {
            return finish_literal(template, dest);
        }
        check_reserved(template)?;
        let env: &Environment<'_> = &self.env;
        let compiled = env
            .template_from_str(template)
            .map_err(|e| convert_error(&e, template, 0, |_| None))?;
        let out = match dest {
            Dest::Text | Dest::Header => compiled
                .render(root.clone())
                .map_err(|e| self.convert_error(&e, template, 0, root))?,
            Dest::Url | Dest::Xml => {
                let (out, spans) = compiled
                    .render_with_spans(root.clone())
                    .map_err(|e| self.convert_error(&e, template, 0, root))?;
                assemble(&out, &spans, dest)?
            }
        };
        finish_literal_owned(out, dest)
    }

    /// [`convert_error`], finding a missing name in the context when
    /// minijinja does not name it (e.g. `<<input.x | upper>>`).
    fn convert_error(
        &self,
        err: &minijinja::Error,
        template: &str,
        base: usize,
        root: &Value,
    ) -> TemplateError {
        convert_error(err, template, base, |placeholder| {
            self.missing_path(placeholder, root)
        })
    }

    /// The first path referenced by `template` that is missing in `root`
    /// (e.g. `input.emial`), if any.
    fn missing_path(&self, template: &str, root: &Value) -> Option<String> {
        self.references(template)
            .ok()?
            .iter()
            .find_map(|r| first_missing(root, r))
    }
}

/// The shortest prefix of the dotted `path` that is missing in `root`.
fn first_missing(root: &Value, path: &str) -> Option<String> {
    let mut current = root.clone();
    let mut end = 0;
    for segment in path.split('.') {
        end = if end == 0 {
            segment.len()
        } else {
            end + 1 + segment.len()
        };
        current = match current.get_attr(segment) {
            Ok(v) if !v.is_undefined() => v,
            _ => return path.get(..end).map(str::to_owned),
        };
    }
    None
}

// ---------------------------------------------------------------------------
// Template inspection helpers
// ---------------------------------------------------------------------------

/// A string with no placeholder renders to itself in every destination.
fn is_literal(template: &str) -> bool {
    !template.contains("<<") && !template.contains([BLOCK_START, COMMENT_START])
}

fn finish_literal(template: &str, dest: Dest) -> Result<String, TemplateError> {
    finish_literal_owned(template.to_owned(), dest)
}

fn finish_literal_owned(out: String, dest: Dest) -> Result<String, TemplateError> {
    if dest == Dest::Header && out.contains(['\r', '\n']) {
        return Err(TemplateError::HeaderNewline);
    }
    Ok(out)
}

/// Rejects the characters that would open a block or a comment.
fn check_reserved(template: &str) -> Result<(), TemplateError> {
    match template.find([BLOCK_START, COMMENT_START]) {
        None => Ok(()),
        Some(offset) => Err(TemplateError::Syntax {
            message: format!(
                "the character U+{:04X} is reserved{}",
                u32::from(template[offset..].chars().next().unwrap_or(BLOCK_START)),
                location(template, offset)
            ),
            offset: Some(offset),
        }),
    }
}

/// If `template` is `<<expr>>` (with optional whitespace control), returns
/// `expr` and its byte offset in `template`.
///
/// Whether `expr` really is one expression (and not `a>> text <<b`) is for
/// the expression parser to decide: it stops at the first top-level `>>`.
fn single_placeholder(template: &str) -> Option<(&str, usize)> {
    let mut inner = template.strip_prefix("<<")?.strip_suffix(">>")?;
    let mut offset = 2;
    if let Some(rest) = inner.strip_prefix(['-', '+']) {
        inner = rest;
        offset += 1;
    }
    if let Some(rest) = inner.strip_suffix(['-', '+']) {
        inner = rest;
    }
    Some((inner, offset))
}

/// ` (line L, column C)` for a byte offset, or empty if it is not one.
fn location(template: &str, offset: usize) -> String {
    match template.get(..offset) {
        Some(before) => {
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .unwrap_or_default()
                .chars()
                .count()
                + 1;
            format!(" (line {line}, column {column})")
        }
        None => String::new(),
    }
}

/// Template text for an error message, shortened.
fn quote(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTE_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_QUOTE_CHARS).collect();
        short.push('…');
        short
    }
}

/// The placeholder (`<<...>>`) of `template` around a byte range.
fn enclosing_placeholder(template: &str, range: std::ops::Range<usize>) -> Option<&str> {
    let start = template
        .get(..range.start.min(template.len()))?
        .rfind("<<")?;
    let from = range.end.max(start + 2).min(template.len());
    let end = from + template.get(from..)?.find(">>")? + 2;
    template.get(start..end)
}

fn push_index(path: &mut String, index: usize) {
    let _ = write!(path, "[{index}]");
}

fn push_key(path: &mut String, key: &str) {
    let mut chars = key.chars();
    let simple = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if simple {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Json::String(key.to_owned()).to_string());
        path.push(']');
    }
}

fn too_deep() -> TemplateError {
    TemplateError::Render(format!("JSON is nested more than {MAX_DEPTH} levels deep"))
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Converts a minijinja error; `base` is the byte offset of the evaluated
/// source inside `template` (non-zero for typed expressions).
///
/// `find_missing` is given the placeholder (`<<...>>`) of an undefined error
/// that minijinja did not describe and may name the missing path.
fn convert_error(
    err: &minijinja::Error,
    template: &str,
    base: usize,
    find_missing: impl FnOnce(&str) -> Option<String>,
) -> TemplateError {
    let range = err
        .range()
        .map(|r| r.start.saturating_add(base)..r.end.saturating_add(base));
    match err.kind() {
        ErrorKind::OutOfFuel => TemplateError::OutOfFuel,
        ErrorKind::SyntaxError | ErrorKind::BadEscape => {
            let offset = range.map(|r| r.start);
            let mut message = err
                .detail()
                .map_or_else(|| err.kind().to_string(), str::to_owned);
            if let Some(offset) = offset {
                message.push_str(&location(template, offset));
            }
            TemplateError::Syntax { message, offset }
        }
        kind => {
            let placeholder = range
                .clone()
                .and_then(|r| enclosing_placeholder(template, r));
            if let Some(path) = err.detail().and_then(undefined_path) {
                return TemplateError::Undefined { path };
            }
            if kind == ErrorKind::UndefinedError {
                let path = placeholder
                    .and_then(|p| {
                        find_missing(p).or_else(|| {
                            let inner = p.strip_prefix("<<")?.strip_suffix(">>")?;
                            Some(quote(inner.trim_matches(['-', '+']).trim()))
                        })
                    })
                    .unwrap_or_else(|| "a value".to_owned());
                return TemplateError::Undefined { path };
            }
            let mut message = kind.to_string();
            if let Some(detail) = safe_detail(err) {
                message.push_str(": ");
                message.push_str(detail);
            }
            match placeholder {
                Some(p) => {
                    let _ = write!(message, " (in `{}`)", quote(p));
                }
                None => {
                    if let Some(r) = range {
                        message.push_str(&location(template, r.start));
                    }
                }
            }
            TemplateError::Render(message)
        }
    }
}

/// The path in minijinja's "`input.x` is undefined" detail. It is built
/// from names and constants of the template only.
fn undefined_path(detail: &str) -> Option<String> {
    const TAIL: &str = "` is undefined";
    let end = detail.rfind(TAIL)?;
    let head = &detail[..end];
    let start = if let Some(i) = head.rfind("(`") {
        i + 2
    } else {
        head.strip_prefix('`')?;
        1
    };
    let path = head.get(start..)?;
    (!path.is_empty()).then(|| path.to_owned())
}

/// The minijinja error detail if it cannot contain a value.
fn safe_detail(err: &minijinja::Error) -> Option<&str> {
    let detail = err.detail()?;
    match err.kind() {
        ErrorKind::UnknownFilter
        | ErrorKind::UnknownTest
        | ErrorKind::UnknownFunction
        | ErrorKind::UnknownMethod
        | ErrorKind::MissingArgument
        | ErrorKind::TooManyArguments
        | ErrorKind::CannotUnpack
        | ErrorKind::NonKey
        | ErrorKind::NonPrimitive => Some(detail),
        // "unable to calculate {lhs} {op} {rhs}" quotes operands.
        ErrorKind::InvalidOperation
            if !detail.starts_with("unable to calculate") && !detail.starts_with("failed to") =>
        {
            Some(detail)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Values: text form and JSON conversion
// ---------------------------------------------------------------------------

/// Why a value could not become JSON.
enum ConvError {
    Undefined,
    OutOfFuel,
    Invalid(minijinja::Error),
    Unsupported(&'static str),
}

impl ConvError {
    fn into_minijinja(self) -> minijinja::Error {
        match self {
            ConvError::Undefined => minijinja::Error::from(ErrorKind::UndefinedError),
            ConvError::OutOfFuel => minijinja::Error::from(ErrorKind::OutOfFuel),
            ConvError::Invalid(e) => e,
            ConvError::Unsupported(what) => {
                minijinja::Error::new(ErrorKind::InvalidOperation, what)
            }
        }
    }
}

fn charge(budget: &mut u64, units: u64) -> Result<(), ConvError> {
    if units >= *budget {
        *budget = 0;
        Err(ConvError::OutOfFuel)
    } else {
        *budget -= units;
        Ok(())
    }
}

/// Converts a template value to JSON, charging `budget` (fuel units) per
/// node and string byte so lazily huge values (`[1] * 10**8`) stay bounded.
fn to_json(value: &Value, budget: &mut u64, depth: usize) -> Result<Json, ConvError> {
    charge(budget, NODE_UNITS)?;
    if depth > MAX_DEPTH {
        return Err(ConvError::Unsupported("the value is nested too deeply"));
    }
    Ok(match value.kind() {
        ValueKind::Undefined => return Err(ConvError::Undefined),
        ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(value.is_true()),
        ValueKind::Number => number_json(value)?,
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            charge(budget, s.len() as u64)?;
            Json::String(s.to_owned())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items = value.try_iter().map_err(ConvError::Invalid)?;
            let mut out = Vec::with_capacity(value.len().unwrap_or(0).min(1024));
            for item in items {
                out.push(to_json(&item, budget, depth + 1)?);
            }
            Json::Array(out)
        }
        ValueKind::Map => {
            let keys = value.try_iter().map_err(ConvError::Invalid)?;
            let mut out = serde_json::Map::new();
            for key in keys {
                let item = value.get_item(&key).map_err(ConvError::Invalid)?;
                let name = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::Number | ValueKind::Bool => {
                        match to_json(&key, budget, depth + 1)? {
                            Json::String(s) => s,
                            other => other.to_string(),
                        }
                    }
                    _ => return Err(ConvError::Unsupported("object keys must be strings")),
                };
                charge(budget, name.len() as u64)?;
                out.insert(name, to_json(&item, budget, depth + 1)?);
            }
            Json::Object(out)
        }
        ValueKind::Bytes => {
            return Err(ConvError::Unsupported("bytes cannot be converted to JSON"));
        }
        ValueKind::Invalid => {
            return Err(ConvError::Unsupported("the value is invalid"));
        }
        _ => {
            return Err(ConvError::Unsupported(
                "this value cannot be converted to JSON",
            ));
        }
    })
}

fn number_json(value: &Value) -> Result<Json, ConvError> {
    if value.is_integer() {
        if let Ok(i) = i64::try_from(value.clone()) {
            return Ok(Json::from(i));
        }
        if let Ok(u) = u64::try_from(value.clone()) {
            return Ok(Json::from(u));
        }
        return Err(ConvError::Unsupported("the integer is too large for JSON"));
    }
    let f = f64::try_from(value.clone()).map_err(ConvError::Invalid)?;
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .ok_or(ConvError::Unsupported("the number is not finite"))
}

/// Converts to JSON inside a render, paying with the render's fuel.
fn json_in_state(state: &State, value: &Value) -> Result<Json, minijinja::Error> {
    let start = state.fuel_levels().map_or(u64::MAX, |(_, remaining)| {
        remaining.saturating_mul(UNITS_PER_FUEL)
    });
    let mut budget = start;
    let result = to_json(value, &mut budget, 0);
    state.consume_fuel((start - budget).div_ceil(UNITS_PER_FUEL))?;
    result.map_err(ConvError::into_minijinja)
}

/// The text form of a value (see the module docs).
fn text_in_state(state: &State, value: &Value) -> Result<String, minijinja::Error> {
    Ok(match value.kind() {
        ValueKind::Undefined | ValueKind::None => String::new(),
        ValueKind::Bool => (if value.is_true() { "true" } else { "false" }).to_owned(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        ValueKind::Bytes => {
            String::from_utf8_lossy(value.as_bytes().unwrap_or_default()).into_owned()
        }
        // Integers print their digits, even beyond the JSON (64-bit) range.
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => match number_json(value) {
            Ok(json) => json.to_string(),
            Err(e) => return Err(e.into_minijinja()),
        },
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            json_in_state(state, value)?.to_string()
        }
        ValueKind::Invalid => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "the value is invalid",
            ));
        }
        // Functions and other opaque objects: their description.
        _ => value.to_string(),
    })
}

/// The formatter of every `<<...>>`: the text form, no escaping (that
/// happens per destination after rendering).
fn format_value(
    out: &mut Output,
    state: &mut State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if let Some(s) = value.as_str() {
        return out.write_str(s).map_err(minijinja::Error::from);
    }
    let text = text_in_state(state, value)?;
    out.write_str(&text).map_err(minijinja::Error::from)
}

/// `tojson`: compact JSON, or indented with `indent` (a number of spaces, or
/// `true` for two).
fn tojson_filter(
    state: &State,
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::Bool => v.is_true().then_some(2),
        Some(v) => Some(usize::try_from(v)?.min(16)),
    };
    let json = json_in_state(state, value)?;
    let text = match indent {
        None => json.to_string(),
        Some(n) => {
            let spaces = vec![b' '; n];
            let mut buf = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
            serde::Serialize::serialize(&json, &mut ser).map_err(|_| {
                minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            })?;
            String::from_utf8(buf).map_err(|_| {
                minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            })?
        }
    };
    Ok(Value::from(text))
}

/// `urlencode`: percent-encodes all but RFC 3986 unreserved characters; a
/// map becomes `k=v&k2=v2` (null and undefined members skipped).
fn urlencode_filter(state: &State, value: &Value) -> Result<String, minijinja::Error> {
    if value.kind() == ValueKind::Map {
        let mut out = String::new();
        for key in value.try_iter()? {
            let item = value.get_item(&key)?;
            if item.is_none() || item.is_undefined() {
                continue;
            }
            if !out.is_empty() {
                out.push('&');
            }
            let k = text_in_state(state, &key)?;
            let v = text_in_state(state, &item)?;
            let _ = write!(
                out,
                "{}={}",
                utf8_percent_encode(&k, COMPONENT),
                utf8_percent_encode(&v, COMPONENT)
            );
        }
        return Ok(out);
    }
    let text = text_in_state(state, value)?;
    Ok(utf8_percent_encode(&text, COMPONENT).to_string())
}

// ---------------------------------------------------------------------------
// Escaping by destination
// ---------------------------------------------------------------------------

/// Where in a URL the output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlPart {
    /// Scheme and authority: values are inserted raw.
    Prefix,
    Path,
    Query,
    Fragment,
}

/// Tracks the URL part over the characters emitted so far.
struct UrlState {
    part: UrlPart,
    /// The last two characters, most recent first.
    prev: [char; 2],
}

impl UrlState {
    fn new() -> Self {
        UrlState {
            part: UrlPart::Prefix,
            prev: ['\0', '\0'],
        }
    }

    fn step(&mut self, c: char) {
        self.part = match (self.part, c) {
            (UrlPart::Fragment, _) | (_, '#') => UrlPart::Fragment,
            (UrlPart::Prefix | UrlPart::Path, '?') => UrlPart::Query,
            // The `//` of `scheme://`.
            (UrlPart::Prefix, '/')
                if self.prev[0] == ':' || (self.prev[0] == '/' && self.prev[1] == ':') =>
            {
                UrlPart::Prefix
            }
            (UrlPart::Prefix, '/') => UrlPart::Path,
            (part, _) => part,
        };
        self.prev = [c, self.prev[0]];
    }
}

/// Builds the final string from the rendered output, escaping the bytes that
/// came from placeholders (bytes not covered by a span are treated as values).
fn assemble(out: &str, spans: &[OutputSpan], dest: Dest) -> Result<String, TemplateError> {
    let mut asm = Assembler::new(dest, out.len());
    let mut pos = 0;
    for span in spans {
        let range = span.output_range();
        let (start, end) = (range.start.max(pos), range.end.min(out.len()));
        if start >= end {
            continue;
        }
        let (Some(gap), Some(piece)) = (out.get(pos..start), out.get(start..end)) else {
            break;
        };
        if !gap.is_empty() {
            asm.value(gap)?;
        }
        if span.kind() == OutputSpanKind::Raw {
            asm.literal(piece)?;
        } else {
            asm.value(piece)?;
        }
        pos = end;
    }
    if let Some(rest) = out.get(pos..)
        && !rest.is_empty()
    {
        asm.value(rest)?;
    }
    asm.finish()
}

struct Assembler {
    dest: Dest,
    out: String,
    url: UrlState,
    /// Byte offset in `out` where the current URL path segment starts.
    segment_start: usize,
    /// Whether the current URL path segment contains value bytes.
    segment_has_value: bool,
}

impl Assembler {
    fn new(dest: Dest, capacity: usize) -> Self {
        Assembler {
            dest,
            out: String::with_capacity(capacity),
            url: UrlState::new(),
            segment_start: 0,
            segment_has_value: false,
        }
    }

    /// Literal template text: copied; in a URL it moves the state on.
    fn literal(&mut self, text: &str) -> Result<(), TemplateError> {
        if self.dest != Dest::Url {
            self.out.push_str(text);
            return Ok(());
        }
        for c in text.chars() {
            self.url_char(c)?;
        }
        Ok(())
    }

    /// A character emitted raw into a URL.
    fn url_char(&mut self, c: char) -> Result<(), TemplateError> {
        let before = self.url.part;
        self.url.step(c);
        if before == UrlPart::Path && matches!(c, '/' | '?' | '#') {
            self.end_segment()?;
        }
        self.out.push(c);
        if self.url.part == UrlPart::Path && c == '/' {
            self.segment_start = self.out.len();
            self.segment_has_value = false;
        }
        Ok(())
    }

    /// Checks the path segment just completed.
    fn end_segment(&mut self) -> Result<(), TemplateError> {
        if self.segment_has_value {
            let segment = self.out.get(self.segment_start..).unwrap_or_default();
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            if decoded == "." || decoded == ".." {
                return Err(TemplateError::UrlDotSegment);
            }
        }
        Ok(())
    }

    /// Placeholder output: escaped for the destination.
    fn value(&mut self, text: &str) -> Result<(), TemplateError> {
        match self.dest {
            Dest::Text | Dest::Header => self.out.push_str(text),
            Dest::Xml => {
                for c in text.chars() {
                    match c {
                        '&' => self.out.push_str("&amp;"),
                        '<' => self.out.push_str("&lt;"),
                        '>' => self.out.push_str("&gt;"),
                        '"' => self.out.push_str("&quot;"),
                        '\'' => self.out.push_str("&apos;"),
                        c => self.out.push(c),
                    }
                }
            }
            Dest::Url => match self.url.part {
                // All of a value that starts in the prefix is raw (a base
                // URL with a path of its own); its characters move the state.
                UrlPart::Prefix => {
                    for c in text.chars() {
                        self.url_char(c)?;
                    }
                }
                part => {
                    // Encoded text has no `/`, `?` or `#`: the part stays.
                    let _ = write!(self.out, "{}", utf8_percent_encode(text, COMPONENT));
                    if part == UrlPart::Path {
                        self.segment_has_value = true;
                    }
                }
            },
        }
        Ok(())
    }

    fn finish(mut self) -> Result<String, TemplateError> {
        if self.dest == Dest::Url && self.url.part == UrlPart::Path {
            self.end_segment()?;
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ctx() -> Json {
        json!({
            "input": {
                "email": "ada@example.com",
                "age": 36,
                "ratio": 1.5,
                "active": true,
                "nothing": null,
                "tags": ["a", "b"],
                "user": {"name": "Ada", "langs": ["en", "fr"]},
                "id": "a/b c",
                "q": "x&y=1",
                "xml": "<b>\"Tom\" & 'Jerry'</b>",
                "crlf": "evil\r\nX-Injected: 1",
                "dotdot": "..",
                "dot": ".",
            },
            "settings": {"base_url": "https://api.hubapi.com/crm"},
            "steps": {"create": {"status": 201, "extract": {"id": 42}}},
            "credentials": {"hubspot": {"token": "s3cr3t-token"}},
            "execution": {"id": "exec-1", "attempt": 2},
        })
    }

    fn r() -> Renderer {
        Renderer::new()
    }

    #[test]
    fn single_placeholder_keeps_the_json_type() {
        let cases: &[(&str, Json)] = &[
            ("<<input.age>>", json!(36)),
            ("<<input.ratio>>", json!(1.5)),
            ("<<input.active>>", json!(true)),
            ("<<input.nothing>>", json!(null)),
            ("<<input.tags>>", json!(["a", "b"])),
            (
                "<<input.user>>",
                json!({"name": "Ada", "langs": ["en", "fr"]}),
            ),
            ("<< input.age >>", json!(36)),
            ("<<- input.age ->>", json!(36)),
            ("<<input.age + 1>>", json!(37)),
            ("<<steps.create.extract.id>>", json!(42)),
            ("<<input.email>>", json!("ada@example.com")),
            ("<<[input.age, input.active]>>", json!([36, true])),
            ("<<{'n': input.age}>>", json!({"n": 36})),
            ("<<input.x | default(7)>>", json!(7)),
            ("<<input.age if false>>", json!(null)),
            ("<<\">>\">>", json!(">>")),
        ];
        for (template, want) in cases {
            let got = r().render_value(template, &ctx()).unwrap();
            assert_eq!(&got, want, "{template}");
        }
    }

    #[test]
    fn anything_but_one_placeholder_renders_as_a_string() {
        let cases = [
            ("age <<input.age>>", "age 36"),
            ("<<input.age>><<input.age>>", "3636"),
            ("<<input.age>> and <<input.active>>", "36 and true"),
            (" <<input.age>>", " 36"),
            ("<<input.age>>\n", "36\n"),
            ("<<input.user>>!", r#"{"langs":["en","fr"],"name":"Ada"}!"#),
            ("<<input.nothing>>|", "|"),
            (
                "no placeholder {{ x }} {% y %}",
                "no placeholder {{ x }} {% y %}",
            ),
            ("<<input.age>>>>", "36>>"),
        ];
        for (template, want) in cases {
            let got = r().render_value(template, &ctx()).unwrap();
            assert_eq!(got, json!(want), "{template}");
        }
    }

    #[test]
    fn values_render_as_text_in_their_json_form() {
        let cases = [
            ("<<input.age>>", "36"),
            ("<<input.ratio>>", "1.5"),
            ("<<input.active>>", "true"),
            ("<<input.nothing>>", ""),
            ("<<input.tags>>", r#"["a","b"]"#),
            ("<<input.user>>", r#"{"langs":["en","fr"],"name":"Ada"}"#),
            ("<<1.0>>", "1.0"),
            ("<<none>>", ""),
            ("<<input.tags | tojson>>", r#"["a","b"]"#),
            ("<<input.user.name | upper>>", "ADA"),
            ("<<input.email | lower>>", "ada@example.com"),
            ("<<input.q | urlencode>>", "x%26y%3D1"),
            ("<<{'a': 'b c', 'd': none} | urlencode>>", "a=b%20c"),
            ("<<input.tags | join(',')>>", "a,b"),
        ];
        for (template, want) in cases {
            let got = r().render_str(template, &ctx(), Dest::Text).unwrap();
            assert_eq!(got, want, "{template}");
        }
    }

    #[test]
    fn default_filter_applies_to_missing_names() {
        let cases = [
            (r#"<<input.x | default("y")>>"#, "y"),
            (r#"<<input.email | default("y")>>"#, "ada@example.com"),
            (r#"<<input.x | d("z")>>"#, "z"),
            (r#"<<input.x | default(input.email)>>"#, "ada@example.com"),
        ];
        for (template, want) in cases {
            assert_eq!(r().render_str(template, &ctx(), Dest::Text).unwrap(), want);
            assert_eq!(r().render_value(template, &ctx()).unwrap(), json!(want));
        }
    }

    #[test]
    fn missing_name_is_an_error_naming_the_path() {
        let cases = [
            ("<<input.emial>>", "input.emial"),
            ("hi <<input.emial>>!", "input.emial"),
            ("<<input.emial | upper>>", "input.emial"),
            ("a <<input.email>> b <<input.user.nope>>", "input.user.nope"),
            ("<<input.email ~ input.q2>>", "input.q2"),
            ("<<steps.update.extract.id>>", "steps.update"),
            ("<<nope>>", "nope"),
            ("<<nope.x | default('z')>>", "nope"),
        ];
        for (template, want) in cases {
            for result in [
                r().render_str(template, &ctx(), Dest::Text)
                    .map(Json::String),
                r().render_value(template, &ctx()),
            ] {
                let err = result.unwrap_err();
                assert_eq!(
                    err,
                    TemplateError::Undefined { path: want.into() },
                    "{template}"
                );
                assert_eq!(err.to_string(), format!("`{want}` is not defined"));
            }
        }
    }

    #[test]
    fn url_values_are_encoded_per_component() {
        let cases = [
            (
                "https://x.test/users/<<input.id>>?q=<<input.q>>",
                "https://x.test/users/a%2Fb%20c?q=x%26y%3D1",
            ),
            (
                "<<settings.base_url>>/v1/contacts/<<input.id>>",
                "https://api.hubapi.com/crm/v1/contacts/a%2Fb%20c",
            ),
            (
                "https://x.test/<<input.q>>#<<input.id>>",
                "https://x.test/x%26y%3D1#a%2Fb%20c",
            ),
            (
                "https://x.test?e=<<input.email>>",
                "https://x.test?e=ada%40example.com",
            ),
            ("/relative/<<input.id>>", "/relative/a%2Fb%20c"),
            (
                "https://x.test/<<input.age>>/<<input.active>>",
                "https://x.test/36/true",
            ),
            ("https://x.test/a-<<input.dotdot>>", "https://x.test/a-.."),
            (
                "https://x.test/a/<<input.q>>.json",
                "https://x.test/a/x%26y%3D1.json",
            ),
            ("https://x.test/<<\"<<\">>", "https://x.test/%3C%3C"),
        ];
        for (template, want) in cases {
            assert_eq!(
                r().render_str(template, &ctx(), Dest::Url).unwrap(),
                want,
                "{template}"
            );
        }
    }

    #[test]
    fn url_value_forming_a_dot_segment_is_rejected() {
        for template in [
            "https://x.test/users/<<input.dotdot>>/admin",
            "https://x.test/users/<<input.dotdot>>",
            "https://x.test/users/<<input.dot>><<input.dot>>?x=1",
            "https://x.test/users/<<input.dot>>",
        ] {
            assert_eq!(
                r().render_str(template, &ctx(), Dest::Url),
                Err(TemplateError::UrlDotSegment),
                "{template}"
            );
        }
        // In the query a dot is harmless.
        assert_eq!(
            r().render_str("https://x.test/?a=<<input.dotdot>>", &ctx(), Dest::Url)
                .unwrap(),
            "https://x.test/?a=.."
        );
    }

    #[test]
    fn xml_values_are_escaped_and_literal_text_is_not() {
        let got = r()
            .render_str("<note a=\"1\"><<input.xml>></note>", &ctx(), Dest::Xml)
            .unwrap();
        assert_eq!(
            got,
            "<note a=\"1\">&lt;b&gt;&quot;Tom&quot; &amp; &apos;Jerry&apos;&lt;/b&gt;</note>"
        );
    }

    #[test]
    fn header_with_cr_or_lf_is_rejected_without_the_value() {
        let err = r()
            .render_str("Bearer <<input.crlf>>", &ctx(), Dest::Header)
            .unwrap_err();
        assert_eq!(err, TemplateError::HeaderNewline);
        assert!(!err.to_string().contains("evil"));
        assert_eq!(
            r().render_str("a\nb", &ctx(), Dest::Header),
            Err(TemplateError::HeaderNewline)
        );
        assert_eq!(
            r().render_str("Bearer <<credentials.hubspot.token>>", &ctx(), Dest::Header)
                .unwrap(),
            "Bearer s3cr3t-token"
        );
        // In text destinations CR/LF are fine.
        assert!(r().render_str("<<input.crlf>>", &ctx(), Dest::Text).is_ok());
    }

    #[test]
    fn literal_double_angle_is_written_as_a_string_placeholder() {
        for dest in [Dest::Text, Dest::Header, Dest::Xml] {
            let want = if dest == Dest::Xml {
                "a &lt;&lt; b"
            } else {
                "a << b"
            };
            assert_eq!(
                r().render_str(r#"a <<"<<">> b"#, &ctx(), dest).unwrap(),
                want
            );
        }
        assert_eq!(
            r().render_value(r#"<<"<<">>"#, &ctx()).unwrap(),
            json!("<<")
        );
        assert_eq!(
            r().render_value("<<'<<' ~ '>>'>>", &ctx()).unwrap(),
            json!("<<>>")
        );
        // A lone `>>` is text.
        assert_eq!(
            r().render_str("a >> b", &ctx(), Dest::Text).unwrap(),
            "a >> b"
        );
    }

    #[test]
    fn whitespace_control_strips_around_the_placeholder() {
        let cases = [
            ("a   <<- input.age >>   b", "a36   b"),
            ("a   << input.age ->>   b", "a   36b"),
            ("<<-1>>", "1"),
            ("<< -1 >>", "-1"),
        ];
        for (template, want) in cases {
            assert_eq!(r().render_str(template, &ctx(), Dest::Text).unwrap(), want);
        }
    }

    #[test]
    fn blocks_and_comments_are_plain_text_or_rejected() {
        let text = "{% for x in range(3) %}{{ x }}{# c #}{% endfor %}";
        assert_eq!(r().render_str(text, &ctx(), Dest::Text).unwrap(), text);
        for template in [
            "\u{FDD0} for x in range(3) \u{FDD1}",
            "a \u{FDD2} c \u{FDD3} <<1>>",
        ] {
            let err = r().render_str(template, &ctx(), Dest::Text).unwrap_err();
            assert!(matches!(err, TemplateError::Syntax { .. }), "{err}");
            assert!(r().references(template).is_err());
        }
    }

    #[test]
    fn references_lists_dotted_paths() {
        let cases: &[(&str, &[&str])] = &[
            ("no placeholders", &[]),
            ("<<input.email>>", &["input.email"]),
            (
                "<<steps.create.extract.id>>/<<input.email>>/<<input.email>>",
                &["input.email", "steps.create.extract.id"],
            ),
            (
                "<<input.x | default(settings.y)>>",
                &["input.x", "settings.y"],
            ),
            ("<<range(3) | join(',')>>", &[]),
            ("<<input['k'].x>>", &["input"]),
            (r#"<<"<<">>"#, &[]),
            (
                "<<credentials.hubspot.token>>",
                &["credentials.hubspot.token"],
            ),
            ("<<(steps.a.body | first).x>>", &["steps.a.body"]),
        ];
        for (template, want) in cases {
            assert_eq!(r().references(template).unwrap(), *want, "{template}");
        }
    }

    #[test]
    fn syntax_errors_are_reported_with_a_position() {
        for template in [
            "<<input.",
            "abc <<input.email",
            "<<>>",
            "<<input.email | >>",
            "x\n<<'a>>",
        ] {
            match r().references(template).unwrap_err() {
                TemplateError::Syntax { message, .. } => {
                    assert!(message.contains("line"), "{message}")
                }
                other => panic!("{template}: {other:?}"),
            }
            assert!(matches!(
                r().render_str(template, &ctx(), Dest::Text),
                Err(TemplateError::Syntax { .. })
            ));
            assert!(matches!(
                r().render_value(template, &ctx()),
                Err(TemplateError::Syntax { .. })
            ));
        }
        let err = r().references("line1\nline2 <<a.").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn render_errors_never_contain_values() {
        let cases = [
            "<<credentials.hubspot.token + 1>>",
            "x <<credentials.hubspot.token + 1>>",
            "<<credentials.hubspot.token | nosuchfilter>>",
            "<<credentials.hubspot.token | int>>",
            "<<credentials.hubspot.token[99]>>",
            "<<credentials.hubspot.token.nope>>",
            "<<9223372036854775807 * 9223372036854775807 * 9223372036854775807>>",
        ];
        for template in cases {
            for result in [
                r().render_str(template, &ctx(), Dest::Text)
                    .map(Json::String),
                r().render_value(template, &ctx()),
            ] {
                match result {
                    Ok(v) => panic!("{template} rendered {v}"),
                    Err(e) => {
                        let text = format!("{e} {e:?}");
                        assert!(!text.contains("s3cr3t"), "{text}");
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_filter_error_names_the_filter_and_placeholder() {
        let err = r()
            .render_str("a <<input.email | nosuch>>", &ctx(), Dest::Text)
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("nosuch"), "{text}");
        assert!(text.contains("<<input.email | nosuch>>"), "{text}");
    }

    #[test]
    fn fuel_bounds_expensive_templates() {
        let start = std::time::Instant::now();
        let heavy = "<<range(100000) | join(',')>>".repeat(50);
        assert_eq!(
            r().render_str(&heavy, &ctx(), Dest::Text),
            Err(TemplateError::OutOfFuel)
        );
        assert_eq!(
            r().render_value("<<('x' * 100000000) | length>>", &ctx()),
            Err(TemplateError::OutOfFuel)
        );
        // A lazily repeated list is bounded when converted to JSON or text.
        assert_eq!(
            r().render_value("<<[1] * 100000000>>", &ctx()),
            Err(TemplateError::OutOfFuel)
        );
        assert_eq!(
            r().render_str("x<<[1] * 100000000>>", &ctx(), Dest::Text),
            Err(TemplateError::OutOfFuel)
        );
        assert_eq!(
            r().render_str("x<<([1] * 100000000) | tojson>>", &ctx(), Dest::Text),
            Err(TemplateError::OutOfFuel)
        );
        let small = Renderer::with_fuel(10);
        assert_eq!(
            small.render_str(&"<<1>>".repeat(100), &ctx(), Dest::Text),
            Err(TemplateError::OutOfFuel)
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn render_json_renders_leaves_and_keys_keeping_types() {
        let body = json!({
            "email": "<<input.email>>",
            "age": "<<input.age>>",
            "profile": "<<input.user>>",
            "greeting": "Hi <<input.user.name>>",
            "<<input.user.name | lower>>": [1, "<<input.active>>", null, false],
            "literal": "{{ not a template }}",
        });
        let got = r().render_json(&body, &ctx()).unwrap();
        assert_eq!(
            got,
            json!({
                "email": "ada@example.com",
                "age": 36,
                "profile": {"name": "Ada", "langs": ["en", "fr"]},
                "greeting": "Hi Ada",
                "ada": [1, true, null, false],
                "literal": "{{ not a template }}",
            })
        );
    }

    #[test]
    fn render_json_errors_carry_the_location() {
        let body = json!({"user": {"list": [1, "<<input.emial>>"]}});
        let err = r().render_json(&body, &ctx()).unwrap_err();
        assert_eq!(
            err,
            TemplateError::At {
                path: ".user.list[1]".into(),
                error: Box::new(TemplateError::Undefined {
                    path: "input.emial".into()
                }),
            }
        );
        assert_eq!(
            err.innermost(),
            &TemplateError::Undefined {
                path: "input.emial".into()
            }
        );
        let dup = json!({"<<'a'>>": 1, "a": 2});
        assert!(r().render_json(&dup, &ctx()).is_err());
    }

    #[test]
    fn json_references_report_paths_for_refs_and_errors() {
        let body = json!({
            "user": {"email": "<<input.email>>", "tags": ["<<input.tags>>", 3]},
            "content-type": "<<settings.ct>>",
            "<<input.key>>": "x",
            "bad": "<<input.",
        });
        let found = r().json_references(&body);
        assert_eq!(
            found.references,
            vec![
                ("[\"<<input.key>>\"]".to_owned(), "input.key".to_owned()),
                ("[\"content-type\"]".to_owned(), "settings.ct".to_owned()),
                (".user.email".to_owned(), "input.email".to_owned()),
                (".user.tags[0]".to_owned(), "input.tags".to_owned()),
            ]
        );
        assert_eq!(found.errors.len(), 1);
        assert_eq!(found.errors[0].0, ".bad");
        assert!(matches!(found.errors[0].1, TemplateError::Syntax { .. }));
    }

    #[test]
    fn prepared_context_renders_like_json_context() {
        let prepared = Context::new(&ctx());
        let renderer = r();
        assert_eq!(
            renderer
                .render_str_in("https://x.test/<<input.id>>", &prepared, Dest::Url)
                .unwrap(),
            "https://x.test/a%2Fb%20c"
        );
        assert_eq!(
            renderer
                .render_value_in("<<input.age>>", &prepared)
                .unwrap(),
            json!(36)
        );
        assert_eq!(
            renderer
                .render_json_in(&json!(["<<input.active>>"]), &prepared)
                .unwrap(),
            json!([true])
        );
    }

    #[test]
    fn non_finite_numbers_are_an_error() {
        assert!(r().render_value("<<1e300 * 1e300>>", &ctx()).is_err());
        assert!(
            r().render_str("<<1e300 * 1e300>>", &ctx(), Dest::Text)
                .is_err()
        );
    }

    #[test]
    fn safe_filter_does_not_bypass_destination_escaping() {
        assert_eq!(
            r().render_str("<x><<input.xml | safe>></x>", &ctx(), Dest::Xml)
                .unwrap(),
            "<x>&lt;b&gt;&quot;Tom&quot; &amp; &apos;Jerry&apos;&lt;/b&gt;</x>"
        );
        assert_eq!(
            r().render_str("https://x.test/<<input.id | safe>>", &ctx(), Dest::Url)
                .unwrap(),
            "https://x.test/a%2Fb%20c"
        );
    }

    #[test]
    fn big_integers_render_as_text_but_not_as_json() {
        assert_eq!(
            r().render_str("<<2 ** 70>>", &ctx(), Dest::Text).unwrap(),
            "1180591620717411303424"
        );
        assert!(matches!(
            r().render_value("<<2 ** 70>>", &ctx()),
            Err(TemplateError::Render(_))
        ));
    }

    #[test]
    fn prepared_context_debug_output_is_redacted() {
        let text = format!("{:?}", Context::new(&ctx()));
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn debug_function_is_not_available() {
        assert!(r().render_str("<<debug()>>", &ctx(), Dest::Text).is_err());
    }

    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("<<".to_owned()),
            Just(">>".to_owned()),
            Just("{{".to_owned()),
            Just("}}".to_owned()),
            Just("{%".to_owned()),
            Just("%".to_owned()),
            Just("|".to_owned()),
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just("[".to_owned()),
            Just("\"".to_owned()),
            Just("'".to_owned()),
            Just("-".to_owned()),
            Just("+".to_owned()),
            Just(".".to_owned()),
            Just("/".to_owned()),
            Just("?".to_owned()),
            Just("#".to_owned()),
            Just(":".to_owned()),
            Just(" ".to_owned()),
            Just("\n".to_owned()),
            Just("input".to_owned()),
            Just("input.email".to_owned()),
            Just("input.user".to_owned()),
            Just("missing".to_owned()),
            Just("default('x')".to_owned()),
            Just("upper".to_owned()),
            Just("tojson".to_owned()),
            Just("urlencode".to_owned()),
            Just("range(5)".to_owned()),
            Just("*".to_owned()),
            Just("~".to_owned()),
            Just("1".to_owned()),
            Just("\u{FDD0}".to_owned()),
            Just("\u{FDD2}".to_owned()),
            Just("é".to_owned()),
            "[a-z]{1,3}",
            ".{0,2}",
        ]
    }

    fn template() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(fragment(), 0..14).prop_map(|parts| parts.concat()),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_templates_never_panic(t in template()) {
            let renderer = r();
            let c = ctx();
            let _ = renderer.references(&t);
            for dest in [Dest::Text, Dest::Url, Dest::Xml, Dest::Header] {
                let _ = renderer.render_str(&t, &c, dest);
            }
            let _ = renderer.render_value(&t, &c);
            let _ = renderer.render_json(&json!({ t.clone(): [t.clone()] }), &c);
            let _ = renderer.json_references(&json!({ t.clone(): [t.clone()] }));
        }

        #[test]
        fn literal_text_renders_to_itself(t in "[^<\u{FDD0}\u{FDD2}]*") {
            for dest in [Dest::Text, Dest::Url, Dest::Xml] {
                prop_assert_eq!(r().render_str(&t, &ctx(), dest).unwrap(), t.clone());
            }
            prop_assert_eq!(r().render_value(&t, &ctx()).unwrap(), json!(t));
        }

        #[test]
        fn url_components_round_trip(v in any::<String>(), w in any::<String>()) {
            let c = json!({"input": {"v": v, "w": w}});
            let url = match r().render_str("https://x.test/p/<<input.v>>/x?q=<<input.w>>#<<input.v>>", &c, Dest::Url) {
                Ok(url) => url,
                Err(TemplateError::UrlDotSegment) => {
                    prop_assert!(v == "." || v == "..");
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            let rest = url.strip_prefix("https://x.test/p/").unwrap();
            let (seg, rest) = rest.split_once("/x?q=").unwrap();
            let (query, frag) = rest.split_once('#').unwrap();
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().unwrap().into_owned();
            prop_assert_eq!(decode(seg), v.clone());
            prop_assert_eq!(decode(query), w);
            prop_assert_eq!(decode(frag), v);
        }

        #[test]
        fn xml_values_cannot_inject_markup(v in any::<String>()) {
            let c = json!({"input": {"v": v}});
            let out = r().render_str("<a><<input.v>></a>", &c, Dest::Xml).unwrap();
            let inner = out.strip_prefix("<a>").and_then(|s| s.strip_suffix("</a>")).unwrap();
            prop_assert!(!inner.contains(['<', '>', '"', '\'']));
            let unescaped = inner
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&");
            prop_assert_eq!(unescaped, v);
        }
    }
}
