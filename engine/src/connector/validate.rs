//! Save-time validation of connector definitions.
//!
//! Every problem is reported with the JSON path of the offending field
//! (`steps[1].url`), and all problems are reported at once.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::scope::{Scope, check_reference};
use super::{ApiKeyLocation, Auth, Body, Connector, RetryPolicy, Step};
use crate::net;
use crate::template::Renderer;

/// Longest accepted whole-run deadline: one day.
const MAX_RUN_TIMEOUT_MS: u64 = 86_400_000;
/// Longest accepted per-step timeout: 15 minutes.
const MAX_STEP_TIMEOUT_MS: u64 = 900_000;
/// Most attempts a retry policy may ask for.
const MAX_ATTEMPTS: u32 = 100;
/// Longest retry delay: no run outlives its deadline, which is at most a day.
const MAX_RETRY_DELAY_MS: u64 = MAX_RUN_TIMEOUT_MS;
/// Most steps in one connector.
const MAX_STEPS: usize = 100;
/// Why a header in [`net::FORBIDDEN_REQUEST_HEADERS`] is refused.
const FORBIDDEN_HEADER: &str = "may not be set by a step: Host, Content-Length, Transfer-Encoding, \
     Connection and the other hop-by-hop headers are set by the HTTP client";

/// One problem in a connector definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ValidationError {
    /// JSON path of the offending field, e.g. `steps[1].url`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems found in a connector definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(transparent)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Deserialises and validates a connector definition.
///
/// # Errors
///
/// Returns every problem found, each with its JSON path: the first
/// structural one (unknown key, wrong type) if the JSON does not have the
/// connector's shape, otherwise all semantic ones.
pub fn parse_and_validate(json: &Value) -> Result<Connector, ValidationErrors> {
    let connector: Connector = crate::json::from_value(json).map_err(|e| {
        ValidationErrors(vec![ValidationError {
            path: e.path,
            message: e.message,
        }])
    })?;
    validate(&connector)?;
    Ok(connector)
}

/// Checks a deserialised connector for everything a save must refuse.
///
/// # Errors
///
/// Returns every problem found, each with its JSON path.
pub fn validate(connector: &Connector) -> Result<(), ValidationErrors> {
    let mut v = Validator {
        renderer: Renderer::new(),
        errors: Vec::new(),
    };
    v.connector(connector);
    if let Some(Err(message)) = connector
        .callback_url
        .as_deref()
        .map(crate::callback::check_url)
    {
        v.err("callback_url", message);
    }
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(v.errors))
    }
}

