//! Paginated steps through the API: save-time checks name the field, and a
//! run by a real worker shows one step row per page in
//! `GET /executions/{id}`.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{RunningWorker, api, error_paths};

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_bad_paginate_is_422_naming_each_field(pool: PgPool) {
    let api = api(pool);
    let a = api.token("ws_a", "alice");
    let reply = api
        .post(
            "/api/v1/connectors",
            &a,
            json!({"name": "bad paging", "steps": [
                {"name": "list", "method": "GET", "url": "https://api.example.com/items",
                 "query": {"page": "1"},
                 "paginate": {"next": {"type": "page", "param": "page", "items": "$.data"},
                              "max_pages": 5000, "max_bytes": 0}},
                {"name": "more", "method": "GET", "url": "https://api.example.com/more",
                 "paginate": {"next": {"type": "offset", "param": "offset", "page_size": 0,
                                       "items": "$.data"}}}
            ]}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    let mut paths = error_paths(&reply.json);
    paths.sort();
    assert_eq!(
        paths,
        [
            "steps[0].paginate.max_bytes",
            "steps[0].paginate.max_pages",
            "steps[0].paginate.next.param",
            "steps[1].paginate.next.page_size",
        ],
        "{}",
        reply.text
    );

    let reply = api
        .post(
            "/api/v1/connectors",
            &a,
            json!({"name": "bad cursor", "steps": [
                {"name": "list", "method": "GET", "url": "https://api.example.com/items",
                 "paginate": {"next": {"type": "cursor", "path": "paging.next", "param": "after"}}}
            ]}),
        )
        .await;
    reply.assert_refused("steps[0].paginate.next");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn each_page_is_a_step_row_of_the_execution(pool: PgPool) {
    let api = api(pool.clone());
    let a = api.token("ws_a", "alice");
    let stub = MockServer::start().await;
    for (page, ids) in [("1", json!([1, 2])), ("2", json!([3])), ("3", json!([]))] {
        Mock::given(method("GET"))
            .and(path("/items"))
            .and(query_param("page", page))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": ids})))
            .mount(&stub)
            .await;
    }
    let connector = api
        .create_connector(
            &a,
            json!({"name": "paged", "steps": [
                {"name": "list", "method": "GET", "url": format!("{}/items", stub.uri()),
                 "paginate": {"next": {"type": "page", "param": "page", "items": "$.data"}},
                 "extract": {"ids": "$.data"}}
            ]}),
        )
        .await;
    let worker = RunningWorker::start(&pool, &api.keyring);
    let id = api.execute(&a, &connector, json!({})).await;
    let done = api.wait_final(&a, &id).await;
    worker.stop().await;

    assert_eq!(done.json["status"], "succeeded", "{}", done.text);
    assert_eq!(done.json["output"]["list"]["ids"], json!([1, 2, 3]));
    let steps = done.json["steps"].as_array().expect("steps");
    let pages: Vec<(Value, Value)> = steps
        .iter()
        .map(|s| (s["page"].clone(), s["outcome"].clone()))
        .collect();
    assert_eq!(
        pages,
        [
            (json!(1), json!("succeeded")),
            (json!(2), json!("succeeded")),
            (json!(3), json!("succeeded")),
        ],
        "{}",
        done.text
    );
    assert_eq!(
        steps[0]["extracted"]["ids"],
        json!([1, 2]),
        "a page row holds its own fields"
    );
    assert_eq!(
        steps[2]["extracted"]["ids"],
        json!([1, 2, 3]),
        "the last page row holds the accumulated fields"
    );
}
