//! The step client: renders a step against the execution context,
//! sends it, and maps the outcome to a [`StepResult`] whose error, if any,
//! says whether a retry may help ([`Retry`]).
//!
//! Secrets (every credential field value, and auth headers whole) are
//! redacted from everything the result holds, so it can be stored and
//! shown as is.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::connector::{ApiKeyLocation, Auth, Body, Step};
use crate::net::{self, GuardedResolver, PrivateNetworkRefused};
use crate::oauth::token::{TOKEN_TIMEOUT, TokenClient};
use crate::redact::{Credentials, Redactor};
use crate::template::{Dest, Renderer};

mod body;
mod form;
mod status;

pub use form::MAX_FORM_DEPTH;
pub use status::retry_after;
use status::status_error;

/// Settings of the step client.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Allow loopback, private, link-local and metadata destinations.
    pub allow_private_networks: bool,
    /// Largest response body read; a larger one fails the step.
    pub max_response_bytes: usize,
    /// Largest reckoned memory of a parsed JSON response body (its bytes
    /// plus 64 per value); a larger one fails the step
    /// (`parsed_body_too_large`) before it is parsed.
    pub max_parsed_body_bytes: usize,
    /// Largest rendered request of a step: URL, header values and body
    /// together; a larger one fails the step (`render`) unsent.
    pub max_request_bytes: usize,
    /// Largest response body stored (and kept in the context); larger ones
    /// are truncated with a marker and their original size.
    pub max_stored_body_bytes: usize,
    /// The `User-Agent` sent.
    pub user_agent: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            max_response_bytes: 10 * 1024 * 1024,
            max_parsed_body_bytes: 64 * 1024 * 1024,
            max_request_bytes: 8 * 1024 * 1024,
            max_stored_body_bytes: 64 * 1024,
            user_agent: concat!("conveyor/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Whether and when a failed step may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after the policy's backoff (connect error, timeout, 408,
    /// 429, 5xx).
    Retryable,
    /// Try again, not before this delay (the server's `Retry-After`).
    RetryAfter(Duration),
    /// Retrying cannot help.
    Fatal,
}

/// Why a step failed, by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepErrorKind {
    /// The connection could not be made.
    Connect,
    /// No complete response within the step's timeout.
    Timeout,
    /// The response status is not accepted by `expect`.
    HttpStatus,
    /// A template could not be rendered.
    Render,
    /// A required credential or credential field is missing.
    Credential,
    /// The destination is a refused (private) address, or the step sets a
    /// header the outbound policy refuses (`Host`, hop-by-hop headers).
    NetworkPolicy,
    /// The response body exceeds the configured maximum.
    ResponseTooLarge,
    /// The parsed form of the JSON response body would exceed the
    /// configured maximum.
    ParsedBodyTooLarge,
    /// A required extracted field is absent.
    Extract,
    /// The request failed while in flight for another reason.
    Transport,
    /// The OAuth provider revoked the grant (`invalid_grant`): the
    /// credential needs to be connected again.
    CredentialRevoked,
    /// The OAuth token endpoint (or Nango) failed: retried for 5xx and
    /// timeouts, not for a refusal.
    TokenEndpoint,
    /// A paginated step's page says where the next page is in a way that
    /// cannot be followed (a cursor that is not text, a next link to
    /// another origin).
    Paging,
    /// A `for_each` step's items cannot be looped over: the template does
    /// not render to an array, or the array is longer than `max_items`.
    ForEach,
    /// A form field's object or array value cannot be sent in the bracket
    /// encoding: it nests deeper than [`MAX_FORM_DEPTH`], or an object key
    /// is empty or contains `[` or `]`.
    FormEncoding,
}

/// A failed step attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepError {
    /// The cause.
    pub kind: StepErrorKind,
    /// What happened, naming the step's field or path; never a secret.
    pub message: String,
    /// Whether a retry may help.
    #[serde(skip)]
    pub retry: Retry,
}

impl StepError {
    fn fatal(kind: StepErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry: Retry::Fatal,
        }
    }

    fn retryable(kind: StepErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry: Retry::Retryable,
        }
    }
}

