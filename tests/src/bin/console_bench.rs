//! `conveyor-console-bench`: how fast the web console's pages answer with
//! a large history (`BENCH_CONSOLE=1 scripts/bench`).
//!
//! Against the database in `DATABASE_URL`, it seeds one workspace with
//! `BENCH_CONSOLE_EXECUTIONS` finished executions (default 100,000) of
//! three connectors, spread over the last ten days, signs a console
//! session in, then times `BENCH_CONSOLE_SAMPLES` requests (default 200,
//! after 20 warm-ups) of each page through the real router in process:
//! the time from the request to the last byte of the page, without the
//! network. The connector list serves cached statistics (recomputed every
//! 10 s), so the bench also times what a cache miss adds: the grouped
//! 24-hour statistics query alone. The last line printed is one JSON
//! object with every figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use conveyor_api::auth::Authenticator;
use conveyor_api::{ApiConfig, AppState, app};
use conveyor_engine::connector;
use conveyor_engine::crypto::{Key, Keyring};
use conveyor_engine::store::{connectors, history};
use serde_json::json;
use tower::ServiceExt;

const WS: &str = "ws_console_bench";

type Error = Box<dyn std::error::Error>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("DATABASE_URL")?;
    let total = env_usize("BENCH_CONSOLE_EXECUTIONS", 100_000);
    let samples = env_usize("BENCH_CONSOLE_SAMPLES", 200);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await?;
    conveyor_engine::MIGRATOR.run(&pool).await?;
    let mut ids = Vec::new();
    for name in ["CRM sync", "Slack notify", "Invoice export"] {
        let c = connector::parse_and_validate(&json!({"name": name, "steps": [
            {"name": "call", "method": "POST", "url": "https://api.example.com/x"}]}))
        .map_err(|e| e.to_string())?;
        ids.push(connectors::create(&pool, WS, &c).await?.0);
    }
    let seeded = Instant::now();
    // One statement: the bench needs history, not the queue's write path
    // (scripts/bench measures that). Finished rows, newest in the last
    // ten days, mostly succeeded.
    sqlx::query(
        "INSERT INTO connector_executions
             (id, workspace_id, connector_id, connector_version, status, input, output,
              error, started_by, created_at, run_at, started_at, finished_at, updated_at)
         SELECT gen_random_uuid(), $1, ($2::uuid[])[1 + n % 3], 1,
                CASE WHEN n % 20 = 0 THEN 'failed' WHEN n % 50 = 1 THEN 'cancelled' ELSE 'succeeded' END,
                jsonb_build_object('n', n),
                CASE WHEN n % 20 = 0 OR n % 50 = 1 THEN NULL ELSE jsonb_build_object('id', n) END,
                CASE WHEN n % 20 = 0 THEN '{\"kind\": \"http_status\", \"status\": 502}'::jsonb END,
                'user:bench', t, t, t + interval '5 ms', t + (40 + n % 200) * interval '1 ms', t
         FROM (SELECT n, now() - (n * interval '10 days' / $3) AS t
               FROM generate_series(1, $3) AS n) s",
    )
    .bind(WS)
    .bind(&ids)
    .bind(i64::try_from(total)?)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE connector_executions")
        .execute(&pool)
        .await?;
    println!(
        "seeded {total} executions in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    let keyring = Arc::new(Keyring::new(Key::generate(), []));
    let secret = "console-bench-jwt-secret-0123456789abcdef";
    let auth = Authenticator::new(secret)?;
    let config = ApiConfig {
        rate_limit_per_sec: 0,
        ..ApiConfig::default()
    };
    let state = AppState::new(pool.clone(), keyring, auth.clone(), config, None);
    let router = app(state);
    let token = auth.mint(WS, "bench", Duration::from_secs(3600))?;
    let login = router
        .clone()
        .oneshot(
            Request::post("/console/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={token}")))?,
        )
        .await?;
    let cookie = login
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .ok_or("no session cookie")?
        .to_owned();

    let get = |path: String| {
        let router = router.clone();
        let cookie = cookie.clone();
        async move {
            let started = Instant::now();
            let response = router
                .oneshot(
                    Request::get(&path)
                        .header(header::COOKIE, &cookie)
                        .body(Body::empty())?,
                )
                .await?;
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 24).await?;
            if status != StatusCode::OK {
                return Err(format!("{path}: {status}").into());
            }
            Ok::<_, Error>((
                started.elapsed(),
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
    };
    // A cursor twenty pages deep.
    let mut deep = "/console".to_owned();
    for _ in 0..20 {
        let (_, page) = get(deep.clone()).await?;
        let at = page.find("cursor=").ok_or("no next page")? + 7;
        let cursor = page[at..].split('"').next().unwrap_or_default();
        deep = format!("/console?cursor={cursor}");
    }
    let (_, first) = get("/console".to_owned()).await?;
    let at = first
        .find("/console/executions/")
        .ok_or("no execution link")?
        + 20;
    let execution = first[at..].split('"').next().unwrap_or_default().to_owned();
    let pages = [
        ("executions", "/console".to_owned()),
        (
            "executions?status=failed",
            "/console?status=failed".to_owned(),
        ),
        (
            "executions?connector",
            format!("/console?connector={}", ids[0]),
        ),
        ("executions, 20 pages deep", deep),
        ("execution", format!("/console/executions/{execution}")),
        ("connectors (24 h stats)", "/console/connectors".to_owned()),
        ("connector", format!("/console/connectors/{}", ids[0])),
        ("credentials", "/console/credentials".to_owned()),
        ("marketplace", "/console/marketplace".to_owned()),
    ];
    let mut figures = serde_json::Map::new();
    let mut worst = 0.0f64;
    for (label, path) in pages {
        for _ in 0..20 {
            get(path.clone()).await?;
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            times.push(get(path.clone()).await?.0.as_secs_f64() * 1000.0);
        }
        let (p50, p95) = quantiles(times);
        worst = worst.max(p95);
        println!("{label:<28} p50 {p50:6.1} ms   p95 {p95:6.1} ms");
        figures.insert(label.to_owned(), json!({"p50_ms": p50, "p95_ms": p95}));
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let since = chrono::Utc::now() - chrono::Duration::hours(24);
        history::workspace_connector_stats(&pool, WS, since).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p95) = quantiles(times);
    let label = "connector stats cache miss";
    println!("{label:<28} p50 {p50:6.1} ms   p95 {p95:6.1} ms");
    figures.insert(label.to_owned(), json!({"p50_ms": p50, "p95_ms": p95}));
    println!(
        "{}",
        json!({"console_executions": total, "samples": samples, "pages": figures, "worst_p95_ms": worst})
    );
    Ok(())
}

/// The median and 95th percentile of `times` (nearest rank).
fn quantiles(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    (at(0.50), at(0.95))
}
