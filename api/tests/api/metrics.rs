//! `/metrics`: kept off the API's port unless `CONVEYOR_METRICS_TOKEN` is
//! set (then only with it), served alone on `CONVEYOR_METRICS_LISTEN`, and
//! labelled with bounded values only.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use conveyor_api::ApiConfig;
use conveyor_tests::api::TestApi;
use sqlx::PgPool;
use tower::ServiceExt;

use crate::observability::parse_exposition;

/// The metrics token of the tests that set one.
pub(crate) const TOKEN: &str = "metrics-token-for-tests-0123456789";

fn with_token(pool: PgPool) -> TestApi {
    TestApi::with_config(
        pool,
        ApiConfig {
            metrics_token: Some(TOKEN.into()),
            ..ApiConfig::default()
        },
    )
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn metrics_are_not_served_on_the_api_port_by_default(pool: PgPool) {
    let api = TestApi::new(pool);
    let token = api.token("ws_a", "u1");

    let reply = api.get("/metrics", &token).await;

    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    assert!(!reply.text.contains("conveyor_"), "{}", reply.text);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn metrics_on_the_api_port_need_the_metrics_token(pool: PgPool) {
    let api = with_token(pool);
    let user_token = api.token("ws_a", "u1");

    let anonymous = api.call(Method::GET, "/metrics", None, None).await;
    let user = api.get("/metrics", &user_token).await;
    let wrong = api.get("/metrics", &format!("{TOKEN}x")).await;
    let right = api.get("/metrics", TOKEN).await;

    for reply in [&anonymous, &user, &wrong] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text);
        assert!(!reply.text.contains("conveyor_"), "{}", reply.text);
    }
    assert_eq!(right.status, StatusCode::OK, "{}", right.text);
    assert!(
        right
            .text
            .contains("conveyor_http_request_duration_seconds"),
        "{}",
        right.text
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn request_metric_labels_hold_templates_and_classes_not_raw_values(pool: PgPool) {
    let api = with_token(pool);
    let token = api.token("ws_label_probe", "u1");
    let id = uuid::Uuid::new_v4().to_string();
    let odd_path = format!("/no/such/{}", uuid::Uuid::new_v4());
    let odd_method = Method::from_bytes(b"FROBNICATE").expect("method");

    let missing = api.get(&format!("/api/v1/executions/{id}"), &token).await;
    let unmatched = api.get(&odd_path, &token).await;
    let odd = api
        .call(odd_method, "/api/v1/connectors", Some(&token), None)
        .await;
    let metrics = api.get("/metrics", TOKEN).await;

    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);
    assert_eq!(
        unmatched.status,
        StatusCode::NOT_FOUND,
        "{}",
        unmatched.text
    );
    assert!(odd.status.is_client_error(), "{}", odd.text);
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text);
    for raw in [
        id.as_str(),
        odd_path.as_str(),
        "FROBNICATE",
        "ws_label_probe",
    ] {
        assert!(!metrics.text.contains(raw), "`{raw}` is a label value");
    }
    let requests: Vec<_> = parse_exposition(&metrics.text)
        .into_iter()
        .filter(|(name, _, _)| name == "conveyor_http_request_duration_seconds_count")
        .map(|(_, labels, _)| labels)
        .collect();
    let has = |route: &str, method: &str, status: &str| {
        requests.iter().any(|l| {
            l.get("route").map(String::as_str) == Some(route)
                && l.get("method").map(String::as_str) == Some(method)
                && l.get("status").map(String::as_str) == Some(status)
        })
    };
    assert!(has("/api/v1/executions/{id}", "GET", "4xx"), "{requests:?}");
    assert!(has("unmatched", "GET", "4xx"), "{requests:?}");
    assert!(has("/api/v1/connectors", "other", "4xx"), "{requests:?}");
    for labels in &requests {
        let keys: Vec<_> = labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["method", "route", "status"], "{labels:?}");
        let status = &labels["status"];
        assert!(
            status.len() == 3 && status.ends_with("xx"),
            "status `{status}` is not a class"
        );
    }
    // Fine enough around a 10 ms objective to read a p95 below it.
    let bounds: Vec<String> = parse_exposition(&metrics.text)
        .into_iter()
        .filter(|(name, labels, _)| {
            name == "conveyor_http_request_duration_seconds_bucket"
                && labels.get("route").map(String::as_str) == Some("unmatched")
        })
        .filter_map(|(_, mut labels, _)| labels.remove("le"))
        .collect();
    assert_eq!(
        bounds[..6],
        ["0.001", "0.0025", "0.005", "0.0075", "0.01", "0.025"],
        "{bounds:?}"
    );
}

#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_nothing_else() {
    let handle = conveyor_worker::telemetry::metrics_handle().expect("recorder");
    let router = conveyor_worker::telemetry::metrics_router(handle);
    let get = |path: &str| {
        Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request")
    };

    let metrics = router
        .clone()
        .oneshot(get("/metrics"))
        .await
        .expect("reply");
    let api = router
        .oneshot(get("/api/v1/connectors"))
        .await
        .expect("reply");

    assert_eq!(metrics.status(), StatusCode::OK);
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
}