/// The stored view of a response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseRecord {
    /// HTTP status code.
    pub status: u16,
    /// Headers, lower-case names; repeated headers joined by `, `.
    pub headers: Map<String, Value>,
    /// Parsed JSON when the body is JSON, else text; truncated beyond the
    /// configured size as `{"truncated": true, "original_size": N,
    /// "preview": "..."}`.
    pub body: Value,
}

/// The outcome of one attempt of one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepResult {
    /// Redacted request snapshot: method, url, headers, body.
    pub request: Value,
    /// The response, when one arrived.
    pub response: Option<ResponseRecord>,
    /// Extracted fields (empty on failure).
    pub extracted: Map<String, Value>,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// Wall time of the attempt.
    pub duration_ms: u64,
    /// Set when the attempt failed.
    pub error: Option<StepError>,
    /// Body bytes sent and received.
    pub traffic: Traffic,
}

/// Body bytes of one attempt, for usage metering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Request body bytes sent (0 when nothing was sent).
    pub sent: u64,
    /// Response body bytes received (as read, up to the response cap).
    pub received: u64,
}

impl StepResult {
    /// The step's entry in the context: `steps.<name>` =
    /// `{status, headers, body, extract}`.
    pub fn context_entry(&self) -> Value {
        let (status, headers, body) = match &self.response {
            Some(r) => (
                json!(r.status),
                Value::Object(r.headers.clone()),
                r.body.clone(),
            ),
            None => (Value::Null, Value::Object(Map::new()), Value::Null),
        };
        json!({
            "status": status,
            "headers": headers,
            "body": body,
            "extract": Value::Object(self.extracted.clone()),
        })
    }
}

/// The `Idempotency-Key` sent with a step attempt: stable across a crash
/// and re-send of the same attempt, different for a retry.
pub fn idempotency_key(execution_id: uuid::Uuid, step: &str, attempt: u32) -> String {
    format!("{execution_id}:{step}:{attempt}")
}

/// Per-attempt settings of a step request.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The `Idempotency-Key` sent (see [`idempotency_key`]).
    pub idempotency_key: &'a str,
    /// Bounds the whole attempt.
    pub timeout: Duration,
    /// The W3C `traceparent` to send, if tracing.
    pub traceparent: Option<&'a str>,
    /// Whether the context is at most [`INLINE_WORK_BYTES`] of JSON
    /// ([`crate::json::within`]), so that rendering runs in place; the
    /// runner already knows it for its own decision.
    pub small_context: bool,
}

/// Sends connector steps. Cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct StepClient {
    client: reqwest::Client,
    config: Arc<HttpConfig>,
    renderer: Arc<Renderer>,
    tokens: TokenClient,
}

/// A rendered request, ready to send, with its redacted snapshot.
struct Prepared {
    request: reqwest::Request,
    snapshot: Value,
}

