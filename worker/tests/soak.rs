//! Kill-storm soak: executions of a three-step connector across four
//! `conveyor-worker` processes while a random worker is killed with
//! SIGKILL every few seconds (and replaced) and PostgreSQL is restarted
//! once. Then, from the stub's request log and the database:
//!
//! - no execution is lost or stuck: every one succeeded;
//! - no finished step was sent again: no request for a step arrived after
//!   its stored (committed) attempt had finished;
//! - a re-sent in-flight step carried the same `Idempotency-Key`;
//! - every execution's step rows match its status: one succeeded row per
//!   step, nothing else, nothing leased.
//!
//! `CONVEYOR_SOAK_EXECUTIONS` (default 1,000 in the suite; `scripts/soak`
//! runs 10,000) and `CONVEYOR_SOAK_KILL_EVERY_MS` (default 2,000) size it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use conveyor_engine::crypto::Key;
use conveyor_tests::cluster::PgCluster;
use conveyor_tests::{Harness, enqueue_many};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_conveyor-worker");
const WORKERS: usize = 4;
const STEPS: usize = 3;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One request the stub received: path, idempotency key, arrival time.
type Received = (String, String, DateTime<Utc>);

/// Answers 200 after a short delay (so kills land mid-step) and records
/// each request with its arrival time.
#[derive(Clone)]
struct Recorder(Arc<Mutex<Vec<Received>>>);

impl Respond for Recorder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((request.url.path().to_owned(), key, Utc::now()));
        ResponseTemplate::new(200)
            .set_body_json(json!({"ok": true}))
            .set_delay(Duration::from_millis(20))
    }
}

/// A worker process, SIGKILLed and reaped on drop.
struct Worker(Child);

