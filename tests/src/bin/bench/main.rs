//! `conveyor-bench`: the figures `scripts/bench` reports.
//!
//! Against the database in `DATABASE_URL` (a private cluster with default
//! durability settings, provisioned by `scripts/bench`) and an in-process
//! loopback stub that answers at once, it measures:
//!
//! - the raw database limit: a tight loop that claims rows of an equivalent
//!   table with `FOR UPDATE SKIP LOCKED` in batches and completes each with
//!   its own fenced UPDATE: no HTTP, no step rows;
//! - executions/s and steps/s of connectors of each step count in
//!   `BENCH_STEPS` (default `1,3`) at each number of `conveyor-worker`
//!   processes in `BENCH_PROCESSES` (default `1,2,4`), each process with
//!   `BENCH_WORKER_SLOTS` slots (default 64; also its claim batch);
//! - enqueue→start and enqueue→finish latency (p50/p99) of executions
//!   arriving one at a time into idle workers;
//! - the 1-step rate at 2 worker processes with trace export on (to a local
//!   OTLP receiver that discards), and with a rate limit never reached on
//!   every step, each against the plain rate of the same round
//!   ([`paired_runs`]);
//! - the rate the provider sees on a key at its limit;
//! - webhook deliveries/s through `POST /hooks/{id}` of an in-process API
//!   on loopback: GitHub-signed, each verified, deduplicated by its own
//!   delivery id and enqueued (no worker runs meanwhile);
//! - the database profile of a 1-step and a 3-step run, and of the 1-step
//!   run with a rate limit never reached ([`profile`]).
//!
//! `BENCH_API=1` adds the API under load ([`api_load`]), `BENCH_HISTORY=1`
//! claims, enqueues, history pages and retention deletes over a large
//! history ([`history`]); `BENCH_CORE=0` leaves out everything above but
//! the raw limit. The last line printed is one JSON object with every
//! figure.

mod api_load;
mod history;
mod profile;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use conveyor_api::auth::Authenticator;
use conveyor_api::{ApiConfig, AppState, app};
use conveyor_engine::connector;
use conveyor_engine::crypto::Key;
use conveyor_engine::crypto::Keyring;
use conveyor_engine::state::StartedBy;
use conveyor_engine::store::{connectors, executions, triggers};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const WS: &str = "ws_bench";
/// The limit of the rate-limited key, in sends per second.
const RATE_LIMIT: usize = 50;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of positive numbers, or `default` when unset
/// or holding none.
fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    let parsed: Vec<usize> = std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    if parsed.is_empty() {
        default.to_vec()
    } else {
        parsed
    }
}

fn env_on(name: &str, default: bool) -> bool {
    std::env::var(name).map_or(default, |v| v == "1")
}

/// The 1, 5 and 15 minute load averages of the machine, as `/proc/loadavg`
/// gives them: the box is shared, so every figure is stated with it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Paths the bench needs around it.
struct Env {
    url: String,
    key: String,
    worker_bin: std::path::PathBuf,
    api_bin: std::path::PathBuf,
    stub: String,
    /// Each worker process's slots and claim batch (`BENCH_WORKER_SLOTS`).
    slots: usize,
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let url = std::env::var("DATABASE_URL")?;
    let executions = env_usize("BENCH_EXECUTIONS", 20_000);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(80)
        .connect(&url)
        .await?;
    conveyor_engine::MIGRATOR.run(&pool).await?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .ok_or("no binary directory")?
        .to_path_buf();
    let env = Env {
        url,
        key: Key::generate().to_base64(),
        worker_bin: bin_dir.join("conveyor-worker"),
        api_bin: bin_dir.join("conveyor-api"),
        stub: start_stub().await?,
        slots: env_usize("BENCH_WORKER_SLOTS", 64).max(1),
    };
    let mut summary = Map::new();
    summary.insert("load_average_start".into(), json!(load_average()));
    summary.insert("worker_slots".into(), json!(env.slots));
    println!(
        "cores: {}, load average: {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average()
    );

