//! Reading history: execution listings with keyset pagination, statistics,
//! and the watcher rows that make the database notify SSE subscribers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;
use crate::flow::{WaitReason, WaitingFor, waiting_for};
use crate::state::{ExecutionStatus, StepOutcome};
use crate::store::executions::StepRow;

/// An execution as the history shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ExecutionView {
    /// Id.
    pub id: Uuid,
    /// Owning workspace.
    pub workspace_id: String,
    /// Connector.
    pub connector_id: Uuid,
    /// Pinned version.
    pub connector_version: i32,
    /// Current status.
    pub status: ExecutionStatus,
    /// Priority (higher first).
    pub priority: i16,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Times claimed.
    pub claims: i32,
    /// Times taken back after a lease expired.
    pub reclaims: i32,
    /// The worker holding it, while running. Never serialised: worker ids
    /// name hosts and processes, which tenants must not see (operators
    /// find them in logs, traces and the database).
    #[serde(skip_serializing)]
    pub lease_owner: Option<String>,
    /// Lease expiry, while running.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When a cancel was requested.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// Input.
    pub input: Value,
    /// Output, once succeeded.
    pub output: Option<Value>,
    /// Error, once failed.
    pub error: Option<Value>,
    /// The execution this one re-runs.
    pub rerun_of: Option<Uuid>,
    /// What started it (`user:<id>`, `api_key:<id>`, `rerun_of:<id>`);
    /// `None` for executions enqueued before this was recorded.
    pub started_by: Option<String>,
    /// First unfinished step.
    pub next_step: i32,
    /// Attempt of that step.
    pub step_attempt: i32,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// First started at.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Why flow control parked it (`rate_limit`, `concurrency`); shown
    /// through [`waiting_for`](Self::waiting_for).
    #[serde(skip_serializing)]
    pub waiting_reason: Option<String>,
    /// The workspace-prefixed flow-control key it was parked on.
    #[serde(skip_serializing)]
    pub waiting_key: Option<String>,
}

impl ExecutionView {
    /// Why it is not running yet, while it is queued.
    pub fn waiting_for(&self, now: DateTime<Utc>) -> Option<WaitingFor> {
        if self.status != ExecutionStatus::Queued {
            return None;
        }
        let reason = match self.waiting_reason.as_deref() {
            Some("rate_limit") => Some(WaitReason::RateLimit),
            Some("concurrency") => Some(WaitReason::Concurrency),
            _ => None,
        };
        let prefix = crate::flow::key_prefix(&self.workspace_id);
        let parked = reason
            .zip(self.waiting_key.as_deref())
            .map(|(r, k)| (r, k.strip_prefix(&prefix).unwrap_or(k).to_owned()));
        Some(waiting_for(parked, self.run_at, self.step_attempt, now))
    }
}

/// Reads one execution of a workspace.
///
/// # Errors
///
/// Database errors.
pub async fn get(
    db: impl sqlx::PgExecutor<'_>,
    workspace_id: &str,
    id: Uuid,
) -> Result<Option<ExecutionView>> {
    Ok(sqlx::query_as!(
        ExecutionView,
        r#"SELECT id, workspace_id, connector_id, connector_version,
                status AS "status: ExecutionStatus", priority, run_at, claims,
                reclaims, lease_owner, lease_expires_at, cancel_requested_at, idempotency_key, input,
                output, error, rerun_of, started_by, next_step, step_attempt, created_at, started_at, finished_at,
                updated_at,
                waiting_reason, waiting_key
         FROM connector_executions WHERE id = $1 AND workspace_id = $2"#,
        id,
        workspace_id
    )
    .fetch_optional(db)
    .await?)
}

/// Where an execution lives, for admins who open one by id alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The owning workspace.
    pub workspace_id: String,
    /// The trace id of the request that enqueued it (from the stored
    /// `traceparent`), when there was one.
    pub trace_id: Option<String>,
}

