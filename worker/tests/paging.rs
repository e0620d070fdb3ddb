//! A paginated step survives a killed worker: the `conveyor-worker` binary
//! is killed (SIGKILL) while page 7 of 10 is in flight, and another process
//! resumes the execution at page 7 without re-sending pages 1 to 6.

use std::sync::OnceLock;
use std::time::Duration;

use conveyor_engine::crypto::Key;
use conveyor_engine::state::ExecutionStatus;
use conveyor_tests::Harness;
use conveyor_tests::process::{WorkerProcess, wait_for_request};
use serde_json::json;
use sqlx::PgPool;
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
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

/// The `after` cursor a list request carried (`""` on the first page).
fn cursor(r: &Request) -> String {
    r.url
        .query_pairs()
        .find(|(k, _)| k == "after")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_worker_killed_on_page_7_is_resumed_at_page_7_by_another(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    // Page k holds item k and the cursor of page k + 1 (`c<k+1>`).
    let body = |k: u32| {
        let next = (k < 10).then(|| json!({"after": format!("c{}", k + 1)}));
        json!({"results": [{"id": k}], "paging": {"next": next}})
    };
    // Page 7 hangs the first time only: the worker is killed meanwhile.
    Mock::given(method("GET"))
        .and(path("/contacts"))
        .and(query_param("after", "c7"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(body(7))
                .set_delay(Duration::from_secs(8)),
        )
        .up_to_n_times(1)
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .and(path("/contacts"))
        .and(query_param_is_missing("after"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body(1)))
        .mount(&stub)
        .await;
    for k in 2..=10 {
        Mock::given(method("GET"))
            .and(path("/contacts"))
            .and(query_param("after", format!("c{k}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(body(k)))
            .mount(&stub)
            .await;
    }
    let c = h
        .connector(json!({"name": "Ten pages", "steps": [
            {"name": "list", "method": "GET", "url": format!("{}/contacts", stub.uri()),
             "paginate": {"next": {"type": "cursor", "path": "$.paging.next.after", "param": "after"}},
             "extract": {"ids": "$.results[*].id"}}]}))
        .await;
    let id = h.enqueue(c, json!({})).await;
    let url = conveyor_tests::database_url(&h.pool);

    let mut a = worker(&url, "worker-a");
    wait_for_request(&stub, "page 7", |r| cursor(r) == "c7").await;
    a.kill();
    let _b = worker(&url, "worker-b");

    let e = h.wait_final(id, Duration::from_secs(40)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(
        e.output.expect("output")["list"]["ids"],
        json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    );
    let received = stub.received_requests().await.expect("recording");
    let sent: Vec<String> = received.iter().map(cursor).collect();
    assert_eq!(
        sent,
        [
            "", "c2", "c3", "c4", "c5", "c6", "c7", "c7", "c8", "c9", "c10"
        ],
        "only page 7, in flight at the kill, is sent twice"
    );
    let keys: Vec<_> = received
        .iter()
        .filter(|r| cursor(r) == "c7")
        .map(|r| r.headers.get("idempotency-key").cloned())
        .collect();
    assert!(keys[0].is_some(), "page 7 carried no Idempotency-Key");
    assert_eq!(keys[0], keys[1], "the re-sent page reuses its key");

    let rows: Vec<String> = h
        .steps(id)
        .await
        .iter()
        .map(|s| format!("p{} #{} {}", s.page.unwrap_or(0), s.attempt, s.worker_id))
        .collect();
    let want: Vec<String> = (1..=10)
        .map(|k| {
            let by = if k < 7 { "worker-a" } else { "worker-b" };
            format!("p{k} #1 {by}")
        })
        .collect();
    assert_eq!(rows, want);
}
