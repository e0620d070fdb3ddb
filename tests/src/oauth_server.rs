//! A real OAuth2 authorization server on loopback for the tests (axum):
//! `/authorize` (issues a code bound to the client, redirect URI and PKCE
//! challenge), `/token` (authorization code with S256 verification,
//! refresh with rotation that refuses an old refresh token, client
//! credentials; client auth by body or basic), `/revoke`, a protected
//! `/resource`, and a Nango-shaped `/nango/connection/{id}`. It counts
//! every grant, can fail on demand, and records every refresh token it saw
//! after rotating it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The client id the server knows.
pub const CLIENT_ID: &str = "conveyor-test-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "client-secret-PLANTED-0123";
/// The Nango secret key the stub accepts.
pub const NANGO_SECRET: &str = "nango-secret-PLANTED-4567";
/// What `instance_url` the token responses carry (a path on this server
/// is appended by the tests).
pub const INSTANCE_FIELD: &str = "instance_url";

struct IssuedCode {
    redirect_uri: String,
    challenge: String,
    used: bool,
}

#[derive(Default)]
struct Inner {
    codes: HashMap<String, IssuedCode>,
    /// The refresh token that may be used now.
    current_refresh: Option<String>,
    /// Refresh tokens rotated away (a use of one is a rotation violation).
    old_refresh: HashSet<String>,
    /// Access tokens the resource accepts.
    valid_access: HashSet<String>,
    /// Every access token ever issued.
    issued_access: Vec<String>,
    counts: HashMap<String, usize>,
    old_refresh_uses: usize,
    revoked: bool,
    fail_token_with: Option<u16>,
    expires_in: i64,
    token_delay: Duration,
    resource_keys: Vec<String>,
    next: u64,
}

/// The running server; cheap to clone.
#[derive(Clone)]
pub struct OAuthServer {
    inner: Arc<Mutex<Inner>>,
    /// `http://127.0.0.1:PORT`.
    pub uri: String,
}

impl OAuthServer {
    /// Starts the server on a loopback port; it runs until the test ends.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            expires_in: 3600,
            ..Inner::default()
        }));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let uri = format!("http://{}", listener.local_addr().expect("addr"));
        let server = Self { inner, uri };
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/resource", get(resource).post(resource))
            .route("/nango/connection/{id}", get(nango))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many token requests of `grant_type` were made.
    pub fn count(&self, grant_type: &str) -> usize {
        self.lock().counts.get(grant_type).copied().unwrap_or(0)
    }

    /// How many times a rotated-away refresh token came back.
    pub fn old_refresh_uses(&self) -> usize {
        self.lock().old_refresh_uses
    }

    /// Every access and refresh token issued so far (to look for leaks).
    pub fn issued_secrets(&self) -> Vec<String> {
        let inner = self.lock();
        let mut out = inner.issued_access.clone();
        out.extend(inner.old_refresh.iter().cloned());
        out.extend(inner.current_refresh.iter().cloned());
        out
    }

    /// The `Idempotency-Key` of every request the resource received.
    pub fn resource_keys(&self) -> Vec<String> {
        self.lock().resource_keys.clone()
    }

    /// Lifetime of the access tokens issued from now on.
    pub fn set_expires_in(&self, secs: i64) {
        self.lock().expires_in = secs;
    }

    /// Every token request answers `status` (None: normal again).
    pub fn fail_token_with(&self, status: Option<u16>) {
        self.lock().fail_token_with = status;
    }

    /// Token requests take this long (to make concurrent refreshes meet).
    pub fn set_token_delay(&self, delay: Duration) {
        self.lock().token_delay = delay;
    }

    /// The resource stops accepting every access token issued so far.
    pub fn invalidate_access_tokens(&self) {
        self.lock().valid_access.clear();
    }

    /// Issues a refresh token directly, as if a person had connected: for
    /// tests that start from a connected credential.
    pub fn issue_refresh_token(&self) -> String {
        let mut inner = self.lock();
        inner.next += 1;
        let token = format!("rt-{}-{}", inner.next, nonce());
        if let Some(old) = inner.current_refresh.replace(token.clone()) {
            inner.old_refresh.insert(old);
        }
        token
    }
}

