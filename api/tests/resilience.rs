//! The API without its database: 503 with the JSON error shape for what
//! needs the database, while liveness still answers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use conveyor_api::auth::Authenticator;
use conveyor_api::{ApiConfig, AppState, app};
use conveyor_engine::crypto::{Key, Keyring};
use serde_json::Value;
use tower::ServiceExt;

#[tokio::test]
async fn an_unreachable_database_answers_503_and_liveness_stays_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    // Nothing listens there any more.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!("postgres://conveyor@127.0.0.1:{port}/conveyor"))
        .expect("lazy pool");
    let auth = Authenticator::new("resilience-tests-secret-0123456789abcdef").expect("secret");
    let token = auth
        .mint("ws_a", "u1", Duration::from_secs(60))
        .expect("token");
    let keyring = Arc::new(Keyring::new(Key::generate(), []));
    let router = app(AppState::new(pool, keyring, auth, ApiConfig::default()));
    let get = |path: &str, token: Option<&str>| {
        let mut request = Request::builder().uri(path);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
    };

    let response = get("/api/v1/connectors", Some(&token))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&bytes).expect("json error body");
    assert_eq!(body["error"]["code"], "database_unavailable");

    let ready = get("/readyz", None).await.expect("response");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let live = get("/healthz", None).await.expect("response");
    assert_eq!(live.status(), StatusCode::OK);
}
