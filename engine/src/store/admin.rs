//! Cross-workspace views for SaaS admins: the health of the queue and its
//! workers, and one workspace's usage.
//!
//! These run on an operator's request against the hot queue table, so each
//! one reads through an index and never the whole table: queued rows
//! through the partial claim index, running rows through the partial lease
//! index, finished rows through the `finished_at` index, and a workspace's
//! rows through its history index.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// Executions counted by status. Queued and running are every such
/// execution now; the final statuses count those that finished since the
/// window's start (counting every finished row would scan the whole table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StatusCounts {
    /// Waiting for a worker, ready or scheduled later.
    pub queued: i64,
    /// Leased by a worker.
    pub running: i64,
    /// Succeeded within the window.
    pub succeeded: i64,
    /// Failed within the window.
    pub failed: i64,
    /// Cancelled within the window.
    pub cancelled: i64,
}

/// The state of the whole queue, across workspaces.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Executions by status.
    pub by_status: StatusCounts,
    /// Queued executions that are ready to run now (`run_at` has passed).
    pub queue_depth: i64,
    /// Queued executions scheduled for later (retries, `run_at`).
    pub scheduled: i64,
    /// How long the oldest ready execution has waited past its `run_at`, in
    /// seconds (0 when none is ready).
    pub oldest_ready_age_seconds: f64,
    /// Distinct workers seen within the last minute: owners of running
    /// leases, and workers that finished a step in that minute.
    pub workers_last_minute: i64,
}

/// Queue and worker statistics at `now`; finished executions are counted
/// from `finished_since`.
///
/// A worker's steps are found through executions it may have touched in
/// the last minute (running, finished in that minute, or queued with a
/// `run_at` in it, which is where a retry scheduled in that minute lands)
/// and the step table's primary key, since `execution_steps` has no index
/// on `finished_at`.
///
/// # Errors
///
/// Database errors.
pub async fn queue_stats(
    pool: &PgPool,
    now: DateTime<Utc>,
    finished_since: DateTime<Utc>,
) -> Result<QueueStats> {
    let minute_ago = now - chrono::Duration::minutes(1);
    let row = sqlx::query!(
        r#"SELECT q.queued AS "queued!", q.ready AS "ready!", q.oldest AS "oldest!",
                  r.running AS "running!", f.succeeded AS "succeeded!", f.failed AS "failed!",
                  f.cancelled AS "cancelled!", w.workers AS "workers!"
           FROM (SELECT count(*) AS queued,
                        count(*) FILTER (WHERE run_at <= $1) AS ready,
                        COALESCE(EXTRACT(EPOCH FROM $1 - min(run_at) FILTER (WHERE run_at <= $1))::float8, 0) AS oldest
                 FROM connector_executions WHERE status = 'queued') q,
                (SELECT count(*) AS running FROM connector_executions WHERE status = 'running') r,
                (SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                        count(*) FILTER (WHERE status = 'failed') AS failed,
                        count(*) FILTER (WHERE status = 'cancelled') AS cancelled
                 FROM connector_executions WHERE finished_at >= $2) f,
                (SELECT count(DISTINCT worker) AS workers FROM (
                     SELECT lease_owner AS worker FROM connector_executions WHERE status = 'running'
                     UNION ALL
                     SELECT s.worker_id FROM execution_steps s
                     WHERE s.finished_at >= $3 AND s.execution_id IN (
                         SELECT id FROM connector_executions WHERE status = 'running'
                         UNION ALL
                         SELECT id FROM connector_executions WHERE finished_at >= $3
                         UNION ALL
                         SELECT id FROM connector_executions WHERE status = 'queued' AND run_at >= $3)
                 ) seen) w"#,
        now,
        finished_since,
        minute_ago
    )
    .fetch_one(pool)
    .await?;
    Ok(QueueStats {
        by_status: StatusCounts {
            queued: row.queued,
            running: row.running,
            succeeded: row.succeeded,
            failed: row.failed,
            cancelled: row.cancelled,
        },
        queue_depth: row.ready,
        scheduled: row.queued - row.ready,
        oldest_ready_age_seconds: row.oldest.max(0.0),
        workers_last_minute: row.workers,
    })
}

/// Whether a workspace row exists (it is created on first use).
///
/// # Errors
///
/// Database errors.
pub async fn workspace_exists(pool: &PgPool, workspace_id: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1) AS "exists!""#,
        workspace_id
    )
    .fetch_one(pool)
    .await?)
}

