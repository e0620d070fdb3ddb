//! The web console under `/console`: server-rendered HTML (askama
//! templates in `api/templates/console/`), one embedded stylesheet and one
//! small script behind content-hashed paths. Pages read through the same
//! store functions as the JSON API and change state only by calling the
//! JSON API's own handlers, so every business rule, validation and audit
//! entry is shared. Sessions and CSRF tokens live in `session`.
//!
//! Every page renders its content without JavaScript; the script only
//! refreshes the live region of a page (an execution follows its event
//! stream, the executions list follows its workspace's, `live`).

mod admin;
mod connectors;
mod credentials;
mod diff;
mod executions;
mod live;
mod marketplace;
mod session;
pub mod stats;

use std::sync::{Arc, LazyLock};

use askama::Template;
use axum::Router;
use axum::extract::{Path, Request};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use session::link_url;

use crate::AppState;
use crate::error::ApiError;

/// The console's Content-Security-Policy: scripts and styles only from
/// this origin (no inline script or style), no framing, forms only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

static CSS: &[u8] = include_bytes!("../../assets/console.css");
static JS: &[u8] = include_bytes!("../../assets/console.js");

/// An embedded file served under a path naming its content hash, so it
/// can be cached forever.
struct Asset {
    path: String,
    bytes: &'static [u8],
    content_type: &'static str,
}

fn asset(stem: &str, ext: &str, bytes: &'static [u8], content_type: &'static str) -> Asset {
    let digest = Sha256::digest(bytes);
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    Asset {
        path: format!("/console/assets/{stem}.{hash}.{ext}"),
        bytes,
        content_type,
    }
}

static ASSETS: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    [
        asset("console", "css", CSS, "text/css; charset=utf-8"),
        asset("console", "js", JS, "text/javascript; charset=utf-8"),
    ]
});

/// The console's routes (kept out of the OpenAPI document: they serve
/// HTML to people, not JSON to programs). A form may come from a page of
/// this host or of `public_url` (what a reverse proxy serves it as).
pub fn router(public_url: &str) -> Router<AppState> {
    let public: Arc<str> = Arc::from(public_url.trim_end_matches('/'));
    Router::new()
        .route("/console", get(executions::list))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/events", get(live::workspace_events))
        .route("/console/executions/{id}", get(executions::detail))
        .route("/console/executions/{id}/live", get(executions::live))
        .route("/console/executions/{id}/cancel", post(executions::cancel))
        .route("/console/executions/{id}/rerun", post(executions::rerun))
        .route("/console/connectors", get(connectors::list))
        .route(
            "/console/connectors/{id}",
            get(connectors::detail).post(connectors::save),
        )
        .route("/console/connectors/{id}/run", post(connectors::run))
        .route("/console/marketplace", get(marketplace::list))
        .route("/console/marketplace/{slug}", get(marketplace::template))
        .route(
            "/console/marketplace/{slug}/install",
            post(marketplace::install),
        )
        .route("/console/marketplace/{slug}/rate", post(marketplace::rate))
        .route(
            "/console/credentials",
            get(credentials::list).post(credentials::put),
        )
        .route(
            "/console/credentials/{name}/delete",
            post(credentials::delete),
        )
        .route(
            "/console/credentials/{name}/connect",
            post(credentials::connect),
        )
        .route("/console/admin", get(admin::page))
        .route("/console/admin/executions/{id}", get(admin::execution))
        .route(
            "/console/admin/templates/{slug}/{action}",
            post(admin::review),
        )
        .route(
            "/console/login",
            get(session::login_page).post(session::login),
        )
        .route(
            "/console/login/link",
            get(session::link).post(session::use_link),
        )
        .route("/console/logout", post(session::logout))
        .route("/console/assets/{file}", get(serve_asset))
        .route("/console/{*rest}", any(not_found))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            guard(Arc::clone(&public), req, next)
        }))
}

