//! Conveyor's HTTP API: the axum front door under `/api/v1`, documented by
//! an OpenAPI document generated from the code (`/api/v1/openapi.json`,
//! readable at `/docs`). [`app`] builds the router for an [`AppState`];
//! `main.rs` reads settings, migrates and serves.
//!
//! Every route authenticates ([`auth::Caller`]) and scopes every query by
//! the caller's workspace: another workspace's objects answer 404.

pub mod auth;
pub mod console;
pub mod error;
pub mod events;
pub mod extract;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod schemas;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use conveyor_engine::batch;
use conveyor_engine::cache::{DEFAULT_CACHE_BYTES, DefinitionCache};
use conveyor_engine::connector::Connector;
use conveyor_engine::crypto::Keyring;
use conveyor_engine::start::Starter;
use conveyor_engine::store::executions::{self, Execute};
use conveyor_engine::store::history::ExecutionView;
use secrecy::SecretString;
use sqlx::PgPool;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::auth::{Authenticator, KeyCache};
use crate::error::ApiError;
use crate::events::EventHub;
use crate::ratelimit::{InvalidKeyGuard, RateLimiter, StreamSlots};

/// The default of `CONVEYOR_PUBLIC_URL`.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";

/// API settings (each from a `CONVEYOR_*` variable; see README.md).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Requests per second per workspace (`CONVEYOR_RATE_LIMIT_PER_SEC`;
    /// 0 disables).
    pub rate_limit_per_sec: u32,
    /// Largest request body (`CONVEYOR_MAX_REQUEST_BYTES`).
    pub max_request_bytes: usize,
    /// Allowed CORS origins (`CONVEYOR_CORS_ORIGINS`, comma-separated).
    pub cors_origins: Vec<HeaderValue>,
    /// Open event streams per workspace and API process
    /// (`CONVEYOR_MAX_STREAMS_PER_WORKSPACE`).
    pub max_streams_per_workspace: usize,
    /// Refuse user tokens whose user is not a member of the token's
    /// workspace (`CONVEYOR_REQUIRE_MEMBERSHIP`).
    pub require_membership: bool,
    /// The bearer token `/metrics` on the API's own port requires
    /// (`CONVEYOR_METRICS_TOKEN`); `None`: not served there (404), only on
    /// `CONVEYOR_METRICS_LISTEN`.
    pub metrics_token: Option<SecretString>,
    /// Where people reach this API (`CONVEYOR_PUBLIC_URL`): the OAuth
    /// redirect URI is this + `/api/v1/oauth/callback`.
    pub public_url: String,
    /// Token endpoints may be private addresses
    /// (`CONVEYOR_ALLOW_PRIVATE_NETWORKS`, as for steps).
    pub allow_private_networks: bool,
    /// Bytes of connector definitions (their stored JSON) kept parsed for
    /// single executes (`CONVEYOR_DEFINITION_CACHE_BYTES`, as for workers).
    pub definition_cache_bytes: u64,
    /// How long a looked-up API key is kept at most
    /// (`CONVEYOR_API_KEY_CACHE_SECS`; zero keeps none): see
    /// [`auth::KeyCache`].
    pub api_key_cache: Duration,
}

impl ApiConfig {
    /// The OAuth redirect URI to register with providers.
    pub fn oauth_redirect_uri(&self) -> String {
        format!(
            "{}/api/v1/oauth/callback",
            self.public_url.trim_end_matches('/')
        )
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_sec: 100,
            max_request_bytes: 4 * 1024 * 1024,
            cors_origins: Vec::new(),
            max_streams_per_workspace: 50,
            require_membership: false,
            metrics_token: None,
            public_url: DEFAULT_PUBLIC_URL.to_owned(),
            allow_private_networks: false,
            definition_cache_bytes: DEFAULT_CACHE_BYTES,
            api_key_cache: auth::DEFAULT_KEY_CACHE,
        }
    }
}

/// What every handler can reach, behind one reference count: the router
/// clones the state for every request, and so does each extractor and
/// middleware that takes it.
#[derive(Clone)]
pub struct AppState(Arc<StateParts>);

impl std::ops::Deref for AppState {
    type Target = StateParts;

