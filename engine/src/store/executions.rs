//! The queue: `connector_executions` rows are the queue entries.
//!
//! - enqueue: one INSERT (a statement trigger NOTIFYs idle workers on
//!   [`EXECUTIONS_ENQUEUED`](super::channels::EXECUTIONS_ENQUEUED)), one
//!   for a whole batch too ([`enqueue_many`]);
//! - claim: one statement, `FOR UPDATE SKIP LOCKED`, in batches, setting
//!   the lease and bumping the fencing token;
//! - every later write filters on `id` + `fencing_token` + `running`: no
//!   row returned means the lease was lost, and the caller stops;
//! - each step commit is ONE statement (hence one transaction) that inserts
//!   the step row and moves the execution on.

use std::mem::take;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::types::PgInterval;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Result;
use crate::state::{ExecutionStatus, StartedBy, StepOutcome};

pub use super::claim::{
    CLAIM, ClaimPool, Claimed, DEFAULT_WORKSPACE_MAX_RUNNING, PRIORITY_RANGE, claim, claim_capped,
};
pub use super::enqueue::{
    EnqueuePool, Execute, enqueue_each_alone, enqueue_executes, enqueue_many,
};

/// What a caller asks to enqueue.
#[derive(Debug, Clone)]
pub struct NewExecution {
    /// Owning workspace.
    pub workspace_id: String,
    /// Connector to run.
    pub connector_id: Uuid,
    /// The pinned connector version.
    pub connector_version: i32,
    /// The input.
    pub input: Value,
    /// A second enqueue with the same key returns the first execution.
    pub idempotency_key: Option<String>,
    /// Higher runs first.
    pub priority: i16,
    /// Not before this time (`None`: now, by the database's clock, which
    /// claims judge `run_at` by).
    pub run_at: Option<DateTime<Utc>>,
    /// The execution this one re-runs.
    pub rerun_of: Option<Uuid>,
    /// W3C trace context (`traceparent`, `tracestate`) of the request that
    /// enqueued it; the worker's execution span continues that trace.
    pub trace_context: Option<Value>,
    /// What started it.
    pub started_by: StartedBy,
    /// Where to POST the summary when it reaches a final state (a
    /// `callback_deliveries` row is created by the finalizing UPDATE).
    pub callback_url: Option<String>,
}

/// The result of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The execution's id.
    pub id: Uuid,
    /// False when an execution with the same idempotency key existed.
    pub created: bool,
    /// For an existing execution: whether it was for the same connector
    /// and input (a reused key with another request is a caller's bug).
    pub same_request: bool,
}

/// Enqueues one execution. Usable inside a caller's transaction: the
/// trigger's NOTIFY is delivered at commit.
///
/// # Errors
///
/// Database errors.
pub async fn enqueue(
    conn: &mut PgConnection,
    new: &NewExecution,
    now: DateTime<Utc>,
) -> Result<Enqueued> {
    loop {
        let inserted = super::enqueue::insert_one(&mut *conn, new, now).await?;
        if let Some(view) = inserted {
            return Ok(Enqueued {
                id: view.id,
                created: true,
                same_request: true,
            });
        }
        // The key exists. The conflicting row may have been committed after
        // this statement's snapshot; a fresh statement sees it.
        let existing = sqlx::query!(
            r#"SELECT id, (connector_id = $3 AND input = $4) AS "same!"
               FROM connector_executions WHERE workspace_id = $1 AND idempotency_key = $2"#,
            new.workspace_id,
            new.idempotency_key,
            new.connector_id,
            new.input
        )
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = existing {
            return Ok(Enqueued {
                id: row.id,
                created: false,
                same_request: row.same,
            });
        }
    }
}

/// What [`rescue_expired`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Put back in the queue.
    pub requeued: Vec<Uuid>,
    /// Of those, put back without counting toward the poison cap: their
    /// lease ran out while the rescuer could not vouch for the system (an
    /// outage, see [`rescue_expired`]).
    pub uncounted: Vec<Uuid>,
    /// Failed as poisoned: their lease expired more than the cap allows.
    pub poisoned: Vec<Uuid>,
    /// Cancelled: a cancel was pending when their worker vanished.
    pub cancelled: Vec<Uuid>,
}

