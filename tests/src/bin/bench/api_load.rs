//! The API under load: `POST /api/v1/connectors/{id}/execute` and
//! `POST /api/v1/connectors/{id}/execute/batch` of a real `conveyor-api`
//! process on loopback, with a worker process running the executions.
//!
//! Closed loop: `c` clients, each sending its next request when the
//! previous one is answered. Open loop: requests sent on a fixed schedule
//! whatever the answers, each one's latency counted from its scheduled
//! send time, so that a stall delays every request it holds up
//! (no coordinated omission).
//!
//! The load runs on a runtime of its own, one thread: the bench's main
//! runtime, which also serves the stub the steps call, spread it over
//! threads that woke each other for every request, and the kernel's
//! scheduling of those wake-ups cost more CPU than the requests
//! (docs/performance.md, "The load generator").

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use conveyor_api::auth::Authenticator;
use conveyor_engine::store::access::{self, NewApiKey};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::profile::{TICKS_PER_S, cpu_ticks, parent_of, postgres_ticks};
use super::{
    BenchResult, Env, any_unfinished, env_list, env_usize, load_average, reset, round2,
    spawn_workers,
};

const JWT_SECRET: &str = "conveyor-bench-api-jwt-secret-0123456789";
/// The bearer token of the API's `/metrics` in the bench.
const METRICS_TOKEN: &str = "conveyor-bench-metrics-token";

/// Items per batch request (the API's most).
const BATCH_ITEMS: usize = 1000;

/// A `conveyor-api serve` process, killed on drop.
struct Api(Child);

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One load run's figures.
struct Run {
    ok: usize,
    errors: usize,
    secs: f64,
    latencies_ms: Vec<f64>,
    /// CPU ticks each process used meanwhile.
    cpu: Ticks,
    /// How long the API took over the same requests, by its own
    /// histogram: what the API itself answered within, apart from the
    /// load generator's share of the latency.
    server: Buckets,
}

/// CPU ticks (`/proc/<pid>/stat`) of the API process, PostgreSQL (the
/// postmaster and its children), the worker process and the bench (the
/// load generator and the stub the steps call).
#[derive(Clone, Copy, Default)]
struct Ticks {
    api: u64,
    postgres: u64,
    worker: u64,
    bench: u64,
}

/// Reads the CPU time of each process, so that a load's cost per request
/// shows apart from its latency, which on a shared box moves with
/// whatever else runs.
struct Meter {
    api: u32,
    postmaster: u32,
    worker: u32,
    /// The API's `/metrics`, read with [`METRICS_TOKEN`].
    metrics: (reqwest::Client, String),
}

impl Meter {
    fn now(&self) -> Ticks {
        Ticks {
            api: cpu_ticks(|pid, _| pid == self.api),
            postgres: postgres_ticks(self.postmaster),
            worker: cpu_ticks(|pid, _| pid == self.worker),
            bench: cpu_ticks(|pid, _| pid == std::process::id()),
        }
    }

    /// `load` of requests to `target` for `secs` seconds on `generator`,
    /// with the CPU time it took and the API's own latencies for them.
    async fn run(&self, generator: &Generator, target: &Target, load: Load, secs: f64) -> Run {
        let route = target.route();
        let server_before = self.server(route).await;
        let before = self.now();
        let mut run = generator.drive(target, load, secs).await;
        let after = self.now();
        run.server = self.server(route).await.since(&server_before);
        run.cpu = Ticks {
            api: after.api.saturating_sub(before.api),
            postgres: after.postgres.saturating_sub(before.postgres),
            worker: after.worker.saturating_sub(before.worker),
            bench: after.bench.saturating_sub(before.bench),
        };
        run
    }

    /// The API's latency histogram of `POST` requests to routes ending
    /// in `route`, as its `/metrics` shows it now (empty when it cannot
    /// be read).
    async fn server(&self, route: &str) -> Buckets {
        let (client, url) = &self.metrics;
        let text = match client.get(url).bearer_auth(METRICS_TOKEN).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Buckets::parse(&text, route)
    }
}