/// One UTC day of a workspace's executions (by creation time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DailyUsage {
    /// The UTC day.
    pub day: NaiveDate,
    /// Executions created that day.
    pub total: i64,
    /// Of which succeeded.
    pub succeeded: i64,
    /// Of which failed.
    pub failed: i64,
    /// Of which were cancelled.
    pub cancelled: i64,
}

/// One connector's executions over the usage window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConnectorUsage {
    /// The connector.
    pub connector_id: Uuid,
    /// Its name.
    pub name: Option<String>,
    /// Whether it has been deleted since.
    pub deleted: bool,
    /// Executions created in the window.
    pub total: i64,
    /// Of which succeeded.
    pub succeeded: i64,
    /// Of which failed.
    pub failed: i64,
    /// Of which were cancelled.
    pub cancelled: i64,
    /// Failed / (succeeded + failed), or `None` when none finished that way.
    pub failure_rate: Option<f64>,
}

/// A workspace's executions created since `since` (a UTC midnight), per
/// day for `days` days from it (days without executions included, as
/// zeros), and per connector, most used first.
///
/// # Errors
///
/// Database errors.
pub async fn workspace_usage(
    pool: &PgPool,
    workspace_id: &str,
    since: DateTime<Utc>,
    days: i32,
) -> Result<(Vec<DailyUsage>, Vec<ConnectorUsage>)> {
    let per_day = sqlx::query_as!(
        DailyUsage,
        r#"WITH counted AS (
               SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
                      count(*) AS total,
                      count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
                      count(*) FILTER (WHERE status = 'failed') AS failed,
                      count(*) FILTER (WHERE status = 'cancelled') AS cancelled
               FROM connector_executions
               WHERE workspace_id = $1 AND created_at >= $2
               GROUP BY 1
           )
           SELECT d.day AS "day!", COALESCE(c.total, 0) AS "total!",
                  COALESCE(c.succeeded, 0) AS "succeeded!", COALESCE(c.failed, 0) AS "failed!",
                  COALESCE(c.cancelled, 0) AS "cancelled!"
           FROM (SELECT ($2 AT TIME ZONE 'UTC')::date + g AS day
                 FROM generate_series(0, $3::int4 - 1) AS g) d
           LEFT JOIN counted c ON c.day = d.day
           ORDER BY d.day"#,
        workspace_id,
        since,
        days
    )
    .fetch_all(pool)
    .await?;
    let per_connector = sqlx::query_as!(
        ConnectorUsage,
        r#"SELECT e.connector_id AS "connector_id!", c.name AS "name?",
                  (c.deleted_at IS NOT NULL) AS "deleted!",
                  count(*) AS "total!",
                  count(*) FILTER (WHERE e.status = 'succeeded') AS "succeeded!",
                  count(*) FILTER (WHERE e.status = 'failed') AS "failed!",
                  count(*) FILTER (WHERE e.status = 'cancelled') AS "cancelled!",
                  count(*) FILTER (WHERE e.status = 'failed')::float8
                      / NULLIF(count(*) FILTER (WHERE e.status IN ('succeeded', 'failed')), 0)
                      AS failure_rate
           FROM connector_executions e
           LEFT JOIN connectors c ON c.id = e.connector_id AND c.workspace_id = e.workspace_id
           WHERE e.workspace_id = $1 AND e.created_at >= $2
           GROUP BY e.connector_id, c.name, c.deleted_at
           ORDER BY count(*) DESC, e.connector_id"#,
        workspace_id,
        since
    )
    .fetch_all(pool)
    .await?;
    Ok((per_day, per_connector))
}

/// Sets a workspace's retention plan (`free`, `pro`, or `custom` with
/// `retention_days`; `None` follows the global default), creating the
/// workspace row if needed.
///
/// # Errors
///
/// Database errors, including a plan and days the schema's CHECKs refuse.
pub async fn set_retention(
    pool: &PgPool,
    workspace_id: &str,
    plan: Option<&str>,
    retention_days: Option<i32>,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO workspaces (id, plan, retention_days) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET plan = EXCLUDED.plan, retention_days = EXCLUDED.retention_days",
        workspace_id,
        plan,
        retention_days
    )
    .execute(pool)
    .await?;
    Ok(())
}