/// Takes back running executions whose lease expired (their worker died or
/// stalled). The token is bumped so the old holder cannot write.
///
/// Expiry is judged by the database's clock, which set the lease's end
/// (see [`CLAIM`]): a rescuer whose own clock runs ahead of the holder's
/// does not take over a lease that is still being renewed. A requeued
/// execution is due at the database's `now()`.
///
/// Only a lease lost while the rest of the system worked counts toward the
/// poison cap: one that expired within the last `counted_for` (the
/// rescuer's own uninterrupted time with the database, less half a lease:
/// it was up, and so was the database, while the holder missed its
/// renewals). Past `max_reclaims` counted losses the execution is failed
/// as poisoned. A lease that expired earlier (the database or every
/// worker was down, so no one can tell a poison message from an outage)
/// is requeued without counting; the `lease_lost` event says which
/// (`counted`).
///
/// # Errors
///
/// Database errors.
pub async fn rescue_expired(
    pool: &PgPool,
    max_reclaims: i32,
    counted_for: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Rescued> {
    let rows = sqlx::query!(
        r#"WITH expired AS (
               SELECT id FROM connector_executions
               WHERE status = 'running' AND lease_expires_at < now()
               ORDER BY lease_expires_at
               LIMIT 1000
               FOR UPDATE SKIP LOCKED
           ), decided AS (
               SELECT e.id, e.lease_owner AS previous_owner, e.lease_expires_at >= now() - $3::interval AS counted,
                      CASE WHEN e.cancel_requested_at IS NOT NULL THEN 'cancelled'
                           WHEN e.lease_expires_at >= now() - $3::interval AND e.reclaims + 1 > $2 THEN 'failed'
                           ELSE 'queued' END AS next_status
               FROM connector_executions e JOIN expired USING (id)
           ), upd AS (
               UPDATE connector_executions e SET
                   status = d.next_status,
                   reclaims = e.reclaims + CASE WHEN d.counted THEN 1 ELSE 0 END,
                   fencing_token = e.fencing_token + 1,
                   lease_owner = NULL, lease_expires_at = NULL,
                   run_at = now(),
                   error = CASE WHEN d.next_status = 'failed' THEN jsonb_build_object(
                       'kind', 'poisoned',
                       'message', format('the lease expired %s times (cap %s): the execution keeps losing its worker', e.reclaims + 1, $2::int),
                       'step', e.next_step) ELSE e.error END,
                   finished_at = CASE WHEN d.next_status = 'queued' THEN NULL ELSE $1::timestamptz END,
                   updated_at = $1
               FROM decided d WHERE e.id = d.id
               RETURNING e.id, e.workspace_id, e.status, e.reclaims, d.previous_owner, d.counted
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $1, 'lease_lost',
                      jsonb_build_object('worker', previous_owner, 'reclaims', reclaims, 'then', status,
                                         'counted', counted)
               FROM upd
               UNION ALL
               SELECT id, workspace_id, $1, CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE 'finished' END,
                      jsonb_build_object('status', status, 'reason', CASE WHEN status = 'failed' THEN 'poisoned' ELSE 'cancel requested' END)
               FROM upd WHERE status <> 'queued'
           )
           SELECT id AS "id!", status AS "status!: ExecutionStatus", counted AS "counted!" FROM upd"#,
        now,
        max_reclaims,
        super::interval(counted_for)
    )
    .fetch_all(pool)
    .await?;
    let mut out = Rescued::default();
    for row in rows {
        match row.status {
            ExecutionStatus::Queued => {
                if !row.counted {
                    out.uncounted.push(row.id);
                }
                out.requeued.push(row.id);
            }
            ExecutionStatus::Failed => out.poisoned.push(row.id),
            _ => out.cancelled.push(row.id),
        }
    }
    Ok(out)
}

/// Extends a lease while a step is in flight, to `lease` from the
/// database's clock (see [`CLAIM`]). `None`: the lease was lost;
/// `Some(true)`: a cancel was requested.
///
/// # Errors
///
/// Database errors.
pub async fn heartbeat(
    pool: &PgPool,
    id: Uuid,
    token: i64,
    lease: std::time::Duration,
) -> Result<Option<bool>> {
    Ok(sqlx::query_scalar!(
        r#"UPDATE connector_executions SET lease_expires_at = now() + $3::interval
           WHERE id = $1 AND fencing_token = $2 AND status = 'running'
           RETURNING cancel_requested_at IS NOT NULL AS "cancel_requested!""#,
        id,
        token,
        super::interval(lease)
    )
    .fetch_optional(pool)
    .await?)
}