/// Cumulative counts of `conveyor_http_request_duration_seconds` by
/// upper bound in seconds (`+Inf` as infinity), summed over statuses.
#[derive(Default)]
struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// The buckets of `POST` requests to routes ending in `route` in the
    /// Prometheus text `text`.
    fn parse(text: &str, route: &str) -> Self {
        let mut sums: Vec<(f64, u64)> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("conveyor_http_request_duration_seconds_bucket{")
            else {
                continue;
            };
            let Some((labels, count)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                    .map(|v| v.trim_end_matches('"'))
            };
            if !label("route").is_some_and(|r| r.ends_with(route))
                || label("method") != Some("POST")
            {
                continue;
            }
            let (Some(Ok(le)), Ok(count)) = (
                label("le").map(str::parse::<f64>),
                count.trim().parse::<u64>(),
            ) else {
                continue;
            };
            match sums.iter_mut().find(|(bound, _)| *bound == le) {
                Some((_, sum)) => *sum += count,
                None => sums.push((le, count)),
            }
        }
        sums.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self(sums)
    }

    /// The counts added since `before`.
    fn since(self, before: &Self) -> Self {
        Self(
            self.0
                .into_iter()
                .map(|(le, n)| {
                    let was = before.0.iter().find(|(b, _)| *b == le).map_or(0, |b| b.1);
                    (le, n.saturating_sub(was))
                })
                .collect(),
        )
    }

    /// The share of requests answered within `secs`, when `secs` is a
    /// bucket bound and there were requests.
    fn within(&self, secs: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        let n = self.0.iter().find(|(le, _)| *le == secs)?.1;
        (total > 0).then(|| n as f64 / total as f64)
    }

    /// The smallest bucket bound, in ms, within which at least `share` of
    /// the requests were answered (`None`: none, or beyond the last finite
    /// bound).
    fn at_most_ms(&self, share: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total == 0 {
            return None;
        }
        self.0
            .iter()
            .find(|(le, n)| le.is_finite() && *n as f64 >= share * total as f64)
            .map(|(le, _)| le * 1000.0)
    }
}

impl Run {
    fn report(mut self, label: &str, items: usize) -> Value {
        self.latencies_ms.sort_by(f64::total_cmp);
        let at = |p: f64| {
            let v = &self.latencies_ms;
            if v.is_empty() {
                return f64::NAN;
            }
            v[((v.len() as f64 - 1.0) * p).round() as usize]
        };
        let per_s = self.ok as f64 / self.secs.max(1e-6);
        let micros =
            |ticks: u64| (ticks as f64 / TICKS_PER_S * 1e6 / self.ok.max(1) as f64).round();
        println!(
            "{label}: {per_s:.0} requests/s answered ({:.0} executions/s), {} errors, latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms (the API's own: {} within 10 ms, p95 at most {} ms); CPU µs per request: API {}, PostgreSQL {}, worker {}, bench {} (load average {})",
            per_s * items as f64,
            self.errors,
            at(0.50),
            at(0.95),
            at(0.99),
            self.server
                .within(0.01)
                .map_or_else(|| "?".to_owned(), |f| format!("{:.1} %", f * 100.0)),
            self.server
                .at_most_ms(0.95)
                .map_or_else(|| "?".to_owned(), |ms| ms.to_string()),
            micros(self.cpu.api),
            micros(self.cpu.postgres),
            micros(self.cpu.worker),
            micros(self.cpu.bench),
            load_average()
        );
        json!({
            "requests_per_s": per_s.round(),
            "executions_per_s": (per_s * items as f64).round(),
            "errors": self.errors,
            "p50_ms": round2(at(0.50)),
            "p95_ms": round2(at(0.95)),
            "p99_ms": round2(at(0.99)),
            "cpu_us_per_request": {
                "api": micros(self.cpu.api), "postgres": micros(self.cpu.postgres),
                "worker": micros(self.cpu.worker), "bench": micros(self.cpu.bench),
            },
            "load_average": load_average(),
            "server_within_10ms": self.server.within(0.01).map(round2),
            "server_p95_at_most_ms": self.server.at_most_ms(0.95),
        })
    }
}

/// What to send.
#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    url: String,
    token: String,
    /// The JSON body, serialized once.
    body: Bytes,
}

