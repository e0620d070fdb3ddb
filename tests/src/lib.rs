//! Test harness for Conveyor's end-to-end tests: a fresh database per test
//! (`#[sqlx::test]`), the real runner and worker, the in-process API
//! ([`api`]), and loopback stub servers.

pub mod api;
pub mod cluster;
pub mod oauth_server;
pub mod overlap;
pub mod process;
pub mod standard_webhooks;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use conveyor_engine::connector;
use conveyor_engine::crypto::{Key, Keyring};
use conveyor_engine::http::{HttpConfig, StepClient};
use conveyor_engine::runner::{Runner, RunnerConfig};
use conveyor_engine::state::StartedBy;
use conveyor_engine::store::executions::StepRow;
use conveyor_engine::store::executions::{self, NewExecution};
use conveyor_engine::store::history::{self, ExecutionView};
use conveyor_worker::{Worker, WorkerConfig};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The workspace most tests use.
pub const WS: &str = "ws_test";

/// One test's Conveyor: pool, keyring and a worker on loopback.
pub struct Harness {
    /// The test's own database.
    pub pool: PgPool,
    /// The keyring credentials are sealed with.
    pub keyring: Arc<Keyring>,
    /// A worker (its id is `worker-a`).
    pub worker: Worker,
}

impl Harness {
    /// A harness with the test worker settings ([`test_worker_config`]:
    /// a 3 s lease, a fast poll) and worker id `worker-a`.
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, test_worker_config("worker-a"))
    }

    /// A harness with an explicit worker configuration.
    pub fn with_config(pool: PgPool, config: WorkerConfig) -> Self {
        let keyring = Arc::new(Keyring::new(Key::generate(), []));
        let worker = worker(&pool, &keyring, config);
        Self {
            pool,
            keyring,
            worker,
        }
    }

    /// Saves a connector (validated) and returns its id and version.
    pub async fn connector(&self, definition: Value) -> (Uuid, i32) {
        let c = connector::parse_and_validate(&definition).expect("valid connector");
        connector_create(&self.pool, &c).await
    }

    /// Enqueues an execution now.
    pub async fn enqueue(&self, connector: (Uuid, i32), input: Value) -> Uuid {
        enqueue(&self.pool, connector, input, None).await
    }

    /// Runs ready executions with the worker until `id` reaches a final
    /// status or `timeout` passes; returns the execution.
    pub async fn run_until_final(&self, id: Uuid, timeout: Duration) -> ExecutionView {
        self.poll_final(id, timeout, true).await
    }

    /// Waits, running nothing itself (other processes or tasks run the
    /// workers), until `id` reaches a final status or `timeout` passes.
    pub async fn wait_final(&self, id: Uuid, timeout: Duration) -> ExecutionView {
        self.poll_final(id, timeout, false).await
    }

    async fn poll_final(&self, id: Uuid, timeout: Duration, run: bool) -> ExecutionView {
        let started = std::time::Instant::now();
        loop {
            let e = self.execution(id).await;
            if e.status.is_final() {
                return e;
            }
            assert!(
                started.elapsed() < timeout,
                "execution {id} still {} after {timeout:?}",
                e.status
            );
            if !run || self.worker.run_next().await.expect("run_next").is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Reads an execution of [`WS`].
    pub async fn execution(&self, id: Uuid) -> ExecutionView {
        history::get(&self.pool, WS, id)
            .await
            .expect("get")
            .expect("execution exists")
    }

    /// Every stored step attempt of an execution of [`WS`].
    pub async fn steps(&self, id: Uuid) -> Vec<StepRow> {
        history::steps(&self.pool, WS, id).await.expect("steps")
    }

    /// Makes the lease of running execution `id` have run out `ago`, by
    /// the database's clock (which leases are set and judged by): its
    /// holder stalled or died without waiting for it in real time.
    pub async fn lease_ran_out(&self, id: Uuid, ago: Duration) {
        let done = sqlx::query(
            "UPDATE connector_executions SET lease_expires_at = now() - $2::interval
             WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .bind(ago)
        .execute(&self.pool)
        .await
        .expect("expire the lease");
        assert_eq!(done.rows_affected(), 1, "{id} is running");
    }
}

/// Worker settings for tests: small lease, fast poll, short grace.
pub fn test_worker_config(id: &str) -> WorkerConfig {
    WorkerConfig {
        worker_id: id.to_owned(),
        concurrency: 8,
        lease: Duration::from_secs(3),
        poll_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
        max_reclaims: 5,
        claim_batch: 8,
        claim_cooldown: Duration::from_millis(5),
        retention: None,
        delivery_retention: None,
        observe_queue: false,
        scheduler: false,
        workspace_max_running: executions::DEFAULT_WORKSPACE_MAX_RUNNING,
    }
}

/// A worker over `pool` that may reach loopback stub servers. Its group
/// committer runs on a spawned task until the worker is dropped.
pub fn worker(pool: &PgPool, keyring: &Arc<Keyring>, config: WorkerConfig) -> Worker {
    let client = StepClient::new(HttpConfig {
        allow_private_networks: true,
        ..HttpConfig::default()
    })
    .expect("client");
    let (runner, committer) = Runner::new(
        pool.clone(),
        client,
        keyring.clone(),
        RunnerConfig {
            worker_id: config.worker_id.clone(),
            lease: config.lease,
            ..RunnerConfig::default()
        },
    );
    tokio::spawn(committer.run());
    Worker::new(pool.clone(), Arc::new(runner), config)
}

/// Stores a connector in [`WS`].
pub async fn connector_create(pool: &PgPool, c: &connector::Connector) -> (Uuid, i32) {
    conveyor_engine::store::connectors::create(pool, WS, c)
        .await
        .expect("create connector")
}

/// Enqueues an execution in [`WS`].
pub async fn enqueue(
    pool: &PgPool,
    connector: (Uuid, i32),
    input: Value,
    idempotency_key: Option<&str>,
) -> Uuid {
    let new = NewExecution {
        idempotency_key: idempotency_key.map(str::to_owned),
        ..new_execution(connector, input)
    };
    enqueue_new(pool, &new).await
}

/// An execution of `connector` in [`WS`] with default settings, to adjust
/// with struct update syntax.
pub fn new_execution((connector_id, connector_version): (Uuid, i32), input: Value) -> NewExecution {
    NewExecution {
        workspace_id: WS.to_owned(),
        connector_id,
        connector_version,
        input,
        idempotency_key: None,
        priority: 0,
        run_at: None,
        rerun_of: None,
        trace_context: None,
        started_by: StartedBy::User("test".to_owned()),
        callback_url: None,
    }
}

/// Enqueues `new` now.
pub async fn enqueue_new(pool: &PgPool, new: &NewExecution) -> Uuid {
    let mut conn = pool.acquire().await.expect("conn");
    executions::enqueue(&mut conn, new, Utc::now())
        .await
        .expect("enqueue")
        .id
}

/// A stored first attempt of step 0 (`ping`) that succeeded with 200, as
/// `worker` would commit it, to adjust with struct update syntax.
pub fn stored_step(worker: &str) -> StepRow {
    let now = Utc::now();
    StepRow {
        step_index: 0,
        attempt: 1,
        page: None,
        item: None,
        step_name: "ping".to_owned(),
        outcome: conveyor_engine::state::StepOutcome::Succeeded,
        request: serde_json::json!({"method": "GET"}),
        response_status: Some(200),
        response_headers: None,
        response_body: None,
        extracted: None,
        error: None,
        worker_id: worker.to_owned(),
        started_at: now,
        finished_at: now,
        duration_ms: 1,
        request_bytes: 0,
        response_bytes: 0,
    }
}

/// Enqueues `n` executions of `connector` with inputs `{"i": 0..n}`, in
/// one transaction.
pub async fn enqueue_many(pool: &PgPool, connector: (Uuid, i32), n: u64) {
    let mut tx = pool.begin().await.expect("begin");
    for i in 0..n {
        let new = new_execution(connector, serde_json::json!({ "i": i }));
        executions::enqueue(&mut tx, &new, Utc::now())
            .await
            .expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

/// The URL of a test's own database, for child processes (the tests'
/// clusters trust loopback, so no password is carried).
pub fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or("postgres")
    )
}

/// Ends the sessions of this test's database whose `application_name`
/// ends with `purpose` (`enqueue`, `claims`, ...), as a restart or a
/// network cut would; returns how many there were.
pub async fn end_sessions(pool: &PgPool, purpose: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE '%' || $1
         ) ended",
    )
    .bind(purpose)
    .fetch_one(pool)
    .await
    .expect("terminate")
}

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
