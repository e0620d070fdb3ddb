//! Flow control across real `conveyor-worker` processes sharing one
//! database, measured at a loopback stub that records when each request
//! arrives: a rate limit holds in every 1 s window, a concurrency key is
//! never exceeded, one workspace's backlog does not hold up another's
//! execution, and a busy worker claims the execution it parked for a
//! rate-limit slot at that slot.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use conveyor_engine::connector;
use conveyor_engine::crypto::Key;
use conveyor_engine::state::ExecutionStatus;
use conveyor_engine::store::executions;
use conveyor_engine::store::history;
use conveyor_tests::process::WorkerProcess;
use conveyor_tests::{Harness, WS};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_conveyor-worker");

fn encryption_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| Key::generate().to_base64())
}

/// `n` `conveyor-worker` children with the worker's default concurrency
/// (32); killed and reaped on drop.
fn start_workers(database_url: &str, n: usize) -> Vec<WorkerProcess> {
    (0..n)
        .map(|i| {
            WorkerProcess::start(
                WORKER_BIN,
                database_url,
                encryption_key(),
                &format!("flow-{i}"),
                &[("CONVEYOR_WORKER_CONCURRENCY", "32")],
            )
        })
        .collect()
}

/// Answers 200 after `delay`, recording when each request arrived.
#[derive(Clone)]
struct Recorder {
    arrivals: Arc<Mutex<Vec<Instant>>>,
    delay: Duration,
}

impl Recorder {
    fn new(delay: Duration) -> Self {
        Self {
            arrivals: Arc::default(),
            delay,
        }
    }

    fn arrivals(&self) -> Vec<Instant> {
        let mut a = self.arrivals.lock().expect("lock").clone();
        a.sort();
        a
    }
}

impl Respond for Recorder {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.arrivals.lock().expect("lock").push(Instant::now());
        ResponseTemplate::new(200).set_delay(self.delay)
    }
}

async fn stub(recorder: &Recorder) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(recorder.clone())
        .mount(&server)
        .await;
    server
}

/// Enqueues `n` executions of `connector` in `workspace` in one statement.
async fn enqueue_bulk(pool: &PgPool, workspace: &str, (id, version): (Uuid, i32), n: i32) {
    sqlx::query(
        "INSERT INTO connector_executions (id, workspace_id, connector_id, connector_version, input)
         SELECT gen_random_uuid(), $1, $2, $3, jsonb_build_object('i', i) FROM generate_series(1, $4) i",
    )
    .bind(workspace)
    .bind(id)
    .bind(version)
    .bind(n)
    .execute(pool)
    .await
    .expect("bulk enqueue");
}

/// Waits until `n` executions succeeded; fails early if any ends otherwise.
async fn wait_succeeded(pool: &PgPool, n: i64, timeout: Duration) {
    let started = Instant::now();
    loop {
        let (ok, bad): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE status IN ('failed', 'cancelled'))
             FROM connector_executions",
        )
        .fetch_one(pool)
        .await
        .expect("counts");
        assert_eq!(bad, 0, "executions ended badly");
        if ok == n {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{ok} of {n} succeeded after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn parked_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM execution_events WHERE kind = 'parked'")
        .fetch_one(pool)
        .await
        .expect("events")
}