    let ahead = warm_wal(&pool, None).await?;
    println!("WAL segments ready for reuse: {ahead}");
    let raw = raw_limit(&pool, executions).await?;
    println!(
        "raw database limit: {raw:.0} claims+completions/s (load average {})",
        load_average()
    );
    summary.insert("raw_limit_per_s".into(), json!(raw.round()));
    summary.insert("executions".into(), json!(executions));
    let one = connector_for(&pool, &env.stub, 1).await?;

    if env_on("BENCH_CORE", true) {
        core(&pool, &env, one, raw, executions, &mut summary).await?;
    }
    if env_on("BENCH_API", false) {
        let figures = api_load::run(&pool, &env, one).await?;
        summary.insert("api".into(), figures);
    }
    if env_on("BENCH_HISTORY", false) {
        let figures = history::run(&pool, one).await?;
        summary.insert("history".into(), figures);
    }
    summary.insert("load_average_end".into(), json!(load_average()));
    println!("{}", Value::Object(summary));
    Ok(())
}

/// The default figures: the scaling sweep, flow control, tracing, idle
/// latency, webhook deliveries and the profile.
async fn core(
    pool: &PgPool,
    env: &Env,
    one: (Uuid, i32),
    raw: f64,
    executions: usize,
    summary: &mut Map<String, Value>,
) -> BenchResult<()> {
    let processes = env_list("BENCH_PROCESSES", &[1, 2, 4]);
    let step_counts = env_list("BENCH_STEPS", &[1, 3]);
    let latency_samples = env_usize("BENCH_LATENCY_SAMPLES", 300);
    let mut per_steps = Map::new();
    let mut steps_per_s = Map::new();
    for &steps in &step_counts {
        let conn = if steps == 1 {
            one
        } else {
            connector_for(pool, &env.stub, steps).await?
        };
        let mut rates = Map::new();
        let mut step_rates = Map::new();
        for &procs in &processes {
            let rate = throughput(pool, env, conn, executions, procs, None).await?;
            println!(
                "{steps}-step: {procs} worker process(es): {rate:.0} executions/s, {:.0} steps/s ({:.2} of the raw limit; load average {})",
                rate * steps as f64,
                rate / raw,
                load_average()
            );
            rates.insert(procs.to_string(), json!(rate.round()));
            step_rates.insert(procs.to_string(), json!((rate * steps as f64).round()));
        }
        per_steps.insert(steps.to_string(), Value::Object(rates));
        steps_per_s.insert(steps.to_string(), Value::Object(step_rates));
    }
    let figure = |steps: usize, procs: usize| {
        per_steps
            .get(&steps.to_string())
            .and_then(|m| m.get(procs.to_string()))
            .and_then(Value::as_f64)
    };
    let most = processes.iter().copied().max().unwrap_or(1);
    if let Some(top) = figure(1, most) {
        summary.insert("one_step_ratio_to_raw".into(), json!(round2(top / raw)));
        if let Some(three) = figure(3, most) {
            // Steps/s of the 3-step connector over those of the 1-step one.
            summary.insert(
                "three_step_steps_ratio".into(),
                json!(round2(three * 3.0 / top)),
            );
        }
    }
    if let Some(m) = per_steps.get("1") {
        summary.insert("one_step_per_s".into(), m.clone());
    }
    if let Some(m) = per_steps.get("3") {
        summary.insert("three_step_per_s".into(), m.clone());
    }
    summary.insert("executions_per_s".into(), Value::Object(per_steps.clone()));
    summary.insert("steps_per_s".into(), Value::Object(steps_per_s));

    // Flow control: a key limited to RATE_LIMIT sends a second (the rate
    // should equal it), and a key whose limit is never reached (the cost
    // of the GCRA row on every step, against the plain 1-step figure).
    let limited = flow_connector(
        pool,
        &env.stub,
        json!({"key": "bench-limited", "limit": RATE_LIMIT, "per_ms": 1000}),
    )
    .await?;
    // Twenty seconds of sends at the limit, so that the start (workers
    // connecting, the first claims) weighs little in the rate.
    let limited_n = executions.min(RATE_LIMIT * 20);
    let limited_end_to_end = throughput(pool, env, limited, limited_n, 2, None).await?;
    let limited_rate = send_rate(pool, limited_n).await?;
    let limited_parks = parks_per_execution(pool, limited_n).await?;
    println!(
        "1-step, rate limit {RATE_LIMIT}/s on one key, 2 processes: {limited_rate:.1} sends/s at the key ({limited_end_to_end:.1} executions/s from first claim to last finish), {limited_parks:.2} parks per execution (load average {})",
        load_average()
    );
    let open = flow_connector(
        pool,
        &env.stub,
        json!({"key": "bench-open", "limit": 1_000_000, "per_ms": 1_000}),
    )
    .await?;
    let collector = start_collector().await?;
    let paired = paired_runs(pool, env, (one, open), &collector, executions).await?;
    let plain = median(paired.iter().map(|r| r.plain));
    let open_rate = median(paired.iter().map(|r| r.open));
    let traced = median(paired.iter().map(|r| r.traced));
    let flow_ratio = median(paired.iter().map(|r| r.open / r.plain.max(1e-6)));
    let tracing_ratio = median(paired.iter().map(|r| r.traced / r.plain.max(1e-6)));
    let open_parks = median(paired.iter().map(|r| r.open_parks));
    println!(
        "1-step, 2 processes, median of {} rounds: plain {plain:.0}, rate limit never reached {open_rate:.0} ({flow_ratio:.2} of plain, median of the rounds' ratios; {open_parks:.2} parks per execution), trace export on {traced:.0} executions/s ({tracing_ratio:.2} of plain)",
        paired.len()
    );

    let (start, finish) = latency(pool, env, one, latency_samples).await?;
    println!(
        "idle latency over {latency_samples} executions: enqueue->start p50 {:.2} ms, p99 {:.2} ms; enqueue->finish p50 {:.2} ms, p99 {:.2} ms (load average {})",
        start.0,
        start.1,
        finish.0,
        finish.1,
        load_average()
    );
    let deliveries = env_usize("BENCH_DELIVERIES", 5_000);
    let hooks = webhook_rate(pool, one, deliveries).await?;
    println!(
        "webhook deliveries through /hooks/{{id}}: {hooks:.0}/s over {deliveries} (load average {})",
        load_average()
    );
    // Where a bigger machine stops scaling, its profile shows why.
    let procs = env_usize("BENCH_PROFILE_PROCESSES", 2);
    let mut profiles = Vec::new();
    for steps in [1, 3] {
        let conn = if steps == 1 {
            one
        } else {
            connector_for(pool, &env.stub, steps).await?
        };
        profiles
            .push(profile::run(pool, env, (conn, None), steps, (executions, procs), None).await?);
    }
    // What every send's slot costs the database: its share of the group
    // takes, next to the plain 1-step profile above.
    profiles.push(
        profile::run(
            pool,
            env,
            (open, Some("rate limit never reached")),
            1,
            (executions, procs),
            None,
        )
        .await?,
    );
    // What trace export costs the workers (and the bench's receiver),
    // next to the plain 1-step profile.
    profiles.push(
        profile::run(
            pool,
            env,
            (one, Some("trace export on")),
            1,
            (executions, procs),
            Some(&collector),
        )
        .await?,
    );
    for (name, value) in [
        (
            "start_latency_ms",
            json!({"p50": round2(start.0), "p99": round2(start.1)}),
        ),
        (
            "finish_latency_ms",
            json!({"p50": round2(finish.0), "p99": round2(finish.1)}),
        ),
        ("traced_one_step_per_s", json!(traced.round())),
        ("tracing_throughput_ratio", json!(round2(tracing_ratio))),
        ("webhook_deliveries_per_s", json!(hooks.round())),
        ("rate_limit_per_s", json!(RATE_LIMIT)),
        ("rate_limited_per_s", json!(round2(limited_rate))),
        (
            "rate_limited_end_to_end_per_s",
            json!(round2(limited_end_to_end)),
        ),
        ("flow_control_per_s", json!(open_rate.round())),
        ("plain_one_step_per_s", json!(plain.round())),
        ("flow_control_ratio", json!(round2(flow_ratio))),
        (
            "paired_rounds",
            json!(
                paired
                    .iter()
                    .map(|r| json!({
                        "plain": r.plain.round(),
                        "flow_control": r.open.round(),
                        "traced": r.traced.round(),
                    }))
                    .collect::<Vec<_>>()
            ),
        ),
        (
            "rate_limited_parks_per_execution",
            json!(round2(limited_parks)),
        ),
        (
            "flow_control_parks_per_execution",
            json!(round2(open_parks)),
        ),
        ("profile", Value::Array(profiles)),
    ] {
        summary.insert(name.into(), value);
    }
    Ok(())
}