    fn deref(&self) -> &StateParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct StateParts {
    /// The database.
    pub pool: PgPool,
    /// A connection of its own for `/readyz`, which answers whether the
    /// database is reachable and migrated even while every connection of
    /// `pool` is busy.
    pub probe: PgPool,
    /// Seals credentials.
    pub keyring: Arc<Keyring>,
    /// Verifies tokens.
    pub auth: Arc<Authenticator>,
    /// Per-workspace rate limits.
    pub limiter: Arc<RateLimiter>,
    /// Keeps floods of invalid API keys off the database.
    pub key_guard: Arc<InvalidKeyGuard>,
    /// The API keys looked up lately, while `events` listens.
    pub api_keys: Arc<KeyCache>,
    /// Open event streams by workspace.
    pub streams: Arc<StreamSlots>,
    /// Live execution updates for SSE subscribers.
    pub events: EventHub,
    /// The console connector list's statistics, briefly cached.
    pub console_stats: Arc<console::stats::StatsCache>,
    /// Starts executions (caches compiled input schemas).
    pub starter: Arc<Starter>,
    /// Groups concurrent single executes into one statement.
    pub executes: Executes,
    /// The latest version of each connector single executes started, by
    /// workspace and connector: possibly stale, so the enqueue checks it.
    pub live_connectors: Arc<DefinitionCache<LiveConnector, (String, Uuid)>>,
    /// Settings.
    pub config: Arc<ApiConfig>,
    /// Renders `/metrics` (the process-wide Prometheus recorder).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// Most single executes one statement enqueues.
const EXECUTE_GROUP_MAX: usize = 128;
/// Statements of grouped single executes in flight at once. One: each
/// statement's commit NOTIFYs idle workers, and PostgreSQL lets one
/// notifying transaction commit at a time (it holds its notify lock
/// through the commit's WAL flush), so further statements in flight only
/// wait for that lock with smaller groups, costing more per execute
/// (docs/performance.md, "The API's CPU per request"). They go through a
/// connection of their own, which plans them once
/// ([`executions::EnqueuePool`]).
const EXECUTE_GROUPS_IN_FLIGHT: usize = 1;

/// The handlers' side of single-execute grouping: a request sent here is
/// enqueued with whatever other single executes wait at that moment, in
/// one statement and one durable commit
/// ([`executions::enqueue_each_alone`]); its answer is its own.
pub type Executes = batch::Asker<Execute, conveyor_engine::Result<Grouped>>;

/// What became of a grouped single execute.
#[derive(Debug)]
pub enum Grouped {
    /// Enqueued: the execution as stored.
    Enqueued(Box<ExecutionView>),
    /// Nothing was written: its idempotency key exists, or its connector
    /// is not live at its version any more. The execute comes back, to be
    /// looked at again.
    Refused(Box<Execute>),
}

/// A connector's latest version as a single execute found it.
#[derive(Debug)]
pub struct LiveConnector {
    /// The version.
    pub version: i32,
    /// Its definition.
    pub definition: Connector,
}

impl AppState {
    /// State over `pool`, rendering `/metrics` with `metrics` when given.
    /// Spawns the task that groups single executes ([`Executes`]), so it
    /// must be called inside a Tokio runtime; that task ends once every
    /// clone of the state is dropped. Run `state.events.clone().listen(..)`
    /// beside it for live updates.
    pub fn new(
        pool: PgPool,
        keyring: Arc<Keyring>,
        auth: Authenticator,
        config: ApiConfig,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        let (executes, queue) = batch::queue(EXECUTE_GROUP_MAX * EXECUTE_GROUPS_IN_FLIGHT * 4);
        let group_pool = executions::EnqueuePool::new(&pool);
        tokio::spawn(batch::drain(
            queue,
            EXECUTE_GROUP_MAX,
            EXECUTE_GROUPS_IN_FLIGHT,
            move |group: Vec<Execute>| {
                let pool = group_pool.clone();
                async move {
                    metrics::histogram!("conveyor_api_execute_group_size")
                        .record(group.len() as f64);
                    let answers =
                        executions::enqueue_each_alone(&pool, &group, chrono::Utc::now()).await;
                    answers
                        .into_iter()
                        .zip(group)
                        .map(|(answer, execute)| {
                            answer.map(|view| match view {
                                Some(view) => Grouped::Enqueued(Box::new(view)),
                                None => Grouped::Refused(Box::new(execute)),
                            })
                        })
                        .collect::<Vec<_>>()
                }
            },
        ));
        let api_keys = Arc::new(KeyCache::new(config.api_key_cache));
        Self(Arc::new(StateParts {
            events: EventHub::new(api_keys.clone()),
            api_keys,
            console_stats: Arc::default(),
            starter: Arc::new(Starter::new()),
            executes,
            live_connectors: Arc::new(DefinitionCache::new(config.definition_cache_bytes)),
            probe: conveyor_engine::store::own_connection(&pool, "readiness"),
            pool,
            keyring,
            auth: Arc::new(auth),
            limiter: Arc::new(RateLimiter::new(config.rate_limit_per_sec)),
            key_guard: Arc::new(InvalidKeyGuard::new(config.rate_limit_per_sec)),
            streams: Arc::new(StreamSlots::default()),
            config: Arc::new(config),
            metrics,
        }))
    }
}

/// The API router with its middleware: request ids (`X-Request-Id` echoed
/// or generated), request tracing, CORS, and the request body limit.
pub fn app(state: AppState) -> Router {
    let (api, openapi) = openapi::split();
    let openapi = Arc::new(openapi);
    let request_id = HeaderName::from_static("x-request-id");
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(state.config.cors_origins.clone()))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            request_id.clone(),
        ])
        .max_age(Duration::from_secs(600));
    let trace = TraceLayer::new_for_http()
        .make_span_with(request_span)
        .on_response(
            |response: &axum::http::Response<_>, latency: Duration, span: &tracing::Span| {
                let status = response.status().as_u16();
                span.record("http.response.status_code", status);
                tracing::info!(
                    status,
                    latency_ms = latency.as_millis() as u64,
                    "request finished"
                );
            },
        );
    Router::new()
        .merge(api)
        .merge(openapi::docs_routes(openapi))
        // Last, so it reaches every API route: a method a route lacks is
        // answered in the error shape, with axum's `Allow` header.
        .method_not_allowed_fallback(method_not_allowed)
        .merge(routes::ops::router())
        .merge(routes::hooks::router())
        .merge(console::router(&state.config.public_url))
        .fallback(unrouted)
        .layer(axum::middleware::from_fn(http_metrics))
        .layer(DefaultBodyLimit::max(state.config.max_request_bytes))
        .layer(cors)
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unfit_request_id))
        .with_state(state)
}

