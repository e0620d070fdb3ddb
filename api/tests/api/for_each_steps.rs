//! `for_each` steps through the API: save-time checks name the field
//! (`concurrency` included), and
//! a run by a real worker shows one step row per item in
//! `GET /executions/{id}`, each item sent with its value, and the
//! console's step timeline labels each item.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{RunningWorker, api, error_paths};

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_bad_for_each_is_422_naming_each_field(pool: PgPool) {
    let api = api(pool);
    let a = api.token("ws_a", "alice");
    let reply = api
        .post(
            "/api/v1/connectors",
            &a,
            json!({"name": "bad loops", "steps": [
                {"name": "one", "method": "POST", "url": "https://api.example.com/a",
                 "body": {"type": "json", "content": {"id": "<<item>>"}}},
                {"name": "two", "method": "POST", "url": "https://api.example.com/b/<<item>>",
                 "for_each": {"items": "<<credentials.crm.ids>>", "max_items": 5000,
                              "concurrency": 17}},
                {"name": "three", "method": "GET", "url": "https://api.example.com/c",
                 "for_each": {"items": "<<input.ids>>"},
                 "paginate": {"next": {"type": "link"}}}
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
            "steps[0].body.content.id",
            "steps[1].for_each.concurrency",
            "steps[1].for_each.items",
            "steps[1].for_each.max_items",
            "steps[2].for_each",
        ],
        "{}",
        reply.text
    );

    let reply = api
        .post(
            "/api/v1/connectors",
            &a,
            json!({"name": "no items", "steps": [
                {"name": "one", "method": "GET", "url": "https://api.example.com/a",
                 "for_each": {"max_items": 3}}
            ]}),
        )
        .await;
    reply.assert_refused("items");

    let reply = api
        .post(
            "/api/v1/connectors",
            &a,
            json!({"name": "wordy", "steps": [
                {"name": "one", "method": "GET", "url": "https://api.example.com/a",
                 "for_each": {"items": "<<input.ids>>", "concurrency": "four"}}
            ]}),
        )
        .await;
    reply.assert_refused("steps[0].for_each.concurrency");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn each_item_is_a_step_row_of_the_execution(pool: PgPool) {
    let api = api(pool.clone());
    let a = api.token("ws_a", "alice");
    let stub = MockServer::start().await;
    for (k, name) in ["ada", "bob", "cy"].iter().enumerate() {
        Mock::given(method("POST"))
            .and(path("/greet"))
            .and(body_json(json!({"name": name, "n": k})))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"text": format!("hi {name}")})),
            )
            .mount(&stub)
            .await;
    }
    let connector = api
        .create_connector(
            &a,
            json!({"name": "greet all", "input_schema": {"type": "object", "required": ["names"]},
                   "steps": [
                {"name": "greet", "method": "POST", "url": format!("{}/greet", stub.uri()),
                 "for_each": {"items": "<<input.names>>", "max_items": 3},
                 "body": {"type": "json", "content": {"name": "<<item>>", "n": "<<index>>"}},
                 "extract": {"text": "$.text"}}
            ]}),
        )
        .await;
    let worker = RunningWorker::start(&pool, &api.keyring);
    let id = api
        .execute(&a, &connector, json!({"names": ["ada", "bob", "cy"]}))
        .await;
    let done = api.wait_final(&a, &id).await;
    worker.stop().await;

    assert_eq!(done.json["status"], "succeeded", "{}", done.text);
    assert_eq!(
        done.json["output"]["greet"]["text"],
        json!(["hi ada", "hi bob", "hi cy"])
    );
    let steps = done.json["steps"].as_array().expect("steps");
    let items: Vec<(Value, Value, Value)> = steps
        .iter()
        .map(|s| {
            (
                s["item"].clone(),
                s["outcome"].clone(),
                s["request"]["body"].clone(),
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            (json!(1), json!("succeeded"), json!({"name": "ada", "n": 0})),
            (json!(2), json!("succeeded"), json!({"name": "bob", "n": 1})),
            (json!(3), json!("succeeded"), json!({"name": "cy", "n": 2})),
        ],
        "{}",
        done.text
    );
    assert_eq!(
        steps[0]["extracted"]["text"],
        json!("hi ada"),
        "an item row holds its own fields"
    );
    assert_eq!(
        steps[2]["extracted"]["text"],
        json!(["hi ada", "hi bob", "hi cy"]),
        "the last item row holds the collected fields"
    );
    assert!(
        steps.iter().all(|s| s.get("page").is_none()),
        "{}",
        done.text
    );

    let page = crate::console::Browser::sign_in(&api, &a)
        .await
        .get(&format!("/console/executions/{id}"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let page = page.text;
    for k in 1..=3 {
        assert!(
            page.contains(&format!("greet (item {k})")),
            "item {k}: {page}"
        );
    }
    assert!(
        !page.contains("retried after"),
        "an item's first attempt is no retry: {page}"
    );
}