impl StepClient {
    /// Builds the client: rustls, no proxies from the environment (they
    /// would bypass the address policy), redirects checked against it.
    ///
    /// # Errors
    ///
    /// When the TLS backend cannot be initialised.
    pub fn new(config: HttpConfig) -> Result<Self, reqwest::Error> {
        let allow_private = config.allow_private_networks;
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            if !allow_private
                && let Some(host) = attempt.url().host()
                && let Err(e) = net::check_host(&host)
            {
                return attempt.error(e);
            }
            // Credentials may sit in any header or the query, and reqwest
            // strips only a few well-known headers across origins: never
            // follow to another origin. The 3xx becomes the step's
            // response, judged by `expect`.
            if attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() != attempt.url().origin())
            {
                return attempt.stop();
            }
            attempt.follow()
        });
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .referer(false)
            .redirect(redirect)
            .user_agent(config.user_agent.clone());
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self {
            client: builder.build()?,
            tokens: TokenClient::new(allow_private, TOKEN_TIMEOUT)?,
            config: Arc::new(config),
            renderer: Arc::new(Renderer::new()),
        })
    }

    /// The OAuth token client, under the same address policy.
    pub fn tokens(&self) -> &TokenClient {
        &self.tokens
    }

    /// The template renderer this client uses.
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// Renders and sends one attempt of `step`. `context` holds `input`,
    /// `steps`, `execution`, `connector`, `workspace` and `settings`;
    /// credentials join it only here, at send time. `timeout` bounds the
    /// whole attempt (the step's own timeout, or less near the run deadline).
    pub async fn run(
        &self,
        step: &Step,
        context: &Value,
        credentials: &Credentials,
        idempotency_key: &str,
        timeout: Duration,
    ) -> StepResult {
        let attempt = Attempt {
            idempotency_key,
            timeout,
            traceparent: None,
            small_context: crate::json::within(context, INLINE_WORK_BYTES),
        };
        self.run_attempt(step, context, credentials, &attempt).await
    }

    /// [`StepClient::run`] with every per-attempt setting, including the
    /// `traceparent` header to send (unless the step sets its own).
    pub async fn run_attempt(
        &self,
        step: &Step,
        context: &Value,
        credentials: &Credentials,
        attempt: &Attempt<'_>,
    ) -> StepResult {
        let started_at = Utc::now();
        let clock = Instant::now();
        let finish = |request: Value,
                      response: Option<ResponseRecord>,
                      extracted: Map<String, Value>,
                      error: Option<StepError>,
                      traffic: Traffic| StepResult {
            request,
            response,
            extracted,
            started_at,
            duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
            error,
            traffic,
        };
        let redactor = Arc::new(Redactor::new(credentials));
        // Rendering walks the context and every template of the step, and
        // parsing and extraction walk the whole body: on a large context
        // or body they run on the blocking pool, so the async threads (and
        // the lease heartbeat beside this future) never wait for them. On
        // small ones they run here (see `INLINE_WORK_BYTES`).
        let prepared = if attempt.small_context {
            Ok(self.prepare(step, context.clone(), credentials, attempt, &redactor))
        } else {
            let (this, step, redactor) = (self.clone(), Arc::new(step.clone()), redactor.clone());
            let (context, credentials) = (context.clone(), credentials.clone());
            let key = attempt.idempotency_key.to_owned();
            let traceparent = attempt.traceparent.map(str::to_owned);
            let timeout = attempt.timeout;
            off_thread(move || {
                let attempt = Attempt {
                    idempotency_key: &key,
                    timeout,
                    traceparent: traceparent.as_deref(),
                    small_context: false,
                };
                this.prepare(&step, context, &credentials, &attempt, &redactor)
            })
            .await
        };
        let prepared = match prepared {
            Ok(Ok(p)) => p,
            Ok(Err((snapshot, e))) => {
                return finish(snapshot, None, Map::new(), Some(e), Traffic::default());
            }
            Err(e) => {
                let snapshot = json!({"method": step.method.as_str(), "url": Value::Null});
                return finish(snapshot, None, Map::new(), Some(e), Traffic::default());
            }
        };
        let snapshot = prepared.snapshot;
        let sent = prepared
            .request
            .body()
            .and_then(reqwest::Body::as_bytes)
            .map_or(0, |b| b.len() as u64);
        let mut traffic = Traffic { sent, received: 0 };
        let response = match self.client.execute(prepared.request).await {
            Ok(r) => r,
            Err(e) => {
                let error = Some(classify_send_error(&e));
                return finish(snapshot, None, Map::new(), error, traffic);
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = match body::read_limited(response, self.config.max_response_bytes).await {
            Ok(b) => b,
            Err(e) => return finish(snapshot, None, Map::new(), Some(e), traffic),
        };
        traffic.received = bytes.len() as u64;
        let handled = if bytes.len() <= INLINE_WORK_BYTES {
            let config = &self.config;
            Ok(body::handle_response(
                config, step, &redactor, status, &headers, bytes,
            ))
        } else {
            let (config, step) = (self.config.clone(), Arc::new(step.clone()));
            off_thread(move || {
                body::handle_response(&config, &step, &redactor, status, &headers, bytes)
            })
            .await
        };
        match handled {
            Ok((record, extracted, error)) => {
                finish(snapshot, Some(record), extracted, error, traffic)
            }
            Err(e) => finish(snapshot, None, Map::new(), Some(e), traffic),
        }
    }

    fn prepare(
        &self,
        step: &Step,
        mut context: Value,
        credentials: &Credentials,
        attempt: &Attempt<'_>,
        redactor: &Redactor,
    ) -> Result<Prepared, (Value, StepError)> {
        let mut snapshot = json!({"method": step.method.as_str(), "url": Value::Null});
        let fail = |snapshot: &Value, e: StepError| (snapshot.clone(), e);
        if let Value::Object(map) = &mut context {
            let named: std::collections::BTreeMap<_, _> = credentials
                .iter()
                .filter(|(name, _)| name.as_str() != crate::redact::SECRET_EXTRACTS)
                .collect();
            map.insert(
                "credentials".to_owned(),
                serde_json::to_value(named).unwrap_or(Value::Null),
            );
        }
        // Converted once per step, shared by every template of the step.
        let ctx = crate::template::Context::new(&context);
        // Every rendered value counts towards one cap for the whole request.
        let rendered = std::cell::Cell::new(0usize);
        let count = |field: &str, len: usize| {
            rendered.set(rendered.get().saturating_add(len));
            if rendered.get() > self.config.max_request_bytes {
                return Err(StepError::fatal(
                    StepErrorKind::Render,
                    format!(
                        "{field}: the rendered request exceeds {} bytes",
                        self.config.max_request_bytes
                    ),
                ));
            }
            Ok(())
        };
        let render = |field: &str, template: &str, dest: Dest| {
            let text = self
                .renderer
                .render_str_in(template, &ctx, dest)
                .map_err(|e| StepError::fatal(StepErrorKind::Render, format!("{field}: {e}")))?;
            count(field, text.len())?;
            Ok(text)
        };
        // A value whose lone placeholder renders to null is left out.
        let optional = |field: &str, template: &str, dest: Dest| {
            let text = self
                .renderer
                .render_optional_in(template, &ctx, dest)
                .map_err(|e| StepError::fatal(StepErrorKind::Render, format!("{field}: {e}")))?;
            count(field, text.as_ref().map_or(0, String::len))?;
            Ok(text)
        };

        // Definitions saved before the placement rules are held to them too.
        if let Some(p) = crate::connector::placement::step_problems(&self.renderer, "step", step)
            .into_iter()
            .next()
        {
            let e = StepError::fatal(StepErrorKind::Credential, p.to_string());
            return Err(fail(&snapshot, e));
        }
        let url_text = render("url", &step.url, Dest::Url).map_err(|e| fail(&snapshot, e))?;
        let mut url = url::Url::parse(&url_text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                fail(
                    &snapshot,
                    StepError::fatal(
                        StepErrorKind::Render,
                        "url: the rendered URL is not an absolute http(s) URL",
                    ),
                )
            })?;
        for (name, template) in &step.query {
            let value = optional(&format!("query.{name}"), template, Dest::Text)
                .map_err(|e| fail(&snapshot, e))?;
            if let Some(value) = value {
                url.query_pairs_mut().append_pair(name, &value);
            }
        }

        let mut headers = HeaderMap::new();
        let mut secret_headers: Vec<HeaderName> = vec![AUTHORIZATION];
        match &step.auth {
            Auth::None => {}
            Auth::Bearer { credential } | Auth::OAuth2 { credential, .. } => {
                let field = step.auth.bearer_field(credentials.get(credential));
                let token =
                    secret_field(credentials, credential, field).map_err(|e| fail(&snapshot, e))?;
                let value = format!("{}{token}", step.auth.token_prefix());
                insert_header(&mut headers, AUTHORIZATION, &value, "auth")
                    .map_err(|e| fail(&snapshot, e))?;
            }
            Auth::Basic { credential } => {
                let user = secret_field(credentials, credential, "username")
                    .map_err(|e| fail(&snapshot, e))?;
                let pass = secret_field(credentials, credential, "password")
                    .map_err(|e| fail(&snapshot, e))?;
                use base64::Engine as _;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                insert_header(
                    &mut headers,
                    AUTHORIZATION,
                    &format!("Basic {encoded}"),
                    "auth",
                )
                .map_err(|e| fail(&snapshot, e))?;
            }
            Auth::ApiKey {
                credential,
                location,
                name,
            } => {
                let key =
                    secret_field(credentials, credential, "key").map_err(|e| fail(&snapshot, e))?;
                match location {
                    ApiKeyLocation::Query => {
                        url.query_pairs_mut().append_pair(name, key);
                    }
                    ApiKeyLocation::Header => {
                        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                            fail(
                                &snapshot,
                                StepError::fatal(
                                    StepErrorKind::Render,
                                    "auth.name: not a valid header name",
                                ),
                            )
                        })?;
                        refuse_forbidden_header(name, "auth.name")
                            .map_err(|e| fail(&snapshot, e))?;
                        insert_header(&mut headers, header.clone(), key, "auth")
                            .map_err(|e| fail(&snapshot, e))?;
                        secret_headers.push(header);
                    }
                }
            }
        }
        if !self.config.allow_private_networks
            && let Some(host) = url.host()
            && let Err(e) = net::check_host(&host)
        {
            return Err(fail(
                &snapshot,
                StepError::fatal(StepErrorKind::NetworkPolicy, e.to_string()),
            ));
        }
        snapshot["url"] = Value::String(redactor.text(url.as_str()));

        for (name, template) in &step.headers {
            let field = format!("headers.{name}");
            let value = optional(&field, template, Dest::Header).map_err(|e| fail(&snapshot, e))?;
            let Some(value) = value else {
                continue;
            };
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                fail(
                    &snapshot,
                    StepError::fatal(
                        StepErrorKind::Render,
                        format!("{field}: not a valid header name"),
                    ),
                )
            })?;
            refuse_forbidden_header(name, &field).map_err(|e| fail(&snapshot, e))?;
            insert_header(&mut headers, header, &value, &field).map_err(|e| fail(&snapshot, e))?;
        }
        let idempotency = HeaderName::from_static("idempotency-key");
        if !headers.contains_key(&idempotency) {
            insert_header(
                &mut headers,
                idempotency,
                attempt.idempotency_key,
                "Idempotency-Key",
            )
            .map_err(|e| fail(&snapshot, e))?;
        }

        let traceparent = HeaderName::from_static("traceparent");
        if let Some(value) = attempt.traceparent
            && !headers.contains_key(&traceparent)
        {
            insert_header(&mut headers, traceparent, value, "traceparent")
                .map_err(|e| fail(&snapshot, e))?;
        }
        let (body, body_snapshot) = match &step.body {
            None => (None, Value::Null),
            Some(Body::Json { content }) => {
                let value = self.renderer.render_body_in(content, &ctx).map_err(|e| {
                    fail(
                        &snapshot,
                        StepError::fatal(StepErrorKind::Render, format!("body.content: {e}")),
                    )
                })?;
                let bytes = value.to_string().into_bytes();
                count("body.content", bytes.len()).map_err(|e| fail(&snapshot, e))?;
                set_default_content_type(&mut headers, "application/json");
                (Some(bytes), redactor.value(value))
            }
            Some(Body::Form { content }) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for (name, template) in content {
                    let field = format!("body.content.{name}");
                    let pairs = self
                        .renderer
                        .render_value_in(template, &ctx)
                        .map_err(|e| {
                            StepError::fatal(StepErrorKind::Render, format!("{field}: {e}"))
                        })
                        .and_then(|value| form::field_pairs(&field, name, &value))
                        .map_err(|e| fail(&snapshot, e))?;
                    for (key, value) in pairs {
                        count(&field, key.len() + value.len()).map_err(|e| fail(&snapshot, e))?;
                        form.append_pair(&key, &value);
                    }
                }
                let encoded = form.finish();
                set_default_content_type(&mut headers, "application/x-www-form-urlencoded");
                let shown = redactor.text(&encoded);
                (Some(encoded.into_bytes()), Value::String(shown))
            }
            Some(Body::Xml { content }) => {
                let text =
                    render("body.content", content, Dest::Xml).map_err(|e| fail(&snapshot, e))?;
                set_default_content_type(&mut headers, "application/xml");
                let shown = redactor.text(&text);
                (Some(text.into_bytes()), Value::String(shown))
            }
            Some(Body::Raw {
                content,
                content_type,
            }) => {
                let text =
                    render("body.content", content, Dest::Text).map_err(|e| fail(&snapshot, e))?;
                insert_header(
                    &mut headers,
                    CONTENT_TYPE,
                    content_type,
                    "body.content_type",
                )
                .map_err(|e| fail(&snapshot, e))?;
                let shown = redactor.text(&text);
                (Some(text.into_bytes()), Value::String(shown))
            }
        };
        snapshot["headers"] = Value::Object(redactor.headers(&headers, &secret_headers));
        snapshot["body"] = body_snapshot;

        let method = reqwest::Method::from_bytes(step.method.as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let mut builder = self
            .client
            .request(method, url)
            .headers(headers)
            .timeout(attempt.timeout);
        if let Some(body) = body {
            builder = builder.body(body);
        }
        let request = builder.build().map_err(|e| {
            fail(
                &snapshot,
                StepError::fatal(
                    StepErrorKind::Render,
                    format!("invalid request: {}", redactor.text(&e.to_string())),
                ),
            )
        })?;
        Ok(Prepared { request, snapshot })
    }
}

