//! Enqueueing many executions with one multi-row statement: a batch
//! execute's items, and the concurrent single executes an API process
//! groups (each with its audit entry).
//!
//! The items travel as arrays and are inserted with one `INSERT ... SELECT
//! FROM unnest(...)`, their `enqueued` events with it, so a batch costs the
//! same round trips whatever its size (one enqueue per item was one round
//! trip per item). The NOTIFY trigger is per statement: one per batch.
//! Items whose idempotency key exists are looked up with a second
//! statement, only when there are such items.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::Held;
use super::executions::{Enqueued, NewExecution};
use super::history::ExecutionView;
use crate::Result;
use crate::state::ExecutionStatus;

/// A single execute: the execution to enqueue, and who asked, for the
/// `execution.start` audit entry that commits with it.
#[derive(Debug, Clone)]
pub struct Execute {
    /// The execution.
    pub new: NewExecution,
    /// Who asked: a user id or `api-key:<id>`.
    pub actor: String,
    /// The request id.
    pub request_id: Option<String>,
}

/// The planner settings of the connection that enqueues grouped single
/// executes: planned at every call, the statement's planning took 0.4 ms
/// of server time, as long as its execution for one execute and a fifth
/// of the statement's time for groups of nine (docs/performance.md). Its
/// generic plan reads no table but `connectors`, by primary key, whatever
/// the statistics; sequential scans are off so that a plan made on a
/// nearly empty table cannot scan it once it is large. JIT is off: it
/// would be decided once for that plan, from its estimate.
const ENQUEUE_PLANNER: [(&str, &str); 3] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("jit", "off"),
];

/// The connection that runs only [`enqueue_executes`], with the planner
/// settings of [`ENQUEUE_PLANNER`], which would mislead the planning of
/// other statements. An API process sends one group statement at a time,
/// so one connection is all it uses, and it keeps it between statements
/// ([`Held`]).
#[derive(Debug, Clone)]
pub struct EnqueuePool(Held);

impl EnqueuePool {
    /// One connection to `pool`'s database, made as
    /// [`super::planned_once`] says.
    #[must_use]
    pub fn new(pool: &PgPool) -> Self {
        Self(super::planned_once(pool, "enqueue", &ENQUEUE_PLANNER))
    }

    /// The connection, for looking at what it plans.
    #[must_use]
    pub fn held(&self) -> &Held {
        &self.0
    }
}

/// The columns of executions to insert, an array each, for `unnest`.
#[derive(Default)]
struct Columns<'a> {
    workspaces: Vec<&'a str>,
    connectors: Vec<Uuid>,
    versions: Vec<i32>,
    inputs: Vec<&'a Value>,
    keys: Vec<Option<&'a str>>,
    priorities: Vec<i16>,
    run_ats: Vec<Option<DateTime<Utc>>>,
    reruns: Vec<Option<Uuid>>,
    traces: Vec<Option<&'a Value>>,
    started_by: Vec<String>,
    callbacks: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(news: impl Iterator<Item = &'a NewExecution>) -> Self {
        let mut c = Self::default();
        for new in news {
            c.workspaces.push(new.workspace_id.as_str());
            c.connectors.push(new.connector_id);
            c.versions.push(new.connector_version);
            c.inputs.push(&new.input);
            c.keys.push(new.idempotency_key.as_deref());
            c.priorities.push(new.priority);
            c.run_ats.push(new.run_at);
            c.reruns.push(new.rerun_of);
            c.traces.push(new.trace_context.as_ref());
            c.started_by.push(new.started_by.to_string());
            c.callbacks.push(new.callback_url.as_deref());
        }
        c
    }
}

