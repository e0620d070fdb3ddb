//! The connector definition: what a workspace saves and an execution runs.
//!
//! A connector is JSON. Deserialisation is strict (unknown keys are
//! rejected) and [`validate`] checks everything a save must refuse, each
//! problem with the JSON path of the offending field.

pub mod flow;
pub mod for_each;
mod language;
pub mod paging;
pub mod placement;
mod scope;
mod validate;
pub mod variant;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::extract::Extraction;

pub use validate::{
    ValidationError, ValidationErrors, is_credential_name, parse_and_validate, validate,
};
pub use variant::Variant;

/// Default whole-run deadline: 5 minutes.
pub const DEFAULT_RUN_TIMEOUT_MS: u64 = 300_000;
/// Default per-step timeout: 30 seconds.
pub const DEFAULT_STEP_TIMEOUT_MS: u64 = 30_000;

/// A connector definition (one immutable version of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    /// Human-readable name (up to 200 characters, not blank).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"\S",
        example = "Create contact and notify"
    )]
    pub name: String,
    /// What the connector does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// JSON Schema the execution input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = input_schema_schema)]
    pub input_schema: Option<Value>,
    /// The steps, run in order (1 to 100).
    #[schema(min_items = 1, max_items = 100)]
    pub steps: Vec<Step>,
    /// Template tree rendered at the end into the execution's output;
    /// without one, the output is every step's extracted fields by step name.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub output: Value,
    /// Retry policy for every step without its own.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Whole-run deadline in milliseconds (1 to 86,400,000; default 300,000).
    #[serde(default = "default_run_timeout")]
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub timeout_ms: u64,
    /// Values steps read as `<<settings.x>>` (a template's base URL, a
    /// default channel, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = std::collections::HashMap<String, Value>)]
    pub settings: serde_json::Map<String, Value>,
    /// Which workspace credential each credential name used by the steps
    /// stands for (`{"slack": "acme-slack-bot"}`); a name not listed is
    /// looked up as is. Lets an installed template keep its own names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credential_bindings: BTreeMap<String, String>,
    /// Where executions without their own `callback_url` report their
    /// final state (http or https, up to 2048 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048)]
    pub callback_url: Option<String>,
}

fn default_run_timeout() -> u64 {
    DEFAULT_RUN_TIMEOUT_MS
}

fn default_step_timeout() -> u64 {
    DEFAULT_STEP_TIMEOUT_MS
}

impl Connector {
    /// The credential names (auth and `<<credentials.x...>>`) and setting
    /// names (`<<settings.x>>`) the steps and output use, sorted.
    pub fn names_used(&self, renderer: &crate::template::Renderer) -> (Vec<String>, Vec<String>) {
        let mut credentials = std::collections::BTreeSet::new();
        let mut settings = std::collections::BTreeSet::new();
        let mut templates: Vec<String> = Vec::new();
        for step in &self.steps {
            if let Some(name) = step.auth.credential() {
                credentials.insert(name.to_owned());
            }
            step.visit_templates(&mut |_, t| templates.push(t.to_owned()));
            for v in &step.variants {
                credentials.insert(v.credential.clone());
                if let Some(name) = v.auth.as_ref().and_then(Auth::credential) {
                    credentials.insert(name.to_owned());
                }
                v.visit_templates("", &mut |_, t| templates.push(t.to_owned()));
            }
        }
        visit_json("output", &self.output, &mut |_, t| {
            templates.push(t.to_owned())
        });
        for template in &templates {
            for r in renderer.references(template).unwrap_or_default() {
                let mut parts = r.split('.');
                match (parts.next(), parts.next()) {
                    (Some("credentials"), Some(name)) => {
                        credentials.insert(name.to_owned());
                    }
                    (Some("settings"), Some(name)) => {
                        settings.insert(name.to_owned());
                    }
                    _ => {}
                }
            }
        }
        (
            credentials.into_iter().collect(),
            settings.into_iter().collect(),
        )
    }

    /// The workspace credential a step's credential name stands for.
    pub fn bound_credential<'a>(&'a self, name: &'a str) -> &'a str {
        self.credential_bindings
            .get(name)
            .map_or(name, String::as_str)
    }

    /// The retry policy that applies to `step`.
    pub fn retry_for<'a>(&'a self, step: &'a Step) -> &'a RetryPolicy {
        step.retry.as_ref().unwrap_or(&self.retry)
    }
}

