//! The `conveyor-worker` binary as real processes sharing one database:
//! several processes drain one queue without re-sending a finished step, a
//! killed worker's execution is finished by another, SIGTERM finishes the
//! step in flight and hands the rest back, and a database restart is
//! survived, and a schedule firing every second starts one execution per
//! tick whichever process fires it.
//!
//! Every child is killed when its guard drops, and every wait polls the
//! database or the stub with a timeout.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::Utc;
use conveyor_engine::crypto::Key;
use conveyor_engine::schedule::CronSchedule;
use conveyor_engine::state::{ExecutionStatus, StartedBy};
use conveyor_engine::store::executions::{self, NewExecution};
use conveyor_engine::store::schedules;
use conveyor_tests::cluster::PgCluster;
use conveyor_tests::process::WorkerProcess;
use conveyor_tests::{Harness, WS};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_conveyor-worker");

/// One encryption key for every child of this test binary (no credential
/// is used, but the binary refuses to start without a key).
fn encryption_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| Key::generate().to_base64())
}

/// A worker with the test settings plus `extra` variables.
fn start_worker(database_url: &str, id: &str, extra: &[(&str, &str)]) -> WorkerProcess {
    WorkerProcess::start(WORKER_BIN, database_url, encryption_key(), id, extra)
}

/// Polls `check` every 100 ms until it holds; panics after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Executions per status; a database error (during a restart) reads as
/// nothing known yet.
async fn status_counts(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM connector_executions GROUP BY status",
    )
    .fetch_all(pool)
    .await
    .map(|rows| rows.into_iter().collect())
    .unwrap_or_default()
}

async fn succeeded(pool: &PgPool) -> i64 {
    status_counts(pool)
        .await
        .get("succeeded")
        .copied()
        .unwrap_or(0)
}

