//! The claim: one statement that leases ready executions fairly across
//! workspaces.
//!
//! Workspaces with queued rows are found with a loose index scan (one
//! probe per workspace, however deep its backlog); each offers a few
//! batches of its own best rows (priority, then `run_at`: priority
//! orders only within a workspace), fewer when it is near its running
//! cap; the batch then takes every workspace's first row before any
//! workspace's second. `FOR UPDATE SKIP LOCKED` keeps concurrent claimers
//! apart.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::Held;
use crate::Result;

/// Default of `CONVEYOR_WORKSPACE_MAX_RUNNING`: executions of one
/// workspace running at once across every worker.
pub const DEFAULT_WORKSPACE_MAX_RUNNING: i64 = 1000;

/// The priorities an execution may have (higher runs first, and only
/// ahead of its own workspace's executions).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i16> = -100..=100;

/// A row a worker has leased.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// Execution id.
    pub id: Uuid,
    /// Owning workspace.
    pub workspace_id: String,
    /// Connector id.
    pub connector_id: Uuid,
    /// Pinned version.
    pub connector_version: i32,
    /// The token every later write must present.
    pub fencing_token: i64,
    /// The input.
    pub input: Value,
    /// The context persisted so far (`{}` on first claim).
    pub context: Value,
    /// First unfinished step.
    pub next_step: i32,
    /// Attempt number of that step.
    pub step_attempt: i32,
    /// When the execution first started (the run deadline counts from it).
    pub started_at: DateTime<Utc>,
    /// How many times the row has been claimed, this claim included.
    pub claims: i32,
    /// The trace context stored at enqueue, if any.
    pub trace_context: Option<Value>,
    /// Attempts of the current step a provider refused with a rate-limit
    /// signal; the retry policy does not count them.
    pub throttled_attempts: i32,
}

