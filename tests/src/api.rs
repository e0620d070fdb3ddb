//! An in-process Conveyor API for tests: the real router over the test's
//! database, tokens minted with its secret, requests sent with
//! `tower::ServiceExt::oneshot`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use conveyor_api::auth::Authenticator;
use conveyor_api::{ApiConfig, AppState, app};
use conveyor_engine::crypto::{Key, Keyring};
use conveyor_engine::state::ExecutionStatus;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

/// The JWT secret of [`TestApi`].
pub const JWT_SECRET: &str = "conveyor-tests-jwt-secret-0123456789abcdef";
/// How long a response body or a wait for a final status may take.
pub const WAIT: Duration = Duration::from_secs(30);

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

/// A response: status, headers, JSON body (null when not JSON) and raw text.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body as JSON.
    pub json: Value,
    /// The body as text.
    pub text: String,
}

impl Reply {
    /// The body's `id`.
    ///
    /// # Panics
    ///
    /// When there is none.
    pub fn id(&self) -> String {
        self.json["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {}", self.text))
            .to_owned()
    }

    /// Asserts a 422 whose body names `field`.
    ///
    /// # Panics
    ///
    /// When the status is another or the body does not name the field.
    pub fn assert_refused(&self, field: &str) {
        assert_eq!(
            self.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            self.text
        );
        assert!(self.text.contains(field), "{field} not in {}", self.text);
    }

    /// The body's `items`.
    ///
    /// # Panics
    ///
    /// When there are none.
    pub fn items(&self) -> &Vec<Value> {
        self.json["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items in {}", self.text))
    }
}

impl TestApi {
    /// The API over `pool` with default settings.
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, ApiConfig::default())
    }

    /// The API over `pool` with `config` and a fresh key.
    pub fn with_config(pool: PgPool, config: ApiConfig) -> Self {
        Self::with_keyring(pool, Arc::new(Keyring::new(Key::generate(), [])), config)
    }

    /// The API over `pool` with default settings, sealing with `keyring`
    /// (the one worker processes of the test are given).
    pub fn sealing_with(pool: PgPool, keyring: Arc<Keyring>) -> Self {
        Self::with_keyring(pool, keyring, ApiConfig::default())
    }

    /// The API over `pool` sealing credentials with `keyring`.
    pub fn with_keyring(pool: PgPool, keyring: Arc<Keyring>, config: ApiConfig) -> Self {
        let auth = Authenticator::new(JWT_SECRET).expect("secret");
        let metrics = conveyor_worker::telemetry::metrics_handle().ok();
        let state = AppState::new(pool.clone(), keyring.clone(), auth.clone(), config, metrics);
        tokio::spawn(
            state
                .events
                .clone()
                .listen(pool.clone(), std::future::pending()),
        );
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

    /// A console sign-in link's token for `user` in `workspace`, valid
    /// ten minutes.
    pub fn link_token(&self, workspace: &str, user: &str) -> String {
        self.auth
            .mint_link(workspace, user, Duration::from_secs(600))
            .expect("link")
    }

    /// Sends a prepared request.
    pub async fn send_request(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = tokio::time::timeout(WAIT, axum::body::to_bytes(response.into_body(), 1 << 24))
            .await
            .expect("the body ends")
            .expect("body");
        Reply {
            status,
            headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
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
        self.send_request(request.body(body).expect("request"))
            .await
    }

    /// `GET path` with `token`.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// `POST path` with `token` and a JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Creates a connector; its id.
    pub async fn create_connector(&self, token: &str, definition: Value) -> String {
        let reply = self.post("/api/v1/connectors", token, definition).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.id()
    }

    /// Starts an execution; its id.
    pub async fn execute(&self, token: &str, connector: &str, input: Value) -> String {
        let path = format!("/api/v1/connectors/{connector}/execute");
        let reply = self.post(&path, token, json!({ "input": input })).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
        reply.id()
    }

    /// Stores a credential.
    pub async fn put_credential(&self, token: &str, name: &str, data: Value) -> Reply {
        let path = format!("/api/v1/credentials/{name}");
        let reply = self
            .call(
                Method::PUT,
                &path,
                Some(token),
                Some(json!({ "data": data })),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.text);
        reply
    }

    /// Polls `GET /executions/{id}` until a final status.
    pub async fn wait_final(&self, token: &str, id: &str) -> Reply {
        let started = Instant::now();
        loop {
            let reply = self.get(&format!("/api/v1/executions/{id}"), token).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
            let status = reply.json["status"]
                .as_str()
                .map(str::parse::<ExecutionStatus>);
            if status.is_some_and(|s| s.is_ok_and(ExecutionStatus::is_final)) {
                return reply;
            }
            assert!(started.elapsed() < WAIT, "still running: {}", reply.text);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