impl Target {
    /// The end of its route template (`/execute` or `/execute/batch`),
    /// as the API's metrics label it.
    fn route(&self) -> &'static str {
        if self.url.ends_with("/execute/batch") {
            "/execute/batch"
        } else {
            "/execute"
        }
    }

    /// Sends one request; true when it was answered 202.
    async fn send(&self) -> bool {
        let sent = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let accepted = response.status() == reqwest::StatusCode::ACCEPTED;
                // Read the body so the connection is reused.
                response.bytes().await.is_ok() && accepted
            }
            Err(_) => false,
        }
    }
}

/// The bearer token the load sends: a JWT, or with `BENCH_API_AUTH=key`
/// an API key of the `execute` scope, stored as `POST /api-keys` stores
/// one (each request then looks the key up: what API-key clients pay).
async fn bearer_token(pool: &PgPool) -> BenchResult<String> {
    match auth_kind().as_str() {
        "jwt" => Ok(Authenticator::new(JWT_SECRET)?.mint(
            super::WS,
            "bench",
            Duration::from_secs(3600),
        )?),
        "key" => {
            let (key, prefix, digest) = conveyor_api::auth::new_api_key();
            let scopes = ["execute".to_owned()];
            let stored = NewApiKey {
                name: "bench",
                prefix: &prefix,
                digest: &digest,
                created_by: "bench",
                scopes: &scopes,
                expires_at: None,
            };
            access::create_api_key(pool, super::WS, &stored).await?;
            Ok(key)
        }
        other => Err(format!("BENCH_API_AUTH must be `jwt` or `key`, not `{other}`").into()),
    }
}

/// `BENCH_API_AUTH`, `jwt` when unset.
fn auth_kind() -> String {
    std::env::var("BENCH_API_AUTH").unwrap_or_else(|_| "jwt".to_owned())
}

/// Runs the closed-loop and open-loop single executes, then batches, with
/// one worker process running, each after the worker has run what the
/// one before enqueued ([`settle`]); then batches and an open loop of
/// single executes (`BENCH_API_NO_WORKER_RATE`, default 2,000 a second)
/// with none. The
/// tables are emptied only before and after: a `TRUNCATE` while the API
/// and the worker write deadlocks with them.
pub(super) async fn run(pool: &PgPool, env: &Env, conn: (Uuid, i32)) -> BenchResult<Value> {
    let secs = env_usize("BENCH_API_SECONDS", 5) as f64;
    reset(pool).await?;
    let (api, addr) = start_api(env).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await?;
    let token = bearer_token(pool).await?;
    let client = reqwest::Client::new();
    let base = format!("http://{addr}/api/v1/connectors/{}", conn.0);
    let single = Target {
        client: client.clone(),
        url: format!("{base}/execute"),
        token: token.clone(),
        body: Bytes::from(json!({"input": {"n": 1}}).to_string()),
    };
    let items: Vec<Value> = (0..BATCH_ITEMS)
        .map(|i| json!({"input": {"n": i}}))
        .collect();
    let batch = Target {
        client,
        url: format!("{base}/execute/batch"),
        token,
        body: Bytes::from(json!({ "items": items }).to_string()),
    };
    let workers = spawn_workers(env, 1, None)?;
    let meter = Meter {
        api: api.0.id(),
        postmaster: parent_of(u32::try_from(backend)?).ok_or("no postmaster pid")?,
        worker: workers.0.first().map_or(0, Child::id),
        metrics: (reqwest::Client::new(), format!("http://{addr}/metrics")),
    };
    let generator = Generator::new()?;
    // Warm the connections and the API's caches.
    generator
        .drive(&single, Load::Closed { clients: 4 }, 1.0)
        .await;
    let mut out = Map::new();
    out.insert("auth".into(), json!(auth_kind()));
    let mut closed = Map::new();
    for clients in env_list("BENCH_API_CLIENTS", &[1, 16]) {
        settle(pool).await?;
        let run = meter
            .run(&generator, &single, Load::Closed { clients }, secs)
            .await;
        closed.insert(
            clients.to_string(),
            run.report(&format!("execute, closed loop, {clients} clients"), 1),
        );
    }
    out.insert("execute_closed_loop".into(), Value::Object(closed));
    let mut open = Map::new();
    for rate in env_list("BENCH_API_RATES", &[500, 1000, 2000, 4000]) {
        settle(pool).await?;
        let from = chrono::Utc::now();
        let run = meter
            .run(&generator, &single, Load::Open { rate }, secs)
            .await;
        let to = chrono::Utc::now();
        let mut report = run.report(&format!("execute, open loop, {rate} requests/s offered"), 1);
        settle(pool).await?;
        report["start_under_load_ms"] = start_latency(pool, from, to).await?;
        open.insert(rate.to_string(), report);
    }
    out.insert("execute_open_loop".into(), Value::Object(open));
    let batch_clients = env_usize("BENCH_API_BATCH_CLIENTS", 4);
    settle(pool).await?;
    let batch_load = Load::Closed {
        clients: batch_clients,
    };
    let run = meter.run(&generator, &batch, batch_load, secs).await;
    out.insert(
        "batch_with_worker".into(),
        run.report(
            &format!("batch of {BATCH_ITEMS}, closed loop, {batch_clients} clients, 1 worker process running"),
            BATCH_ITEMS,
        ),
    );
    drop(workers);
    let run = meter.run(&generator, &batch, batch_load, secs).await;
    out.insert(
        "batch_no_worker".into(),
        run.report(
            &format!("batch of {BATCH_ITEMS}, closed loop, {batch_clients} clients, no worker"),
            BATCH_ITEMS,
        ),
    );
    // The API alone: on a small machine a worker running every execution
    // enqueued takes most of the cores the API would use.
    let rate = env_usize("BENCH_API_NO_WORKER_RATE", 2000);
    let run = meter
        .run(&generator, &single, Load::Open { rate }, secs)
        .await;
    out.insert(
        "execute_open_loop_no_worker".into(),
        run.report(
            &format!("execute, open loop, {rate} requests/s offered, no worker"),
            1,
        ),
    );
    drop(api);
    reset(pool).await?;
    Ok(Value::Object(out))
}