/// One attempt of one step, as stored and as the history shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct StepRow {
    /// Position of the step in the connector.
    pub step_index: i32,
    /// Attempt number, from 1.
    pub attempt: i32,
    /// The page of a paginated step, from 1; absent for other steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<i32>,
    /// The item of a `for_each` step, from 1; absent for other steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<i32>,
    /// The step's name.
    pub step_name: String,
    /// How the attempt ended.
    pub outcome: StepOutcome,
    /// Redacted request snapshot.
    pub request: Value,
    /// Response status, if a response arrived.
    pub response_status: Option<i32>,
    /// Response headers (redacted).
    pub response_headers: Option<Value>,
    /// Response body (redacted, possibly truncated).
    pub response_body: Option<Value>,
    /// Extracted fields.
    pub extracted: Option<Value>,
    /// The error, if the attempt failed.
    pub error: Option<Value>,
    /// The worker that ran it. Never serialised: worker ids name hosts
    /// and processes, which tenants must not see.
    #[serde(skip_serializing)]
    pub worker_id: String,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// End time.
    pub finished_at: DateTime<Utc>,
    /// Duration in milliseconds.
    pub duration_ms: i32,
    /// Request body bytes sent.
    pub request_bytes: i32,
    /// Response body bytes received (up to the response cap).
    pub response_bytes: i32,
}

/// Where a step commit moves the execution.
#[derive(Debug, Clone)]
pub enum Transition {
    /// More steps to run: store the grown context, extend the lease. If a
    /// cancel was requested meanwhile, the execution ends `cancelled`.
    Continue {
        /// The grown context.
        context: Value,
        /// The next step's index.
        next_step: i32,
        /// The lease's new length, from the database's clock (see
        /// [`CLAIM`]).
        lease: std::time::Duration,
    },
    /// The last step is done.
    Succeed {
        /// The final context.
        context: Value,
        /// The rendered output.
        output: Value,
    },
    /// Try this step again later (the worker slot is released).
    Retry {
        /// How long from now, by the database's clock (which the claim
        /// judges `run_at` by: see [`CLAIM`]).
        delay: std::time::Duration,
        /// The attempt number of the retry.
        attempt: i32,
        /// A provider's rate-limit signal: not charged to the retry policy.
        throttled: bool,
        /// The context to store with it, if it changed (a `for_each`
        /// step's progress); `None` keeps the stored one.
        context: Option<Value>,
    },
    /// The execution failed.
    Fail {
        /// Structured error naming the step.
        error: Value,
    },
}

/// One step commit: the step row and where it moves its execution.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The execution.
    pub id: Uuid,
    /// The fencing token the commit must match.
    pub token: i64,
    /// The step attempt to store.
    pub step: StepRow,
    /// The execution's next state.
    pub transition: Transition,
}

/// Writes a step row and applies `transition` in one statement, fenced by
/// `token`. Returns the execution's new status, or `None` when the lease
/// was lost (nothing was written).
///
/// # Errors
///
/// Database errors.
pub async fn commit_step(
    pool: &PgPool,
    id: Uuid,
    token: i64,
    step: &StepRow,
    transition: &Transition,
    now: DateTime<Utc>,
) -> Result<Option<ExecutionStatus>> {
    let mut commit = [Commit {
        id,
        token,
        step: step.clone(),
        transition: transition.clone(),
    }];
    let mut conn = pool.acquire().await?;
    let mut statuses = commit_steps(&mut conn, &mut commit, now).await?;
    Ok(statuses.pop().flatten())
}

