//! A large history: finished executions with one step row and two events
//! each, generated with `generate_series` and grown to each size of
//! `BENCH_HISTORY_SIZES` (default `100000,1000000`) in one workspace, the
//! worst case for its history pages. At each size: the claim of a batch
//! of 64, one enqueue, a history page (first, filtered by status, and deep
//! through a cursor) and a retention delete of 1,000 executions (with
//! their steps and events), each timed over repeated calls.

use std::time::Instant;

use chrono::{Duration as Span, Utc};
use conveyor_engine::state::ExecutionStatus;
use conveyor_engine::store::executions::{self, NewExecution};
use conveyor_engine::store::history::{self, ExecutionFilter};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{BenchResult, WS, enqueue_many, env_list, load_average, reset, round2};

/// Timed calls of each operation at each size.
const ROUNDS: usize = 30;

/// Grows the history through each size and times the operations there.
pub(super) async fn run(pool: &PgPool, conn: (Uuid, i32)) -> BenchResult<Value> {
    reset(pool).await?;
    let mut out = Map::new();
    let mut have = 0;
    for size in env_list("BENCH_HISTORY_SIZES", &[100_000, 1_000_000]) {
        if size <= have {
            continue;
        }
        let seeded = Instant::now();
        seed(pool, conn, have, size).await?;
        have = size;
        let seed_secs = seeded.elapsed().as_secs_f64();
        let bytes: i64 = sqlx::query_scalar(
            "SELECT sum(pg_total_relation_size(t))::int8 FROM unnest(ARRAY[
                 'connector_executions', 'execution_steps', 'execution_events']::regclass[]) t",
        )
        .fetch_one(pool)
        .await?;
        let figures = json!({
            "seed_s": round2(seed_secs),
            "bytes": bytes,
            "claim_64_ms": claim_latency(pool, conn).await?,
            "enqueue_ms": enqueue_latency(pool, conn).await?,
            "history_page_ms": page_latency(pool, None, None).await?,
            "history_page_succeeded_ms": page_latency(pool, Some(ExecutionStatus::Succeeded), None).await?,
            "history_page_deep_ms": page_latency(pool, None, Some(Utc::now() - Span::days(200))).await?,
            "retention_delete_1000_ms": retention_latency(pool).await?,
            "load_average": load_average(),
        });
        println!(
            "history of {size} executions ({:.2} GB with steps and events, seeded in {seed_secs:.0} s): {figures}",
            bytes as f64 / 1e9
        );
        out.insert(size.to_string(), figures);
    }
    reset(pool).await?;
    Ok(Value::Object(out))
}

/// Adds executions `from + 1 ..= to`, finished over the last 400 days
/// (so about a tenth is past the 365-day retention used below), each
/// with one step row and its `enqueued` and `finished` events; then
/// vacuums, as autovacuum would have on a table that grew this slowly.
///
/// Ids grow with `n` and creation times sweep the 400 days once per call,
/// oldest first, as an engine's time-ordered UUIDv7 ids and clock would:
/// every index then takes its inserts at its end or in one pass, instead
/// of at random pages. Random ids slowed the seeding to about 4,000
/// rows/s once the indexes outgrew memory, too slow for 10 million here.
async fn seed(pool: &PgPool, conn: (Uuid, i32), from: usize, to: usize) -> BenchResult<()> {
    const CHUNK: usize = 250_000;
    let mut at = from;
    while at < to {
        let end = (at + CHUNK).min(to);
        sqlx::query(
            "WITH rows AS (
                 SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'))::uuid AS id, n,
                        now() - interval '400 days' * (($7::int8 - n)::float8 / ($7::int8 - $6::int8)) AS t
                 FROM generate_series($4::int8, $5::int8) n
             ), ins AS (
                 INSERT INTO connector_executions
                     (id, workspace_id, connector_id, connector_version, status, input, output,
                      context, started_by, created_at, run_at, started_at, finished_at, updated_at,
                      claims, next_step)
                 SELECT id, $1, $2, $3, 'succeeded', jsonb_build_object('n', n), '{\"id\": 1}',
                        '{\"steps\": {\"s0\": {\"extract\": {\"id\": 1}}}}', 'user:bench',
                        t, t, t + interval '2 ms', t + interval '40 ms', t + interval '40 ms', 1, 1
                 FROM rows
                 RETURNING id, workspace_id, started_at, finished_at
             ), steps AS (
                 INSERT INTO execution_steps
                     (execution_id, step_index, attempt, workspace_id, step_name, outcome, request,
                      response_status, response_headers, response_body, extracted, worker_id,
                      started_at, finished_at, duration_ms)
                 SELECT id, 0, 1, workspace_id, 's0', 'succeeded',
                        '{\"method\": \"POST\", \"url\": \"http://127.0.0.1/s0\", \"body\": {\"n\": 1}}',
                        200, '{\"content-type\": \"application/json\"}', '{\"ok\": true, \"id\": 1}',
                        '{\"id\": 1}', 'bench-0', started_at, finished_at, 38
                 FROM ins
             )
             INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
             SELECT id, workspace_id, started_at, k, '{}' FROM ins,
                    unnest(ARRAY['enqueued', 'finished']) k",
        )
        .bind(WS)
        .bind(conn.0)
        .bind(conn.1)
        .bind(i64::try_from(at + 1)?)
        .bind(i64::try_from(end)?)
        .bind(i64::try_from(from)?)
        .bind(i64::try_from(to)?)
        .execute(pool)
        .await?;
        at = end;
    }
    for vacuum in [
        "VACUUM ANALYZE connector_executions",
        "VACUUM ANALYZE execution_steps",
        "VACUUM ANALYZE execution_events",
    ] {
        sqlx::query(vacuum).execute(pool).await?;
    }
    Ok(())
}

