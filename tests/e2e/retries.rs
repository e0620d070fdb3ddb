//! Durable retries: rescheduled rows, every attempt stored.

use std::time::Duration;

use conveyor_engine::state::{ExecutionStatus, StepOutcome};
use conveyor_tests::Harness;
use serde_json::json;
use sqlx::PgPool;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_step_that_fails_twice_with_503_succeeds_on_attempt_three(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&stub)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 7})))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "flaky",
            "retry": {"max_attempts": 3, "initial_delay_ms": 200, "max_delay_ms": 1000, "multiplier": 2.0},
            "steps": [{"name": "post", "method": "POST", "url": format!("{}/x", stub.uri()),
                       "extract": {"id": "$.id"}}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(e.output, Some(json!({"post": {"id": 7}})));
    let steps = h.steps(id).await;
    let outcomes: Vec<(i32, &str, Option<i32>)> = steps
        .iter()
        .map(|s| (s.attempt, s.outcome.as_str(), s.response_status))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, "retry_scheduled", Some(503)),
            (2, "retry_scheduled", Some(503)),
            (3, "succeeded", Some(200))
        ]
    );
    // Gaps follow the policy: 200 ms then 400 ms, less at most 20% jitter.
    let gap = |a: usize| (steps[a + 1].started_at - steps[a].finished_at).num_milliseconds();
    assert!(gap(0) >= 160, "first gap {} ms", gap(0));
    assert!(gap(1) >= 320, "second gap {} ms", gap(1));
    let keys: Vec<String> = stub
        .received_requests()
        .await
        .expect("rec")
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        keys,
        [1, 2, 3].map(|n| format!("{id}:post:{n}")),
        "one key per attempt"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_429_with_retry_after_waits_at_least_that_long(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "2"))
        .up_to_n_times(1)
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "limited",
            "retry": {"max_attempts": 2, "initial_delay_ms": 10, "max_delay_ms": 10},
            "steps": [{"name": "get", "method": "GET", "url": format!("{}/x", stub.uri())}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded);
    let steps = h.steps(id).await;
    assert_eq!(steps.len(), 2);
    let gap = steps[1].started_at - steps[0].finished_at;
    assert!(gap >= chrono::Duration::seconds(2), "waited only {gap}");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_400_fails_at_once_naming_the_step(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "bad email"})))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "strict",
            "steps": [{"name": "create", "method": "POST", "url": format!("{}/x", stub.uri())},
                      {"name": "after", "method": "POST", "url": format!("{}/y", stub.uri())}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let error = e.error.expect("error");
    assert_eq!(error["step"], json!("create"));
    assert_eq!(error["kind"], json!("http_status"));
    assert_eq!(error["status"], json!(400));
    let steps = h.steps(id).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].outcome, StepOutcome::Failed);
    assert_eq!(steps[0].response_body, Some(json!({"error": "bad email"})));
    assert_eq!(stub.received_requests().await.expect("rec").len(), 1);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn on_error_continue_moves_on_to_the_next_step(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/optional"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .and(path("/main"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": 1})))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "tolerant",
            "steps": [{"name": "optional", "method": "GET", "url": format!("{}/optional", stub.uri()),
                       "on_error": "continue"},
                      {"name": "main", "method": "GET", "url": format!("{}/main", stub.uri()),
                       "extract": {"ok": "$.ok"}}],
            "output": {"ok": "<<steps.main.extract.ok>>", "skipped": "<<steps.optional.status>>"}}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(e.output, Some(json!({"ok": 1, "skipped": 404})));
    let outcomes: Vec<StepOutcome> = h.steps(id).await.into_iter().map(|s| s.outcome).collect();
    assert_eq!(outcomes, [StepOutcome::Continued, StepOutcome::Succeeded]);
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn the_event_log_records_every_claim_attempt_and_the_end(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    let c = h
        .connector(json!({"name": "flaky",
            "retry": {"max_attempts": 2, "initial_delay_ms": 10, "max_delay_ms": 10},
            "steps": [{"name": "get", "method": "GET", "url": format!("{}/x", stub.uri())}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let e = h.run_until_final(id, Duration::from_secs(20)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded);
    let events = conveyor_engine::store::history::events(&h.pool, conveyor_tests::WS, id, 0)
        .await
        .expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "enqueued",
            "claimed",
            "step_started",
            "retry_scheduled",
            "claimed",
            "step_started",
            "step_finished",
            "finished"
        ]
    );
    assert_eq!(events[3].details["status"], json!(503));
    assert_eq!(events[3].details["next_attempt"], json!(2));
    assert_eq!(events[6].details["outcome"], json!("succeeded"));
    assert_eq!(events[7].details["status"], json!("succeeded"));
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
}