/// Bytes of context or response body up to which rendering, parsing and
/// extraction run on the async thread rather than on the blocking pool
/// (and the runner's decision and output rendering rather than in
/// `block_in_place`): for small inputs, the hand-off (waking a thread,
/// context switches each way, and copies of the step, context and
/// credentials to move there) cost more CPU than the work. With every
/// hand-off on the blocking pool, the workers spent 233 to 338 µs of CPU
/// per 1-step execution of the bench; with none, 181 and 182
/// (docs/performance.md). 64 KiB of JSON parses or renders in well under
/// a millisecond, so the other tasks of the thread wait no longer than
/// that.
pub const INLINE_WORK_BYTES: usize = 64 * 1024;

/// Runs CPU-bound work of an attempt on the blocking pool. A panic in it
/// resumes here; a runtime shutting down fails the attempt retryably.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StepError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StepError::retryable(
            StepErrorKind::Transport,
            "the worker is shutting down",
        )),
    }
}

fn secret_field<'a>(
    credentials: &'a Credentials,
    credential: &str,
    field: &str,
) -> Result<&'a str, StepError> {
    let fields = credentials.get(credential).ok_or_else(|| {
        StepError::fatal(
            StepErrorKind::Credential,
            format!("auth: credential `{credential}` does not exist in this workspace"),
        )
    })?;
    fields.get(field).map(String::as_str).ok_or_else(|| {
        StepError::fatal(
            StepErrorKind::Credential,
            format!("auth: credential `{credential}` has no field `{field}`"),
        )
    })
}

