//! Flow control for every worker, in PostgreSQL: GCRA rows per rate-limit
//! key and the slots reserved by parked executions, slot rows per
//! concurrency key, and parking an execution that may
//! not send yet. Keys arrive already prefixed with their workspace's
//! [`key_prefix`](crate::flow::key_prefix).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;
use crate::flow::{HOLD, Pace, WaitReason};

/// A slot reserved by [`take_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// When the send may leave.
    pub slot: DateTime<Utc>,
    /// The slot is more than [`HOLD`] ahead and kept
    /// for the execution, which parks; otherwise it was handed out and
    /// the caller waits for it in place.
    pub kept: bool,
    /// Taken from the key's TAT with the [`Take::count`] slots after it;
    /// false when the execution's kept slot was used instead (one slot).
    pub fresh: bool,
}

/// One send asking [`take_group`] for a slot: execution `id` on
/// rate-limit `key` at `pace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The key, prefixed with its workspace's `key_prefix`.
    pub key: String,
    /// The execution sending.
    pub id: Uuid,
    /// The pace of the step's `rate_limit`.
    pub pace: Pace,
    /// Consecutive slots to reserve, at least 1: more for a worker's
    /// block on an idle key (see [`crate::flow::block_len`]). The slot
    /// answered is the first; a kept one is kept for this execution, and
    /// the rest are the worker's to hand out.
    pub count: i64,
}

/// Reserves the sends of `takes` (GCRA with reservations, see
/// [`crate::flow::reserve`]), [`Take::count`] consecutive slots each, in
/// one statement; the first slot of each comes back in the order of
/// `takes`.
///
/// A slot kept for a take's execution by an earlier park is used when it
/// is still usable at `now` (see [`usable`](crate::flow::usable)).
/// Otherwise the key's TAT gives fresh slots: the takes of one key get
/// consecutive slots in their order, and the TAT moves on by the sum of
/// their steps (a step times the count). "Now" is then read from the
/// server's clock once the key's row is locked, so time spent queueing
/// behind other senders of a busy key does not make the slots late. A
/// slot more than [`HOLD`] after `now` is kept for its execution.
///
/// Takes of the same execution and key (for-each items in flight at
/// once) go in separate statements, in order: each uses or replaces the
/// slot the previous one kept.
///
/// # Errors
///
/// Database errors.
pub async fn take_group(
    pool: &PgPool,
    takes: &[Take],
    now: DateTime<Utc>,
) -> Result<Vec<Reserved>> {
    let mut slots = vec![None; takes.len()];
    let mut rest: Vec<usize> = (0..takes.len()).collect();
    while !rest.is_empty() {
        let mut seen = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = rest
            .into_iter()
            .partition(|&i| seen.insert((&takes[i].key, takes[i].id)));
        for (i, slot) in round
            .iter()
            .zip(take_round(pool, takes, &round, now).await?)
        {
            slots[*i] = Some(slot);
        }
        rest = later;
    }
    Ok(slots.into_iter().flatten().collect())
}