/// Finds execution `id` in any workspace (admins only).
///
/// # Errors
///
/// Database errors.
pub async fn locate(pool: &PgPool, id: Uuid) -> Result<Option<Located>> {
    Ok(sqlx::query_as!(
        Located,
        r#"SELECT workspace_id,
                  NULLIF(split_part(trace_context->>'traceparent', '-', 2), '') AS trace_id
           FROM connector_executions WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?)
}

/// Every attempt of every step of an execution, in order.
///
/// # Errors
///
/// Database errors.
pub async fn steps(pool: &PgPool, workspace_id: &str, id: Uuid) -> Result<Vec<StepRow>> {
    Ok(sqlx::query_as!(
        StepRow,
        r#"SELECT step_index, attempt, NULLIF(page, 0) AS page, NULLIF(item, 0) AS item, step_name,
                outcome AS "outcome: StepOutcome", request,
                response_status, response_headers, response_body, extracted, error, worker_id,
                started_at, finished_at, duration_ms, request_bytes, response_bytes
         FROM execution_steps WHERE execution_id = $1 AND workspace_id = $2
         ORDER BY step_index, page, item, attempt"#,
        id,
        workspace_id
    )
    .fetch_all(pool)
    .await?)
}

/// Filters of an execution listing.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    /// Only this workspace (`None` only for admins).
    pub workspace_id: Option<String>,
    /// Only this status.
    pub status: Option<ExecutionStatus>,
    /// Only this connector.
    pub connector_id: Option<Uuid>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Keyset position: rows strictly older than this `(created_at, id)`.
    pub cursor: Option<(DateTime<Utc>, Uuid)>,
    /// Page size.
    pub limit: i64,
}

/// Executions matching `f`, newest first.
///
/// # Errors
///
/// Database errors.
pub async fn list_executions(pool: &PgPool, f: &ExecutionFilter) -> Result<Vec<ExecutionView>> {
    let (cursor_at, cursor_id) = f.cursor.unzip();
    Ok(sqlx::query_as!(
        ExecutionView,
        r#"SELECT id, workspace_id, connector_id, connector_version,
                status AS "status: ExecutionStatus", priority, run_at, claims,
                reclaims, lease_owner, lease_expires_at, cancel_requested_at, idempotency_key, input,
                output, error, rerun_of, started_by, next_step, step_attempt, created_at, started_at, finished_at,
                updated_at,
                waiting_reason, waiting_key
         FROM connector_executions
         WHERE ($1::text IS NULL OR workspace_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR connector_id = $3)
           AND ($4::timestamptz IS NULL OR created_at >= $4)
           AND ($5::timestamptz IS NULL OR created_at < $5)
           AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
         ORDER BY created_at DESC, id DESC
         LIMIT $8"#,
        f.workspace_id,
        f.status.map(ExecutionStatus::as_str),
        f.connector_id,
        f.created_after,
        f.created_before,
        cursor_at,
        cursor_id,
        f.limit
    )
    .fetch_all(pool)
    .await?)
}

/// Statistics of one connector's executions over a window.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectorStats {
    /// Executions created in the window, by status.
    pub by_status: Value,
    /// Succeeded / (succeeded + failed), or null when none finished.
    pub success_rate: Option<f64>,
    /// Median duration (start to finish) of finished executions, ms.
    pub p50_duration_ms: Option<f64>,
    /// 95th percentile duration, ms.
    pub p95_duration_ms: Option<f64>,
}

/// Statistics of a connector's executions created since `since`.
///
/// # Errors
///
/// Database errors.
pub async fn connector_stats(
    pool: &PgPool,
    workspace_id: &str,
    connector_id: Uuid,
    since: DateTime<Utc>,
) -> Result<ConnectorStats> {
    // One pass over the window's rows (the CTE is read once and reused):
    // the console's connector list asks this for every connector.
    let row = sqlx::query!(
        r#"WITH w AS MATERIALIZED (
               SELECT status,
                      EXTRACT(EPOCH FROM finished_at - started_at) * 1000 AS ms
               FROM connector_executions
               WHERE workspace_id = $1 AND connector_id = $2 AND created_at >= $3)
           SELECT
               COALESCE((SELECT jsonb_object_agg(status, n) FROM (
                   SELECT status, count(*) AS n FROM w GROUP BY status) s), '{}'::jsonb) AS "by_status!",
               (SELECT count(*) FILTER (WHERE status = 'succeeded')::float8
                       / NULLIF(count(*) FILTER (WHERE status IN ('succeeded', 'failed')), 0)
                FROM w) AS success_rate,
               p[1]::float8 AS p50,
               p[2]::float8 AS p95
           FROM (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY ms) AS p
                 FROM w WHERE ms IS NOT NULL) q"#,
        workspace_id,
        connector_id,
        since
    )
    .fetch_one(pool)
    .await?;
    Ok(ConnectorStats {
        by_status: row.by_status,
        success_rate: row.success_rate,
        p50_duration_ms: row.p50,
        p95_duration_ms: row.p95,
    })
}