impl Worker {
    fn start(url: &str, id: &str, key: &str) -> Self {
        let child = Command::new(WORKER_BIN)
            .env("DATABASE_URL", url)
            .env("CONVEYOR_ENCRYPTION_KEY", key)
            .env("CONVEYOR_ALLOW_PRIVATE_NETWORKS", "true")
            .env("CONVEYOR_AUTO_MIGRATE", "false")
            .env("CONVEYOR_LEASE_SECS", "3")
            .env("CONVEYOR_POLL_INTERVAL_MS", "100")
            .env("CONVEYOR_WORKER_CONCURRENCY", "16")
            .env("CONVEYOR_CLAIM_BATCH", "16")
            .env("CONVEYOR_DB_MAX_CONNECTIONS", "8")
            .env("CONVEYOR_MAX_RECLAIMS", "10")
            .env("CONVEYOR_WORKER_ID", id)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {WORKER_BIN}: {e}"));
        Self(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Executions by status; nothing during the restart.
async fn counts(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM connector_executions GROUP BY status",
    )
    .fetch_all(pool)
    .await
    .map(|rows| rows.into_iter().collect())
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_storm_loses_nothing_and_never_resends_a_finished_step() {
    let n = env_or("CONVEYOR_SOAK_EXECUTIONS", 1_000);
    let kill_every = Duration::from_millis(env_or("CONVEYOR_SOAK_KILL_EVERY_MS", 2_000));
    // Soak data is throwaway: durability off, as in scripts/test.
    let cluster = PgCluster::start(
        "soak",
        &[
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ],
    );
    let url = cluster.url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .expect("connect");
    conveyor_engine::MIGRATOR.run(&pool).await.expect("migrate");
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("GET"))
        .respond_with(Recorder(log.clone()))
        .mount(&stub)
        .await;
    let steps: Vec<_> = (1..=STEPS)
        .map(|k| {
            json!({"name": format!("s{k}"), "method": "GET",
                        "url": format!("{}/s{k}/<<execution.id>>", stub.uri())})
        })
        .collect();
    let c = h.connector(json!({"name": "soak", "steps": steps})).await;
    enqueue_many(&h.pool, c, n).await;

    let key = Key::generate().to_base64();
    let mut generation = 0;
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|i| Worker::start(&url, &format!("soak-{i}-0"), &key))
        .collect();
    let started = Instant::now();
    let deadline = Duration::from_secs(120 + n / 20);
    let (mut kills, mut restarted) = (0, false);
    let mut next_kill = Instant::now() + kill_every;
    loop {
        let c = counts(&h.pool).await;
        let done = c.get("succeeded").copied().unwrap_or(0)
            + c.get("failed").copied().unwrap_or(0)
            + c.get("cancelled").copied().unwrap_or(0);
        if done == i64::try_from(n).unwrap_or(i64::MAX) {
            break;
        }
        assert!(
            started.elapsed() < deadline,
            "stuck: {c:?} after {deadline:?}"
        );
        if !restarted && done * 3 >= i64::try_from(n).unwrap_or(i64::MAX) {
            // The outage outlasts the workers' leases; this sleep is the
            // outage itself.
            cluster.down();
            tokio::time::sleep(Duration::from_secs(4)).await;
            cluster.up();
            restarted = true;
        }
        if Instant::now() >= next_kill {
            let victim =
                usize::try_from(Utc::now().timestamp_subsec_nanos()).unwrap_or(0) % WORKERS;
            generation += 1;
            // Dropping the old handle SIGKILLs it; a fresh one replaces it.
            workers[victim] = Worker::start(&url, &format!("soak-{victim}-{generation}"), &key);
            kills += 1;
            next_kill = Instant::now() + kill_every;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    drop(workers);

    let c = counts(&h.pool).await;
    let failures: Vec<(serde_json::Value, i32)> = sqlx::query_as(
        "SELECT error, reclaims FROM connector_executions WHERE status <> 'succeeded' LIMIT 5",
    )
    .fetch_all(&h.pool)
    .await
    .expect("failures");
    assert_eq!(
        c.get("succeeded").copied(),
        Some(i64::try_from(n).unwrap_or(i64::MAX)),
        "every execution succeeds: {c:?}; for example {failures:?}"
    );
    assert!(restarted, "PostgreSQL was restarted");

    // Step rows: one succeeded row per step of every execution, nothing else.
    let rows: Vec<(Uuid, i32, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT execution_id, step_index, outcome, finished_at FROM execution_steps",
    )
    .fetch_all(&h.pool)
    .await
    .expect("step rows");
    assert_eq!(
        rows.len(),
        STEPS * usize::try_from(n).unwrap_or(0),
        "one row per step"
    );
    let mut finished: HashMap<String, DateTime<Utc>> = HashMap::new();
    for (id, index, outcome, at) in rows {
        assert_eq!(outcome, "succeeded", "step {index} of {id}");
        finished.insert(format!("/s{}/{id}", index + 1), at);
    }
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM connector_executions
         WHERE next_step <> $1 OR lease_owner IS NOT NULL OR output IS NULL",
    )
    .bind(i32::try_from(STEPS).unwrap_or(i32::MAX))
    .fetch_one(&h.pool)
    .await
    .expect("leftovers");
    assert_eq!(
        leftovers, 0,
        "finished executions hold no lease and every step"
    );

    // The stub's log: every step sent, a re-send only while the step was
    // in flight (before its stored attempt finished), with the same key.
    let log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut by_path: HashMap<&str, Vec<&Received>> = HashMap::new();
    for r in log.iter() {
        by_path.entry(r.0.as_str()).or_default().push(r);
    }
    assert_eq!(by_path.len(), finished.len(), "every step was sent");
    let mut resent = 0;
    for (path, requests) in &by_path {
        let done = finished[*path];
        for r in requests {
            assert!(r.2 <= done, "{path} was sent again after it finished");
            assert!(!r.1.is_empty(), "{path} carried no Idempotency-Key");
            assert_eq!(r.1, requests[0].1, "{path} was re-sent with another key");
        }
        resent += requests.len() - 1;
    }
    eprintln!(
        "soak: {n} executions x {STEPS} steps, {WORKERS} workers, {kills} SIGKILLs, 1 PostgreSQL restart, \
         {elapsed:.1?}; lost 0, stuck 0, finished steps re-sent 0, in-flight steps re-sent {resent} (same key)"
    );
}
