//! Usage metering: per workspace and UTC day, executions started, executions
//! finished by status, and the step attempts (their retries, rate-limit
//! parks and body bytes out and in) of those that finished.
//!
//! Nothing extra is written per step: the figures are aggregated on request
//! from the history rows, reading executions through the workspace history
//! index (`created_at`) or the `finished_at` index and their steps through
//! the step table's primary key. Usage therefore covers what retention has
//! kept, no further back.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::Result;

/// One workspace's usage on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageDay {
    /// The workspace.
    pub workspace_id: String,
    /// The UTC day.
    pub day: NaiveDate,
    /// Executions created (enqueued) that day.
    pub started: i64,
    /// Executions that finished that day as succeeded.
    pub succeeded: i64,
    /// Executions that finished that day as failed.
    pub failed: i64,
    /// Executions that finished that day as cancelled.
    pub cancelled: i64,
    /// Step attempts of the executions that finished that day.
    pub steps: i64,
    /// Of those, attempts after a step's first (retries).
    pub retries: i64,
    /// Attempts the provider refused with 429 or 503 and that were
    /// rescheduled (parked until its `Retry-After` or the backoff).
    pub rate_limited: i64,
    /// Times flow control parked those executions before a send (a step's
    /// rate limit or concurrency key was full).
    pub parked: i64,
    /// Request body bytes those attempts sent.
    pub bytes_out: i64,
    /// Response body bytes those attempts received.
    pub bytes_in: i64,
}

/// Usage in `[from, to)`, per workspace (only `workspace_id` when given)
/// and day, for the days with any activity, ordered by workspace and day.
///
/// # Errors
///
/// Database errors.
pub async fn daily(
    pool: &PgPool,
    workspace_id: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<UsageDay>> {
    Ok(sqlx::query_as!(
        UsageDay,
        r#"SELECT u.workspace_id AS "workspace_id!", u.day AS "day!",
                  sum(u.started)::int8 AS "started!", sum(u.succeeded)::int8 AS "succeeded!",
                  sum(u.failed)::int8 AS "failed!", sum(u.cancelled)::int8 AS "cancelled!",
                  sum(u.steps)::int8 AS "steps!", sum(u.retries)::int8 AS "retries!",
                  sum(u.rate_limited)::int8 AS "rate_limited!", sum(u.parked)::int8 AS "parked!",
                  sum(u.bytes_out)::int8 AS "bytes_out!", sum(u.bytes_in)::int8 AS "bytes_in!"
           FROM (
               SELECT workspace_id, (created_at AT TIME ZONE 'UTC')::date AS day, 1::int8 AS started,
                      0::int8 AS succeeded, 0::int8 AS failed, 0::int8 AS cancelled,
                      0::int8 AS steps, 0::int8 AS retries, 0::int8 AS rate_limited, 0::int8 AS parked,
                      0::int8 AS bytes_out, 0::int8 AS bytes_in
               FROM connector_executions
               WHERE ($1::text IS NULL OR workspace_id = $1) AND created_at >= $2 AND created_at < $3
               UNION ALL
               SELECT e.workspace_id, (e.finished_at AT TIME ZONE 'UTC')::date, 0,
                      (e.status = 'succeeded')::int::int8, (e.status = 'failed')::int::int8,
                      (e.status = 'cancelled')::int::int8, st.steps, st.retries, st.rate_limited,
                      (SELECT count(*) FROM execution_events ev
                       WHERE ev.execution_id = e.id AND ev.kind = 'parked'),
                      st.bytes_out, st.bytes_in
               FROM connector_executions e
               CROSS JOIN LATERAL (
                   SELECT count(*) AS steps, count(*) FILTER (WHERE s.attempt > 1) AS retries,
                          count(*) FILTER (WHERE s.outcome = 'retry_scheduled'
                                             AND s.response_status IN (429, 503)) AS rate_limited,
                          coalesce(sum(s.request_bytes), 0)::int8 AS bytes_out,
                          coalesce(sum(s.response_bytes), 0)::int8 AS bytes_in
                   FROM execution_steps s WHERE s.execution_id = e.id) st
               WHERE ($1::text IS NULL OR e.workspace_id = $1)
                 AND e.finished_at >= $2 AND e.finished_at < $3
           ) u
           GROUP BY u.workspace_id, u.day
           ORDER BY u.workspace_id, u.day"#,
        workspace_id,
        from,
        to
    )
    .fetch_all(pool)
    .await?)
}
