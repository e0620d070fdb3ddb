//! `conveyor-bench`: the figures `scripts/bench` reports.
//!
//! Against the database in `DATABASE_URL` (a private cluster with default
//! durability settings, provisioned by `scripts/bench`) and an in-process
//! loopback stub that answers at once, it measures:
//!
//! - the raw database limit: a tight loop that claims rows of an equivalent
//!   table with `FOR UPDATE SKIP LOCKED` in batches and completes each with
//!   its own fenced UPDATE: no HTTP, no step rows;
//! - executions/s of a 1-step and a 3-step connector at 1, 2 and 4
//!   `conveyor-worker` processes;
//! - enqueue→start and enqueue→finish latency (p50/p99) of executions
//!   arriving one at a time into idle workers;
//! - the 1-step rate at 2 worker processes with trace export on (to a local
//!   OTLP receiver that discards) against the same run with it off.
//! - webhook deliveries/s through `POST /hooks/{id}` of an in-process API
//!   on loopback: GitHub-signed, each verified, deduplicated by its own
//!   delivery id and enqueued (no worker runs meanwhile).
//!
//! The last line printed is one JSON object with every figure.

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
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const WS: &str = "ws_bench";
/// The limit of the rate-limited key, in sends per second.
const RATE_LIMIT: usize = 50;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")?;
    let executions = env_usize("BENCH_EXECUTIONS", 20_000);
    let latency_samples = env_usize("BENCH_LATENCY_SAMPLES", 300);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(80)
        .connect(&url)
        .await?;
    conveyor_engine::MIGRATOR.run(&pool).await?;
    let stub = start_stub().await?;
    let key = Key::generate().to_base64();
    let worker_bin = std::env::current_exe()?
        .parent()
        .ok_or("no binary directory")?
        .join("conveyor-worker");

    let raw = raw_limit(&pool, executions).await?;
    println!("raw database limit: {raw:.0} claims+completions/s");

    let one = connector_for(&pool, &stub, 1).await?;
    let three = connector_for(&pool, &stub, 3).await?;
    let mut one_step = serde_json::Map::new();
    let mut three_step = serde_json::Map::new();
    for (label, conn, out) in [
        ("1-step", one, &mut one_step),
        ("3-step", three, &mut three_step),
    ] {
        for procs in [1usize, 2, 4] {
            let rate = throughput(
                &pool,
                &url,
                &key,
                &worker_bin,
                conn,
                executions,
                procs,
                None,
            )
            .await?;
            println!(
                "{label}: {procs} worker process(es): {rate:.0} executions/s ({:.2} of the raw limit)",
                rate / raw
            );
            out.insert(procs.to_string(), json!(rate.round()));
        }
    }

    // Flow control: a key limited to RATE_LIMIT sends a second (the rate
    // should equal it), and a key whose limit is never reached (the cost
    // of the GCRA row on every step, against the plain 1-step figure).
    let limited = flow_connector(
        &pool,
        &stub,
        json!({"key": "bench-limited", "limit": RATE_LIMIT, "per_ms": 1000}),
    )
    .await?;
    let limited_n = executions.min(RATE_LIMIT * 5);
    let limited_rate =
        throughput(&pool, &url, &key, &worker_bin, limited, limited_n, 2, None).await?;
    println!(
        "1-step, rate limit {RATE_LIMIT}/s on one key, 2 processes: {limited_rate:.1} executions/s"
    );
    let open = flow_connector(
        &pool,
        &stub,
        json!({"key": "bench-open", "limit": 1_000_000, "per_ms": 1}),
    )
    .await?;
    let open_rate = throughput(&pool, &url, &key, &worker_bin, open, executions, 2, None).await?;
    let plain = one_step.get("2").and_then(Value::as_f64).unwrap_or(0.0);
    let flow_ratio = open_rate / plain.max(1e-6);
    println!(
        "1-step with a rate limit never reached, 2 processes: {open_rate:.0} executions/s ({flow_ratio:.2} of the plain 1-step figure)"
    );

    let collector = start_collector().await?;
    let traced = throughput(
        &pool,
        &url,
        &key,
        &worker_bin,
        one,
        executions,
        2,
        Some(&collector),
    )
    .await?;
    let untraced = one_step.get("2").and_then(Value::as_f64).unwrap_or(0.0);
    let tracing_ratio = traced / untraced.max(1e-6);
    println!(
        "1-step, 2 processes, trace export on: {traced:.0} executions/s ({tracing_ratio:.2} of export off)"
    );

    let (start, finish) = latency(&pool, &url, &key, &worker_bin, one, latency_samples).await?;
    println!(
        "idle latency over {latency_samples} executions: enqueue->start p50 {:.2} ms, p99 {:.2} ms; enqueue->finish p50 {:.2} ms, p99 {:.2} ms",
        start.0, start.1, finish.0, finish.1
    );
    let deliveries = env_usize("BENCH_DELIVERIES", 5_000);
    let hooks = webhook_rate(&pool, one, deliveries).await?;
    println!("webhook deliveries through /hooks/{{id}}: {hooks:.0}/s over {deliveries}");
    let one_4 = one_step.get("4").and_then(Value::as_f64).unwrap_or(0.0);
    let summary = json!({
        "raw_limit_per_s": raw.round(),
        "one_step_per_s": one_step,
        "three_step_per_s": three_step,
        "start_latency_ms": {"p50": round2(start.0), "p99": round2(start.1)},
        "finish_latency_ms": {"p50": round2(finish.0), "p99": round2(finish.1)},
        "one_step_ratio_to_raw": round2(one_4 / raw),
        "traced_one_step_per_s": traced.round(),
        "tracing_throughput_ratio": round2(tracing_ratio),
        "executions": executions,
        "webhook_deliveries_per_s": hooks.round(),
        "rate_limit_per_s": RATE_LIMIT,
        "rate_limited_per_s": round2(limited_rate),
        "flow_control_per_s": open_rate.round(),
        "flow_control_ratio": round2(flow_ratio),
    });
    println!("{summary}");
    Ok(())
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