/// Commits the steps of many executions in ONE statement (group commit),
/// each row still fenced by its own token. Returns each execution's new
/// status, in order, or `None` where the lease was lost (nothing was
/// written for that one).
///
/// The commits' large values are moved into the statement and put back
/// afterwards (also on error), so a failed batch can be retried without
/// having been copied.
///
/// # Errors
///
/// Database errors (then nothing was written for any of them).
pub async fn commit_steps(
    conn: &mut PgConnection,
    commits: &mut [Commit],
    now: DateTime<Utc>,
) -> Result<Vec<Option<ExecutionStatus>>> {
    let n = commits.len();
    let mut ids = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut contexts = Vec::with_capacity(n);
    let mut next_steps = Vec::with_capacity(n);
    let mut leases = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    let mut delays = Vec::with_capacity(n);
    let mut next_attempts = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut indexes = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut pages = Vec::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    let mut requests = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut extracted = Vec::with_capacity(n);
    let mut step_errors = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut finished = Vec::with_capacity(n);
    let mut durations = Vec::with_capacity(n);
    let (mut sent, mut received) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Moved, not cloned: request snapshots and bodies can be large.
    for c in commits.iter_mut() {
        let s = &mut c.step;
        let (kind, context, next_step, lease, output, delay, next_attempt, error) =
            match &mut c.transition {
                Transition::Continue {
                    context,
                    next_step,
                    lease,
                } => (
                    "continue",
                    Some(take(context)),
                    Some(*next_step),
                    Some(super::interval(*lease)),
                    None,
                    None,
                    None,
                    None,
                ),
                Transition::Succeed { context, output } => (
                    "succeed",
                    Some(take(context)),
                    Some(s.step_index + 1),
                    None,
                    Some(take(output)),
                    None,
                    None,
                    None,
                ),
                Transition::Retry {
                    delay,
                    attempt,
                    throttled,
                    context,
                } => (
                    if *throttled { "throttle" } else { "retry" },
                    context.take(),
                    None,
                    None,
                    None,
                    Some(super::interval(*delay)),
                    Some(*attempt),
                    None,
                ),
                Transition::Fail { error } => (
                    "fail",
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    Some(take(error)),
                ),
            };
        ids.push(c.id);
        tokens.push(c.token);
        kinds.push(kind.to_owned());
        contexts.push(context);
        next_steps.push(next_step);
        leases.push(lease);
        outputs.push(output);
        delays.push(delay);
        next_attempts.push(next_attempt);
        errors.push(error);
        indexes.push(s.step_index);
        attempts.push(s.attempt);
        pages.push(s.page.unwrap_or(0));
        items.push(s.item.unwrap_or(0));
        names.push(take(&mut s.step_name));
        outcomes.push(s.outcome.as_str().to_owned());
        requests.push(take(&mut s.request));
        statuses.push(s.response_status);
        headers.push(s.response_headers.take());
        bodies.push(s.response_body.take());
        extracted.push(s.extracted.take());
        step_errors.push(s.error.take());
        workers.push(take(&mut s.worker_id));
        started.push(s.started_at);
        finished.push(s.finished_at);
        durations.push(s.duration_ms);
        sent.push(s.request_bytes);
        received.push(s.response_bytes);
    }
    // The UPDATE fences each row on its token; step rows and events are
    // inserted only from its RETURNING, so a lost lease writes nothing for
    // that execution. A cancel requested meanwhile ends a continuing or
    // retrying execution as `cancelled`.
    let rows = sqlx::query!(
        r#"WITH x AS (
               SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::jsonb[], $5::int4[],
                                    $6::interval[], $7::jsonb[], $8::interval[], $9::int4[], $10::jsonb[],
                                    $12::int4[], $13::int4[], $14::text[], $15::text[], $16::jsonb[], $17::int4[],
                                    $18::jsonb[], $19::jsonb[], $20::jsonb[], $21::jsonb[], $22::text[],
                                    $23::timestamptz[], $24::timestamptz[], $25::int4[], $26::int4[], $27::int4[],
                                    $28::int4[], $29::int4[])
                   AS x(id, token, kind, context, next_step, lease, output, delay, next_attempt, error,
                        step_index, attempt, step_name, outcome, request, response_status, response_headers,
                        response_body, extracted, step_error, worker_id, started_at, finished_at, duration_ms,
                        request_bytes, response_bytes, page, item)
           ), upd AS (
               UPDATE connector_executions e SET
                   context = COALESCE(x.context, e.context),
                   next_step = COALESCE(x.next_step, e.next_step),
                   step_attempt = CASE WHEN x.kind = 'continue' THEN 1 WHEN x.kind IN ('retry', 'throttle') THEN x.next_attempt ELSE e.step_attempt END,
                   throttled_attempts = CASE x.kind WHEN 'throttle' THEN e.throttled_attempts + 1 WHEN 'retry' THEN e.throttled_attempts ELSE 0 END,
                   output = CASE WHEN x.kind = 'succeed' THEN x.output ELSE e.output END,
                   error = CASE WHEN x.kind = 'fail' THEN x.error ELSE e.error END,
                   run_at = COALESCE(now() + x.delay, e.run_at),
                   status = CASE
                       WHEN x.kind = 'succeed' THEN 'succeeded'
                       WHEN x.kind = 'fail' THEN 'failed'
                       WHEN e.cancel_requested_at IS NOT NULL THEN 'cancelled'
                       WHEN x.kind IN ('retry', 'throttle') THEN 'queued'
                       ELSE 'running' END,
                   lease_owner = CASE WHEN x.kind = 'continue' AND e.cancel_requested_at IS NULL THEN e.lease_owner END,
                   lease_expires_at = CASE WHEN x.kind = 'continue' AND e.cancel_requested_at IS NULL THEN now() + x.lease END,
                   finished_at = CASE
                       WHEN x.kind IN ('succeed', 'fail') OR e.cancel_requested_at IS NOT NULL THEN $11::timestamptz END,
                   updated_at = $11
               FROM x
               WHERE e.id = x.id AND e.fencing_token = x.token AND e.status = 'running'
               RETURNING e.id, e.workspace_id, e.status, e.run_at
           ), step AS (
               INSERT INTO execution_steps (execution_id, step_index, attempt, workspace_id, step_name,
                   outcome, request, response_status, response_headers, response_body, extracted,
                   error, worker_id, started_at, finished_at, duration_ms, request_bytes, response_bytes, page,
                   item)
               SELECT upd.id, x.step_index, x.attempt, upd.workspace_id, x.step_name, x.outcome, x.request,
                      x.response_status, x.response_headers, x.response_body, x.extracted, x.step_error,
                      x.worker_id, x.started_at, x.finished_at, x.duration_ms, x.request_bytes, x.response_bytes,
                      x.page, x.item
               FROM upd JOIN x ON x.id = upd.id
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT upd.id, upd.workspace_id, v.at, v.kind, v.details
               FROM upd JOIN x ON x.id = upd.id CROSS JOIN LATERAL (VALUES
                   (x.started_at, 'step_started',
                    jsonb_build_object('step', x.step_name, 'index', x.step_index, 'attempt', x.attempt)),
                   ($11::timestamptz, CASE WHEN x.kind IN ('retry', 'throttle') THEN 'retry_scheduled' ELSE 'step_finished' END,
                    jsonb_strip_nulls(jsonb_build_object('step', x.step_name, 'index', x.step_index, 'attempt', x.attempt,
                        'page', NULLIF(x.page, 0), 'item', NULLIF(x.item, 0), 'outcome', x.outcome, 'status', x.response_status, 'duration_ms', x.duration_ms,
                        'run_at', CASE WHEN x.kind IN ('retry', 'throttle') THEN upd.run_at END,
                        'next_attempt', x.next_attempt))),
                   ($11::timestamptz,
                    CASE upd.status WHEN 'cancelled' THEN 'cancelled' WHEN 'succeeded' THEN 'finished'
                                    WHEN 'failed' THEN 'finished' END,
                    jsonb_build_object('status', upd.status))
               ) AS v(at, kind, details)
               WHERE v.kind IS NOT NULL
           )
           SELECT id AS "id!", status AS "status!: ExecutionStatus" FROM upd"#,
        &ids,
        &tokens,
        &kinds,
        &contexts as &[Option<Value>],
        &next_steps as &[Option<i32>],
        &leases as &[Option<PgInterval>],
        &outputs as &[Option<Value>],
        &delays as &[Option<PgInterval>],
        &next_attempts as &[Option<i32>],
        &errors as &[Option<Value>],
        now,
        &indexes,
        &attempts,
        &names,
        &outcomes,
        &requests,
        &statuses as &[Option<i32>],
        &headers as &[Option<Value>],
        &bodies as &[Option<Value>],
        &extracted as &[Option<Value>],
        &step_errors as &[Option<Value>],
        &workers,
        &started,
        &finished,
        &durations,
        &sent,
        &received,
        &pages,
        &items
    )
    .fetch_all(conn)
    .await;
    // Put the moved values back, so a caller can retry these commits.
    let (mut contexts, mut outputs, mut errors) = (
        contexts.into_iter(),
        outputs.into_iter(),
        errors.into_iter(),
    );
    let (mut names, mut requests, mut headers) =
        (names.into_iter(), requests.into_iter(), headers.into_iter());
    let (mut bodies, mut extracted, mut step_errors, mut workers) = (
        bodies.into_iter(),
        extracted.into_iter(),
        step_errors.into_iter(),
        workers.into_iter(),
    );
    for c in commits.iter_mut() {
        let (context, output, error) = (contexts.next(), outputs.next(), errors.next());
        match &mut c.transition {
            Transition::Continue { context: slot, .. } => {
                *slot = context.flatten().unwrap_or_default();
            }
            Transition::Succeed {
                context: slot,
                output: out,
            } => {
                *slot = context.flatten().unwrap_or_default();
                *out = output.flatten().unwrap_or_default();
            }
            Transition::Retry { context: slot, .. } => *slot = context.flatten(),
            Transition::Fail { error: slot } => *slot = error.flatten().unwrap_or_default(),
        }
        let s = &mut c.step;
        s.step_name = names.next().unwrap_or_default();
        s.request = requests.next().unwrap_or_default();
        s.response_headers = headers.next().flatten();
        s.response_body = bodies.next().flatten();
        s.extracted = extracted.next().flatten();
        s.error = step_errors.next().flatten();
        s.worker_id = workers.next().unwrap_or_default();
    }
    let mut by_id: std::collections::HashMap<Uuid, ExecutionStatus> =
        rows?.into_iter().map(|r| (r.id, r.status)).collect();
    Ok(ids.iter().map(|id| by_id.remove(id)).collect())
}