/// Enqueues the executions of concurrent single executes with one
/// statement, which is its own transaction: each with its `enqueued`
/// event and its `execution.start` audit entry (object the new
/// execution, details its connector), so a group of them costs one round
/// trip and one durable commit. Returns, in item order, each execution as
/// stored (what `GET /executions/{id}` shows until a worker claims it),
/// or `None`, having written nothing for it, when its idempotency key
/// exists (in the database, or an earlier item of `executes` holds it),
/// or when its connector is not live at its version in its workspace
/// (deleted, or a newer version published): the caller may have taken
/// the version from a cache, and this statement is what checks it. The
/// caller then looks the connector up afresh, and either enqueues the
/// newer version or takes [`enqueue_many`]'s path, which tells a replay
/// from a reused key.
///
/// Rows go in key order, as [`enqueue_many`]'s do, so that concurrent
/// statements sharing keys never wait for each other in opposite orders.
/// One item PostgreSQL refuses fails the whole statement: see
/// [`enqueue_each_alone`].
///
/// # Errors
///
/// Database errors.
pub async fn enqueue_executes(
    pool: &EnqueuePool,
    executes: &[Execute],
    now: DateTime<Utc>,
) -> Result<Vec<Option<ExecutionView>>> {
    let ids: Vec<Uuid> = executes.iter().map(|_| Uuid::now_v7()).collect();
    let c = Columns::of(executes.iter().map(|e| &e.new));
    let actors: Vec<&str> = executes.iter().map(|e| e.actor.as_str()).collect();
    let request_ids: Vec<Option<&str>> = executes.iter().map(|e| e.request_id.as_deref()).collect();
    let mut conn = pool.0.acquire().await?;
    let rows = sqlx::query_as!(
        ExecutionView,
        r#"WITH x AS (
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int4[], $5::jsonb[], $6::text[],
                                    $7::int2[], $8::timestamptz[], $9::uuid[], $10::jsonb[], $11::text[],
                                    $12::text[], $13::text[], $14::text[])
                   WITH ORDINALITY AS x(id, workspace_id, connector_id, connector_version, input, idempotency_key,
                                        priority, run_at, rerun_of, trace_context, started_by, callback_url,
                                        actor, request_id, ord)
           ), ins AS (
               INSERT INTO connector_executions
                   (id, workspace_id, connector_id, connector_version, input, idempotency_key,
                    priority, run_at, rerun_of, trace_context, started_by, callback_url, created_at, updated_at)
               SELECT id, workspace_id, connector_id, connector_version, input, idempotency_key, priority,
                      COALESCE(run_at, now()), rerun_of, trace_context, started_by, callback_url, $15::timestamptz, $15
               FROM x
               -- A subquery per item, by primary key: as a join, the plan
               -- made for any group size read every live connector.
               WHERE (SELECT c.latest_version FROM connectors c
                      WHERE c.id = x.connector_id AND c.workspace_id = x.workspace_id
                        AND c.deleted_at IS NULL) = x.connector_version
               ORDER BY workspace_id, idempotency_key, ord
               ON CONFLICT (workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
               RETURNING *
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $15, 'enqueued',
                      jsonb_strip_nulls(jsonb_build_object('run_at', run_at, 'priority', priority, 'rerun_of', rerun_of))
               FROM ins
           ), audited AS (
               INSERT INTO audit_log (workspace_id, actor, action, object_type, object_id, request_id, details)
               SELECT ins.workspace_id, x.actor, 'execution.start', 'execution', ins.id::text, x.request_id,
                      jsonb_build_object('connector_id', ins.connector_id)
               FROM ins JOIN x ON x.id = ins.id
           )
           SELECT id AS "id!", workspace_id AS "workspace_id!", connector_id AS "connector_id!",
                  connector_version AS "connector_version!", status AS "status!: ExecutionStatus",
                  priority AS "priority!", run_at AS "run_at!", claims AS "claims!", reclaims AS "reclaims!",
                  lease_owner, lease_expires_at, cancel_requested_at, idempotency_key, input AS "input!",
                  output, error, rerun_of, started_by, next_step AS "next_step!",
                  step_attempt AS "step_attempt!", created_at AS "created_at!", started_at, finished_at,
                  updated_at AS "updated_at!", waiting_reason, waiting_key
           FROM ins"#,
        &ids,
        &c.workspaces as &[&str],
        &c.connectors,
        &c.versions,
        &c.inputs as &[&Value],
        &c.keys as &[Option<&str>],
        &c.priorities,
        &c.run_ats as &[Option<DateTime<Utc>>],
        &c.reruns as &[Option<Uuid>],
        &c.traces as &[Option<&Value>],
        &c.started_by,
        &c.callbacks as &[Option<&str>],
        &actors as &[&str],
        &request_ids as &[Option<&str>],
        now
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(crate::Error::from);
    conn.finish(rows.as_ref().err());
    let mut views: HashMap<Uuid, ExecutionView> = rows?.into_iter().map(|v| (v.id, v)).collect();
    Ok(ids.iter().map(|id| views.remove(id)).collect())
}