/// Waits until `n` executions succeeded, failing early (with the counts)
/// if any ends otherwise.
async fn wait_all_succeeded(pool: &PgPool, n: i64, timeout: Duration) {
    let started = Instant::now();
    loop {
        let counts = status_counts(pool).await;
        let get = |s: &str| counts.get(s).copied().unwrap_or(0);
        assert_eq!(
            get("failed") + get("cancelled"),
            0,
            "executions ended badly: {counts:?}"
        );
        if get("succeeded") == n {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "only {counts:?} after {timeout:?}; expected {n} succeeded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connector whose steps `s1..=sN` GET `<stub>/sK/<execution id>`.
fn connector(stub: &str, steps: usize) -> Value {
    let steps: Vec<Value> = (1..=steps)
        .map(|k| {
            json!({"name": format!("s{k}"), "method": "GET",
                   "url": format!("{stub}/s{k}/<<execution.id>>")})
        })
        .collect();
    json!({"name": format!("{} steps", steps.len()), "steps": steps})
}

/// Enqueues `n` executions in one transaction.
async fn enqueue_many(pool: &PgPool, (connector_id, connector_version): (Uuid, i32), n: usize) {
    let mut tx = pool.begin().await.expect("begin");
    for i in 0..n {
        executions::enqueue(
            &mut tx,
            &NewExecution {
                workspace_id: WS.to_owned(),
                connector_id,
                connector_version,
                input: json!({"i": i}),
                idempotency_key: None,
                priority: 0,
                run_at: None,
                rerun_of: None,
                trace_context: None,
                started_by: StartedBy::User("test".to_owned()),
                callback_url: None,
            },
            Utc::now(),
        )
        .await
        .expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

/// Requests the stub received, by path.
async fn requests_by_path(stub: &MockServer) -> HashMap<String, Vec<Request>> {
    let mut by_path: HashMap<String, Vec<Request>> = HashMap::new();
    for r in stub.received_requests().await.expect("request recording") {
        by_path.entry(r.url.path().to_owned()).or_default().push(r);
    }
    by_path
}

fn idempotency_key(r: &Request) -> String {
    r.headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Mounts an immediate 200 with a small JSON body for `GET <regex>`.
async fn answer_at_once(stub: &MockServer, path: &str) {
    Mock::given(method("GET"))
        .and(path_regex(path))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(stub)
        .await;
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn three_processes_run_2000_executions_and_never_resend_a_finished_step(pool: PgPool) {
    const N: usize = 2000;
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    answer_at_once(&stub, "^/s[12]/").await;
    let c = h.connector(connector(&stub.uri(), 2)).await;
    enqueue_many(&h.pool, c, N).await;

    let url = conveyor_tests::database_url(&h.pool);
    // The third names its sessions in its URL; the others take the default.
    let named = format!("{url}?application_name=billing-workers");
    let mut workers: Vec<WorkerProcess> = (1..=3)
        .map(|i| {
            start_worker(
                if i == 3 { &named } else { &url },
                &format!("worker-{i}"),
                &[
                    ("CONVEYOR_WORKER_CONCURRENCY", "16"),
                    ("CONVEYOR_CLAIM_BATCH", "16"),
                ],
            )
        })
        .collect();
    let started = Instant::now();
    wait_all_succeeded(&h.pool, N as i64, Duration::from_secs(120)).await;
    eprintln!("{N} executions by 3 processes in {:?}", started.elapsed());
    for w in &mut workers {
        w.assert_running();
    }
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT application_name FROM pg_stat_activity
         WHERE datname = current_database() AND application_name <> '' ORDER BY 1",
    )
    .fetch_all(&h.pool)
    .await
    .expect("sessions");
    assert_eq!(
        sessions,
        [
            "billing-workers",
            "billing-workers claims",
            "billing-workers commits",
            "conveyor-worker",
            "conveyor-worker claims",
            "conveyor-worker commits"
        ],
        "the workers' sessions say which process they serve"
    );

    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM connector_executions")
        .fetch_all(&h.pool)
        .await
        .expect("ids");
    assert_eq!(ids.len(), N);
    let by_path = requests_by_path(&stub).await;
    let resent: Vec<(&String, usize)> = by_path
        .iter()
        .filter(|(_, rs)| rs.len() != 1)
        .map(|(p, rs)| (p, rs.len()))
        .collect();
    assert!(resent.is_empty(), "steps sent more than once: {resent:?}");
    for id in &ids {
        for step in ["s1", "s2"] {
            assert!(
                by_path.contains_key(&format!("/{step}/{id}")),
                "{step} of {id} was never sent"
            );
        }
    }
    assert_eq!(by_path.len(), 2 * N, "unexpected paths were requested");

    let (rows, ok): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE outcome = 'succeeded') FROM execution_steps",
    )
    .fetch_one(&h.pool)
    .await
    .expect("step rows");
    assert_eq!((rows, ok), (2 * N as i64, 2 * N as i64));

    let per_worker: Vec<(String, i64)> = sqlx::query_as(
        "SELECT worker_id, count(DISTINCT execution_id) FROM execution_steps
         GROUP BY worker_id ORDER BY worker_id",
    )
    .fetch_all(&h.pool)
    .await
    .expect("per worker");
    assert!(
        per_worker.len() > 1,
        "one worker ran everything: {per_worker:?}"
    );
    eprintln!("executions per worker: {per_worker:?}");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_killed_worker_s_execution_is_finished_by_another_without_resending_finished_steps(
    pool: PgPool,
) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    answer_at_once(&stub, "^/s1/").await;
    // Step 2 hangs the first time only: the worker is killed meanwhile.
    Mock::given(method("GET"))
        .and(path_regex("^/s2/"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true}))
                .set_delay(Duration::from_secs(8)),
        )
        .up_to_n_times(1)
        .mount(&stub)
        .await;
    answer_at_once(&stub, "^/s2/").await;
    answer_at_once(&stub, "^/s3/").await;
    let c = h.connector(connector(&stub.uri(), 3)).await;
    let id = h.enqueue(c, json!({})).await;
    let url = conveyor_tests::database_url(&h.pool);

    let mut a = start_worker(&url, "worker-a", &[]);
    let s2 = format!("/s2/{id}");
    wait_until(
        "step 2 to reach the stub",
        Duration::from_secs(20),
        || async { requests_by_path(&stub).await.contains_key(&s2) },
    )
    .await;
    a.kill();
    let _b = start_worker(&url, "worker-b", &[]);

    let e = h.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    assert_eq!(e.reclaims, 1, "A's lease expired once and B took it back");

    let by_path = requests_by_path(&stub).await;
    let count = |p: &str| by_path.get(p).map_or(0, Vec::len);
    assert_eq!(count(&format!("/s1/{id}")), 1, "finished step 1 re-sent");
    let s2_requests = &by_path[&s2];
    assert_eq!(
        s2_requests.len(),
        2,
        "step 2 is sent by A (killed in flight) and again by B"
    );
    let keys: Vec<String> = s2_requests.iter().map(idempotency_key).collect();
    assert!(!keys[0].is_empty(), "step 2 carried no Idempotency-Key");
    assert_eq!(keys[0], keys[1], "the re-send must reuse the key");
    assert_eq!(count(&format!("/s3/{id}")), 1);

    let steps: Vec<String> = h
        .steps(id)
        .await
        .iter()
        .map(|s| {
            format!(
                "{} #{} {} by {}",
                s.step_name, s.attempt, s.outcome, s.worker_id
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "s1 #1 succeeded by worker-a",
            "s2 #1 succeeded by worker-b",
            "s3 #1 succeeded by worker-b",
        ]
    );
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn sigterm_mid_step_completes_and_persists_the_step_and_leaves_nothing_leased(pool: PgPool) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex("^/s1/"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true}))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&stub)
        .await;
    answer_at_once(&stub, "^/s2/").await;
    let c = h.connector(connector(&stub.uri(), 2)).await;
    let id = h.enqueue(c, json!({})).await;
    let url = conveyor_tests::database_url(&h.pool);

    // A long lease: only an explicit release can requeue the execution
    // before the assertions run.
    let mut w = start_worker(
        &url,
        "worker-t",
        &[
            ("CONVEYOR_SHUTDOWN_GRACE_SECS", "10"),
            ("CONVEYOR_LEASE_SECS", "60"),
        ],
    );
    let s1 = format!("/s1/{id}");
    wait_until(
        "step 1 to reach the stub",
        Duration::from_secs(20),
        || async { requests_by_path(&stub).await.contains_key(&s1) },
    )
    .await;
    w.terminate();
    let status = w.wait_exit(Duration::from_secs(8)).await;
    assert!(status.success(), "worker exited with {status}");

    let steps = h.steps(id).await;
    assert_eq!(steps.len(), 1, "only step 1 ran: {steps:?}");
    assert_eq!(
        (steps[0].step_index, steps[0].outcome.as_str()),
        (0, "succeeded")
    );
    let e = h.execution(id).await;
    assert_eq!(
        e.status,
        ExecutionStatus::Queued,
        "handed back to the queue"
    );
    assert_eq!(e.lease_owner, None);
    assert_eq!(e.lease_expires_at, None);
    assert_eq!(e.next_step, 1, "resumes after the stored step");
    assert_eq!(e.reclaims, 0, "released, not expired");
    assert!(
        !requests_by_path(&stub)
            .await
            .contains_key(&format!("/s2/{id}")),
        "step 2 must not start after SIGTERM"
    );

    let _next = start_worker(&url, "worker-u", &[]);
    let e = h.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.error);
    let by_path = requests_by_path(&stub).await;
    assert_eq!(by_path[&s1].len(), 1, "finished step 1 re-sent");
    assert_eq!(by_path[&format!("/s2/{id}")].len(), 1);
    let workers: Vec<String> = h.steps(id).await.into_iter().map(|s| s.worker_id).collect();
    assert_eq!(workers, ["worker-t", "worker-u"]);
}