/// Refuses cross-site state changes (the `Origin` and `Sec-Fetch-Site`
/// headers browsers send), and sets the console's security headers on
/// every response, the refusal included.
async fn guard(public_url: Arc<str>, req: Request, next: Next) -> Response {
    let mut response = if !matches!(*req.method(), Method::GET | Method::HEAD)
        && is_cross_site(&req, &public_url)
    {
        page_error(
            StatusCode::FORBIDDEN,
            "This form was sent from another site and was refused.",
        )
    } else {
        next.run(req).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Any other path under `/console`: a 404 page (behind `guard`, so with
/// the console's headers) instead of an empty response.
async fn not_found() -> Response {
    page_error(
        StatusCode::NOT_FOUND,
        "There is no such page in the console.",
    )
}

fn is_cross_site(req: &Request, public_url: &str) -> bool {
    let headers = req.headers();
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site" || site == "same-site")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    if origin
        .to_str()
        .is_ok_and(|o| o.eq_ignore_ascii_case(public_url))
    {
        return false;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    match (origin_host, host) {
        (Some(o), Some(h)) => !o.eq_ignore_ascii_case(h),
        _ => true,
    }
}

async fn serve_asset(Path(file): Path<String>) -> Response {
    let Some(found) = ASSETS
        .iter()
        .find(|a| a.path.rsplit('/').next() == Some(&file))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (CONTENT_TYPE, found.content_type),
            (CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        found.bytes,
    )
        .into_response()
}

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Executions,
    Connectors,
    Marketplace,
    Credentials,
    Admin,
}

/// What the shared page frame shows.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub title: String,
    pub nav: Nav,
    pub workspace: String,
    pub actor: String,
    pub csrf: String,
    pub admin: bool,
    pub css: &'static str,
    pub js: &'static str,
}

impl Layout {
    fn assets() -> (&'static str, &'static str) {
        (&ASSETS[0].path, &ASSETS[1].path)
    }

    /// The name of this page's navigation entry (marked `aria-current`).
    pub fn nav_name(&self) -> &'static str {
        match self.nav {
            Nav::Executions => "executions",
            Nav::Connectors => "connectors",
            Nav::Marketplace => "marketplace",
            Nav::Credentials => "credentials",
            Nav::Admin => "admin",
        }
    }
}

/// An error shown as a page: the API's message with its status. Without
/// a session the caller is sent to the sign-in page instead.
#[derive(Debug)]
pub(crate) struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<conveyor_engine::Error> for PageError {
    fn from(e: conveyor_engine::Error) -> Self {
        Self(e.into())
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> Self {
        Self(ApiError::internal(&e))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/console/login").into_response();
        }
        page_error(status, self.0.message())
    }
}

/// Page results.
pub(crate) type PageResult = Result<Response, PageError>;

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
    css: &'a str,
}

fn page_error(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        message,
        css: Layout::assets().0,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => status.into_response(),
    }
}

/// Renders a page.
pub(crate) fn render<T: Template>(page: &T) -> PageResult {
    Ok(Html(page.render()?).into_response())
}

/// The fields of a submitted form, in order (a form may repeat a name).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The non-empty, trimmed value of `name`.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Every `(suffix, value)` whose name is `prefix` + suffix.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }
}

/// Reads a JSON handler's response body back (the console calls the JSON
/// API's handlers and shows what they answered).
pub(crate) async fn body_json(response: Response) -> Result<Value, PageError> {
    let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| PageError(ApiError::internal(&e)))
}

/// Parses `value` as a JSON handler's body, with the API's own rules (a
/// shape error is a 422 naming the field).
pub(crate) fn handler_body<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &Value,
) -> Result<T, ApiError> {
    crate::extract::parse_json(value.to_string().as_bytes())
}

/// `{path, message}` problems of a 422, or the message alone.
pub(crate) fn problems(e: &ApiError) -> Vec<Problem> {
    let listed = e.details()["errors"].as_array().map(|errors| {
        errors
            .iter()
            .map(|p| Problem {
                path: p["path"].as_str().unwrap_or_default().to_owned(),
                message: p["message"].as_str().unwrap_or_default().to_owned(),
            })
            .collect::<Vec<_>>()
    });
    match listed {
        Some(list) if !list.is_empty() => list,
        _ => vec![Problem {
            path: String::new(),
            message: e.message().to_owned(),
        }],
    }
}

/// One problem a form submission has, at a field path.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub path: String,
    pub message: String,
}

/// A time as pages show it (UTC, seconds).
pub(crate) fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// An optional time as pages show it.
pub(crate) fn when_opt(t: Option<&DateTime<Utc>>) -> String {
    t.map_or_else(|| "—".to_owned(), when)
}

/// A duration in milliseconds as pages show it.
pub(crate) fn millis(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{:.1} min", ms as f64 / 60_000.0)
    }
}

/// An optional duration in milliseconds as pages show it (rounded).
pub(crate) fn millis_opt(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| millis(v.round() as i64))
}

/// An optional rate as a percentage with one decimal.
pub(crate) fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "—".to_owned(), |r| format!("{:.1} %", r * 100.0))
}

/// A JSON value indented for a `<pre>` block.
pub(crate) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Redirect after a successful form (303: the browser GETs the target).
pub(crate) fn see_other(to: &str) -> PageResult {
    Ok(Redirect::to(to).into_response())
}