/// One round of the three 2-process 1-step runs that flow control and
/// tracing are compared in: executions/s of each, and the flow-control
/// run's parks per execution.
struct Paired {
    plain: f64,
    open: f64,
    traced: f64,
    open_parks: f64,
}

/// `BENCH_PAIRED_ROUNDS` (default 5) rounds of a plain run, a run whose
/// every step reserves a slot of a key never reached (`open`) and a run
/// with trace export on, in an order that rotates by one each round.
/// Each ratio is taken within a round, minutes apart at most rather than
/// across the whole bench: on a small shared machine the plain figure
/// alone moves by a third from one minute to the next, and the rotation
/// keeps a machine that speeds up or slows down during a round from
/// favouring the run that always came first.
async fn paired_runs(
    pool: &PgPool,
    env: &Env,
    (one, open): ((Uuid, i32), (Uuid, i32)),
    collector: &str,
    n: usize,
) -> BenchResult<Vec<Paired>> {
    let rounds = env_usize("BENCH_PAIRED_ROUNDS", 5).max(1);
    let mut out = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut rates = [0.0; 3];
        let mut open_parks = 0.0;
        for k in 0..3 {
            let which = (round + k) % 3;
            let (conn, otlp) = match which {
                0 => (one, None),
                1 => (open, None),
                _ => (one, Some(collector)),
            };
            rates[which] = throughput(pool, env, conn, n, 2, otlp).await?;
            if which == 1 {
                open_parks = parks_per_execution(pool, n).await?;
            }
        }
        println!(
            "round {}: 1-step, 2 processes: plain {:.0}, rate limit never reached {:.0} ({:.2}), trace export on {:.0} ({:.2}) executions/s (load average {})",
            round + 1,
            rates[0],
            rates[1],
            rates[1] / rates[0].max(1e-6),
            rates[2],
            rates[2] / rates[0].max(1e-6),
            load_average()
        );
        out.push(Paired {
            plain: rates[0],
            open: rates[1],
            traced: rates[2],
            open_parks,
        });
    }
    Ok(out)
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// An OTLP/HTTP receiver that accepts and discards spans.
async fn start_collector() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|_body: axum::body::Bytes| async { "" }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// A loopback HTTP server that answers every request at once.
async fn start_stub() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(|| async { axum::Json(json!({"ok": true, "id": 1})) });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

