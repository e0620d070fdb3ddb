//! `for_each` steps across real `conveyor-worker` processes: a killed
//! worker (SIGKILL) is resumed by another process at the items that were
//! in flight, one at a time or several at once, without re-sending the
//! finished ones, and a loop with `concurrency` has exactly that many
//! items in flight at a loopback stub, never more.

use std::sync::OnceLock;
use std::time::Duration;

use conveyor_engine::crypto::Key;
use conveyor_engine::state::ExecutionStatus;
use conveyor_tests::Harness;
use conveyor_tests::overlap::Overlap;
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

    let rows = item_rows(&h, id).await;
    let want: Vec<String> = (1..=10)
        .map(|k| {
            let by = if k < 7 { "worker-a" } else { "worker-b" };
            format!("i{k} #1 {by}")
        })
        .collect();
    assert_eq!(rows, want);
}

/// Posts each item `k` of `input.ids` to `{base}/items` as `{"id": k}`,
/// four at once, extracting `n`.
/// The execution's step rows as `i<item> #<attempt> <worker>`.
async fn item_rows(h: &Harness, id: uuid::Uuid) -> Vec<String> {
    h.steps(id)
        .await
        .iter()
        .map(|s| format!("i{} #{} {}", s.item.unwrap_or(0), s.attempt, s.worker_id))
        .collect()
}

fn four_at_once(base: &str) -> serde_json::Value {
    json!({"name": "Four at once", "steps": [
        {"name": "send", "method": "POST", "url": format!("{base}/items"),
         "for_each": {"items": "<<input.ids>>", "concurrency": 4},
         "body": {"type": "json", "content": {"id": "<<item>>"}},
         "extract": {"n": "$.n"}}]})
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_loop_with_concurrency_4_has_four_items_in_flight_and_never_more(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    // Items finish out of order: item k is held 150, 300 or 450 ms.
    let recorder = Overlap::new(|r| {
        let k = item(r);
        let hold = Duration::from_millis(150 * (1 + k % 3));
        (
            ResponseTemplate::new(200).set_body_json(json!({"n": k * 10})),
            hold,
        )
    });
    Mock::given(method("POST"))
        .and(path("/items"))
        .respond_with(recorder.clone())
        .mount(&stub)
        .await;
    let c = h.connector(four_at_once(&stub.uri())).await;
    let ids: Vec<u64> = (1..=16).collect();
    let id = h.enqueue(c, json!({"ids": ids})).await;
    let _worker = worker(&conveyor_tests::database_url(&h.pool), "worker-a");

    let e = h.wait_final(id, Duration::from_secs(40)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let tens: Vec<u64> = (1..=16).map(|k| k * 10).collect();
    assert_eq!(
        e.output.expect("output")["send"]["n"],
        json!(tens),
        "collected in item order, not in the order items finished"
    );
    assert_eq!(recorder.count(), 16, "each item is sent once");
    assert_eq!(recorder.peak(), 4, "items in flight at once");
    let rows = h.steps(id).await;
    let mut items: Vec<i32> = rows.iter().filter_map(|s| s.item).collect();
    items.sort_unstable();
    assert_eq!(items, (1..=16).collect::<Vec<i32>>(), "one row per item");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_worker_killed_with_four_items_in_flight_is_resumed_at_those_four(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    let answer = |k: u64| ResponseTemplate::new(200).set_body_json(json!({"n": k * 10}));
    // Items 9 to 12 hang the first time only: the worker is killed while
    // all four are in flight, after items 1 to 8 are done.
    for k in 9..=12 {
        Mock::given(method("POST"))
            .and(path("/items"))
            .and(body_json(json!({"id": k})))
            .respond_with(answer(k).set_delay(Duration::from_secs(8)))
            .up_to_n_times(1)
            .mount(&stub)
            .await;
    }
    for k in 1..=12 {
        Mock::given(method("POST"))
            .and(path("/items"))
            .and(body_json(json!({"id": k})))
            .respond_with(answer(k))
            .mount(&stub)
            .await;
    }
    let c = h.connector(four_at_once(&stub.uri())).await;
    let ids: Vec<u64> = (1..=12).collect();
    let id = h.enqueue(c, json!({"ids": ids})).await;
    let url = conveyor_tests::database_url(&h.pool);

    let mut a = worker(&url, "worker-a");
    for k in 9..=12 {
        wait_for_request(&stub, &format!("item {k}"), |r| item(r) == k).await;
    }
    a.kill();
    let _b = worker(&url, "worker-b");

    let e = h.wait_final(id, Duration::from_secs(40)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let tens: Vec<u64> = (1..=12).map(|k| k * 10).collect();
    assert_eq!(e.output.expect("output")["send"]["n"], json!(tens));
    let received = stub.received_requests().await.expect("recording");
    for k in 1..=12 {
        let keys: Vec<_> = received
            .iter()
            .filter(|r| item(r) == k)
            .map(|r| r.headers.get("idempotency-key").cloned())
            .collect();
        let times = if k >= 9 { 2 } else { 1 };
        assert_eq!(keys.len(), times, "item {k} sent {} times", keys.len());
        assert!(keys[0].is_some(), "item {k} carried no Idempotency-Key");
        assert!(
            keys.iter().all(|key| *key == keys[0]),
            "item {k} is re-sent with its key"
        );
    }
    let rows = item_rows(&h, id).await;
    let want: Vec<String> = (1..=12)
        .map(|k| {
            let by = if k <= 8 { "worker-a" } else { "worker-b" };
            format!("i{k} #1 {by}")
        })
        .collect();
    assert_eq!(rows, want);
}
