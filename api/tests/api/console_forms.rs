//! The console's forms and lists over HTTP (in-process router, real
//! PostgreSQL): unknown pages and delete answered with a redirect.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::console::{Browser, assert_security_headers, location};
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

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn deleting_a_credential_answers_a_redirect_so_a_reload_sends_nothing(pool: PgPool) {
    let api = api(pool);
    let token = api.token("ws_a", "alice");
    api.put_credential(&token, "crm", json!({"token": "t"}))
        .await;
    let browser = Browser::sign_in(&api, &token).await;
    let deleted = browser.submit("/console/credentials/crm/delete", &[]).await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.text);
    assert_eq!(location(&deleted), "/console/credentials");
    let page = browser.get("/console/credentials").await;
    assert!(page.text.contains("No credentials yet."), "{}", page.text);
}
