//! The console's forms and lists over HTTP (in-process router, real
//! PostgreSQL): unknown pages.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use sqlx::PgPool;

use crate::console::assert_security_headers;
use crate::support::api;

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn unknown_console_paths_answer_a_404_page_with_the_security_headers(pool: PgPool) {
    let api = api(pool);
    let id = uuid::Uuid::now_v7();
    for (method, path) in [
        (Method::GET, "/console/nope".to_owned()),
        (Method::GET, format!("/console/executions/{id}/nope")),
        (Method::GET, "/console/credentials/crm".to_owned()),
        (Method::POST, "/console/nope".to_owned()),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(&path)
            .body(Body::empty())
            .expect("request");
        let reply = api.send_request(request).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(
            reply.text.contains("404 Not Found"),
            "{method} {path}: {}",
            reply.text
        );
        assert_security_headers(&path, &reply);
    }
}