async fn connector_for(pool: &PgPool, stub: &str, steps: usize) -> BenchResult<(Uuid, i32)> {
    let steps: Vec<Value> = (0..steps)
        .map(|i| {
            json!({"name": format!("s{i}"), "method": "POST", "url": format!("{stub}/s{i}"),
                        "body": {"type": "json", "content": {"n": "<<input.n>>"}},
                        "extract": {"id": "$.id"}})
        })
        .collect();
    let c = connector::parse_and_validate(&json!({"name": "bench", "steps": steps}))
        .map_err(|e| e.to_string())?;
    Ok(connectors::create(pool, WS, &c).await?)
}

/// A 1-step connector whose step carries `rate_limit`.
async fn flow_connector(pool: &PgPool, stub: &str, rate_limit: Value) -> BenchResult<(Uuid, i32)> {
    let c = connector::parse_and_validate(&json!({"name": "bench flow", "steps": [
        {"name": "s0", "method": "POST", "url": format!("{stub}/s0"),
         "body": {"type": "json", "content": {"n": "<<input.n>>"}},
         "extract": {"id": "$.id"}, "rate_limit": rate_limit}]}))
    .map_err(|e| e.to_string())?;
    Ok(connectors::create(pool, WS, &c).await?)
}

async fn enqueue_many(pool: &PgPool, conn: (Uuid, i32), n: usize) -> BenchResult<()> {
    for chunk in 0..n.div_ceil(500) {
        let mut tx = pool.begin().await?;
        for i in chunk * 500..((chunk + 1) * 500).min(n) {
            let new = executions::NewExecution {
                workspace_id: WS.into(),
                connector_id: conn.0,
                connector_version: conn.1,
                input: json!({"n": i}),
                idempotency_key: None,
                priority: 0,
                run_at: None,
                rerun_of: None,
                trace_context: None,
                started_by: StartedBy::User("bench".to_owned()),
                callback_url: None,
            };
            executions::enqueue(&mut tx, &new, Utc::now()).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_workers(env: &Env, n: usize, otlp: Option<&str>) -> std::io::Result<Workers> {
    let mut children = Vec::new();
    for i in 0..n {
        let mut cmd = Command::new(&env.worker_bin);
        if let Some(endpoint) = otlp {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        children.push(
            cmd.env("DATABASE_URL", &env.url)
                .env("CONVEYOR_ENCRYPTION_KEY", &env.key)
                .env("CONVEYOR_ALLOW_PRIVATE_NETWORKS", "true")
                .env("CONVEYOR_AUTO_MIGRATE", "false")
                .env("CONVEYOR_WORKER_CONCURRENCY", env.slots.to_string())
                .env("CONVEYOR_CLAIM_BATCH", env.slots.to_string())
                .env("CONVEYOR_DB_MAX_CONNECTIONS", "24")
                .env("CONVEYOR_POLL_INTERVAL_MS", "1000")
                .env("CONVEYOR_WORKER_ID", format!("bench-{i}"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()?,
        );
    }
    Ok(Workers(children))
}

/// Empties the tables a run writes. The backends of workers just killed
/// can still be finishing a statement: a `TRUNCATE` that deadlocks with
/// one of them is tried again once it is gone, a few times at most.
async fn reset(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tries = 0;
    loop {
        let emptied = sqlx::query(
            "TRUNCATE execution_events, execution_steps, flow_rate_reservations, connector_executions",
        )
        .execute(pool)
        .await;
        match emptied {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40P01") && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other.map(drop),
        }
    }
}

async fn count_final(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM connector_executions WHERE status IN ('succeeded','failed','cancelled')")
        .fetch_one(pool)
        .await
}

/// Enqueues `n` executions, then starts `procs` workers; the rate is `n`
/// over first start to last finish, from the rows' own timestamps.
async fn throughput(
    pool: &PgPool,
    env: &Env,
    conn: (Uuid, i32),
    n: usize,
    procs: usize,
    otlp: Option<&str>,
) -> BenchResult<f64> {
    reset(pool).await?;
    enqueue_many(pool, conn, n).await?;
    let _workers = spawn_workers(env, procs, otlp)?;
    wait_finished(pool, n).await?;
    measured_rate(pool, n).await
}

/// The rate the provider saw in the last run of `n` 1-step executions:
/// `n - 1` intervals from the first send to the last.
async fn send_rate(pool: &PgPool, n: usize) -> BenchResult<f64> {
    let secs: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM max(started_at) - min(started_at))::float8 FROM execution_steps",
    )
    .fetch_one(pool)
    .await?;
    Ok(n.saturating_sub(1) as f64 / secs.max(1e-6))
}

/// How often the last run's `n` executions were parked by flow control,
/// on average: a kept slot parks each at most once, a missed slot once
/// more.
async fn parks_per_execution(pool: &PgPool, n: usize) -> BenchResult<f64> {
    let parks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM execution_events WHERE kind = 'parked'")
            .fetch_one(pool)
            .await?;
    Ok(parks as f64 / n.max(1) as f64)
}

/// Whether any execution is still queued or running. Each half stops at
/// the first live entry of its partial index (the `ORDER BY` is the
/// index's, so a plan reading the table would also have to sort what it
/// read); counting the final executions instead read the whole table,
/// every dead version included, at every poll: CPU taken from the run
/// being measured, and counted in its profile as PostgreSQL's.
/// Fills and recycles `segments` WAL segments (default: as many as
/// `max_wal_size` holds), and returns how many wait ahead of the write
/// position. A fresh cluster has none: each 16 MB of WAL is then a new
/// file that PostgreSQL zero-fills and syncs while holding its WAL write
/// lock, stalling every commit for tens of milliseconds, every second or
/// two at a few thousand executions a second. A server that has run for
/// a while renames old segments instead, so without this the figures
/// would measure the cluster's first minutes, not its steady state.
async fn warm_wal(pool: &PgPool, segments: Option<i64>) -> Result<i64, sqlx::Error> {
    let segments = match segments {
        Some(n) => n,
        None => {
            sqlx::query_scalar(
                "SELECT pg_size_bytes(current_setting('max_wal_size'))
                        / pg_size_bytes(current_setting('wal_segment_size'))",
            )
            .fetch_one(pool)
            .await?
        }
    };
    let mut conn = pool.acquire().await?;
    for _ in 0..segments {
        // A transaction with an id writes a commit record, so that each
        // switch has something to close.
        sqlx::query("SELECT txid_current()")
            .execute(&mut *conn)
            .await?;
        sqlx::query("SELECT pg_switch_wal()")
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("CHECKPOINT").execute(&mut *conn).await?;
    wal_segments_ahead(pool).await
}

/// WAL segment files past the one being written: ready to be written
/// without creating a file.
async fn wal_segments_ahead(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_ls_waldir()
         WHERE name ~ '^[0-9A-F]{24}$' AND name > pg_walfile_name(pg_current_wal_lsn())",
    )
    .fetch_one(pool)
    .await
}

async fn any_unfinished(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(ANY_UNFINISHED).fetch_one(pool).await
}

/// [`any_unfinished`]'s statement.
const ANY_UNFINISHED: &str =
    "SELECT EXISTS (SELECT 1 FROM connector_executions WHERE status = 'queued'
                    ORDER BY workspace_id, priority DESC, run_at, id LIMIT 1)
         OR EXISTS (SELECT 1 FROM connector_executions WHERE status = 'running'
                    ORDER BY workspace_id LIMIT 1)";

/// Polls until `n` executions are final (at most 10 minutes): until none
/// is queued or running, then counts the final ones once. Returns how
/// many statements it made.
async fn wait_finished(pool: &PgPool, n: usize) -> BenchResult<u64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut polls = 0;
    loop {
        polls += 1;
        if !any_unfinished(pool).await? {
            polls += 1;
            if usize::try_from(count_final(pool).await?).unwrap_or(0) >= n {
                return Ok(polls);
            }
        }
        if Instant::now() > deadline {
            return Err("executions did not finish within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` over first start to last finish of the executions in the table,
/// all of which must have succeeded.
async fn measured_rate(pool: &PgPool, n: usize) -> BenchResult<f64> {
    let (failed, secs): (i64, f64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status <> 'succeeded'),
                EXTRACT(EPOCH FROM max(finished_at) - min(started_at))::float8
         FROM connector_executions",
    )
    .fetch_one(pool)
    .await?;
    if failed > 0 {
        return Err(format!("{failed} executions did not succeed").into());
    }
    Ok(n as f64 / secs.max(1e-6))
}

/// One idle worker process; executions enqueued one at a time, each after
/// the previous finished.
async fn latency(
    pool: &PgPool,
    env: &Env,
    conn: (Uuid, i32),
    samples: usize,
) -> BenchResult<((f64, f64), (f64, f64))> {
    reset(pool).await?;
    let _workers = spawn_workers(env, 1, None)?;
    // Let the worker connect and settle into LISTEN.
    enqueue_many(pool, conn, 1).await?;
    while any_unfinished(pool).await? {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reset(pool).await?;
    for _ in 0..samples {
        enqueue_many(pool, conn, 1).await?;
        let wait = Instant::now();
        while any_unfinished(pool).await? {
            if wait.elapsed() > Duration::from_secs(10) {
                return Err("an execution did not finish within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Idle between arrivals, as a trickle of API calls would be.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM started_at - created_at)::float8 * 1000,
                EXTRACT(EPOCH FROM finished_at - created_at)::float8 * 1000
         FROM connector_executions WHERE status = 'succeeded'",
    )
    .fetch_all(pool)
    .await?;
    let mut start: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let mut finish: Vec<f64> = rows.iter().map(|r| r.1).collect();
    Ok((percentiles(&mut start), percentiles(&mut finish)))
}

fn percentiles(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if values.is_empty() {
            return f64::NAN;
        }
        let i = ((values.len() as f64 - 1.0) * p).round() as usize;
        values[i]
    };
    (at(0.50), at(0.99))
}

/// The raw limit: the same claim shape on an equivalent table, each row
/// completed by its own fenced UPDATE, 64 at a time, nothing else.
async fn raw_limit(pool: &PgPool, n: usize) -> BenchResult<f64> {
    sqlx::query("DROP TABLE IF EXISTS bench_raw_jobs")
        .execute(pool)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_raw_jobs (
             id uuid PRIMARY KEY, status text NOT NULL DEFAULT 'queued',
             priority smallint NOT NULL DEFAULT 0, run_at timestamptz NOT NULL DEFAULT now(),
             lease_owner text, lease_expires_at timestamptz, fencing_token bigint NOT NULL DEFAULT 0,
             input jsonb NOT NULL, finished_at timestamptz)",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "CREATE INDEX ON bench_raw_jobs (priority DESC, run_at, id) WHERE status = 'queued'",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO bench_raw_jobs (id, input)
         SELECT gen_random_uuid(), jsonb_build_object('n', g) FROM generate_series(1, $1) g",
    )
    .bind(i64::try_from(n)?)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE bench_raw_jobs")
        .execute(pool)
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let pool = pool.clone();
        let done = done.clone();
        tasks.spawn(async move {
            loop {
                let rows: Vec<(Uuid, i64)> = sqlx::query_as(
                    "WITH ready AS (
                         SELECT id FROM bench_raw_jobs WHERE status = 'queued' AND run_at <= now()
                         ORDER BY priority DESC, run_at, id LIMIT 64 FOR UPDATE SKIP LOCKED)
                     UPDATE bench_raw_jobs j SET status = 'running', lease_owner = $1,
                         lease_expires_at = now() + interval '30 seconds', fencing_token = j.fencing_token + 1
                     FROM ready WHERE j.id = ready.id RETURNING j.id, j.fencing_token",
                )
                .bind(format!("raw-{w}"))
                .fetch_all(&pool)
                .await?;
                if rows.is_empty() {
                    return Ok::<(), sqlx::Error>(());
                }
                let mut completions = tokio::task::JoinSet::new();
                for (id, token) in rows {
                    let pool = pool.clone();
                    completions.spawn(async move {
                        sqlx::query(
                            "UPDATE bench_raw_jobs SET status = 'succeeded', lease_owner = NULL,
                                 lease_expires_at = NULL, finished_at = now()
                             WHERE id = $1 AND fencing_token = $2 AND status = 'running'",
                        )
                        .bind(id)
                        .bind(token)
                        .execute(&pool)
                        .await
                    });
                }
                while let Some(r) = completions.join_next().await {
                    r.map_err(|e| sqlx::Error::Protocol(e.to_string()))??;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_raw_jobs")
        .execute(pool)
        .await?;
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}

/// Deliveries/s through `POST /hooks/{id}` of an in-process API served on
/// loopback: `n` GitHub-signed deliveries, 32 in flight, each with its own
/// `X-GitHub-Delivery`; every one must be answered 202.
async fn webhook_rate(pool: &PgPool, conn: (Uuid, i32), n: usize) -> BenchResult<f64> {
    use conveyor_engine::webhook::{Scheme, Settings, hmac_sha256, to_hex};
    reset(pool).await?;
    let keyring = Arc::new(Keyring::new(Key::generate(), []));
    let secret = "bench-webhook-secret";
    let trigger = triggers::create(
        pool,
        &keyring,
        WS,
        conn.0,
        (Scheme::Github, &Settings::default()),
        None,
        Some(secret),
    )
    .await?;
    let auth = Authenticator::new("conveyor-bench-jwt-secret-0123456789abcdef")?;
    let state = AppState::new(pool.clone(), keyring, auth, ApiConfig::default(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks/{}", listener.local_addr()?, trigger.id);
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        senders.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n as u64 {
                    return Ok::<(), String>(());
                }
                let body = format!(r#"{{"n": {i}, "action": "opened"}}"#);
                let signature = to_hex(&hmac_sha256(secret.as_bytes(), &[body.as_bytes()]));
                let status = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", format!("sha256={signature}"))
                    .header("x-github-delivery", format!("bench-{i}"))
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .status();
                if status != reqwest::StatusCode::ACCEPTED {
                    return Err(format!("delivery {i} answered {status}"));
                }
            }
        });
    }
    while let Some(r) = senders.join_next().await {
        r??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After the warm-up, the segments asked for wait ahead of the write
    /// position, where a fresh cluster has none.
    #[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
    async fn warming_the_wal_leaves_segments_ready_ahead_of_the_write_position(
        pool: PgPool,
    ) -> BenchResult<()> {
        let before = wal_segments_ahead(&pool).await?;
        let after = warm_wal(&pool, Some(before + 6)).await?;
        assert!(
            after >= before + 6,
            "{before} segments ahead before, {after} after"
        );
        Ok(())
    }

    const SUCCEED: &str =
        "UPDATE connector_executions SET status = 'succeeded', lease_owner = NULL,
                               lease_expires_at = NULL, finished_at = now()";

    /// The bench's wait sees queued and running executions, not final
    /// ones, and reads the queue's partial indexes, not the table.
    #[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
    async fn any_unfinished_sees_queued_and_running_executions_through_their_indexes(
        pool: PgPool,
    ) -> BenchResult<()> {
        let conn = connector_for(&pool, "http://127.0.0.1:9", 1).await?;
        assert!(!any_unfinished(&pool).await?, "an empty table");
        enqueue_many(&pool, conn, 2000).await?;
        assert!(any_unfinished(&pool).await?, "2,000 queued");
        sqlx::query(SUCCEED).execute(&pool).await?;
        sqlx::query("ANALYZE connector_executions")
            .execute(&pool)
            .await?;
        assert!(!any_unfinished(&pool).await?, "every execution final");
        let plan: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {ANY_UNFINISHED}")))
                .fetch_all(&pool)
                .await?;
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        assert!(
            plan.contains("connector_executions_workspace_queue_idx"),
            "{plan}"
        );
        assert!(
            plan.contains("connector_executions_workspace_running_idx"),
            "{plan}"
        );

        enqueue_many(&pool, conn, 1).await?;
        assert!(any_unfinished(&pool).await?, "one queued");
        sqlx::query(
            "UPDATE connector_executions SET status = 'running', lease_owner = 'w',
                 lease_expires_at = now() + interval '1 hour' WHERE status = 'queued'",
        )
        .execute(&pool)
        .await?;
        assert!(any_unfinished(&pool).await?, "one running");
        sqlx::query(SUCCEED).execute(&pool).await?;
        assert!(!any_unfinished(&pool).await?, "all final again");
        Ok(())
    }
}