async fn connector_for(
    pool: &PgPool,
    stub: &str,
    steps: usize,
) -> Result<(Uuid, i32), Box<dyn std::error::Error>> {
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
async fn flow_connector(
    pool: &PgPool,
    stub: &str,
    rate_limit: Value,
) -> Result<(Uuid, i32), Box<dyn std::error::Error>> {
    let c = connector::parse_and_validate(&json!({"name": "bench flow", "steps": [
        {"name": "s0", "method": "POST", "url": format!("{stub}/s0"),
         "body": {"type": "json", "content": {"n": "<<input.n>>"}},
         "extract": {"id": "$.id"}, "rate_limit": rate_limit}]}))
    .map_err(|e| e.to_string())?;
    Ok(connectors::create(pool, WS, &c).await?)
}

async fn enqueue_many(
    pool: &PgPool,
    conn: (Uuid, i32),
    n: usize,
) -> Result<(), Box<dyn std::error::Error>> {
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

fn spawn_workers(
    url: &str,
    key: &str,
    bin: &std::path::Path,
    n: usize,
    otlp: Option<&str>,
) -> std::io::Result<Workers> {
    let mut children = Vec::new();
    for i in 0..n {
        let mut cmd = Command::new(bin);
        if let Some(endpoint) = otlp {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        children.push(
            cmd.env("DATABASE_URL", url)
                .env("CONVEYOR_ENCRYPTION_KEY", key)
                .env("CONVEYOR_ALLOW_PRIVATE_NETWORKS", "true")
                .env("CONVEYOR_AUTO_MIGRATE", "false")
                .env("CONVEYOR_WORKER_CONCURRENCY", "64")
                .env("CONVEYOR_CLAIM_BATCH", "64")
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

async fn reset(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("TRUNCATE execution_events, execution_steps, connector_executions")
        .execute(pool)
        .await?;
    Ok(())
}

async fn count_final(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM connector_executions WHERE status IN ('succeeded','failed','cancelled')")
        .fetch_one(pool)
        .await
}

/// Enqueues `n` executions, then starts `procs` workers; the rate is `n`
/// over first start to last finish, from the rows' own timestamps.
#[allow(clippy::too_many_arguments)]
async fn throughput(
    pool: &PgPool,
    url: &str,
    key: &str,
    bin: &std::path::Path,
    conn: (Uuid, i32),
    n: usize,
    procs: usize,
    otlp: Option<&str>,
) -> Result<f64, Box<dyn std::error::Error>> {
    reset(pool).await?;
    enqueue_many(pool, conn, n).await?;
    let _workers = spawn_workers(url, key, bin, procs, otlp)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while usize::try_from(count_final(pool).await?).unwrap_or(0) < n {
        if Instant::now() > deadline {
            return Err("executions did not finish within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    url: &str,
    key: &str,
    bin: &std::path::Path,
    conn: (Uuid, i32),
    samples: usize,
) -> Result<((f64, f64), (f64, f64)), Box<dyn std::error::Error>> {
    reset(pool).await?;
    let _workers = spawn_workers(url, key, bin, 1, None)?;
    // Let the worker connect and settle into LISTEN.
    enqueue_many(pool, conn, 1).await?;
    while count_final(pool).await? < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reset(pool).await?;
    for _ in 0..samples {
        enqueue_many(pool, conn, 1).await?;
        let before = count_final(pool).await?;
        let wait = Instant::now();
        loop {
            let done = count_final(pool).await?;
            if done > before || wait.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let previous = count_final(pool).await?;
        if previous == 0 {
            return Err("an execution did not finish within 10 s".into());
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
async fn raw_limit(pool: &PgPool, n: usize) -> Result<f64, Box<dyn std::error::Error>> {
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
async fn webhook_rate(
    pool: &PgPool,
    conn: (Uuid, i32),
    n: usize,
) -> Result<f64, Box<dyn std::error::Error>> {
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