/// [`ConnectorStats`] of every connector of a workspace with executions
/// created since `since`, in one pass over the window (the history
/// index's `(workspace_id, created_at)` range) instead of one query per
/// connector. Same definitions as [`connector_stats`]; connectors without
/// executions in the window are absent.
///
/// # Errors
///
/// Database errors.
pub async fn workspace_connector_stats(
    pool: &PgPool,
    workspace_id: &str,
    since: DateTime<Utc>,
) -> Result<HashMap<Uuid, ConnectorStats>> {
    let rows = sqlx::query!(
        r#"SELECT connector_id AS "connector_id!",
                  jsonb_strip_nulls(jsonb_build_object(
                      'queued', NULLIF(count(*) FILTER (WHERE status = 'queued'), 0),
                      'running', NULLIF(count(*) FILTER (WHERE status = 'running'), 0),
                      'succeeded', NULLIF(count(*) FILTER (WHERE status = 'succeeded'), 0),
                      'failed', NULLIF(count(*) FILTER (WHERE status = 'failed'), 0),
                      'cancelled', NULLIF(count(*) FILTER (WHERE status = 'cancelled'), 0))) AS "by_status!",
                  count(*) FILTER (WHERE status = 'succeeded')::float8
                      / NULLIF(count(*) FILTER (WHERE status IN ('succeeded', 'failed')), 0) AS success_rate,
                  -- percentile_cont skips the nulls of unfinished rows.
                  percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
                      ORDER BY EXTRACT(EPOCH FROM finished_at - started_at) * 1000) AS p
           FROM connector_executions
           WHERE workspace_id = $1 AND created_at >= $2
           GROUP BY connector_id"#,
        workspace_id,
        since
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let at = |i: usize| r.p.as_ref().and_then(|p| p.get(i).copied());
            let stats = ConnectorStats {
                by_status: r.by_status,
                success_rate: r.success_rate,
                p50_duration_ms: at(0),
                p95_duration_ms: at(1),
            };
            (r.connector_id, stats)
        })
        .collect())
}