fn one_step(url: &str, flow: Value) -> Value {
    let mut step = json!({"name": "call", "method": "GET", "url": url});
    for (k, v) in flow.as_object().expect("object") {
        step[k] = v.clone();
    }
    json!({"name": "flow", "steps": [step]})
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn four_workers_never_exceed_ten_requests_per_second_of_a_key(pool: PgPool) {
    let h = Harness::new(pool);
    let recorder = Recorder::new(Duration::ZERO);
    let server = stub(&recorder).await;
    let c = h
        .connector(one_step(
            &format!("{}/limited", server.uri()),
            json!({"rate_limit": {"key": "stub", "limit": 10, "per_ms": 1000}}),
        ))
        .await;
    enqueue_bulk(&h.pool, WS, c, 40).await;
    let _workers = start_workers(&conveyor_tests::database_url(&h.pool), 4);
    wait_succeeded(&h.pool, 40, Duration::from_secs(60)).await;

    let arrivals = recorder.arrivals();
    assert_eq!(arrivals.len(), 40, "one request per execution");
    let busiest = arrivals
        .iter()
        .map(|t| {
            arrivals
                .iter()
                .filter(|x| **x >= *t && **x < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(busiest <= 10, "{busiest} requests in one second");
    let span = arrivals[39] - arrivals[0];
    assert!(span >= Duration::from_millis(3_900), "40 sends in {span:?}");
    assert!(parked_events(&h.pool).await > 0, "executions were parked");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_concurrency_key_of_two_is_never_exceeded(pool: PgPool) {
    let h = Harness::new(pool);
    let delay = Duration::from_millis(300);
    let recorder = Recorder::new(delay);
    let server = stub(&recorder).await;
    let c = h
        .connector(one_step(
            &format!("{}/slow", server.uri()),
            json!({"concurrency": {"key": "workspace", "limit": 2}}),
        ))
        .await;
    enqueue_bulk(&h.pool, WS, c, 12).await;
    let _workers = start_workers(&conveyor_tests::database_url(&h.pool), 4);
    wait_succeeded(&h.pool, 12, Duration::from_secs(60)).await;

    // Each request is in flight at the stub from its arrival until its
    // answer `delay` later; a slot frees only once the answer arrived.
    let arrivals = recorder.arrivals();
    assert_eq!(arrivals.len(), 12);
    let most = arrivals
        .iter()
        .map(|t| {
            arrivals
                .iter()
                .filter(|x| **x <= *t && *t < **x + delay)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert_eq!(most, 2, "requests in flight at once");
    assert!(parked_events(&h.pool).await > 0, "executions were parked");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_backlog_of_20000_does_not_delay_another_workspaces_execution(pool: PgPool) {
    let h = Harness::new(pool);
    let recorder = Recorder::new(Duration::ZERO);
    let server = stub(&recorder).await;
    let definition = one_step(&format!("{}/x", server.uri()), json!({}));
    let busy = h.connector(definition.clone()).await;
    enqueue_bulk(&h.pool, WS, busy, 20_000).await;
    let other = "ws_other";
    conveyor_engine::store::ensure_workspace(&h.pool, other)
        .await
        .expect("workspace");
    let parsed = connector::parse_and_validate(&definition).expect("valid");
    let quiet = conveyor_engine::store::connectors::create(&h.pool, other, &parsed)
        .await
        .expect("connector");

    let _workers = start_workers(&conveyor_tests::database_url(&h.pool), 2);
    // The backlog is being worked on.
    let started = Instant::now();
    while recorder.arrivals().len() < 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "workers idle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = executions::NewExecution {
        workspace_id: other.to_owned(),
        ..conveyor_tests::new_execution(quiet, json!({}))
    };
    let id = conveyor_tests::enqueue_new(&h.pool, &new).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let e = loop {
        let e = history::get(&h.pool, other, id)
            .await
            .expect("get")
            .expect("exists");
        if e.status.is_final() || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(e.status, ExecutionStatus::Succeeded);
    let waited = e.finished_at.expect("finished") - e.created_at;
    assert!(
        waited < chrono::Duration::seconds(1),
        "the single execution took {waited} behind the backlog"
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM connector_executions WHERE workspace_id = $1 AND status = 'queued'",
    )
    .bind(WS)
    .fetch_one(&h.pool)
    .await
    .expect("count");
    assert!(left > 1000, "the backlog was still deep ({left} queued)");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_busy_worker_claims_its_parked_execution_at_its_slot_not_when_slots_free_up(
    pool: PgPool,
) {
    let h = Harness::new(pool);
    let slow = Recorder::new(Duration::from_secs(8));
    let slow_server = stub(&slow).await;
    let limited = Recorder::new(Duration::ZERO);
    let limited_server = stub(&limited).await;
    let busy = h.connector(one_step(&slow_server.uri(), json!({}))).await;
    // One send per 2 s: the second execution's slot is 2.1 s (with the
    // guard) after the first, so it parks, holding that slot.
    let paced = h
        .connector(one_step(
            &limited_server.uri(),
            json!({"rate_limit": {"key": "stub", "limit": 1, "per_ms": 2000}}),
        ))
        .await;
    // The paced pair first (priority), then three that hold their worker
    // slots for 8 s: once the second is parked, 3 of 4 slots are busy,
    // fewer free than the worker waits for before its next batch claim.
    for (conn, n, priority) in [(paced, 2, 10_i16), (busy, 3, 0)] {
        sqlx::query(
            "INSERT INTO connector_executions (id, workspace_id, connector_id, connector_version, input, priority)
             SELECT gen_random_uuid(), $1, $2, $3, '{}', $5 FROM generate_series(1, $4)",
        )
        .bind(WS)
        .bind(conn.0)
        .bind(conn.1)
        .bind(n)
        .bind(priority)
        .execute(&h.pool)
        .await
        .expect("enqueue");
    }
    // No poll within the test: only the parked execution's own wake can
    // bring it back while the slow ones run.
    let _worker = WorkerProcess::start(
        WORKER_BIN,
        &conveyor_tests::database_url(&h.pool),
        encryption_key(),
        "busy",
        &[
            ("CONVEYOR_WORKER_CONCURRENCY", "4"),
            ("CONVEYOR_POLL_INTERVAL_MS", "60000"),
        ],
    );
    wait_succeeded(&h.pool, 5, Duration::from_secs(60)).await;

    let sends = limited.arrivals();
    let held = slow.arrivals();
    assert_eq!((sends.len(), held.len()), (2, 3));
    assert_eq!(parked_events(&h.pool).await, 1, "the second send parked");
    let gap = sends[1] - sends[0];
    assert!(gap >= Duration::from_millis(1_950), "sent {gap:?} apart");
    // It went at its slot, while the slow requests still held the worker,
    // not once they were answered 8 s after they left.
    assert!(
        sends[1] < held[0] + Duration::from_secs(6),
        "the parked execution sent {:?} after the first slow request",
        sends[1] - held[0]
    );
    assert!(held[2] < sends[1], "the worker was busy when it sent");
}