struct Validator {
    renderer: Renderer,
    errors: Vec<ValidationError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn connector(&mut self, c: &Connector) {
        if c.name.trim().is_empty() {
            self.err("name", "must not be empty");
        } else if c.name.chars().count() > 200 {
            self.err("name", "must be at most 200 characters");
        }
        if let Some(schema) = &c.input_schema
            && let Err(e) = jsonschema::validator_for(schema)
        {
            self.err("input_schema", format!("is not a valid JSON Schema: {e}"));
        }
        if c.steps.is_empty() {
            self.err("steps", "must contain at least one step");
        } else if c.steps.len() > MAX_STEPS {
            self.err("steps", format!("must contain at most {MAX_STEPS} steps"));
        }
        self.retry("retry", &c.retry);
        if c.timeout_ms == 0 || c.timeout_ms > MAX_RUN_TIMEOUT_MS {
            self.err(
                "timeout_ms",
                format!("must be between 1 and {MAX_RUN_TIMEOUT_MS}"),
            );
        }
        for (name, bound) in &c.credential_bindings {
            if !is_credential_name(name) || !is_credential_name(bound) {
                self.err(
                    format!("credential_bindings.{name}"),
                    "credential names must be 1 to 64 characters of [A-Za-z0-9_.-], not starting with . or -",
                );
            }
        }
        let mut seen = BTreeSet::new();
        for (i, step) in c.steps.iter().enumerate() {
            let path = format!("steps[{i}]");
            if !seen.insert(step.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate step name `{}`", step.name),
                );
            }
            self.step(&path, step, &c.steps[..i]);
            let placement = super::placement::step_problems(&self.renderer, &path, step);
            self.errors.extend(placement);
            let flow = super::flow::problems(&self.renderer, &path, step);
            self.errors.extend(flow);
            for (j, v) in step.variants.iter().enumerate() {
                let (path, probe) = (format!("{path}.variants[{j}]"), v.probe(step));
                self.step(&path, &probe, &c.steps[..i]);
                let placement = super::placement::step_problems(&self.renderer, &path, &probe);
                self.errors.extend(placement);
            }
            self.errors.extend(super::variant::problems(&path, step));
            self.errors.extend(super::paging::problems(&path, step));
            let language = super::language::problems(&self.renderer, &path, step, &c.steps[..i]);
            self.errors.extend(language);
            let looped = super::for_each::problems(&self.renderer, &path, step);
            self.errors.extend(looped);
        }
        self.json_templates("output", &c.output, &Scope::Output(&c.steps));
        let placement = super::placement::output_problems(&self.renderer, &c.output);
        self.errors.extend(placement);
        let secrets = super::language::output_problems(&self.renderer, &c.output, &c.steps);
        self.errors.extend(secrets);
    }

    fn retry(&mut self, path: &str, r: &RetryPolicy) {
        if r.max_attempts == 0 || r.max_attempts > MAX_ATTEMPTS {
            self.err(
                format!("{path}.max_attempts"),
                format!("must be between 1 and {MAX_ATTEMPTS}"),
            );
        }
        if !(r.multiplier.is_finite() && (1.0..=100.0).contains(&r.multiplier)) {
            self.err(format!("{path}.multiplier"), "must be between 1 and 100");
        }
        if r.max_delay_ms > MAX_RETRY_DELAY_MS {
            self.err(
                format!("{path}.max_delay_ms"),
                format!("must be at most {MAX_RETRY_DELAY_MS} (a day, the longest run)"),
            );
        }
        if r.initial_delay_ms > r.max_delay_ms {
            self.err(
                format!("{path}.initial_delay_ms"),
                "must not exceed max_delay_ms",
            );
        }
    }

    fn step(&mut self, path: &str, step: &Step, earlier: &[Step]) {
        if !is_step_name(&step.name) {
            self.err(
                format!("{path}.name"),
                "must be 1 to 64 characters of [a-z0-9_]",
            );
        }
        if let Some(each) = &step.for_each {
            let items = format!("{path}.for_each.items");
            self.template(&items, &each.items, &Scope::Step(earlier));
        }
        let scope = if step.for_each.is_some() {
            Scope::Each(earlier)
        } else {
            Scope::Step(earlier)
        };
        let mut templates = Vec::new();
        step.visit_templates(&mut |field, template| {
            templates.push((format!("{path}.{field}"), template.to_owned()));
        });
        for (field, template) in &templates {
            if field.ends_with(".url") {
                self.url(field, template, &scope);
            } else {
                self.template(field, template, &scope);
            }
        }
        for name in step.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.err(
                    format!("{path}.headers.{name}"),
                    "is not a valid HTTP header name",
                );
            } else if net::is_forbidden_request_header(name) {
                self.err(format!("{path}.headers.{name}"), FORBIDDEN_HEADER);
            }
        }
        if step.query.contains_key("") {
            self.err(
                format!("{path}.query"),
                "query parameter names must not be empty",
            );
        }
        if let Some(Body::Raw { content_type, .. }) = &step.body
            && (content_type.trim().is_empty()
                || reqwest::header::HeaderValue::from_str(content_type).is_err())
        {
            self.err(
                format!("{path}.body.content_type"),
                "must be a valid Content-Type value",
            );
        }
        self.auth(&format!("{path}.auth"), &step.auth);
        if step.timeout_ms == 0 || step.timeout_ms > MAX_STEP_TIMEOUT_MS {
            self.err(
                format!("{path}.timeout_ms"),
                format!("must be between 1 and {MAX_STEP_TIMEOUT_MS}"),
            );
        }
        for (i, code) in step.expect.iter().enumerate() {
            if !(100..=599).contains(code) {
                self.err(
                    format!("{path}.expect[{i}]"),
                    "must be an HTTP status code (100-599)",
                );
            }
        }
        for field in step.extract.keys() {
            if !is_field_name(field) {
                self.err(
                    format!("{path}.extract.{field}"),
                    "field names must be 1 to 64 characters of [A-Za-z0-9_]",
                );
            }
        }
        if let Some(r) = &step.retry {
            self.retry(&format!("{path}.retry"), r);
        }
    }

    fn auth(&mut self, path: &str, auth: &Auth) {
        if let Some(name) = auth.credential()
            && !is_credential_name(name)
        {
            self.err(
                format!("{path}.credential"),
                "must be 1 to 64 characters of [A-Za-z0-9_.-], not starting with . or -",
            );
        }
        if let Some(problem) = auth.scheme_problem() {
            self.err(format!("{path}.scheme"), problem);
        }
        if let Auth::ApiKey { location, name, .. } = auth {
            let bad = match location {
                ApiKeyLocation::Header => {
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                }
                ApiKeyLocation::Query => name.is_empty(),
            };
            if bad {
                self.err(
                    format!("{path}.name"),
                    "must be a valid header or query parameter name",
                );
            } else if *location == ApiKeyLocation::Header && net::is_forbidden_request_header(name)
            {
                self.err(format!("{path}.name"), FORBIDDEN_HEADER);
            }
        }
    }

    /// A URL template must be absolute http(s) once rendered. When it starts
    /// with a placeholder (a `settings.base_url`, say) only the rendered URL
    /// can tell, so the check then waits for run time.
    fn url(&mut self, path: &str, url: &str, scope: &Scope<'_>) {
        if !self.template(path, url, scope) {
            return;
        }
        if url.trim_start().starts_with("<<") {
            return;
        }
        let probe = replace_placeholders(url, "x");
        match url::Url::parse(&probe) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            Ok(_) => self.err(path, "must be an absolute http:// or https:// URL"),
            Err(e) => self.err(path, format!("is not a valid URL: {e}")),
        }
    }

    fn json_templates(&mut self, path: &str, value: &Value, scope: &Scope<'_>) {
        let mut templates = Vec::new();
        super::visit_json(path, value, &mut |field, template| {
            templates.push((field.to_owned(), template.to_owned()));
        });
        for (field, template) in &templates {
            self.template(field, template, scope);
        }
    }

    /// Checks a template's syntax and the names it uses; returns whether it
    /// is valid.
    fn template(&mut self, path: &str, template: &str, scope: &Scope<'_>) -> bool {
        let refs = match self.renderer.references(template) {
            Ok(refs) => refs,
            Err(e) => {
                self.err(path, format!("template error: {e}"));
                return false;
            }
        };
        let before = self.errors.len();
        for r in refs {
            if let Err(message) = check_reference(&r, scope) {
                self.err(path, message);
            }
        }
        self.errors.len() == before
    }
}