#[tokio::test]
async fn executions_survive_a_database_restart() {
    const N: i64 = 50;
    // Restarting the shared cluster would break the other tests.
    let cluster = PgCluster::start("processes-test", &[]);
    let url = cluster.url();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .expect("connect to the private cluster");
    conveyor_engine::MIGRATOR.run(&pool).await.expect("migrate");
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex("^/s[12]/"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true}))
                .set_delay(Duration::from_millis(200)),
        )
        .mount(&stub)
        .await;
    let c = h.connector(connector(&stub.uri(), 2)).await;
    enqueue_many(&h.pool, c, N as usize).await;

    let mut workers = [
        start_worker(&url, "worker-1", &[("CONVEYOR_WORKER_CONCURRENCY", "4")]),
        start_worker(&url, "worker-2", &[("CONVEYOR_WORKER_CONCURRENCY", "4")]),
    ];
    wait_until(
        "a few executions to succeed",
        Duration::from_secs(30),
        || {
            let pool = h.pool.clone();
            async move { succeeded(&pool).await >= 5 }
        },
    )
    .await;
    let before = succeeded(&h.pool).await;
    assert!(before < N, "everything finished before the restart");

    // The outage outlasts the workers' 5 s pool acquire timeout (a shorter
    // one is hidden by the pool's connect retries) and their 3 s leases:
    // claims, heartbeats and step commits fail, in-flight leases expire,
    // and the workers must back off, reconnect and rescue. This sleep is
    // the outage itself, not a synchronisation.
    cluster.down();
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.up();
    let restarted = Instant::now();
    wait_all_succeeded(&h.pool, N, Duration::from_secs(90)).await;
    eprintln!(
        "{} executions finished in {:?} after the restart",
        N - before,
        restarted.elapsed()
    );
    for w in &mut workers {
        w.assert_running();
    }

    let per_step: Vec<(Uuid, i32, i64, i64)> = sqlx::query_as(
        "SELECT execution_id, step_index, count(*),
                count(*) FILTER (WHERE outcome = 'succeeded')
         FROM execution_steps GROUP BY execution_id, step_index",
    )
    .fetch_all(&h.pool)
    .await
    .expect("step rows");
    assert_eq!(per_step.len(), 2 * N as usize, "every step has rows");
    for (id, step, rows, ok) in &per_step {
        assert_eq!(
            (*rows, *ok),
            (1, 1),
            "step {step} of {id}: {rows} rows, {ok} succeeded"
        );
    }

    // A step in flight during the outage may be re-sent, with the same key.
    let by_path = requests_by_path(&stub).await;
    assert_eq!(by_path.len(), 2 * N as usize);
    let mut resent = 0;
    for (path, requests) in &by_path {
        let first = idempotency_key(&requests[0]);
        assert!(!first.is_empty(), "{path} carried no Idempotency-Key");
        for r in &requests[1..] {
            assert_eq!(idempotency_key(r), first, "{path} re-sent with another key");
        }
        resent += requests.len() - 1;
    }
    eprintln!("{resent} in-flight steps re-sent after the restart");
}