/// One statement of [`take_group`]: the takes at `round`, no two of the
/// same execution and key.
async fn take_round(
    pool: &PgPool,
    takes: &[Take],
    round: &[usize],
    now: DateTime<Utc>,
) -> Result<Vec<Reserved>> {
    let hold_until = now + chrono::Duration::from_std(HOLD).unwrap_or_default();
    let keys: Vec<&str> = round.iter().map(|&i| takes[i].key.as_str()).collect();
    let ids: Vec<Uuid> = round.iter().map(|&i| takes[i].id).collect();
    let steps: Vec<i64> = round
        .iter()
        .map(|&i| takes[i].pace.step_us.saturating_mul(takes[i].count.max(1)))
        .collect();
    let late: Vec<i64> = round.iter().map(|&i| takes[i].pace.late_us()).collect();
    let rows = sqlx::query!(
        r#"WITH req AS (
               SELECT * FROM unnest($1::text[], $2::uuid[], $3::int8[], $4::int8[])
                   WITH ORDINALITY AS r(key, execution_id, step_us, late_us, n)
           ), mine AS (
               SELECT req.n, res.slot FROM req
               JOIN flow_rate_reservations res
                 ON res.key = req.key AND res.execution_id = req.execution_id
               WHERE res.slot >= $5::timestamptz - req.late_us * interval '1 microsecond'
               FOR UPDATE OF res
           ), need AS (
               SELECT key, n, step_us,
                      (sum(step_us) OVER (PARTITION BY key ORDER BY n) - step_us)::int8 AS before_us
               FROM req WHERE n NOT IN (SELECT n FROM mine)
           ), totals AS (
               -- The clock is read once per key (a volatile CTE is not
               -- inlined), so tat - updated_at below is exactly the total.
               SELECT key, sum(step_us)::int8 AS total_us, GREATEST($5, clock_timestamp()) AS base
               FROM need GROUP BY key
           ), bumped AS (
               INSERT INTO flow_rate_limits AS r (key, tat, updated_at)
               SELECT key, base + total_us * interval '1 microsecond', base FROM totals ORDER BY key
               ON CONFLICT (key) DO UPDATE
                   SET tat = GREATEST(r.tat, $5, clock_timestamp()) + (EXCLUDED.tat - EXCLUDED.updated_at),
                       updated_at = $5
               RETURNING r.key, r.tat
           ), fresh AS (
               SELECT need.n, b.tat - (t.total_us - need.before_us) * interval '1 microsecond' AS slot
               FROM need JOIN totals t USING (key) JOIN bumped b USING (key)
           ), chosen AS (
               SELECT n, slot, slot > $6 AS kept, fresh FROM (
                   SELECT n, slot, false AS fresh FROM mine
                   UNION ALL SELECT n, slot, true FROM fresh
               ) s
           ), keep AS (
               INSERT INTO flow_rate_reservations (key, execution_id, slot)
               SELECT req.key, req.execution_id, c.slot FROM chosen c JOIN req USING (n) WHERE c.kept
               ON CONFLICT (key, execution_id) DO UPDATE SET slot = EXCLUDED.slot
           ), used AS (
               DELETE FROM flow_rate_reservations res USING chosen c JOIN req USING (n)
               WHERE NOT c.kept AND res.key = req.key AND res.execution_id = req.execution_id
           )
           SELECT n AS "n!", slot AS "slot!", kept AS "kept!", fresh AS "fresh!"
           FROM chosen ORDER BY n"#,
        &keys as &[&str],
        &ids,
        &steps,
        &late,
        now,
        hold_until
    )
    .fetch_all(pool)
    .await?;
    if rows.len() != round.len() {
        return Err(crate::Error::Reserve(format!(
            "{} of {} rate-limit slots reserved",
            rows.len(),
            round.len()
        )));
    }
    Ok(rows
        .into_iter()
        .map(|r| Reserved {
            slot: r.slot,
            kept: r.kept,
            fresh: r.fresh,
        })
        .collect())
}

/// Moves `slot`, just taken on `key` and missed by more than the
/// tolerance (a slow round trip, a starved process), to now, when no
/// send of the key has been reserved after it (the key's TAT is still one
/// step past it): the late send keeps its turn instead of going to the
/// back, and the TAT moves to one step past now. "Now" is `now` or the
/// server's clock once the key's row is locked, whichever is later, as
/// in [`take_group`]. Returns the new slot, `None` when it did not move.
///
/// Only a key whose step is longer than the late allowance needs this: on
/// any other, the TAT one step past a missed slot has passed too, and a
/// fresh take gives the same slot.
///
/// # Errors
///
/// Database errors.
pub async fn reanchor(
    pool: &PgPool,
    key: &str,
    slot: DateTime<Utc>,
    pace: Pace,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar!(
        r#"UPDATE flow_rate_limits
           SET tat = GREATEST($3::timestamptz, clock_timestamp()) + $4::int8 * interval '1 microsecond',
               updated_at = $3
           WHERE key = $1 AND tat = $2::timestamptz + $4::int8 * interval '1 microsecond'
           RETURNING tat - $4::int8 * interval '1 microsecond' AS "slot!""#,
        key,
        slot,
        now,
        pace.step_us
    )
    .fetch_optional(pool)
    .await?)
}