/// How failed attempts of a step are retried. Delays grow as
/// `initial_delay_ms * multiplier^(attempt-1)`, capped at `max_delay_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts per step, the first one included (1 to 100).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: u32,
    /// Delay before the second attempt; at most `max_delay_ms`.
    #[schema(maximum = 86_400_000)]
    pub initial_delay_ms: u64,
    /// Upper bound for any delay (at most 86,400,000: a day, the longest
    /// run deadline).
    #[schema(maximum = 86_400_000)]
    pub max_delay_ms: u64,
    /// Growth factor between attempts (1 to 100).
    #[schema(minimum = 1, maximum = 100)]
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay_ms: 1_000,
            max_delay_ms: 60_000,
            multiplier: 2.0,
        }
    }
}

/// The kind of a step. Only HTTP exists today.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// One HTTP request.
    #[default]
    Http,
}

/// One HTTP call of a connector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the connector, `[a-z0-9_]+`; names the step in
    /// templates (`steps.<name>`).
    #[schema(pattern = "^[a-z0-9_]{1,64}$", example = "create")]
    pub name: String,
    /// The step kind (`http`, the default).
    #[serde(default)]
    pub kind: StepKind,
    /// HTTP method.
    pub method: Method,
    /// URL template; absolute `http://` or `https://` once rendered.
    #[schema(example = "https://api.example.com/contacts")]
    pub url: String,
    /// Header templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Query parameter templates, appended to the URL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// How the request authenticates.
    #[serde(default)]
    pub auth: Auth,
    /// Per-attempt timeout in milliseconds (1 to 900,000; default 30,000).
    #[serde(default = "default_step_timeout")]
    #[schema(minimum = 1, maximum = 900_000)]
    pub timeout_ms: u64,
    /// Accepted status codes (100 to 599); empty means any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = status_codes_schema)]
    pub expect: Vec<u16>,
    /// Response fields to extract: name (`[A-Za-z0-9_]{1,64}`) → JSONPath.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extract: BTreeMap<String, Extraction>,
    /// What a failure (after retries) does to the execution.
    #[serde(default)]
    pub on_error: OnError,
    /// Overrides the connector's retry policy for this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// At most `limit` sends of a key per `per_ms`, across every worker;
    /// over it the execution is parked until a send is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<flow::RateLimit>,
    /// At most `limit` requests of a key in flight at once, across every
    /// worker; when full the execution is parked until a slot frees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<flow::Concurrency>,
    /// How the step is sent when a credential is of other kinds (a
    /// static token here, OAuth there): the first variant whose credential
    /// is of one of its kinds replaces the step's `url`, `auth`, `headers`
    /// and `query` (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 8)]
    pub variants: Vec<Variant>,
    /// Pages through a list API: the step is sent once per page and its
    /// extracted fields accumulate (see `docs/connector-language.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paginate: Option<paging::Paginate>,
    /// A condition, one `<<expr>>` that must be `true` or `false`: when
    /// false the step is not sent and is recorded as `skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "<<input.plan == 'pro'>>")]
    pub when: Option<String>,
    /// Runs the step once per item of an array, one item after another,
    /// with `<<item>>` and `<<index>>` in scope; its extracted fields are
    /// collected into arrays (see `docs/connector-language.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<for_each::ForEach>,
}

impl Step {
    /// Calls `f(field, template)` for every template string of the step,
    /// `field` being its path inside the step (`url`, `headers.X-Id`,
    /// `body.content.user.email`; JSON object keys are templates too).
    pub fn visit_templates(&self, f: &mut impl FnMut(&str, &str)) {
        f("url", &self.url);
        for (name, value) in &self.headers {
            f(&format!("headers.{name}"), value);
        }
        for (name, value) in &self.query {
            f(&format!("query.{name}"), value);
        }
        match &self.body {
            None => {}
            Some(Body::Json { content }) => visit_json("body.content", content, f),
            Some(Body::Form { content }) => {
                for (name, value) in content {
                    f(&format!("body.content.{name}"), value);
                }
            }
            Some(Body::Xml { content } | Body::Raw { content, .. }) => f("body.content", content),
        }
    }

    /// Whether `status` is accepted by this step's `expect` list.
    pub fn accepts(&self, status: u16) -> bool {
        if self.expect.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect.contains(&status)
        }
    }
}

/// `input_schema` as validation accepts it: a JSON Schema is an object or a
/// boolean.
fn input_schema_schema() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::Object,
            Type::Boolean,
            Type::Null,
        ]))
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .examples([serde_json::json!({"type": "object", "required": ["email"]})])
}

/// `expect` as validation accepts it: HTTP status codes.
fn status_codes_schema() -> utoipa::openapi::schema::ArrayBuilder {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new().items(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(100))
            .maximum(Some(599)),
    )
}