/// Ends a running execution without a step row: `failed` with `error`
/// (deadline, broken definition) or `cancelled` when `error` is `None`.
/// Returns false when the lease was lost.
///
/// # Errors
///
/// Database errors.
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    token: i64,
    error: Option<&Value>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let done = sqlx::query_scalar!(
        r#"WITH upd AS (
               UPDATE connector_executions SET
                   status = CASE WHEN $3::jsonb IS NULL THEN 'cancelled' ELSE 'failed' END, error = $3,
                   lease_owner = NULL, lease_expires_at = NULL, finished_at = $4, updated_at = $4
               WHERE id = $1 AND fencing_token = $2 AND status = 'running'
               RETURNING id, workspace_id, status
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $4, CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE 'finished' END,
                      jsonb_strip_nulls(jsonb_build_object('status', status, 'error_kind', $3::jsonb -> 'kind'))
               FROM upd
           )
           SELECT id AS "id!" FROM upd"#,
        id,
        token,
        error,
        now
    )
    .fetch_optional(pool)
    .await?;
    Ok(done.is_some())
}

/// Gives a running execution back to the queue at once (graceful shutdown):
/// another worker resumes it at its first unfinished step. It is due at
/// the database's `now()`, the clock the claim judges `run_at` by.
///
/// # Errors
///
/// Database errors.
pub async fn release(pool: &PgPool, id: Uuid, token: i64, now: DateTime<Utc>) -> Result<bool> {
    let done = sqlx::query_scalar!(
        r#"WITH upd AS (
               UPDATE connector_executions SET
                   status = 'queued', run_at = now(), lease_owner = NULL, lease_expires_at = NULL, updated_at = $3
               WHERE id = $1 AND fencing_token = $2 AND status = 'running'
               RETURNING id, workspace_id, next_step
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $3, 'released', jsonb_build_object('next_step', next_step) FROM upd
           )
           SELECT id AS "id!" FROM upd"#,
        id,
        token,
        now
    )
    .fetch_optional(pool)
    .await?;
    Ok(done.is_some())
}

