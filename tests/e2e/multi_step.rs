//! A real three-step connector run through the queue and the runner.

use std::collections::BTreeMap;
use std::time::Duration;

use conveyor_engine::state::ExecutionStatus;
use conveyor_engine::store::credentials;
use conveyor_tests::{Harness, WS};
use serde_json::{Value, json};
use sqlx::PgPool;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn runs_three_steps_with_typed_json_extraction_bearer_credential_and_form(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/contacts"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "c-42", "ok": true})))
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .and(path("/contacts/c-42"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "c-42", "properties": {"name": "Ada Lovelace"}})),
        )
        .mount(&stub)
        .await;
    Mock::given(method("POST"))
        .and(path("/notify"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&stub)
        .await;

    let secret = "tok_PLANTED_e2e_secret";
    credentials::put(
        &h.pool,
        &h.keyring,
        WS,
        "crm",
        &BTreeMap::from([("token".to_owned(), secret.to_owned())]),
    )
    .await
    .expect("store credential");

    let base = stub.uri();
    let connector = h
        .connector(json!({
            "name": "Create, read, notify",
            "steps": [
                {"name": "create", "method": "POST", "url": format!("{base}/contacts"),
                 "body": {"type": "json", "content": {
                     "email": "<<input.email>>", "age": "<<input.age>>",
                     "tags": "<<input.tags>>", "vip": "<<input.vip>>",
                     "greeting": "Hello <<input.name>>"}},
                 "extract": {"id": "$.id"}},
                {"name": "read", "method": "GET",
                 "url": format!("{base}/contacts/<<steps.create.extract.id>>"),
                 "auth": {"type": "bearer", "credential": "crm"},
                 "extract": {"name": {"path": "$.properties.name", "required": true}}},
                {"name": "notify", "method": "POST", "url": format!("{base}/notify"),
                 "body": {"type": "form", "content": {
                     "text": "Created <<steps.read.extract.name>>", "channel": "<<input.channel>>"}}}
            ],
            "output": {"contact_id": "<<steps.create.extract.id>>", "name": "<<steps.read.extract.name>>",
                       "notified": "<<steps.notify.status>>"}
        }))
        .await;
    let id = h
        .enqueue(
            connector,
            json!({"email": "ada@example.com", "age": 36, "tags": ["math", "poetry"],
                   "vip": true, "name": "Ada", "channel": "#sales & ops"}),
        )
        .await;

    let execution = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(
        execution.status,
        ExecutionStatus::Succeeded,
        "{:?}",
        execution.error
    );
    assert_eq!(
        execution.output,
        Some(json!({"contact_id": "c-42", "name": "Ada Lovelace", "notified": 200}))
    );

    let received = stub.received_requests().await.expect("recording on");
    assert_eq!(received.len(), 3);
    let create = &received[0];
    assert_eq!(create.method.as_str(), "POST");
    assert_eq!(create.url.path(), "/contacts");
    assert_eq!(
        create.body_json::<Value>().expect("json body"),
        json!({"email": "ada@example.com", "age": 36, "tags": ["math", "poetry"],
               "vip": true, "greeting": "Hello Ada"})
    );
    assert_eq!(
        create
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("")),
        Some("application/json")
    );
    assert_eq!(
        create
            .headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap_or("").to_owned()),
        Some(format!("{id}:create:1"))
    );
    let read = &received[1];
    assert_eq!(read.method.as_str(), "GET");
    assert_eq!(read.url.path(), "/contacts/c-42");
    assert_eq!(
        read.headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_owned()),
        Some(format!("Bearer {secret}"))
    );
    let notify = &received[2];
    assert_eq!(notify.url.path(), "/notify");
    assert_eq!(
        notify
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("")),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        String::from_utf8_lossy(&notify.body),
        "channel=%23sales+%26+ops&text=Created+Ada+Lovelace"
    );

    let steps = h.steps(id).await;
    let names: Vec<(&str, i32, &str)> = steps
        .iter()
        .map(|s| (s.step_name.as_str(), s.attempt, s.outcome.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("create", 1, "succeeded"),
            ("read", 1, "succeeded"),
            ("notify", 1, "succeeded")
        ]
    );
    assert_eq!(steps[1].extracted, Some(json!({"name": "Ada Lovelace"})));
    assert_eq!(
        steps[1].request["headers"]["authorization"],
        json!("[REDACTED]")
    );

    // The secret is in no stored row: not the steps, not the execution.
    let dump: String = sqlx::query_scalar(
        "SELECT concat((SELECT json_agg(s)::text FROM execution_steps s),
                       (SELECT json_agg(e)::text FROM connector_executions e))",
    )
    .fetch_one(&h.pool)
    .await
    .expect("dump");
    assert!(dump.contains("c-42"), "the dump holds the run");
    assert!(!dump.contains(secret), "a stored row holds the secret");
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT ciphertext FROM workspace_api_credentials")
        .fetch_one(&h.pool)
        .await
        .expect("ciphertext");
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn settings_and_credential_bindings_reach_the_steps(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat.postMessage"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "ts": "1.2"})))
        .mount(&stub)
        .await;
    credentials::put(
        &h.pool,
        &h.keyring,
        WS,
        "acme-slack-bot",
        &BTreeMap::from([("token".to_owned(), "xoxb-bound".to_owned())]),
    )
    .await
    .expect("store credential");
    let connector = h
        .connector(json!({
            "name": "Slack",
            "settings": {"base_url": format!("{}/api", stub.uri()), "channel": "#general"},
            "credential_bindings": {"slack": "acme-slack-bot"},
            "steps": [{"name": "post", "method": "POST", "url": "<<settings.base_url>>/chat.postMessage",
                       "auth": {"type": "bearer", "credential": "slack"},
                       "body": {"type": "json", "content": {"channel": "<<input.channel | default(settings.channel)>>", "text": "<<input.text>>"}},
                       "extract": {"ts": "$.ts"}}],
            "output": {"ts": "<<steps.post.extract.ts>>"}
        }))
        .await;
    let id = h.enqueue(connector, json!({"text": "hi"})).await;
    let execution = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(
        execution.status,
        ExecutionStatus::Succeeded,
        "{:?}",
        execution.error
    );
    assert_eq!(execution.output, Some(json!({"ts": "1.2"})));
    let received = stub.received_requests().await.expect("recording on");
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0]
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_owned()),
        Some("Bearer xoxb-bound".to_owned())
    );
    assert_eq!(
        received[0].body_json::<Value>().expect("json"),
        json!({"channel": "#general", "text": "hi"})
    );
}