/// Enqueue→start of the executions enqueued between `from` and `to`, p50,
/// p95 and p99 in ms: how long a worker under that load let them wait
/// (the claim cooldown, `CONVEYOR_CLAIM_COOLDOWN_MS`, among the causes).
async fn start_latency(
    pool: &PgPool,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> BenchResult<Value> {
    let (p50, p95, p99): (Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT q[1], q[2], q[3] FROM (
             SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
                    (ORDER BY extract(epoch FROM started_at - created_at) * 1000) AS q
             FROM connector_executions
             WHERE created_at >= $1 AND created_at < $2 AND started_at IS NOT NULL) s",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    let ms = |v: Option<f64>| v.map_or(f64::NAN, round2);
    println!(
        "  enqueue->start of those executions: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        ms(p50),
        ms(p95),
        ms(p99)
    );
    Ok(json!({"p50": ms(p50), "p95": ms(p95), "p99": ms(p99)}))
}

/// Waits (two minutes at most) until the worker has run every execution
/// the previous load enqueued, so that each load starts on an idle
/// worker rather than beside the last one's backlog.
async fn settle(pool: &PgPool) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if !any_unfinished(pool).await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM connector_executions WHERE status IN ('queued', 'running')",
            )
            .fetch_one(pool)
            .await?;
            println!(
                "{left} executions still queued or running after 2 minutes; going on beside them"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts `conveyor-api serve` on a free loopback port with the API rate
/// limit off, and waits until it answers.
async fn start_api(env: &Env) -> BenchResult<(Api, std::net::SocketAddr)> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let api = Api(Command::new(&env.api_bin)
        .arg("serve")
        .env("DATABASE_URL", &env.url)
        .env("CONVEYOR_ENCRYPTION_KEY", &env.key)
        .env("CONVEYOR_JWT_SECRET", JWT_SECRET)
        .env("CONVEYOR_LISTEN", addr.to_string())
        .env("CONVEYOR_AUTO_MIGRATE", "false")
        .env("CONVEYOR_RATE_LIMIT_PER_SEC", "0")
        .env("CONVEYOR_METRICS_TOKEN", METRICS_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?);
    let health = format!("http://{addr}/healthz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if reqwest::get(&health)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok((api, addr));
        }
        if Instant::now() > deadline {
            return Err("conveyor-api did not answer /healthz within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How requests are sent.
#[derive(Clone, Copy)]
enum Load {
    /// `clients` clients, each sending its next request when its last one
    /// is answered.
    Closed { clients: usize },
    /// `rate` requests a second on a fixed schedule.
    Open { rate: usize },
}

/// The load generator's runtime: one thread, apart from the bench's
/// main runtime, kept for every load so that the connections it opened
/// are reused.
struct Generator(Option<Arc<tokio::runtime::Runtime>>);

impl Generator {
    fn new() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| Self(Some(Arc::new(runtime))))
    }

    /// Sends `load` to `target` for `secs` seconds.
    async fn drive(&self, target: &Target, load: Load, secs: f64) -> Run {
        let (runtime, target) = (self.0.clone(), target.clone());
        tokio::task::spawn_blocking(move || {
            runtime
                .expect("the runtime lives until drop")
                .block_on(async {
                    match load {
                        Load::Closed { clients } => closed_loop(&target, clients, secs).await,
                        Load::Open { rate } => open_loop(&target, rate, secs).await,
                    }
                })
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

impl Drop for Generator {
    /// Dropping a runtime waits for its tasks, which the async context
    /// it is dropped in forbids: its idle connections are left to close.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take().and_then(Arc::into_inner) {
            runtime.shutdown_background();
        }
    }
}

/// `clients` clients, each sending its next request when the previous one
/// is answered, for `secs` seconds.
async fn closed_loop(target: &Target, clients: usize, secs: f64) -> Run {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let target = target.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let ok = target.send().await;
                out.push((sent.elapsed().as_secs_f64() * 1000.0, ok));
            }
            out
        });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.extend(r.unwrap_or_default());
    }
    tally(results, started.elapsed().as_secs_f64())
}

/// `rate` requests a second for `secs` seconds on a fixed schedule, each
/// latency counted from its scheduled send time.
async fn open_loop(target: &Target, rate: usize, secs: f64) -> Run {
    let started = Instant::now();
    let total = (rate as f64 * secs) as usize;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let scheduled = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(scheduled).await;
        let target = target.clone();
        tasks.spawn(async move {
            let ok = target.send().await;
            (scheduled.elapsed().as_secs_f64() * 1000.0, ok)
        });
    }
    let mut results = Vec::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            results.push(r);
        }
    }
    tally(results, started.elapsed().as_secs_f64())
}