/// The outcome of a cancel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is now cancelled.
    Cancelled,
    /// It is running; its worker stops at the next step boundary at the
    /// latest.
    Requested,
    /// It had already finished with this status; nothing changed.
    AlreadyFinished(ExecutionStatus),
    /// No such execution in this workspace.
    NotFound,
}

/// Requests cancellation of an execution.
///
/// # Errors
///
/// Database errors.
pub async fn cancel(
    pool: &PgPool,
    workspace_id: &str,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<CancelOutcome> {
    let row = sqlx::query!(
        r#"WITH target AS (
               SELECT id, status FROM connector_executions
               WHERE id = $1 AND workspace_id = $2
               FOR UPDATE
           ), upd AS (
               UPDATE connector_executions e SET
                   cancel_requested_at = COALESCE(e.cancel_requested_at, $3),
                   status = CASE WHEN e.status = 'queued' THEN 'cancelled' ELSE e.status END,
                   finished_at = CASE WHEN e.status = 'queued' THEN $3 ELSE e.finished_at END,
                   updated_at = $3
               FROM target WHERE e.id = target.id AND target.status IN ('queued', 'running')
               RETURNING e.id, e.workspace_id, e.status
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $3, CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE 'cancel_requested' END,
                      '{}'::jsonb
               FROM upd
           )
           SELECT target.status AS "before!: ExecutionStatus",
                  (SELECT status FROM upd) AS "after: ExecutionStatus"
           FROM target"#,
        id,
        workspace_id,
        now
    )
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => CancelOutcome::NotFound,
        Some(r) => match r.after {
            Some(ExecutionStatus::Cancelled) => CancelOutcome::Cancelled,
            Some(_) => CancelOutcome::Requested,
            None => CancelOutcome::AlreadyFinished(r.before),
        },
    })
}
