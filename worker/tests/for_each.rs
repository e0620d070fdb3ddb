//! A `for_each` step survives a killed worker: the `conveyor-worker` binary
//! is killed (SIGKILL) while item 7 of 10 is in flight, and another process
//! resumes the execution at item 7 without re-sending items 1 to 6.

use std::sync::OnceLock;
use std::time::Duration;

use conveyor_engine::crypto::Key;
use conveyor_engine::state::ExecutionStatus;
use conveyor_tests::Harness;
use conveyor_tests::process::{WorkerProcess, wait_for_request};
use serde_json::json;
use sqlx::PgPool;
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_conveyor-worker");

fn encryption_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| Key::generate().to_base64())
}

/// A worker process with this test's key and a small connection pool.
fn worker(database_url: &str, id: &str) -> WorkerProcess {
    let pool = [("CONVEYOR_DB_MAX_CONNECTIONS", "5")];
    WorkerProcess::start(WORKER_BIN, database_url, encryption_key(), id, &pool)
}

/// The item a request carried (its `id` body field).
fn item(r: &Request) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|b| b["id"].as_u64())
        .unwrap_or(0)
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_worker_killed_on_item_7_is_resumed_at_item_7_by_another(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    // Item k (at index k - 1) is answered with `k * 10`.
    let answer = |k: u64| ResponseTemplate::new(200).set_body_json(json!({"n": k * 10}));
    // Item 7 hangs the first time only: the worker is killed meanwhile.
    Mock::given(method("POST"))
        .and(path("/items"))
        .and(body_json(json!({"id": 7, "at": 6})))
        .respond_with(answer(7).set_delay(Duration::from_secs(8)))
        .up_to_n_times(1)
        .mount(&stub)
        .await;
    for k in 1..=10 {
        Mock::given(method("POST"))
            .and(path("/items"))
            .and(body_json(json!({"id": k, "at": k - 1})))
            .respond_with(answer(k))
            .mount(&stub)
            .await;
    }
    let c = h
        .connector(json!({"name": "Ten items", "steps": [
            {"name": "send", "method": "POST", "url": format!("{}/items", stub.uri()),
             "for_each": {"items": "<<input.ids>>"},
             "body": {"type": "json", "content": {"id": "<<item>>", "at": "<<index>>"}},
             "extract": {"n": "$.n"}}]}))
        .await;
    let ids: Vec<u64> = (1..=10).collect();
    let id = h.enqueue(c, json!({"ids": ids})).await;
    let url = conveyor_tests::database_url(&h.pool);

    let mut a = worker(&url, "worker-a");
    wait_for_request(&stub, "item 7", |r| item(r) == 7).await;
    a.kill();
    let _b = worker(&url, "worker-b");

    let e = h.wait_final(id, Duration::from_secs(40)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(
        e.output.expect("output")["send"]["n"],
        json!([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    );
    let received = stub.received_requests().await.expect("recording");
    let sent: Vec<u64> = received.iter().map(item).collect();
    assert_eq!(
        sent,
        [1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10],
        "only item 7, in flight at the kill, is sent twice"
    );
    let keys: Vec<_> = received
        .iter()
        .filter(|r| item(r) == 7)
        .map(|r| r.headers.get("idempotency-key").cloned())
        .collect();
    assert!(keys[0].is_some(), "item 7 carried no Idempotency-Key");
    assert_eq!(keys[0], keys[1], "the re-sent item reuses its key");

    let rows: Vec<String> = h
        .steps(id)
        .await
        .iter()
        .map(|s| format!("i{} #{} {}", s.item.unwrap_or(0), s.attempt, s.worker_id))
        .collect();
    let want: Vec<String> = (1..=10)
        .map(|k| {
            let by = if k < 7 { "worker-a" } else { "worker-b" };
            format!("i{k} #1 {by}")
        })
        .collect();
    assert_eq!(rows, want);
}
