//! Outages against the poison cap, with real `conveyor-worker` processes
//! and `CONVEYOR_MAX_RECLAIMS=0` (the first counted lease loss poisons):
//! killing every worker while it holds leases, and restarting them once
//! the leases ran out, poisons nothing, and every execution finishes; but
//! an execution whose worker dies while another worker keeps making
//! progress is still failed as poisoned.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use conveyor_engine::crypto::Key;
use conveyor_engine::state::ExecutionStatus;
use conveyor_tests::process::WorkerProcess;
use conveyor_tests::{Harness, database_url};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_conveyor-worker");
/// The first counted lease loss fails the execution as poisoned.
const CAP_ZERO: (&str, &str) = ("CONVEYOR_MAX_RECLAIMS", "0");

/// Answers 200, after a minute while `slow` is set (a request a killed
/// worker leaves in flight).
struct Switchable {
    slow: Arc<AtomicBool>,
}

impl Respond for Switchable {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let ok = ResponseTemplate::new(200).set_body_json(json!({"ok": true}));
        if self.slow.load(Ordering::SeqCst) {
            ok.set_delay(Duration::from_secs(60))
        } else {
            ok
        }
    }
}

fn one_step(url: String) -> Value {
    json!({"name": "one", "steps": [{"name": "call", "method": "GET", "url": url}]})
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_default()
}

fn worker(pool: &PgPool, key: &str, id: &str, extra: &[(&str, &str)]) -> WorkerProcess {
    let mut vars = vec![CAP_ZERO];
    vars.extend_from_slice(extra);
    WorkerProcess::start(WORKER_BIN, &database_url(pool), key, id, &vars)
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn killing_every_worker_holding_leases_poisons_nothing(pool: PgPool) {
    let h = Harness::new(pool);
    let key = Key::generate().to_base64();
    let stub = MockServer::start().await;
    let slow = Arc::new(AtomicBool::new(true));
    Mock::given(method("GET"))
        .and(path("/work"))
        .respond_with(Switchable {
            slow: Arc::clone(&slow),
        })
        .mount(&stub)
        .await;
    let c = h.connector(one_step(format!("{}/work", stub.uri()))).await;
    let mut ids: Vec<Uuid> = Vec::new();
    for i in 0..4 {
        ids.push(h.enqueue(c, json!({"i": i})).await);
    }
    let mut first = vec![
        worker(&h.pool, &key, "outage-a", &[]),
        worker(&h.pool, &key, "outage-b", &[]),
    ];
    wait_until(
        "every execution in flight",
        Duration::from_secs(30),
        async || stub.received_requests().await.map_or(0, |r| r.len()) == 4,
    )
    .await;
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM connector_executions WHERE status = 'running'"
        )
        .await,
        4
    );
    // The outage: every worker vanishes at once, holding every lease.
    for w in &mut first {
        w.kill();
    }
    // Restart only once every lease (3 s, renewed each second) ran out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    slow.store(false, Ordering::SeqCst);
    let _second = [
        worker(&h.pool, &key, "outage-c", &[]),
        worker(&h.pool, &key, "outage-d", &[]),
    ];
    for id in &ids {
        let e = h.wait_final(*id, Duration::from_secs(30)).await;
        assert_eq!(e.status, ExecutionStatus::Succeeded, "{id}: {:?}", e.error);
        assert_eq!(e.reclaims, 0, "{id}: the outage was not counted");
    }
    assert_eq!(
        count(
            &h.pool,
            "SELECT count(*) FROM execution_events
             WHERE kind = 'lease_lost' AND details->>'counted' = 'false'"
        )
        .await,
        4,
        "each lost lease is recorded as uncounted"
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_lease_lost_while_another_worker_progresses_still_poisons(pool: PgPool) {
    let h = Harness::new(pool);
    let key = Key::generate().to_base64();
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/hang"))
        .respond_with(Switchable {
            slow: Arc::new(AtomicBool::new(true)),
        })
        .mount(&stub)
        .await;
    Mock::given(method("GET"))
        .and(path("/fast"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&stub)
        .await;
    let hang = h.connector(one_step(format!("{}/hang", stub.uri()))).await;
    let fast = h.connector(one_step(format!("{}/fast", stub.uri()))).await;
    let poison = h.enqueue(hang, json!({})).await;
    // A holds only the poison execution (one slot), B everything else.
    let mut a = worker(
        &h.pool,
        &key,
        "holder",
        &[("CONVEYOR_WORKER_CONCURRENCY", "1")],
    );
    wait_until(
        "the holder to take it",
        Duration::from_secs(30),
        async || h.execution(poison).await.lease_owner.as_deref() == Some("holder"),
    )
    .await;
    let _b = worker(&h.pool, &key, "survivor", &[]);
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(h.enqueue(fast, json!({"i": i})).await);
    }
    for id in &others {
        let e = h.wait_final(*id, Duration::from_secs(30)).await;
        assert_eq!(e.status, ExecutionStatus::Succeeded);
    }
    assert!(
        count(
            &h.pool,
            "SELECT count(*) FROM execution_steps WHERE worker_id = 'survivor'"
        )
        .await
            >= 1,
        "the survivor made progress"
    );
    // The holder dies alone; the survivor keeps working and rescues.
    a.kill();
    let e = h.wait_final(poison, Duration::from_secs(30)).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(
        e.error.as_ref().map(|e| e["kind"].clone()),
        Some(json!("poisoned")),
        "{:?}",
        e.error
    );
    assert_eq!(e.reclaims, 1);
}