/// Marks `execution_id` as watched by `watcher` until `until`, so step
/// commits and status changes NOTIFY for it; nothing when it is not an
/// execution of `workspace_id`, whose changes the caller may not follow.
///
/// # Errors
///
/// Database errors.
pub async fn watch(
    pool: &PgPool,
    workspace_id: &str,
    execution_id: Uuid,
    watcher: Uuid,
    until: DateTime<Utc>,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO execution_watchers (execution_id, workspace_id, watcher, expires_at)
         SELECT id, workspace_id, $3, $4 FROM connector_executions WHERE id = $1 AND workspace_id = $2
         ON CONFLICT (execution_id, watcher) DO UPDATE SET expires_at = EXCLUDED.expires_at",
        execution_id,
        workspace_id,
        watcher,
        until
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Stops watching (and sweeps watchers that expired without unwatching).
///
/// # Errors
///
/// Database errors.
pub async fn unwatch(pool: &PgPool, execution_id: Uuid, watcher: Uuid) -> Result<()> {
    sqlx::query!(
        "DELETE FROM execution_watchers WHERE (execution_id = $1 AND watcher = $2) OR expires_at < now()",
        execution_id,
        watcher
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks workspace `workspace_id` as watched by `watcher` until `until`,
/// so every statement that changes its executions NOTIFYs
/// [`WORKSPACE_EVENTS`](super::channels::WORKSPACE_EVENTS) once.
///
/// # Errors
///
/// Database errors.
pub async fn watch_workspace(
    pool: &PgPool,
    workspace_id: &str,
    watcher: Uuid,
    until: DateTime<Utc>,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO workspace_watchers (workspace_id, watcher, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id, watcher) DO UPDATE SET expires_at = EXCLUDED.expires_at",
        workspace_id,
        watcher,
        until
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Stops watching a workspace (and sweeps workspace watchers that expired
/// without unwatching).
///
/// # Errors
///
/// Database errors.
pub async fn unwatch_workspace(pool: &PgPool, workspace_id: &str, watcher: Uuid) -> Result<()> {
    sqlx::query!(
        "DELETE FROM workspace_watchers
         WHERE (workspace_id = $1 AND watcher = $2) OR expires_at < now()",
        workspace_id,
        watcher
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// One entry of an execution's event log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventRow {
    /// Sequence number (increasing).
    pub id: i64,
    /// The execution.
    pub execution_id: Uuid,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `enqueued`, `claimed`, `step_started`, `step_finished`,
    /// `retry_scheduled`, `lease_lost`, `released`, `parked`,
    /// `cancel_requested`, `cancelled` or `finished`.
    pub kind: String,
    /// Small structured details; never a secret.
    pub details: Value,
}

/// An execution's events after `after_id` (0 for all), oldest first.
///
/// # Errors
///
/// Database errors.
pub async fn events(
    db: impl sqlx::PgExecutor<'_>,
    workspace_id: &str,
    execution_id: Uuid,
    after_id: i64,
) -> Result<Vec<EventRow>> {
    let mut rows = sqlx::query_as!(
        EventRow,
        "SELECT id, execution_id, at, kind, details FROM execution_events
         WHERE execution_id = $1 AND workspace_id = $2 AND id > $3
         ORDER BY id",
        execution_id,
        workspace_id,
        after_id
    )
    .fetch_all(db)
    .await?;
    // Claim and rescue events record the worker for operators; tenants
    // must not learn worker host names or process ids.
    for row in &mut rows {
        if let Some(details) = row.details.as_object_mut() {
            details.remove("worker");
        }
    }
    Ok(rows)
}

/// How long after a count of the ready backlog the next one is due: the
/// interval, or twenty times what the count took when that is longer, so
/// the gauges never cost more than 5 % of one connection however large
/// the backlog grows.
#[must_use]
pub fn next_gauge_refresh(every: Duration, took: Duration) -> Duration {
    every.max(took.saturating_mul(20))
}

/// Ready executions waiting for a worker, and the age of the oldest in
/// seconds at `now`: for the queue gauges. Every process that publishes
/// them shares one stored measurement (table `queue_gauge`): the caller
/// that finds it due, and not being refreshed by another, counts the
/// backlog through the claim index and stores the result with the next
/// due time ([`next_gauge_refresh`]); every other caller reads it, in
/// one statement. So the fleet runs one count per interval, not one per
/// process.
///
/// # Errors
///
/// Database errors.
pub async fn queue_depth(pool: &PgPool, now: DateTime<Utc>, every: Duration) -> Result<(i64, f64)> {
    let stored = sqlx::query!(
        r#"SELECT depth, oldest_at, next_at <= $1 AS "due!" FROM queue_gauge"#,
        now
    )
    .fetch_one(pool)
    .await?;
    let (depth, oldest_at) = if stored.due {
        refresh_queue_gauge(pool, now, every)
            .await?
            .unwrap_or((stored.depth, stored.oldest_at))
    } else {
        (stored.depth, stored.oldest_at)
    };
    // Negative (a clock behind the refresher's) reads as 0.
    let oldest = oldest_at.map_or(0.0, |at| {
        (now - at).to_std().map_or(0.0, |age| age.as_secs_f64())
    });
    Ok((depth, oldest))
}

/// Counts the ready backlog into `queue_gauge` when the row is still due
/// and no other process holds it; `None` when another got there first
/// (the caller keeps the stored value rather than wait).
async fn refresh_queue_gauge(
    pool: &PgPool,
    now: DateTime<Utc>,
    every: Duration,
) -> Result<Option<(i64, Option<DateTime<Utc>>)>> {
    let mut tx = pool.begin().await?;
    let due = sqlx::query_scalar!(
        "SELECT id FROM queue_gauge WHERE next_at <= $1 FOR UPDATE SKIP LOCKED",
        now
    )
    .fetch_optional(&mut *tx)
    .await?;
    if due.is_none() {
        tx.rollback().await?;
        return Ok(None);
    }
    let started = Instant::now();
    let row = sqlx::query!(
        r#"SELECT count(*) AS "depth!", min(run_at) AS oldest_at
           FROM connector_executions WHERE status = 'queued' AND run_at <= $1"#,
        now
    )
    .fetch_one(&mut *tx)
    .await?;
    let next = chrono::Duration::from_std(next_gauge_refresh(every, started.elapsed()))
        .unwrap_or(chrono::Duration::MAX);
    sqlx::query!(
        "UPDATE queue_gauge SET depth = $1, oldest_at = $2, measured_at = $3, next_at = $4",
        row.depth,
        row.oldest_at,
        now,
        now.checked_add_signed(next)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some((row.depth, row.oldest_at)))
}

/// Deletes up to `batch` executions past their workspace's retention,
/// with their steps and events, in one statement; returns how many
/// executions. A workspace's retention is its `retention_days` (plan
/// `custom`), else its plan's (`free` 90 days, `pro` 365), else
/// `default_cutoff` applies. Only rows finished before the latest cutoff in
/// use are visited, through the `finished_at` index, oldest first.
/// Concurrent pruners skip each other's rows.
///
/// # Errors
///
/// Database errors.
pub async fn prune_finished(
    pool: &PgPool,
    now: DateTime<Utc>,
    default_cutoff: DateTime<Utc>,
    batch: i64,
) -> Result<u64> {
    let deleted = sqlx::query_scalar!(
        r#"WITH bound AS (
               -- The latest cutoff in use: no row finished after it is due.
               SELECT GREATEST($2::timestamptz, max($1::timestamptz - make_interval(days =>
                          COALESCE(retention_days, CASE plan WHEN 'free' THEN 90 WHEN 'pro' THEN 365 END))))
                      AS cutoff
               FROM workspaces WHERE plan IS NOT NULL
           ), doomed AS (
               SELECT e.id FROM connector_executions e
               LEFT JOIN workspaces w ON w.id = e.workspace_id
               WHERE e.finished_at < (SELECT cutoff FROM bound)
                 AND e.finished_at < CASE
                         WHEN w.retention_days IS NOT NULL THEN $1 - make_interval(days => w.retention_days)
                         WHEN w.plan = 'free' THEN $1 - interval '90 days'
                         WHEN w.plan = 'pro' THEN $1 - interval '365 days'
                         ELSE $2 END
               ORDER BY e.finished_at
               LIMIT $3
               FOR UPDATE OF e SKIP LOCKED
           ), events AS (
               DELETE FROM execution_events WHERE execution_id IN (SELECT id FROM doomed)
           ), steps AS (
               DELETE FROM execution_steps WHERE execution_id IN (SELECT id FROM doomed)
           ), gone AS (
               DELETE FROM connector_executions WHERE id IN (SELECT id FROM doomed) RETURNING id
           )
           SELECT count(*) AS "deleted!" FROM gone"#,
        now,
        default_cutoff,
        batch
    )
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// Deletes up to `batch` rows older than `cutoff` from each delivery log:
/// finished completion-callback and event deliveries (with their
/// attempts), webhook trigger deliveries, and schedule ticks (except a
/// tick held by `queue_one`, which is still to start). One statement;
/// returns the most rows deleted from any one log, so a caller repeats
/// while it equals `batch`.
///
/// # Errors
///
/// Database errors.
pub async fn prune_deliveries(pool: &PgPool, cutoff: DateTime<Utc>, batch: i64) -> Result<u64> {
    let deleted = sqlx::query_scalar!(
        r#"WITH callbacks AS (
               DELETE FROM callback_deliveries WHERE id IN (
                   SELECT id FROM callback_deliveries
                   WHERE finished_at < $1 ORDER BY finished_at LIMIT $2)
               RETURNING 1
           ), hooks AS (
               DELETE FROM trigger_deliveries WHERE id IN (
                   SELECT id FROM trigger_deliveries
                   WHERE received_at < $1 ORDER BY received_at LIMIT $2)
               RETURNING 1
           ), ticks AS (
               DELETE FROM schedule_ticks WHERE (schedule_id, tick_at) IN (
                   SELECT schedule_id, tick_at FROM schedule_ticks
                   WHERE recorded_at < $1 AND outcome <> 'queued' ORDER BY recorded_at LIMIT $2)
               RETURNING 1
           )
           SELECT GREATEST((SELECT count(*) FROM callbacks), (SELECT count(*) FROM hooks),
                           (SELECT count(*) FROM ticks)) AS "deleted!""#,
        cutoff,
        batch
    )
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::next_gauge_refresh;

    #[test]
    fn the_next_gauge_count_waits_the_interval_or_twenty_counts() {
        let ms = Duration::from_millis;
        let every = Duration::from_secs(5);
        let cases = [
            (ms(0), every),
            (ms(3), every),
            (ms(250), every),
            (ms(251), ms(5_020)),
            (ms(450), ms(9_000)),
            (Duration::MAX, Duration::MAX),
        ];
        for (took, want) in cases {
            assert_eq!(next_gauge_refresh(every, took), want, "took {took:?}");
        }
    }
}