fn nonce() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
}

async fn authorize(
    State(s): State<OAuthServer>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID
        || field("response_type") != "code"
        || field("code_challenge_method") != "S256"
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let code = format!("code-{}", nonce());
    s.lock().codes.insert(
        code.clone(),
        IssuedCode {
            redirect_uri: field("redirect_uri"),
            challenge: field("code_challenge"),
            used: false,
        },
    );
    let mut target = url::Url::parse(&field("redirect_uri")).expect("redirect_uri");
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &field("state"));
    Redirect::to(target.as_str()).into_response()
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": "see the test server"})),
    )
        .into_response()
}

/// Checks the client by basic auth or body fields.
fn client_ok(headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    if let Some(pair) = basic {
        return pair == format!("{CLIENT_ID}:{CLIENT_SECRET}");
    }
    form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
}

async fn token(
    State(s): State<OAuthServer>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    let delay = {
        let mut inner = s.lock();
        *inner.counts.entry(grant.clone()).or_default() += 1;
        inner.token_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut inner = s.lock();
    if let Some(status) = inner.fail_token_with {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return oauth_error(status, "temporarily_unavailable");
    }
    if !client_ok(&headers, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let with_refresh = match grant.as_str() {
        "authorization_code" => {
            let Some(issued) = inner.codes.get_mut(&field("code")) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(field("code_verifier")));
            if issued.used
                || issued.challenge != challenge
                || issued.redirect_uri != field("redirect_uri")
            {
                issued.used = true;
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            issued.used = true;
            true
        }
        "refresh_token" => {
            let presented = field("refresh_token");
            if inner.old_refresh.contains(&presented) {
                inner.old_refresh_uses += 1;
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            if inner.revoked || inner.current_refresh.as_deref() != Some(presented.as_str()) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            true
        }
        "client_credentials" => false,
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    inner.next += 1;
    let access = format!("at-{}-{}", inner.next, nonce());
    inner.valid_access.insert(access.clone());
    inner.issued_access.push(access.clone());
    let mut body = json!({
        "access_token": access,
        "expires_in": inner.expires_in,
        INSTANCE_FIELD: s.uri,
    });
    if with_refresh {
        let refresh = format!("rt-{}-{}", inner.next, nonce());
        if let Some(old) = inner.current_refresh.replace(refresh.clone()) {
            inner.old_refresh.insert(old);
        }
        body["refresh_token"] = Value::String(refresh);
    }
    axum::Json(body).into_response()
}

async fn revoke(State(s): State<OAuthServer>) -> StatusCode {
    s.lock().revoked = true;
    StatusCode::OK
}

async fn resource(State(s): State<OAuthServer>, headers: HeaderMap) -> Response {
    let mut inner = s.lock();
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        inner.resource_keys.push(key.to_owned());
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if inner.valid_access.contains(token) {
        axum::Json(json!({"ok": true})).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_token"})),
        )
            .into_response()
    }
}

async fn nango(
    State(s): State<OAuthServer>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(NANGO_SECRET) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "unauthorized"})),
        )
            .into_response();
    }
    if id != "conn-1" || q.get("provider_config_key").map(String::as_str) != Some("crm") {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "unknown_connection"})),
        )
            .into_response();
    }
    let mut inner = s.lock();
    *inner.counts.entry("nango".to_owned()).or_default() += 1;
    inner.next += 1;
    let access = format!("at-nango-{}-{}", inner.next, nonce());
    inner.valid_access.insert(access.clone());
    inner.issued_access.push(access.clone());
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    axum::Json(json!({
        "id": 1,
        "connection_id": id,
        "provider_config_key": "crm",
        "credentials": {"type": "OAUTH2", "access_token": access,
                        "expires_at": expires.to_rfc3339(), "raw": {"instance_url": s.uri}},
        "connection_config": {"portal_id": "42"}
    }))
    .into_response()
}