/// [`enqueue_executes`] of a group, and when PostgreSQL refuses its
/// statement, of each execute alone, so that one item it refuses (its
/// connector version deleted meanwhile, a U+0000 in its input) fails only
/// its own request; the answers are in item order. Any other failure (the
/// database unreachable) is every item's, answered at once as an
/// [`Error::Group`](crate::Error::Group) each, not tried again per item.
pub async fn enqueue_each_alone(
    pool: &EnqueuePool,
    executes: &[Execute],
    now: DateTime<Utc>,
) -> Vec<Result<Option<ExecutionView>>> {
    let group_error = match enqueue_executes(pool, executes, now).await {
        Ok(views) => return views.into_iter().map(Ok).collect(),
        Err(e) if executes.len() == 1 => return vec![Err(e)],
        Err(e) => e,
    };
    if !super::session_survives(&group_error) {
        let (message, connection) = (group_error.to_string(), group_error.is_connection());
        return executes
            .iter()
            .map(|_| {
                Err(crate::Error::Group {
                    message: message.clone(),
                    connection,
                })
            })
            .collect();
    }
    tracing::warn!(error = %group_error, size = executes.len(), "grouped executes refused; enqueueing one by one");
    let mut answers = Vec::with_capacity(executes.len());
    for one in executes {
        answers.push(
            enqueue_executes(pool, std::slice::from_ref(one), now)
                .await
                .map(|mut views| views.pop().flatten()),
        );
    }
    answers
}

/// Inserts `new` with its `enqueued` event in one statement; the
/// execution as stored, or `None` when `new`'s idempotency key exists
/// (nothing is written). Inside a caller's transaction, the trigger's
/// NOTIFY is delivered at commit.
///
/// # Errors
///
/// Database errors.
pub(super) async fn insert_one<'e>(
    db: impl PgExecutor<'e>,
    new: &NewExecution,
    now: DateTime<Utc>,
) -> Result<Option<ExecutionView>> {
    Ok(sqlx::query_as!(
        ExecutionView,
        r#"WITH ins AS (
               INSERT INTO connector_executions
                   (id, workspace_id, connector_id, connector_version, input, idempotency_key,
                    priority, run_at, rerun_of, trace_context, started_by, callback_url, created_at, updated_at)
               VALUES ($1::uuid, $2::text, $3::uuid, $4::int4, $5::jsonb, $6::text, $7::int2,
                       COALESCE($8::timestamptz, now()), $9::uuid, $10::jsonb, $11::text,
                       $12::text, $13, $13)
               ON CONFLICT (workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
               RETURNING *
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $13, 'enqueued',
                      jsonb_strip_nulls(jsonb_build_object('run_at', run_at, 'priority', priority, 'rerun_of', rerun_of))
               FROM ins
           )
           SELECT id AS "id!", workspace_id AS "workspace_id!", connector_id AS "connector_id!",
                  connector_version AS "connector_version!", status AS "status!: ExecutionStatus",
                  priority AS "priority!", run_at AS "run_at!", claims AS "claims!", reclaims AS "reclaims!",
                  lease_owner, lease_expires_at, cancel_requested_at, idempotency_key, input AS "input!",
                  output, error, rerun_of, started_by, next_step AS "next_step!",
                  step_attempt AS "step_attempt!", created_at AS "created_at!", started_at, finished_at,
                  updated_at AS "updated_at!", waiting_reason, waiting_key
           FROM ins"#,
        Uuid::now_v7(),
        new.workspace_id,
        new.connector_id,
        new.connector_version,
        new.input,
        new.idempotency_key,
        new.priority,
        new.run_at,
        new.rerun_of,
        new.trace_context,
        new.started_by.to_string(),
        new.callback_url,
        now
    )
    .fetch_optional(db)
    .await?)
}

/// Enqueues `news` with one INSERT statement; returns, in item order,
/// what [`enqueue`](super::executions::enqueue) would have returned for
/// each item enqueued one after the other in the same transaction: an
/// item whose idempotency key exists (in the database or earlier in
/// `news`) names that execution, `same_request` telling whether it was
/// for the same connector and input. Usable inside a caller's
/// transaction; the caller decides what a reused key means.
///
/// # Errors
///
/// Database errors.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    news: &[NewExecution],
    now: DateTime<Utc>,
) -> Result<Vec<Enqueued>> {
    let mut out: Vec<Option<Enqueued>> = vec![None; news.len()];
    let mut pending: Vec<usize> = (0..news.len()).collect();
    while !pending.is_empty() {
        let ids: Vec<Uuid> = pending.iter().map(|_| Uuid::now_v7()).collect();
        let inserted = insert(conn, &pending, &ids, news, now).await?;
        let mut conflicted = Vec::new();
        for (&i, &id) in pending.iter().zip(&ids) {
            if inserted.contains(&id) {
                out[i] = Some(Enqueued {
                    id,
                    created: true,
                    same_request: true,
                });
            } else {
                conflicted.push(i);
            }
        }
        if conflicted.is_empty() {
            break;
        }
        for (i, id, same) in existing(conn, &conflicted, news).await? {
            out[i] = Some(Enqueued {
                id,
                created: false,
                same_request: same,
            });
        }
        // A conflicting row can vanish before the lookup (a concurrent
        // transaction rolled back, retention deleted it): those items are
        // inserted again, as `enqueue` retries.
        pending = conflicted
            .into_iter()
            .filter(|&i| out[i].is_none())
            .collect();
    }
    // Every item left the loop either inserted or found.
    Ok(out.into_iter().flatten().collect())
}