/// Longest `X-Request-Id` a caller may give, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 200;

/// The request without its `X-Request-Id` unless it has exactly one of 1
/// to [`MAX_REQUEST_ID_BYTES`] visible ASCII characters, so that a fresh
/// one is generated in its place. A caller's id is echoed, logged and
/// stored in audit rows: an unbounded one would grow each of them, and
/// one beyond ASCII used to reach the log as empty and the audit row as
/// null.
async fn drop_unfit_request_id<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let mut ids = request.headers().get_all("x-request-id").iter();
    let fit = match (ids.next(), ids.next()) {
        (Some(id), None) => {
            let id = id.as_bytes();
            (1..=MAX_REQUEST_ID_BYTES).contains(&id.len())
                && id.iter().all(|b| b.is_ascii_graphic())
        }
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !fit {
        request.headers_mut().remove("x-request-id");
    }
    request
}

/// Whether `path` is the API's (`/api/...`), whose answers are JSON.
fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// A path no route has: 404 in the error shape under `/api`; elsewhere
/// (console pages, probes) the bare 404 it always was.
async fn unrouted(uri: Uri) -> Response {
    if is_api(uri.path()) {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no API route has this path (see /api/v1/openapi.json)",
        )
        .into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// A method an API route lacks: 405 in the error shape (axum adds the
/// `Allow` header).
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on this path; `Allow` lists the methods that are"),
    )
}

/// The route template of a request (`/api/v1/executions/{id}`), never the
/// raw path: bounded for metric labels and span names.
fn route_of<B>(req: &axum::http::Request<B>) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}

/// One span per request, named by method and route, continuing the
/// caller's W3C trace context when it sends one.
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let route = route_of(req);
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        otel.name = %format!("{} {route}", req.method()),
        http.request.method = %req.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
    );
    let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            let value = req.headers().get(name)?.to_str().ok()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();
    conveyor_engine::telemetry::set_parent(&span, &carrier);
    span
}

/// `conveyor_http_request_duration_seconds{route, method, status}`. Every
/// label has a bounded set of values: the route template (`unmatched` for
/// any path no route matches), a standard method (`other` for the rest) and
/// the status class (`2xx`).
async fn http_metrics(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = route_of(&req);
    let method = method_label(req.method());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let labels = [
        ("route", route),
        ("method", method.to_owned()),
        ("status", format!("{}xx", response.status().as_u16() / 100)),
    ];
    metrics::histogram!("conveyor_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The metric label of a request method: the standard ones by name, any
/// other (clients may send any token) as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
