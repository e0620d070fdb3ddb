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
//! Renders and typed evaluations share one fuel budget per [`Context`]
//! ([`DEFAULT_FUEL`], see [`minijinja::Environment::set_fuel`]): the step
//! client prepares one context per step, so a step's URL, headers and every
//! body leaf draw on one budget, not one each. Instructions, bytes produced
//! and items visited all cost fuel (what a render used is read from the
//! engine's own meter as it emits values), and running out is
//! [`TemplateError::OutOfFuel`]. The recursion limit is lowered too.
//!
//! # Errors never carry values
//!
//! Values may be secrets, so error messages name template paths and quote
//! template text, never rendered values.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value as Json;

/// The default fuel budget of one [`Context`]: every render and typed
/// evaluation made with it (a step's URL, query, headers and body) together.
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

/// A value as a URL path segment or query component encodes it: every
/// byte but RFC 3986 unreserved characters percent-encoded.
pub fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// A value as an XML body holds it: `&` `<` `>` `"` `'` escaped.
pub fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

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
/// It also carries the fuel its renders have used: they share one budget.
///
/// Its `Debug` output is redacted: the context holds secrets.
pub struct Context {
    root: Value,
    /// Fuel used by the renders and evaluations made with this context.
    spent: AtomicU64,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Context(<redacted>)")
    }
}

impl Context {
    /// Converts a JSON context (normally an object with `input`, `steps`,
    /// `credentials`, ...).
    pub fn new(ctx: &Json) -> Self {
        Context {
            root: Value::from(Serde(ctx)),
            spent: AtomicU64::new(0),
        }
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

    /// A renderer whose [`Context`]s each get `fuel` (at least 1) for all
    /// the renders and typed evaluations made with them.
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
        // `omit` is null: a request value that renders to it is left out.
        env.add_global("omit", Value::from(()));
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
        self.render_with_root(template, &Context::new(ctx), dest)
    }

    /// [`render_str`](Self::render_str) with a prepared [`Context`].
    pub fn render_str_in(
        &self,
        template: &str,
        ctx: &Context,
        dest: Dest,
    ) -> Result<String, TemplateError> {
        self.render_with_root(template, ctx, dest)
    }

    /// Typed render: a template that is exactly one placeholder evaluates to
    /// its value with its JSON type kept; any other template renders as text
    /// ([`Dest::Text`]) into a JSON string.
    pub fn render_value(&self, template: &str, ctx: &Json) -> Result<Json, TemplateError> {
        if is_literal(template) {
            return Ok(Json::String(template.to_owned()));
        }
        self.value_with_root(template, &Context::new(ctx))
    }

    /// [`render_value`](Self::render_value) with a prepared [`Context`].
    pub fn render_value_in(&self, template: &str, ctx: &Context) -> Result<Json, TemplateError> {
        self.value_with_root(template, ctx)
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
        self.render_json_at(value, ctx, &mut path, 0, false)
    }