#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_schedule_firing_every_second_across_three_processes_starts_one_execution_per_tick(
    pool: PgPool,
) {
    let h = Harness::new(pool);
    let stub = MockServer::start().await;
    answer_at_once(&stub, "^/s1/").await;
    let (connector_id, _) = h.connector(connector(&stub.uri(), 1)).await;
    let spec = schedules::ScheduleSpec {
        cron: "* * * * * *".to_owned(),
        timezone: "Europe/Paris".to_owned(),
        input: json!({}),
        overlap: schedules::Overlap::Allow,
        end_at: None,
    };
    let now = Utc::now();
    let first = CronSchedule::parse(&spec.cron, &spec.timezone)
        .expect("valid")
        .next_after(now + chrono::Duration::seconds(1));
    let schedule = schedules::create(&h.pool, WS, connector_id, &spec, first, now)
        .await
        .expect("schedule");

    let url = conveyor_tests::database_url(&h.pool);
    let mut workers: Vec<WorkerProcess> = (1..=3)
        .map(|i| start_worker(&url, &format!("sched-{i}"), &[]))
        .collect();
    let ticks = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM schedule_ticks")
            .fetch_one(&h.pool)
            .await
            .unwrap_or(0)
    };
    wait_until("six ticks", Duration::from_secs(60), || async {
        ticks().await >= 6
    })
    .await;
    sqlx::query("UPDATE connector_schedules SET paused = true")
        .execute(&h.pool)
        .await
        .expect("pause");
    let fired = ticks().await;
    wait_all_succeeded(&h.pool, fired, Duration::from_secs(60)).await;
    for w in &mut workers {
        w.assert_running();
    }

    // Every tick started exactly one execution, and every execution the
    // schedule started belongs to exactly one tick.
    let per_tick: Vec<(chrono::DateTime<Utc>, String, i64)> = sqlx::query_as(
        "SELECT t.tick_at, t.outcome, count(e.id) FROM schedule_ticks t
         LEFT JOIN connector_executions e ON e.id = t.execution_id
         GROUP BY t.tick_at, t.outcome ORDER BY t.tick_at",
    )
    .fetch_all(&h.pool)
    .await
    .expect("ticks");
    assert_eq!(per_tick.len() as i64, fired);
    for (at, outcome, executions) in &per_tick {
        assert_eq!((outcome.as_str(), *executions), ("started", 1), "tick {at}");
        assert_eq!(
            at.timestamp_subsec_nanos(),
            0,
            "tick {at} is not on a second"
        );
    }
    let started_by = format!("schedule:{}", schedule.id);
    let (executions, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT t.tick_at) FROM connector_executions e
         JOIN schedule_ticks t ON t.execution_id = e.id WHERE e.started_by = $1",
    )
    .bind(&started_by)
    .fetch_one(&h.pool)
    .await
    .expect("executions");
    assert_eq!((executions, distinct), (fired, fired));
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM connector_executions")
        .fetch_one(&h.pool)
        .await
        .expect("count");
    assert_eq!(all, fired, "an execution without a tick was started");
}