/// A provider asked to slow down: no send of `key` before `until` (the
/// key's TAT never moves back). Slots reserved before `until` are
/// dropped: their executions take fresh ones when they wake.
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
        r#"WITH dropped AS (
               DELETE FROM flow_rate_reservations WHERE key = $1 AND slot < $2
           )
           INSERT INTO flow_rate_limits AS r (key, tat, updated_at) VALUES ($1, $2, $3)
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
                 AND e.fencing_token = s.fencing_token AND e.lease_expires_at > now()
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
/// and makes the execution parked longest on that key due now (the
/// database's `now()`, which claims judge `run_at` by), so it takes the
/// slot next; idle workers are woken for it as for an enqueue.
///
/// # Errors
///
/// Database errors.
pub async fn release(pool: &PgPool, key: &str, (id, item): (Uuid, i32)) -> Result<()> {
    sqlx::query!(
        r#"WITH gone AS (
               DELETE FROM flow_concurrency_slots WHERE key = $1 AND execution_id = $2 AND item = $3
               RETURNING key
           ), next AS (
               SELECT e.id FROM connector_executions e
               WHERE e.status = 'queued' AND e.waiting_reason = 'concurrency' AND e.waiting_key = $1
                 AND e.run_at > now() AND EXISTS (SELECT 1 FROM gone)
               ORDER BY e.run_at
               LIMIT 1
               FOR UPDATE SKIP LOCKED
           ), woken AS (
               UPDATE connector_executions e SET run_at = now() FROM next WHERE e.id = next.id
               RETURNING e.id
           )
           SELECT pg_notify($4, '') FROM woken"#,
        key,
        id,
        item,
        super::channels::EXECUTIONS_ENQUEUED
    )
    .fetch_all(pool)
    .await?;
    Ok(())
}

/// A running execution to park (see [`park_group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Park {
    /// The execution.
    pub id: Uuid,
    /// Its fencing token: a lost lease parks nothing.
    pub token: i64,
    /// When it is queued again.
    pub run_at: DateTime<Utc>,
    /// Why it waits: [`WaitReason::Concurrency`], or any other for a rate limit.
    pub reason: WaitReason,
    /// The key it waits on, prefixed with its workspace's `key_prefix`.
    pub key: String,
}

/// Parks running executions before their step is sent, in one statement:
/// each queued again at its `run_at`, lease released, the reason and key
/// stored for the explainer, a `parked` event written (or the execution
/// cancelled, when that was asked meanwhile). The step's attempt is
/// unchanged (parking costs no retry). Returns, in the order of `parks`,
/// whether each was parked: false when its lease was lost.
///
/// # Errors
///
/// Database errors.
pub async fn park_group(pool: &PgPool, parks: &[Park], now: DateTime<Utc>) -> Result<Vec<bool>> {
    let ids: Vec<Uuid> = parks.iter().map(|p| p.id).collect();
    let tokens: Vec<i64> = parks.iter().map(|p| p.token).collect();
    let run_ats: Vec<DateTime<Utc>> = parks.iter().map(|p| p.run_at).collect();
    let reasons: Vec<&str> = parks
        .iter()
        .map(|p| match p.reason {
            WaitReason::Concurrency => "concurrency",
            _ => "rate_limit",
        })
        .collect();
    let keys: Vec<&str> = parks.iter().map(|p| p.key.as_str()).collect();
    let done = sqlx::query_scalar!(
        r#"WITH req AS (
               SELECT * FROM unnest($1::uuid[], $2::int8[], $3::timestamptz[], $4::text[], $5::text[])
                   WITH ORDINALITY AS r(id, token, run_at, reason, key, n)
           ), upd AS (
               UPDATE connector_executions e SET
                   status = CASE WHEN e.cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END,
                   finished_at = CASE WHEN e.cancel_requested_at IS NULL THEN NULL ELSE $6::timestamptz END,
                   run_at = req.run_at, waiting_reason = req.reason, waiting_key = req.key,
                   lease_owner = NULL, lease_expires_at = NULL, updated_at = $6
               FROM req
               WHERE e.id = req.id AND e.fencing_token = req.token AND e.status = 'running'
               RETURNING req.n, e.id, e.workspace_id, e.status, e.next_step, req.run_at, req.reason
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $6, CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE 'parked' END,
                      jsonb_build_object('reason', reason, 'run_at', run_at, 'next_step', next_step)
               FROM upd ORDER BY n
           )
           SELECT n AS "n!" FROM upd"#,
        &ids,
        &tokens,
        &run_ats,
        &reasons as &[&str],
        &keys as &[&str],
        now
    )
    .fetch_all(pool)
    .await?;
    let mut parked = vec![false; parks.len()];
    for n in done {
        if let Some(p) = usize::try_from(n - 1).ok().and_then(|i| parked.get_mut(i)) {
            *p = true;
        }
    }
    Ok(parked)
}