    fn render_json_at(
        &self,
        value: &Json,
        root: &Context,
        path: &mut String,
        depth: usize,
        omit_nulls: bool,
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
                    out.push(self.render_json_at(item, root, path, depth + 1, omit_nulls)?);
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
                    let new_item = self.render_json_at(item, root, path, depth + 1, omit_nulls)?;
                    if omit_nulls
                        && new_item.is_null()
                        && item.as_str().is_some_and(|s| !is_literal(s))
                    {
                        path.truncate(len);
                        continue;
                    }
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

    /// The fuel `ctx` has left, or [`TemplateError::OutOfFuel`] when none.
    fn fuel_left(&self, ctx: &Context) -> Result<u64, TemplateError> {
        match self.fuel.saturating_sub(ctx.spent.load(Ordering::Relaxed)) {
            0 => Err(TemplateError::OutOfFuel),
            left => Ok(left),
        }
    }

    /// The environment, with its fuel lowered to `left` when less is left.
    fn env_for(&self, left: u64) -> Cow<'_, Environment<'static>> {
        if left >= self.fuel {
            return Cow::Borrowed(&self.env);
        }
        let mut env = self.env.clone();
        env.set_fuel(Some(left));
        Cow::Owned(env)
    }

    /// Charges `fuel` to `ctx`.
    fn charge(ctx: &Context, fuel: u64) {
        ctx.spent.fetch_add(fuel, Ordering::Relaxed);
    }

    fn value_with_root(&self, template: &str, ctx: &Context) -> Result<Json, TemplateError> {
        if is_literal(template) {
            return Ok(Json::String(template.to_owned()));
        }
        check_reserved(template)?;
        let root = &ctx.root;
        if let Some((expr, _)) = single_placeholder(template) {
            // If the inside does not parse as one expression, the string is
            // not a single placeholder (`<<a>> and <<b>>`) or is invalid; the
            // text render below tells which.
            if self.env.compile_expression(expr).is_ok() {
                // Rendered, not `eval`ed, with the emitted value captured:
                // the render applies strict undefined handling and meters
                // its fuel, which `eval` does neither of.
                let left = self.fuel_left(ctx)?;
                let env = self.env_for(left);
                let compiled = env
                    .template_from_str(template)
                    .map_err(|e| convert_error(&e, template, 0, |_| None))?;
                meter::start(true);
                let rendered = compiled.render(root.clone());
                let (used, value) = meter::finish();
                Self::charge(ctx, used);
                rendered.map_err(|e| self.convert_error(&e, template, 0, root))?;
                // An inline `if` without `else` that is false emits an
                // undefined value: null.
                let Some(value) = value.filter(|v| !v.is_undefined()) else {
                    return Ok(Json::Null);
                };
                let start = self.fuel_left(ctx)?.saturating_mul(UNITS_PER_FUEL);
                let mut budget = start;
                let converted = to_json(&value, &mut budget, 0);
                Self::charge(ctx, (start - budget).div_ceil(UNITS_PER_FUEL));
                return converted.map_err(|e| match e {
                    ConvError::Undefined => TemplateError::Undefined {
                        path: self
                            .missing_path(template, root)
                            .unwrap_or_else(|| quote(expr.trim())),
                    },
                    ConvError::OutOfFuel => TemplateError::OutOfFuel,
                    ConvError::Invalid(e) => self.convert_error(&e, template, 0, root),
                    ConvError::Unsupported(what) => {
                        TemplateError::Render(format!("{what} (in `{}`)", quote(template)))
                    }
                });
            }
        }
        self.render_with_root(template, ctx, Dest::Text)
            .map(Json::String)
    }

    fn render_with_root(
        &self,
        template: &str,
        ctx: &Context,
        dest: Dest,
    ) -> Result<String, TemplateError> {
        if is_literal(template) {
            return finish_literal(template, dest);
        }
        check_reserved(template)?;
        let root = &ctx.root;
        let left = self.fuel_left(ctx)?;
        let env = self.env_for(left);
        let compiled = env
            .template_from_str(template)
            .map_err(|e| convert_error(&e, template, 0, |_| None))?;
        meter::start(false);
        let rendered = match dest {
            Dest::Text | Dest::Header => compiled.render(root.clone()).map(|out| (out, None)),
            Dest::Url | Dest::Xml => compiled
                .render_with_spans(root.clone())
                .map(|(out, spans)| (out, Some(spans))),
        };
        let (used, _) = meter::finish();
        Self::charge(ctx, used);
        let out = match rendered.map_err(|e| self.convert_error(&e, template, 0, root))? {
            (out, None) => out,
            (out, Some(spans)) => assemble(&out, &spans, dest)?,
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

mod escape;
mod inspect;
mod lang;
mod meter;
mod values;

use escape::assemble;
use inspect::{
    check_reserved, convert_error, finish_literal, finish_literal_owned, is_literal, push_index,
    push_key, quote, single_placeholder, too_deep,
};
use values::{ConvError, format_value, to_json, tojson_filter, urlencode_filter};

#[cfg(test)]
mod tests;