/// Inserts items `which` of `news` with ids `ids`; returns the ids that
/// were inserted (the others hit an existing idempotency key, or one of
/// an earlier item of the same statement).
async fn insert(
    conn: &mut PgConnection,
    which: &[usize],
    ids: &[Uuid],
    news: &[NewExecution],
    now: DateTime<Utc>,
) -> Result<HashSet<Uuid>> {
    let c = Columns::of(which.iter().map(|&i| &news[i]));
    // Rows go in key order, so concurrent batches sharing keys wait for
    // each other's keys in one order (in item order two batches holding
    // keys in opposite orders would deadlock); of two items with one key
    // the earlier one is inserted and the later one conflicts with it, as
    // one enqueue after the other would.
    let rows = sqlx::query_scalar!(
        r#"WITH x AS (
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int4[], $5::jsonb[], $6::text[],
                                    $7::int2[], $8::timestamptz[], $9::uuid[], $10::jsonb[], $11::text[], $12::text[])
                   WITH ORDINALITY AS x(id, workspace_id, connector_id, connector_version, input, idempotency_key,
                                        priority, run_at, rerun_of, trace_context, started_by, callback_url, ord)
           ), ins AS (
               INSERT INTO connector_executions
                   (id, workspace_id, connector_id, connector_version, input, idempotency_key,
                    priority, run_at, rerun_of, trace_context, started_by, callback_url, created_at, updated_at)
               SELECT id, workspace_id, connector_id, connector_version, input, idempotency_key, priority,
                      COALESCE(run_at, now()), rerun_of, trace_context, started_by, callback_url, $13::timestamptz, $13
               FROM x ORDER BY workspace_id, idempotency_key, ord
               ON CONFLICT (workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
               RETURNING id, workspace_id, run_at, priority, rerun_of
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $13, 'enqueued',
                      jsonb_strip_nulls(jsonb_build_object('run_at', run_at, 'priority', priority, 'rerun_of', rerun_of))
               FROM ins
           )
           SELECT id AS "id!" FROM ins"#,
        ids,
        &c.workspaces as &[&str],
        &c.connectors,
        &c.versions,
        &c.inputs as &[&Value],
        &c.keys as &[Option<&str>],
        &c.priorities,
        &c.run_ats as &[Option<DateTime<Utc>>],
        &c.reruns as &[Option<Uuid>],
        &c.traces as &[Option<&Value>],
        &c.started_by,
        &c.callbacks as &[Option<&str>],
        now
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// For items `which` of `news` (all with an idempotency key), the
/// execution holding each key, if any, and whether it was for the same
/// connector and input: `(item, id, same)`. A fresh statement, so it sees
/// conflicting rows committed after the INSERT's snapshot.
async fn existing(
    conn: &mut PgConnection,
    which: &[usize],
    news: &[NewExecution],
) -> Result<Vec<(usize, Uuid, bool)>> {
    let n = which.len();
    let mut items = Vec::with_capacity(n);
    let mut workspaces = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut connectors = Vec::with_capacity(n);
    let mut inputs: Vec<&Value> = Vec::with_capacity(n);
    for &i in which {
        let new = &news[i];
        items.push(i64::try_from(i).unwrap_or(i64::MAX));
        workspaces.push(new.workspace_id.as_str());
        keys.push(new.idempotency_key.as_deref());
        connectors.push(new.connector_id);
        inputs.push(&new.input);
    }
    let rows = sqlx::query!(
        r#"SELECT x.item AS "item!", e.id, (e.connector_id = x.connector_id AND e.input = x.input) AS "same!"
           FROM unnest($1::int8[], $2::text[], $3::text[], $4::uuid[], $5::jsonb[])
               AS x(item, workspace_id, idempotency_key, connector_id, input)
           JOIN connector_executions e
             ON e.workspace_id = x.workspace_id AND e.idempotency_key = x.idempotency_key"#,
        &items,
        &workspaces as &[&str],
        &keys as &[Option<&str>],
        &connectors,
        &inputs as &[&Value]
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| usize::try_from(r.item).ok().map(|i| (i, r.id, r.same)))
        .collect())
}
