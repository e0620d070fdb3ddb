//! An in-process Conveyor API for tests: the real router over the test's
//! database, tokens minted with its secret, requests sent with
//! `tower::ServiceExt::oneshot`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use conveyor_api::auth::Authenticator;
use conveyor_api::{ApiConfig, AppState, app};
use conveyor_engine::crypto::{Key, Keyring};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

/// The JWT secret of [`TestApi`].
pub const JWT_SECRET: &str = "conveyor-tests-jwt-secret-0123456789abcdef";

/// The API router of one test.
pub struct TestApi {
    /// The router.
    pub router: axum::Router,
    /// Signs tokens.
    pub auth: Authenticator,
    /// Seals credentials.
    pub keyring: Arc<Keyring>,
    /// The test's database.
    pub pool: PgPool,
}

/// A response: status, JSON body (null when not JSON) and raw text.
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The body as JSON.
    pub json: Value,
    /// The body as text.
    pub text: String,
}

impl TestApi {
    /// The API over `pool` with default settings.
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, ApiConfig::default())
    }

    /// The API over `pool` with `config`.
    pub fn with_config(pool: PgPool, config: ApiConfig) -> Self {
        let keyring = Arc::new(Keyring::new(Key::generate(), []));
        let auth = Authenticator::new(JWT_SECRET).expect("secret");
        let state = AppState::new(pool.clone(), keyring.clone(), auth.clone(), config);
        Self {
            router: app(state),
            auth,
            keyring,
            pool,
        }
    }

    /// A token for `user` in `workspace`, valid ten minutes.
    pub fn token(&self, workspace: &str, user: &str) -> String {
        self.auth
            .mint(workspace, user, Duration::from_secs(600))
            .expect("token")
    }

    /// Sends a request; `body` goes as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(b) => {
                request = request.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .expect("body");
        Reply {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// `GET path` with `token`.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// A request with `token`, answered as `(status, JSON body)`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let reply = self.call(method, path, Some(token), body).await;
        (reply.status, reply.json)
    }
}
