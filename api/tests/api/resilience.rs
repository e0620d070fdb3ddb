//! The API under stress: without its database, or with every connection
//! of its pool busy, it answers 503 (JSON error shape, `Retry-After`) for
//! what needs it while liveness still answers, and readiness as long as
//! the database does; a workspace over its request rate gets 429 without
//! slowing the others.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use conveyor_api::auth::Authenticator;
use conveyor_api::{ApiConfig, AppState, app};
use conveyor_engine::crypto::{Key, Keyring};
use serde_json::Value;
use tower::ServiceExt;

/// The API over `pool`, and a function that GETs a path, with a token of
/// workspace `ws_a` when `authorized`.
fn api_over(
    pool: sqlx::PgPool,
) -> impl Fn(&str, bool) -> tower::util::Oneshot<axum::Router, Request<Body>> {
    let auth = Authenticator::new("resilience-tests-secret-0123456789abcdef").expect("secret");
    let token = auth
        .mint("ws_a", "u1", Duration::from_secs(60))
        .expect("token");
    let keyring = Arc::new(Keyring::new(Key::generate(), []));
    let router = app(AppState::new(
        pool,
        keyring,
        auth,
        ApiConfig::default(),
        None,
    ));
    move |path, authorized| {
        let mut request = Request::builder().uri(path);
        if authorized {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
    }
}

/// Checks a 503 `database_unavailable` with `Retry-After: 5`; its JSON
/// error.
async fn unavailable(response: axum::response::Response) -> Value {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&bytes).expect("json error body");
    assert_eq!(body["error"]["code"], "database_unavailable");
    body["error"].clone()
}

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
    let get = api_over(pool);

    unavailable(get("/api/v1/connectors", true).await.expect("response")).await;

    let ready = get("/readyz", false).await.expect("response");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let live = get("/healthz", false).await.expect("response");
    assert_eq!(live.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_exhausted_pool_answers_503_in_time_and_recovers(
    options: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = options
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect_with(connect)
        .await
        .expect("pool");
    let get = api_over(pool.clone());

    let held = pool.acquire().await.expect("the pool's only connection");
    let asked = std::time::Instant::now();
    let busy = tokio::time::timeout(Duration::from_secs(10), get("/api/v1/connectors", true))
        .await
        .expect("answered within the acquire timeout, not left waiting")
        .expect("response");
    assert!(asked.elapsed() >= Duration::from_millis(300));
    let error = unavailable(busy).await;
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("stayed busy") && message.contains("CONVEYOR_DB_MAX_CONNECTIONS"),
        "{message}"
    );
    // Busy, not unready: the probe has a connection of its own.
    let ready = get("/readyz", false).await.expect("response");
    assert_eq!(ready.status(), StatusCode::OK);

    drop(held);
    let ok = get("/api/v1/connectors", true).await.expect("response");
    assert_eq!(ok.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_workspace_over_its_rate_gets_429_and_others_do_not(pool: sqlx::PgPool) {
    let auth = Authenticator::new("resilience-tests-secret-0123456789abcdef").expect("secret");
    let a = auth
        .mint("ws_a", "u1", Duration::from_secs(60))
        .expect("token");
    let b = auth
        .mint("ws_b", "u2", Duration::from_secs(60))
        .expect("token");
    let keyring = Arc::new(Keyring::new(Key::generate(), []));
    let config = ApiConfig {
        rate_limit_per_sec: 1,
        ..ApiConfig::default()
    };
    let router = app(AppState::new(pool, keyring, auth, config, None));
    let get = |token: &str| {
        let request = Request::builder()
            .uri("/api/v1/connectors")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        router.clone().oneshot(request)
    };
    // The burst is twice the rate.
    for _ in 0..2 {
        assert_eq!(get(&a).await.expect("response").status(), StatusCode::OK);
    }
    let limited = get(&a).await.expect("response");
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let bytes = axum::body::to_bytes(limited.into_body(), 1 << 16)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(get(&b).await.expect("response").status(), StatusCode::OK);
}
