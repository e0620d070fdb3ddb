//! Who started what, and the admin drill-down, through the HTTP API
//! (in-process router, real PostgreSQL): every execution records its
//! starter in both APIs, execute and batch execute are audited in the
//! caller's workspace only, and admins (only they) open any execution with
//! its steps, events and trace id.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use conveyor_engine::state::ExecutionStatus;
use conveyor_engine::store::access;
use conveyor_engine::store::executions::{self, Transition};
use conveyor_tests::api::TestApi;
use serde_json::{Value, json};
use sqlx::PgPool;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn ping() -> Value {
    json!({"name": "Ping", "steps": [
        {"name": "ping", "method": "GET", "url": "https://api.example.com/ping"}]})
}

/// The audit rows of `action` in the caller's workspace log.
async fn audited(api: &TestApi, token: &str, action: &str) -> Vec<Value> {
    let reply = api
        .get(&format!("/api/v1/audit?action={action}"), token)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.items().clone()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn every_execution_records_what_started_it_and_starts_are_audited(pool: PgPool) {
    let api = TestApi::new(pool);
    let a = api.token("ws_a", "alice");
    let b = api.token("ws_b", "bob");
    access::add_admin(&api.pool, "root").await.expect("admin");
    let admin = api.token("ws_ops", "root");
    let connector = api.create_connector(&a, ping()).await;

    let by_user = api.execute(&a, &connector, json!({})).await;
    let key = api
        .post("/api/v1/api-keys", &a, json!({"name": "ci"}))
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let (secret, key_id) = (key.json["key"].as_str().expect("key"), key.id());
    let by_key = api.execute(secret, &connector, json!({})).await;
    let batch = api
        .post(
            &format!("/api/v1/connectors/{connector}/execute/batch"),
            &a,
            json!({"items": [{"input": {}}, {"input": {"n": 1}}, {"input": {"n": 2}}]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{}", batch.text);
    let rerun = api
        .post(
            &format!("/api/v1/executions/{by_user}/rerun"),
            &a,
            json!({}),
        )
        .await;
    assert_eq!(rerun.status, StatusCode::ACCEPTED, "{}", rerun.text);
    assert_eq!(rerun.json["started_by"], format!("rerun_of:{by_user}"));

    let mut expected = vec![
        (by_user.clone(), "user:alice".to_owned()),
        (by_key.clone(), format!("api_key:{key_id}")),
        (rerun.id(), format!("rerun_of:{by_user}")),
    ];
    for id in batch.json["ids"].as_array().expect("ids") {
        expected.push((id.as_str().expect("id").to_owned(), "user:alice".to_owned()));
    }
    for (id, started_by) in &expected {
        let own = api.get(&format!("/api/v1/executions/{id}"), &a).await;
        assert_eq!(own.json["started_by"], json!(started_by), "{}", own.text);
        let admin_view = api
            .get(&format!("/api/v1/admin/executions/{id}"), &admin)
            .await;
        assert_eq!(admin_view.json["started_by"], json!(started_by));
    }
    for listing in [
        api.get("/api/v1/executions", &a).await,
        api.get("/api/v1/admin/executions?workspace_id=ws_a", &admin)
            .await,
    ] {
        assert_eq!(listing.items().len(), expected.len(), "{}", listing.text);
        for item in listing.items() {
            let (_, started_by) = expected
                .iter()
                .find(|(id, _)| item["id"] == json!(id))
                .expect("a listed execution was started here");
            assert_eq!(item["started_by"], json!(started_by));
        }
    }

    // One row per single start (by its actor), one per batch with the count.
    let starts = audited(&api, &a, "execution.start").await;
    let started: Vec<(&Value, &Value)> = starts
        .iter()
        .map(|e| (&e["object_id"], &e["actor"]))
        .collect();
    assert_eq!(
        started,
        [
            (&json!(by_key), &json!(format!("api-key:{key_id}"))),
            (&json!(by_user), &json!("alice")),
        ]
    );
    let batches = audited(&api, &a, "execution.start_batch").await;
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0]["details"]["count"], 3);
    assert_eq!(batches[0]["details"]["created"], 3);
    assert_eq!(batches[0]["object_id"], json!(connector));

    // An idempotent replay starts nothing and is not audited again.
    let path = format!("/api/v1/connectors/{connector}/execute");
    for status in [StatusCode::ACCEPTED, StatusCode::OK] {
        let reply = api
            .post(&path, &a, json!({"input": {}, "idempotency_key": "k1"}))
            .await;
        assert_eq!(reply.status, status, "{}", reply.text);
    }
    assert_eq!(audited(&api, &a, "execution.start").await.len(), 3);

    // Workspace B sees none of it.
    assert!(audited(&api, &b, "execution.start").await.is_empty());
    assert!(audited(&api, &b, "execution.start_batch").await.is_empty());
    let other = api.get(&format!("/api/v1/executions/{by_user}"), &b).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn admins_open_any_execution_with_steps_events_and_trace_id(pool: PgPool) {
    let api = TestApi::new(pool);
    let a = api.token("ws_a", "alice");
    access::add_admin(&api.pool, "root").await.expect("admin");
    let admin = api.token("ws_ops", "root");
    let connector = api.create_connector(&a, ping()).await;
    let id = api.execute(&a, &connector, json!({})).await;
    sqlx::query("UPDATE connector_executions SET trace_context = $1 WHERE id = $2::uuid")
        .bind(json!({"traceparent": TRACEPARENT}))
        .bind(&id)
        .execute(&api.pool)
        .await
        .expect("trace context");
    let claimed = executions::claim(
        &executions::ClaimPool::new(&api.pool),
        "worker-a",
        1,
        Duration::from_secs(60),
        Utc::now(),
    )
    .await
    .expect("claim");
    let done = executions::commit_step(
        &api.pool,
        claimed[0].id,
        claimed[0].fencing_token,
        &conveyor_tests::stored_step("worker-a"),
        &Transition::Succeed {
            context: json!({}),
            output: json!({"ok": true}),
        },
        Utc::now(),
    )
    .await
    .expect("commit");
    assert_eq!(done, Some(ExecutionStatus::Succeeded));

    let path = format!("/api/v1/admin/executions/{id}");
    let view = api.get(&path, &admin).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text);
    assert_eq!(view.json["workspace_id"], "ws_a");
    assert_eq!(view.json["status"], "succeeded");
    assert_eq!(view.json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(view.json["steps"][0]["step_name"], "ping");
    let kinds: Vec<&str> = view.json["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds.first(), Some(&"enqueued"));
    assert_eq!(kinds.last(), Some(&"finished"));
    assert!(!view.text.contains("worker-a"), "worker ids stay hidden");

    let listed = api.get(&format!("{path}/events?format=json"), &admin).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.json["items"], view.json["events"]);
    // The stream replays the stored events and ends after the final status.
    let stream = api.get(&format!("{path}/events"), &admin).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert!(stream.text.contains("event: enqueued"), "{}", stream.text);
    assert!(stream.text.contains("event: status"), "{}", stream.text);

    // Not for tenants, even the owning workspace; unknown and bad ids.
    for route in [path.clone(), format!("{path}/events?format=json")] {
        assert_eq!(api.get(&route, &a).await.status, StatusCode::FORBIDDEN);
    }
    let unknown = format!("/api/v1/admin/executions/{}", uuid::Uuid::now_v7());
    assert_eq!(
        api.get(&unknown, &admin).await.status,
        StatusCode::NOT_FOUND
    );
    let events = format!("{unknown}/events");
    assert_eq!(api.get(&events, &admin).await.status, StatusCode::NOT_FOUND);
    let bad = api.get("/api/v1/admin/executions/nope", &admin).await;
    assert_eq!(
        bad.status,
        StatusCode::NOT_FOUND,
        "a malformed id names nothing"
    );
    let format = api.get(&format!("{path}/events?format=xml"), &admin).await;
    assert_eq!(format.status, StatusCode::BAD_REQUEST);
}