/// Calls `f(path, template)` for every string (keys included) of a JSON
/// template tree.
pub fn visit_json(path: &str, value: &Value, f: &mut impl FnMut(&str, &str)) {
    match value {
        Value::String(s) => f(path, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                visit_json(&format!("{path}[{i}]"), item, f);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let child = format!("{path}.{k}");
                f(&child, k);
                visit_json(&child, item, f);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// HTTP methods a step may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
}

impl Method {
    /// The method as the HTTP client spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
        }
    }
}

/// A request body. Strings inside are templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    /// Any JSON; a string leaf that is exactly one `<<expr>>` keeps the
    /// value's JSON type.
    Json {
        /// The JSON template tree.
        content: Value,
    },
    /// `application/x-www-form-urlencoded` fields.
    Form {
        /// Field templates.
        content: BTreeMap<String, String>,
    },
    /// An XML document; substituted values are XML-escaped.
    Xml {
        /// The XML template.
        content: String,
    },
    /// Any text with its content type.
    Raw {
        /// The body template.
        content: String,
        /// The `Content-Type` header sent.
        content_type: String,
    },
}

/// How a step authenticates, naming a stored credential of the workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// `Authorization: Bearer <token>` from the credential's `token` field.
    Bearer {
        /// Credential name.
        #[schema(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
        credential: String,
    },
    /// An API key (the credential's `key` field) in a header or query
    /// parameter named `name`.
    ApiKey {
        /// Credential name.
        #[schema(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
        credential: String,
        /// Where the key goes.
        #[serde(rename = "in")]
        location: ApiKeyLocation,
        /// Header or query parameter name.
        name: String,
    },
    /// HTTP basic auth from the credential's `username` and `password`.
    Basic {
        /// Credential name.
        #[schema(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
        credential: String,
    },
    /// `Authorization: Bearer <access token>` of an OAuth2 or Nango
    /// credential, renewed before it expires and once after a 401.
    #[serde(rename = "oauth2")]
    #[schema(rename = "oauth2")]
    OAuth2 {
        /// Credential name.
        #[schema(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
        credential: String,
        /// The `Authorization` scheme before the token: `Bearer` when
        /// absent, `Zoho-oauthtoken` for Zoho; empty sends the bare token
        /// (monday.com).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(pattern = "^[A-Za-z0-9._~+/-]{0,64}$", example = "Zoho-oauthtoken")]
        scheme: Option<String>,
    },
}

impl Auth {
    /// The credential field a bearer kind sends, given the credential's
    /// fields: an OAuth credential's `access_token` (also under `bearer`,
    /// so a template's bearer step accepts an OAuth credential), else
    /// `token`.
    pub fn bearer_field(&self, fields: Option<&BTreeMap<String, String>>) -> &'static str {
        let oauth_fields =
            fields.is_some_and(|f| !f.contains_key("token") && f.contains_key("access_token"));
        if matches!(self, Auth::OAuth2 { .. }) || oauth_fields {
            "access_token"
        } else {
            "token"
        }
    }

    /// What precedes the token in the `Authorization` header of a bearer
    /// kind: `Bearer `, an `oauth2` auth's own `scheme` and a space, or
    /// nothing for an empty scheme.
    pub fn token_prefix(&self) -> String {
        match self {
            Auth::OAuth2 {
                scheme: Some(scheme),
                ..
            } if scheme.is_empty() => String::new(),
            Auth::OAuth2 {
                scheme: Some(scheme),
                ..
            } => format!("{scheme} "),
            _ => "Bearer ".to_owned(),
        }
    }

    /// Why an `oauth2` auth's `scheme` is refused, if it is: it must be
    /// up to 64 characters of `[A-Za-z0-9._~+/-]` (a header token).
    pub(crate) fn scheme_problem(&self) -> Option<&'static str> {
        let Auth::OAuth2 {
            scheme: Some(scheme),
            ..
        } = self
        else {
            return None;
        };
        let token = |b: u8| b.is_ascii_alphanumeric() || b"._~+/-".contains(&b);
        (scheme.len() > 64 || !scheme.bytes().all(token))
            .then_some("must be up to 64 characters of [A-Za-z0-9._~+/-]")
    }

    /// The credential this auth uses, if any.
    pub fn credential(&self) -> Option<&str> {
        match self {
            Auth::None => None,
            Auth::Bearer { credential }
            | Auth::ApiKey { credential, .. }
            | Auth::Basic { credential }
            | Auth::OAuth2 { credential, .. } => Some(credential),
        }
    }
}

/// Where an API key is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyLocation {
    /// A request header.
    Header,
    /// A query parameter.
    Query,
}

/// What a step failure does to the execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The execution fails.
    #[default]
    Fail,
    /// The failure is recorded and the next step runs.
    Continue,
}