/// Refuses the headers a step may not set ([`net::FORBIDDEN_REQUEST_HEADERS`]);
/// the connector validator refuses them at save time already.
fn refuse_forbidden_header(name: &str, field: &str) -> Result<(), StepError> {
    if net::is_forbidden_request_header(name) {
        return Err(StepError::fatal(
            StepErrorKind::NetworkPolicy,
            format!("{field}: the header `{name}` may not be set by a step"),
        ));
    }
    Ok(())
}

fn insert_header(
    headers: &mut HeaderMap,
    name: HeaderName,
    value: &str,
    field: &str,
) -> Result<(), StepError> {
    let value = HeaderValue::from_str(value).map_err(|_| {
        StepError::fatal(
            StepErrorKind::Render,
            format!("{field}: the value is not a valid header value (control characters such as CR/LF are refused)"),
        )
    })?;
    headers.insert(name, value);
    Ok(())
}

fn set_default_content_type(headers: &mut HeaderMap, content_type: &'static str) {
    headers
        .entry(CONTENT_TYPE)
        .or_insert(HeaderValue::from_static(content_type));
}

fn classify_send_error(e: &reqwest::Error) -> StepError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<PrivateNetworkRefused>() {
            return StepError::fatal(StepErrorKind::NetworkPolicy, refused.to_string());
        }
        source = err.source();
    }
    // reqwest's own message names the URL, which may carry a credential in
    // its query: only the message of its source is kept.
    let text = match e.source() {
        Some(inner) => inner.to_string(),
        None => "request failed".to_owned(),
    };
    if e.is_timeout() {
        StepError::retryable(
            StepErrorKind::Timeout,
            "no response within the step timeout",
        )
    } else if e.is_connect() {
        StepError::retryable(StepErrorKind::Connect, format!("could not connect: {text}"))
    } else {
        StepError::retryable(StepErrorKind::Transport, format!("request failed: {text}"))
    }
}
