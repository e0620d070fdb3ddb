//! Event subscriptions through the API: create, list, read, change and
//! delete; each bad field is a 422 naming it; another workspace's
//! subscription is a 404 on every route; a workspace's count is capped; a
//! finalized execution creates one delivery per matching, enabled
//! subscription of its own workspace, and deleting a subscription drops
//! its deliveries. (Sending them, signed, with retries, through real
//! worker processes: `worker/tests/subscriptions.rs`.)

use axum::http::{Method, StatusCode};
use conveyor_tests::api::TestApi;
use serde_json::{Value, json};
use sqlx::PgPool;

const BASE: &str = "/api/v1/webhooks/subscriptions";

async fn create(api: &TestApi, token: &str, body: Value) -> String {
    let reply = api.post(BASE, token, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.id()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn subscriptions_are_created_listed_changed_and_deleted(pool: PgPool) {
    let api = TestApi::new(pool);
    let token = api.token("ws_sub", "u");
    let id = create(
        &api,
        &token,
        json!({"url": "https://example.com/events", "events": ["execution.failed"], "description": "alerts"}),
    )
    .await;
    let listed = api.get(BASE, &token).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.items().len(), 1);
    assert_eq!(listed.items()[0]["events"], json!(["execution.failed"]));
    assert_eq!(listed.items()[0]["enabled"], true);

    let path = format!("{BASE}/{id}");
    let changed = api
        .call(
            Method::PATCH,
            &path,
            Some(&token),
            Some(json!({"events": ["*"], "enabled": false, "description": null})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.json["events"], json!(["*"]));
    assert_eq!(changed.json["enabled"], false);
    assert_eq!(changed.json["description"], Value::Null);
    assert_eq!(changed.json["url"], "https://example.com/events");
    let read = api.get(&path, &token).await;
    assert_eq!(read.json, changed.json);

    let deleted = api.call(Method::DELETE, &path, Some(&token), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(api.get(&path, &token).await.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn bad_fields_are_refused_with_422_naming_them(pool: PgPool) {
    let api = TestApi::new(pool);
    let token = api.token("ws_sub", "u");
    let ok = json!({"url": "https://example.com/e", "events": ["*"]});
    for (patch, field) in [
        (json!({"url": "ftp://example.com/e"}), "url"),
        (json!({"url": "https://user:pw@example.com/e"}), "url"),
        (json!({"url": "HTTPS://example.com/e"}), "url"),
        (json!({"events": []}), "events"),
        (json!({"events": ["execution.started"]}), "events"),
        (
            json!({"events": ["execution.failed", "execution.failed"]}),
            "events",
        ),
        (json!({"description": "x".repeat(501)}), "description"),
        (json!({"enabled": "yes"}), "enabled"),
    ] {
        let mut body = ok.clone();
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let reply = api.post(BASE, &token, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            reply.text
        );
        assert!(
            reply.text.contains(field),
            "{body}: the error names `{field}`: {}",
            reply.text
        );
    }
    let id = create(&api, &token, ok).await;
    let reply = api
        .call(
            Method::PATCH,
            &format!("{BASE}/{id}"),
            Some(&token),
            Some(json!({"events": ["nope"]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.text.contains("events"), "{}", reply.text);
    assert_eq!(api.get(BASE, &token).await.items().len(), 1, "nothing made");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn another_workspace_s_subscription_is_not_found_anywhere(pool: PgPool) {
    let api = TestApi::new(pool);
    let owner = api.token("ws_owner", "u");
    let other = api.token("ws_other", "u");
    let id = create(
        &api,
        &owner,
        json!({"url": "https://example.com/e", "events": ["*"]}),
    )
    .await;
    let path = format!("{BASE}/{id}");
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (Method::PATCH, path.clone(), Some(json!({"enabled": false}))),
        (Method::DELETE, path.clone(), None),
        (Method::GET, format!("{path}/deliveries"), None),
    ] {
        let reply = api.call(method.clone(), &path, Some(&other), body).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    assert!(api.get(BASE, &other).await.items().is_empty());
    let read = api.get(&path, &owner).await;
    assert_eq!(
        read.json["enabled"], true,
        "unchanged by the other workspace"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_workspace_may_have_at_most_twenty(pool: PgPool) {
    let api = TestApi::new(pool);
    let token = api.token("ws_sub", "u");
    let body = json!({"url": "https://example.com/e", "events": ["*"]});
    for _ in 0..20 {
        create(&api, &token, body.clone()).await;
    }
    let refused = api.post(BASE, &token, body.clone()).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    let elsewhere = api.post(BASE, &api.token("ws_else", "u"), body).await;
    assert_eq!(elsewhere.status, StatusCode::CREATED);
}

async fn deliveries_of(api: &TestApi, token: &str, id: &str) -> Vec<Value> {
    let reply = api.get(&format!("{BASE}/{id}/deliveries"), token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.items().clone()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn an_ending_execution_creates_one_delivery_per_matching_enabled_subscription(pool: PgPool) {
    let api = TestApi::new(pool);
    let token = api.token("ws_sub", "u");
    let other = api.token("ws_other", "u");
    let cancelled = create(
        &api,
        &token,
        json!({"url": "https://example.com/c", "events": ["execution.cancelled"]}),
    )
    .await;
    let all = create(
        &api,
        &token,
        json!({"url": "https://example.com/all", "events": ["*"]}),
    )
    .await;
    let failed_only = create(
        &api,
        &token,
        json!({"url": "https://example.com/f", "events": ["execution.failed"]}),
    )
    .await;
    let disabled = create(
        &api,
        &token,
        json!({"url": "https://example.com/d", "events": ["*"], "enabled": false}),
    )
    .await;
    let foreign = create(
        &api,
        &other,
        json!({"url": "https://example.com/o", "events": ["*"]}),
    )
    .await;
    let connector = api
        .create_connector(
            &token,
            json!({"name": "Plain", "steps": [{"name": "s", "method": "GET", "url": "https://api.example.com/p"}]}),
        )
        .await;
    let execution = api.execute(&token, &connector, json!({})).await;
    let reply = api
        .post(
            &format!("/api/v1/executions/{execution}/cancel"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(reply.json["status"], "cancelled", "{}", reply.text);

    for (id, n) in [
        (&cancelled, 1),
        (&all, 1),
        (&failed_only, 0),
        (&disabled, 0),
    ] {
        let items = deliveries_of(&api, &token, id).await;
        assert_eq!(items.len(), n, "{id}: {items:?}");
        for d in items {
            assert_eq!(d["event"], "execution.cancelled");
            assert_eq!(d["status"], "pending");
        }
    }
    assert!(deliveries_of(&api, &other, &foreign).await.is_empty());
    let callbacks = api
        .get(&format!("/api/v1/executions/{execution}/callbacks"), &token)
        .await;
    assert!(
        callbacks.items().is_empty(),
        "subscription events are not the execution's callbacks"
    );

    let deleted = api
        .call(Method::DELETE, &format!("{BASE}/{all}"), Some(&token), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM callback_deliveries")
        .fetch_one(&api.pool)
        .await
        .expect("count");
    assert_eq!(left, 1, "the deleted subscription's delivery went with it");
}