/// The claim statement of [`claim_capped`]: `$1` worker, `$2` limit, `$3`
/// now (recorded as the start and the claim's time), `$4` the lease's
/// length, `$5` the running cap, `$6` the woken ids. Public so that tests
/// can look at its plan.
///
/// Times that one process writes and another compares are the
/// database's: a row is due when its `run_at` has passed by the
/// database's `now()` (an enqueue without a time, a retry, a release, a
/// rescue and a freed concurrency slot write `now()` or `now()` plus a
/// delay; a caller's `run_at` and a rate-limit slot are times on the
/// wall clock), and the lease ends at `now()`
/// plus its length, which the rescuer of another process compares with
/// `now()` too. So the workers' and the API's clocks need not agree.
/// `now()` is stable, so it is an index condition of the plan made once,
/// as a parameter is.
pub const CLAIM: &str = r#"WITH RECURSIVE ws AS (
               (SELECT workspace_id FROM connector_executions
                WHERE status = 'queued' ORDER BY workspace_id LIMIT 1)
               UNION ALL
               SELECT (SELECT q.workspace_id FROM connector_executions q
                       WHERE q.status = 'queued' AND q.workspace_id > ws.workspace_id
                       ORDER BY q.workspace_id LIMIT 1)
               FROM ws WHERE ws.workspace_id IS NOT NULL
           ), candidates AS (
               SELECT ws.workspace_id, c.id, c.priority, c.run_at
               FROM ws
               CROSS JOIN LATERAL (
                   SELECT count(*) AS n FROM connector_executions r
                   WHERE r.workspace_id = ws.workspace_id AND r.status = 'running'
               ) running
               CROSS JOIN LATERAL (
                   SELECT q.id, q.priority, q.run_at FROM connector_executions q
                   WHERE q.workspace_id = ws.workspace_id AND q.status = 'queued' AND q.run_at <= now()
                   ORDER BY q.priority DESC, q.run_at, q.id
                   -- Four times the batch: concurrent claimers read the same
                   -- best rows and skip each other's locked ones.
                   LIMIT GREATEST(LEAST($2::int8 * 4, $5 - running.n), 0)
               ) c
               WHERE ws.workspace_id IS NOT NULL
           ), ranked AS (
               SELECT array_agg(id ORDER BY turn, run_at, id) AS ids FROM (
                   SELECT id, run_at,
                          row_number() OVER (PARTITION BY workspace_id ORDER BY priority DESC, run_at, id) AS turn
                   FROM candidates) t
           ), ready AS (
               -- The woken ids, then the round's, each once, in that
               -- order, each looked up by primary key and locked, until
               -- the batch is full. The lateral locking subquery is never
               -- flattened, so the plan is this loop whatever the
               -- statistics say (joined as a table, a queue the planner
               -- believed nearly empty was scanned whole, re-evaluating
               -- the round per row), and rows are locked one at a time as
               -- the limit asks for them, leaving the rest to concurrent
               -- claimers. A nested loop keeps its outer order, and
               -- `unnest` yields the array in order.
               -- `lease_owner IS NULL AND finished_at IS NULL` is `status =
               -- 'queued'` (the table's CHECKs tie both to the status).
               SELECT e.id, c.pos FROM ranked
               CROSS JOIN LATERAL unnest($6::uuid[] || ARRAY(
                   SELECT r.id FROM unnest(ranked.ids) WITH ORDINALITY AS r(id, pos)
                   WHERE r.id <> ALL ($6::uuid[]) ORDER BY r.pos)) WITH ORDINALITY AS c(id, pos)
               CROSS JOIN LATERAL (
                   SELECT e.id FROM connector_executions e
                   WHERE e.id = c.id AND e.lease_owner IS NULL AND e.finished_at IS NULL
                     AND (e.id = ANY (ranked.ids)
                          OR (e.run_at <= now()
                              AND (SELECT count(*) FROM connector_executions r
                                   WHERE r.workspace_id = e.workspace_id AND r.status = 'running') < $5))
                   FOR UPDATE SKIP LOCKED
               ) e
               LIMIT $2
           ), claimed AS (
               UPDATE connector_executions e SET
                   status = 'running', lease_owner = $1, lease_expires_at = now() + $4::interval,
                   fencing_token = e.fencing_token + 1, claims = e.claims + 1,
                   started_at = COALESCE(e.started_at, $3), updated_at = $3,
                   waiting_reason = NULL, waiting_key = NULL
               FROM ready WHERE e.id = ready.id
               RETURNING e.id, e.workspace_id, e.connector_id, e.connector_version, e.fencing_token,
                         e.input, e.context, e.next_step, e.step_attempt, e.started_at, e.claims,
                         e.trace_context, e.throttled_attempts, ready.pos
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $3, 'claimed',
                      jsonb_build_object('worker', $1::text, 'claim', claims, 'next_step', next_step)
               FROM claimed
           )
           SELECT id, workspace_id, connector_id, connector_version, fencing_token, input, context,
                  next_step, step_attempt, started_at, claims, trace_context, throttled_attempts
           FROM claimed
           ORDER BY pos"#;

/// The planner settings of a claim connection: every row the claim
/// touches is reached through an index and joined in a nested loop, so
/// the plan made once per connection is right for an empty queue and for
/// one of millions of rows alike.
///
/// A claim planned at every call cost 1.5 to 2.5 ms of server time, eight
/// times its execution on an idle queue, and that planning sat between an
/// execution's start and its first send. Prepared with the default
/// settings, the plan made while the queue was small scanned the whole
/// table and lasted until the next ANALYZE (with 10,000 rows queued since,
/// over a second a claim; docs/performance.md). With sequential scans,
/// hash and merge joins off, that plan has no other shape left than the
/// index one, so it is made once (a generic plan) and reused.
///
/// JIT compilation is off too: it is decided once per plan, from the
/// plan's estimated cost, and a queue analyzed with 20,000 rows queued
/// puts the claim's estimate past `jit_above_cost`, so every claim
/// compiled 52 functions first: 28 to 33 ms, against 3.5 to 5 ms for the
/// claim itself.
const CLAIM_PLANNER: [(&str, &str); 5] = [
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("plan_cache_mode", "force_generic_plan"),
    ("jit", "off"),
];

/// The connection that runs only the claim, with the planner settings of
/// [`CLAIM_PLANNER`]: they would slow down or mislead the planning of
/// other statements, so the claim has its own connection instead of the
/// process's pool, kept between claims ([`Held`]).
#[derive(Debug, Clone)]
pub struct ClaimPool(Held);

impl ClaimPool {
    /// One connection to `pool`'s database (a worker claims one batch at
    /// a time), made as [`super::planned_once`] says.
    #[must_use]
    pub fn new(pool: &PgPool) -> Self {
        Self(super::planned_once(pool, "claims", &CLAIM_PLANNER))
    }

    /// The connection, for looking at what it plans.
    #[must_use]
    pub fn held(&self) -> &Held {
        &self.0
    }
}

/// [`claim_capped`] with the default per-workspace running cap.
///
/// # Errors
///
/// Database errors.
pub async fn claim(
    claims: &ClaimPool,
    worker_id: &str,
    limit: i64,
    lease: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>> {
    claim_capped(
        claims,
        worker_id,
        (limit, &[]),
        lease,
        DEFAULT_WORKSPACE_MAX_RUNNING,
        now,
    )
    .await
}

/// Leases up to `limit` ready executions to `worker_id` for `lease` (from
/// the database's clock), round-robin across workspaces, none of a
/// workspace that already runs `max_running`.
///
/// The `woken` executions, parked by this worker and due now, come first
/// (when still queued and due, and their workspace is under its cap):
/// they already had their turn and hold a rate-limit slot, which a
/// backlog of older rows ahead of them in the round would make them miss.
///
/// # Errors
///
/// Database errors.
pub async fn claim_capped(
    claims: &ClaimPool,
    worker_id: &str,
    (limit, woken): (i64, &[Uuid]),
    lease: std::time::Duration,
    max_running: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>> {
    // `query_as` with binds rather than the checked macro, whose
    // statements cannot be pointed at the claim pool's settings; the e2e
    // queue and flow tests run it against the schema.
    let mut conn = claims.0.acquire().await?;
    let rows = sqlx::query_as::<_, Claimed>(CLAIM)
        .bind(worker_id)
        .bind(limit)
        .bind(now)
        .bind(super::interval(lease))
        .bind(max_running)
        .bind(woken)
        .fetch_all(&mut *conn)
        .await
        .map_err(crate::Error::from);
    conn.finish(rows.as_ref().err());
    rows
}
