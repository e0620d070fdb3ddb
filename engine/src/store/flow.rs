//! Flow control for every worker, in PostgreSQL: GCRA rows per rate-limit
//! key, slot rows per concurrency key, and parking an execution that may
//! not send yet. Keys arrive already prefixed with their workspace id.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;
use crate::flow::WaitReason;

/// Spends one send of rate-limit `key` at `now` (GCRA, one UPSERT, see
/// [`crate::flow::gcra`]): `Ok(())` when allowed, `Err(at)` with the
/// earliest time a send is allowed when not.
///
/// # Errors
///
/// Database errors.
pub async fn take(
    pool: &PgPool,
    key: &str,
    interval_us: i64,
    now: DateTime<Utc>,
) -> Result<std::result::Result<(), DateTime<Utc>>> {
    let row = sqlx::query!(
        r#"WITH up AS (
               INSERT INTO flow_rate_limits AS r (key, tat, updated_at)
               VALUES ($1, $2::timestamptz + $3::int8 * interval '1 microsecond', $2)
               ON CONFLICT (key) DO UPDATE
                   SET tat = $2::timestamptz + $3::int8 * interval '1 microsecond', updated_at = $2
                   WHERE r.tat <= $2
               RETURNING r.tat
           )
           SELECT (SELECT tat FROM up) AS granted,
                  (SELECT tat FROM flow_rate_limits WHERE key = $1) AS current"#,
        key,
        now,
        interval_us
    )
    .fetch_one(pool)
    .await?;
    Ok(match (row.granted, row.current) {
        (Some(_), _) => Ok(()),
        // Refused: the row's TAT is when the next send is allowed. A TAT
        // read before a concurrent update may be early; the retry at that
        // time simply asks again.
        (None, Some(tat)) => Err(tat.max(now)),
        (None, None) => Err(now),
    })
}

/// A provider asked to slow down: no send of `key` before `until` (the
/// key's TAT never moves back).
///
/// # Errors
///
/// Database errors.
pub async fn push_back(
    pool: &PgPool,
    key: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query!(
        r#"INSERT INTO flow_rate_limits AS r (key, tat, updated_at) VALUES ($1, $2, $3)
           ON CONFLICT (key) DO UPDATE SET tat = GREATEST(r.tat, $2), updated_at = $3"#,
        key,
        until,
        now
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes a slot of concurrency `key` for the running execution `id` (under
/// fencing `token`) when fewer than `limit` are held. `item` names the
/// slot within the execution: a `for_each` item's number from 1, so that
/// its items in flight at once each hold one, and 0 for any other step;
/// taking a slot already held renews it. A slot counts only
/// while its holder runs under the same token with a live lease, so a
/// crashed worker's slot frees when its lease expires. Returns whether the
/// slot was taken.
///
/// # Errors
///
/// Database errors.
pub async fn acquire(
    pool: &PgPool,
    key: &str,
    limit: u32,
    id: Uuid,
    token: i64,
    item: i32,
    now: DateTime<Utc>,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    // Serialises the count and the insert per key; held for two short
    // statements, never across a request.
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", key)
        .fetch_one(&mut *tx)
        .await?;
    let taken = sqlx::query_scalar!(
        r#"WITH live AS (
               SELECT s.execution_id, s.item FROM flow_concurrency_slots s
               JOIN connector_executions e ON e.id = s.execution_id
               WHERE s.key = $1 AND (s.execution_id, s.item) <> ($3, $6) AND e.status = 'running'
                 AND e.fencing_token = s.fencing_token AND e.lease_expires_at > $5
           ), stale AS (
               DELETE FROM flow_concurrency_slots s
               WHERE s.key = $1 AND (s.execution_id, s.item) <> ($3, $6)
                 AND (s.execution_id, s.item) NOT IN (SELECT execution_id, item FROM live)
           )
           INSERT INTO flow_concurrency_slots (key, execution_id, item, fencing_token, acquired_at)
           SELECT $1, $3, $6, $4, $5 WHERE (SELECT count(*) FROM live) < $2
           ON CONFLICT (key, execution_id, item) DO UPDATE SET fencing_token = $4, acquired_at = $5
           RETURNING execution_id"#,
        key,
        i64::from(limit),
        id,
        token,
        now,
        item
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(taken.is_some())
}

/// Gives back `id`'s slot `item` of concurrency `key` (see [`acquire`])
/// and makes the execution parked longest on that key due now, so it
/// takes the slot next.
///
/// # Errors
///
/// Database errors.
pub async fn release(
    pool: &PgPool,
    key: &str,
    (id, item): (Uuid, i32),
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query!(
        r#"WITH gone AS (
               DELETE FROM flow_concurrency_slots WHERE key = $1 AND execution_id = $2 AND item = $4
               RETURNING key
           ), next AS (
               SELECT e.id FROM connector_executions e
               WHERE e.status = 'queued' AND e.waiting_reason = 'concurrency' AND e.waiting_key = $1
                 AND e.run_at > $3 AND EXISTS (SELECT 1 FROM gone)
               ORDER BY e.run_at
               LIMIT 1
               FOR UPDATE SKIP LOCKED
           )
           UPDATE connector_executions e SET run_at = $3 FROM next WHERE e.id = next.id"#,
        key,
        id,
        now,
        item
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Parks a running execution before its step is sent: queued again at
/// `run_at`, lease released, the reason and key stored for the explainer.
/// The step's attempt is unchanged (parking costs no retry). Returns false
/// when the lease was lost.
///
/// # Errors
///
/// Database errors.
pub async fn park(
    pool: &PgPool,
    id: Uuid,
    token: i64,
    run_at: DateTime<Utc>,
    reason: WaitReason,
    key: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let reason = match reason {
        WaitReason::Concurrency => "concurrency",
        _ => "rate_limit",
    };
    let done = sqlx::query_scalar!(
        r#"WITH upd AS (
               UPDATE connector_executions SET
                   status = CASE WHEN cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END,
                   finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE $6::timestamptz END,
                   run_at = $3, waiting_reason = $4, waiting_key = $5,
                   lease_owner = NULL, lease_expires_at = NULL, updated_at = $6
               WHERE id = $1 AND fencing_token = $2 AND status = 'running'
               RETURNING id, workspace_id, status, next_step
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $6, CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE 'parked' END,
                      jsonb_build_object('reason', $4::text, 'run_at', $3::timestamptz, 'next_step', next_step)
               FROM upd
           )
           SELECT id AS "id!" FROM upd"#,
        id,
        token,
        run_at,
        reason,
        key,
        now
    )
    .fetch_optional(pool)
    .await?;
    Ok(done.is_some())
}