/// `(p50, p95)` in milliseconds.
fn p50_p95(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    json!({"p50": round2(at(0.5)), "p95": round2(at(0.95))})
}

/// One claim of 64 among the history, each round after enqueueing 64
/// fresh executions; the claimed ones are then marked finished.
async fn claim_latency(pool: &PgPool, conn: (Uuid, i32)) -> BenchResult<Value> {
    let claims = executions::ClaimPool::new(pool);
    let mut ms = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        enqueue_many(pool, conn, 64).await?;
        let started = Instant::now();
        let claimed = executions::claim(
            &claims,
            "bench-history",
            64,
            std::time::Duration::from_secs(30),
            Utc::now(),
        )
        .await?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if claimed.len() != 64 {
            return Err(format!("claimed {} of 64", claimed.len()).into());
        }
        finish_open(pool).await?;
    }
    Ok(p50_p95(ms))
}

/// Marks every queued or running execution finished now.
async fn finish_open(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE connector_executions SET status = 'succeeded', lease_owner = NULL,
             lease_expires_at = NULL, finished_at = now(), updated_at = now()
         WHERE status IN ('queued', 'running')",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// One enqueue in its own transaction, as `POST /execute` does.
async fn enqueue_latency(pool: &PgPool, conn: (Uuid, i32)) -> BenchResult<Value> {
    let mut ms = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let new = NewExecution {
            workspace_id: WS.into(),
            connector_id: conn.0,
            connector_version: conn.1,
            input: json!({"n": i}),
            idempotency_key: Some(format!("history-{}", Uuid::now_v7())),
            priority: 0,
            run_at: None,
            rerun_of: None,
            trace_context: None,
            started_by: conveyor_engine::state::StartedBy::User("bench".to_owned()),
            callback_url: None,
        };
        let started = Instant::now();
        let mut tx = pool.begin().await?;
        executions::enqueue(&mut tx, &new, Utc::now()).await?;
        tx.commit().await?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    finish_open(pool).await?;
    Ok(p50_p95(ms))
}

/// A page of 50 of the workspace's history, newest first.
async fn page_latency(
    pool: &PgPool,
    status: Option<ExecutionStatus>,
    before: Option<chrono::DateTime<Utc>>,
) -> BenchResult<Value> {
    let filter = ExecutionFilter {
        workspace_id: Some(WS.into()),
        status,
        cursor: before.map(|at| (at, Uuid::max())),
        limit: 50,
        ..ExecutionFilter::default()
    };
    let mut ms = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let page = history::list_executions(pool, &filter).await?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if page.len() != 50 {
            return Err(format!("a history page held {} rows", page.len()).into());
        }
    }
    Ok(p50_p95(ms))
}

/// Retention deletes of 1,000 executions past a 365-day retention.
async fn retention_latency(pool: &PgPool) -> BenchResult<Value> {
    let mut ms = Vec::new();
    for _ in 0..5 {
        let now = Utc::now();
        let started = Instant::now();
        let deleted = history::prune_finished(pool, now, now - Span::days(365), 1000).await?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if deleted != 1000 {
            return Err(format!("a retention delete removed {deleted} of 1000").into());
        }
    }
    Ok(p50_p95(ms))
}