/// Replaces every `<<...>>` with `with`, for a structural URL probe.
fn replace_placeholders(template: &str, with: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("<<") {
        out.push_str(&rest[..start]);
        match rest[start..].find(">>") {
            Some(end) => {
                out.push_str(with);
                rest = &rest[start + end + 2..];
            }
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_step_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Credential names: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}` (the same rule as
/// the `workspace_api_credentials_name_format` CHECK).
pub fn is_credential_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> Value {
        json!({
            "name": "Create contact",
            "steps": [
                {"name": "create", "method": "POST", "url": "https://api.example.com/contacts",
                 "body": {"type": "json", "content": {"email": "<<input.email>>"}},
                 "extract": {"id": "$.id"}},
                {"name": "notify", "method": "GET",
                 "url": "https://api.example.com/contacts/<<steps.create.extract.id>>",
                 "auth": {"type": "bearer", "credential": "crm"}}
            ],
            "output": {"id": "<<steps.create.extract.id>>"}
        })
    }

    fn errors_of(json: Value) -> Vec<(String, String)> {
        match parse_and_validate(&json) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    /// `base` with `value` set at `pointer` (the parent must exist).
    fn with(mut base: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        match base.pointer_mut(parent).expect("parent exists") {
            Value::Object(map) => {
                map.insert(key.to_owned(), value);
            }
            Value::Array(items) => items[key.parse::<usize>().expect("index")] = value,
            _ => panic!("{parent} is not a container"),
        }
        base
    }

    #[test]
    fn accepts_a_valid_connector_with_defaults() {
        let c = parse_and_validate(&valid()).expect("valid");
        assert_eq!(c.timeout_ms, crate::connector::DEFAULT_RUN_TIMEOUT_MS);
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.steps[0].timeout_ms, 30_000);
        assert!(c.steps[0].accepts(201));
        assert!(!c.steps[0].accepts(404));
    }

    #[test]
    fn rejections_name_the_offending_field() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                with(valid(), "/steps/0/bogus", json!(1)),
                "steps[0]",
                "unknown field `bogus`",
            ),
            (
                with(valid(), "/steps/1/name", json!("create")),
                "steps[1].name",
                "duplicate step name",
            ),
            (
                with(valid(), "/steps/0/name", json!("Bad-Name")),
                "steps[0].name",
                "[a-z0-9_]",
            ),
            (
                with(valid(), "/steps/0/url", json!("not a url")),
                "steps[0].url",
                "not a valid URL",
            ),
            (
                with(valid(), "/steps/0/url", json!("ftp://x.example/a")),
                "steps[0].url",
                "absolute http",
            ),
            (
                with(valid(), "/steps/0/extract/id", json!("$[?@.a ==")),
                "steps[0].extract.id",
                "",
            ),
            (
                with(
                    valid(),
                    "/steps/0/body/content/email",
                    json!("<<input.email"),
                ),
                "steps[0].body.content.email",
                "template error",
            ),
            (
                with(
                    valid(),
                    "/steps/0/url",
                    json!("https://x.example/<<steps.notify.status>>"),
                ),
                "steps[0].url",
                "does not name an earlier step",
            ),
            (
                with(valid(), "/output/id", json!("<<steps.nope.body>>")),
                "output.id",
                "does not name a step",
            ),
            (
                with(
                    valid(),
                    "/steps/1/headers",
                    json!({"X-Id": "<<secrets.x>>"}),
                ),
                "steps[1].headers.X-Id",
                "unknown name `secrets`",
            ),
            (
                with(valid(), "/steps/1/headers", json!({"bad header": "x"})),
                "steps[1].headers.bad header",
                "header name",
            ),
            (
                with(valid(), "/steps/0/expect", json!([200, 99])),
                "steps[0].expect[1]",
                "status code",
            ),
            (
                with(valid(), "/steps/0/timeout_ms", json!(0)),
                "steps[0].timeout_ms",
                "between",
            ),
            (
                with(valid(), "/retry", json!({"max_attempts": 0})),
                "retry.max_attempts",
                "between",
            ),
            (
                with(valid(), "/retry", json!({"max_delay_ms": 86_400_001})),
                "retry.max_delay_ms",
                "at most 86400000",
            ),
            (
                with(valid(), "/steps/1/auth/credential", json!("-bad")),
                "steps[1].auth.credential",
                "characters",
            ),
            (
                with(valid(), "/steps/0/method", json!("FETCH")),
                "steps[0].method",
                "unknown variant",
            ),
            (
                with(valid(), "/steps", json!([])),
                "steps",
                "at least one step",
            ),
            (
                with(
                    valid(),
                    "/steps/0/body",
                    json!({"type": "yaml", "content": ""}),
                ),
                "steps[0].body",
                "unknown variant",
            ),
            (
                with(valid(), "/input_schema", json!({"type": 12})),
                "input_schema",
                "JSON Schema",
            ),
        ];
        for (json, path, message) in cases {
            let errors = errors_of(json);
            assert!(
                errors
                    .iter()
                    .any(|(p, m)| p.starts_with(path) && m.contains(message)),
                "expected an error at {path} containing {message:?}, got {errors:?}"
            );
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        let json = with(
            with(valid(), "/steps/0/timeout_ms", json!(0)),
            "/steps/1/url",
            json!("https://x.example/<<nope.x>>"),
        );
        assert_eq!(errors_of(json).len(), 2);
    }

    #[test]
    fn url_starting_with_a_setting_waits_for_run_time() {
        let json = with(
            valid(),
            "/steps/0/url",
            json!("<<settings.base_url>>/contacts"),
        );
        assert!(errors_of(json).is_empty());
    }

    #[test]
    fn framing_and_hop_by_hop_headers_are_refused_with_their_path() {
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "TE",
            "Upgrade",
        ] {
            let json = with(valid(), "/steps/1/headers", json!({name: "x"}));
            assert_eq!(
                errors_of(json),
                vec![(
                    format!("steps[1].headers.{name}"),
                    FORBIDDEN_HEADER.to_owned()
                )],
                "{name}"
            );
        }
        let auth = json!({"type": "api_key", "credential": "crm", "in": "header", "name": "Host"});
        assert_eq!(
            errors_of(with(valid(), "/steps/1/auth", auth)),
            vec![("steps[1].auth.name".to_owned(), FORBIDDEN_HEADER.to_owned())]
        );
        // Ordinary headers, and a query parameter called `host`, are fine.
        let json = with(
            valid(),
            "/steps/1/headers",
            json!({"X-Host": "x", "Content-Type": "a/b"}),
        );
        assert_eq!(errors_of(json), vec![]);
        let auth = json!({"type": "api_key", "credential": "crm", "in": "query", "name": "host"});
        assert_eq!(errors_of(with(valid(), "/steps/1/auth", auth)), vec![]);
    }

    #[test]
    fn url_rules() {
        let cases = [
            ("https://api.example.com/a?b=<<input.c>>#d", None),
            ("http://127.0.0.1:8080/<<input.c>>", None),
            ("https://<<settings.host>>/v1", None),
            ("<<settings.base_url>>", None),
            ("  <<settings.base_url>>/x", None),
            (
                "ftp://x.example/a",
                Some("must be an absolute http:// or https:// URL"),
            ),
            (
                "mailto:a@example.com",
                Some("must be an absolute http:// or https:// URL"),
            ),
            (
                "https://x.example:99999/",
                Some("is not a valid URL: invalid port number"),
            ),
            (
                "/relative/<<input.c>>",
                Some("is not a valid URL: relative URL without a base"),
            ),
            ("https://x.example/<<input.c", Some("template error")),
        ];
        for (url, want) in cases {
            let errors = errors_of(with(valid(), "/steps/0/url", json!(url)));
            match want {
                None => assert_eq!(errors, vec![], "{url}"),
                Some(message) => assert!(
                    errors.len() == 1
                        && errors[0].0 == "steps[0].url"
                        && errors[0].1.starts_with(message),
                    "{url}: {errors:?}"
                ),
            }
        }
    }

    #[test]
    fn url_probe_replaces_each_placeholder_and_keeps_the_rest() {
        for (template, want) in [
            ("", ""),
            ("<<a>>", "x"),
            ("https://h/<<a>>/b<<c.d>>e", "https://h/x/bxe"),
            ("<<a>><<b>>", "xx"),
            ("a>>b<<c>>", "a>>bx"),
            ("a<<b", "a<<b"),
            ("a<<b>>c<<d", "axc<<d"),
        ] {
            assert_eq!(replace_placeholders(template, "x"), want, "{template}");
        }
    }

    #[test]
    fn step_limits_are_inclusive() {
        let ok = [
            ("/steps/0/timeout_ms", json!(1)),
            ("/steps/0/timeout_ms", json!(MAX_STEP_TIMEOUT_MS)),
            ("/steps/0/expect", json!([100, 599])),
            ("/steps/0/extract", json!({"A_1": "$.a"})),
            (
                "/steps/0/body",
                json!({"type": "raw", "content": "x", "content_type": "text/plain"}),
            ),
        ];
        for (pointer, value) in ok {
            assert_eq!(
                errors_of(with(valid(), pointer, value.clone())),
                vec![],
                "{pointer} {value}"
            );
        }
        let bad = [
            (
                "/steps/0/timeout_ms",
                json!(MAX_STEP_TIMEOUT_MS + 1),
                "steps[0].timeout_ms",
            ),
            ("/steps/0/expect", json!([600]), "steps[0].expect[0]"),
            (
                "/steps/0/extract",
                json!({"a-b": "$.a"}),
                "steps[0].extract.a-b",
            ),
            (
                "/steps/0/body",
                json!({"type": "raw", "content": "x", "content_type": " "}),
                "steps[0].body.content_type",
            ),
            (
                "/steps/0/body",
                json!({"type": "raw", "content": "x", "content_type": "a\nb"}),
                "steps[0].body.content_type",
            ),
        ];
        for (pointer, value, path) in bad {
            let errors = errors_of(with(valid(), pointer, value.clone()));
            assert_eq!(errors.len(), 1, "{pointer} {value}: {errors:?}");
            assert_eq!(errors[0].0, path, "{pointer} {value}");
        }
    }

    #[test]
    fn credential_names_follow_the_table_rule() {
        for ok in ["crm", "slack.bot", "a-b_c", "_x", "A1"] {
            assert!(is_credential_name(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(!is_credential_name(bad), "{bad}");
        }
    }
}