fn tally(results: Vec<(f64, bool)>, secs: f64) -> Run {
    let ok = results.iter().filter(|r| r.1).count();
    Run {
        ok,
        errors: results.len() - ok,
        secs,
        latencies_ms: results.into_iter().map(|r| r.0).collect(),
        cpu: Ticks::default(),
        server: Buckets::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::Buckets;

    const BEFORE: &str = r#"# TYPE conveyor_http_request_duration_seconds histogram
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="POST",status="2xx",le="0.005"} 10
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="POST",status="2xx",le="0.01"} 10
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="POST",status="2xx",le="+Inf"} 10
"#;

    const AFTER: &str = r#"conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="POST",status="2xx",le="0.005"} 80
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="POST",status="2xx",le="0.01"} 100
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="POST",status="2xx",le="+Inf"} 108
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="POST",status="4xx",le="0.005"} 2
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="POST",status="4xx",le="0.01"} 2
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="POST",status="4xx",le="+Inf"} 2
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute/batch",method="POST",status="2xx",le="0.01"} 50
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute/batch",method="POST",status="2xx",le="+Inf"} 50
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="GET",status="2xx",le="0.01"} 7
conveyor_http_request_duration_seconds_bucket{route="/api/v1/connectors/{id}/execute",method="GET",status="2xx",le="+Inf"} 7
"#;

    #[test]
    fn the_api_s_own_latencies_of_one_route_are_read_from_its_histogram() {
        let load = Buckets::parse(AFTER, "/execute").since(&Buckets::parse(BEFORE, "/execute"));
        // 100 requests in all (98 + 2 refused), 92 of them within 10 ms:
        // the batch route and other methods are not counted.
        assert_eq!(load.within(0.01), Some(0.92));
        assert_eq!(load.at_most_ms(0.70), Some(5.0));
        assert_eq!(load.at_most_ms(0.90), Some(10.0));
        assert_eq!(load.at_most_ms(0.95), None, "beyond the last finite bound");
        let batch = Buckets::parse(AFTER, "/execute/batch");
        assert_eq!(batch.within(0.01), Some(1.0));
        assert_eq!(batch.within(0.005), None, "not a bound of that route");
        assert_eq!(Buckets::parse("", "/execute").within(0.01), None);
    }
}
