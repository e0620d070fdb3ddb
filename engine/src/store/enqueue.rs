//! Enqueueing many executions with one multi-row statement (batch
//! execute), and one execution with its audit entry in one statement
//! (single execute).
//!
//! The items travel as arrays and are inserted with one `INSERT ... SELECT
//! FROM unnest(...)`, their `enqueued` events with it, so a batch costs the
//! same round trips whatever its size (one enqueue per item was one round
//! trip per item). The NOTIFY trigger is per statement: one per batch.
//! Items whose idempotency key exists are looked up with a second
//! statement, only when there are such items.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::access::AuditEntry;
use super::executions::{Enqueued, NewExecution};
use super::history::ExecutionView;
use crate::Result;
use crate::state::ExecutionStatus;

/// Enqueues `new` and records `entry` in the audit log (its `object_id`
/// the new execution's id), in one statement that is its own
/// transaction: a single execute costs one round trip and one durable
/// commit, where `BEGIN`, the enqueue, the audit entry, `COMMIT` and the
/// read-back of the view were five. Returns the execution as stored (what
/// `GET /executions/{id}` shows until a worker claims it), or `None`,
/// having written nothing, when `new`'s idempotency key exists: the
/// caller then takes [`enqueue_many`]'s path, which tells a replay from
/// a reused key.
///
/// # Errors
///
/// Database errors.
pub async fn enqueue_audited(
    pool: &PgPool,
    new: &NewExecution,
    entry: &AuditEntry<'_>,
    now: DateTime<Utc>,
) -> Result<Option<ExecutionView>> {
    insert_one(pool, new, Some(entry), now).await
}

/// Inserts `new` with its `enqueued` event and, when given, `audit` (its
/// `object_id` the new execution's id), in one statement; the execution
/// as stored, or `None` when `new`'s idempotency key exists (nothing is
/// written). On the pool it is its own transaction; inside a caller's,
/// the trigger's NOTIFY is delivered at commit.
///
/// # Errors
///
/// Database errors.
pub(super) async fn insert_one<'e>(
    db: impl PgExecutor<'e>,
    new: &NewExecution,
    audit: Option<&AuditEntry<'_>>,
    now: DateTime<Utc>,
) -> Result<Option<ExecutionView>> {
    Ok(sqlx::query_as!(
        ExecutionView,
        r#"WITH ins AS (
               INSERT INTO connector_executions
                   (id, workspace_id, connector_id, connector_version, input, idempotency_key,
                    priority, run_at, rerun_of, trace_context, started_by, callback_url, created_at, updated_at)
               VALUES ($1::uuid, $2::text, $3::uuid, $4::int4, $5::jsonb, $6::text, $7::int2,
                       COALESCE($8::timestamptz, $13::timestamptz), $9::uuid, $10::jsonb, $11::text,
                       $12::text, $13, $13)
               ON CONFLICT (workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
               RETURNING *
           ), ev AS (
               INSERT INTO execution_events (execution_id, workspace_id, at, kind, details)
               SELECT id, workspace_id, $13, 'enqueued',
                      jsonb_strip_nulls(jsonb_build_object('run_at', run_at, 'priority', priority, 'rerun_of', rerun_of))
               FROM ins
           ), audited AS (
               -- Only with an entry: its action is never null.
               INSERT INTO audit_log (workspace_id, actor, action, object_type, object_id, request_id, details)
               SELECT $14::text, $15::text, $16::text, $17::text, id::text, $18::text, $19::jsonb
               FROM ins WHERE $16::text IS NOT NULL
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
        now,
        audit.and_then(|a| a.workspace_id),
        audit.map(|a| a.actor),
        audit.map(|a| a.action),
        audit.map(|a| a.object_type),
        audit.and_then(|a| a.request_id),
        audit.map(|a| &a.details)
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
    let n = which.len();
    let mut workspaces = Vec::with_capacity(n);
    let mut connectors = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut inputs: Vec<&Value> = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut reruns = Vec::with_capacity(n);
    let mut traces: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut started_by = Vec::with_capacity(n);
    let mut callbacks = Vec::with_capacity(n);
    for &i in which {
        let new = &news[i];
        workspaces.push(new.workspace_id.as_str());
        connectors.push(new.connector_id);
        versions.push(new.connector_version);
        inputs.push(&new.input);
        keys.push(new.idempotency_key.as_deref());
        priorities.push(new.priority);
        run_ats.push(new.run_at);
        reruns.push(new.rerun_of);
        traces.push(new.trace_context.as_ref());
        started_by.push(new.started_by.to_string());
        callbacks.push(new.callback_url.as_deref());
    }
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
                      COALESCE(run_at, $13::timestamptz), rerun_of, trace_context, started_by, callback_url, $13, $13
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
        &workspaces as &[&str],
        &connectors,
        &versions,
        &inputs as &[&Value],
        &keys as &[Option<&str>],
        &priorities,
        &run_ats as &[Option<DateTime<Utc>>],
        &reruns as &[Option<Uuid>],
        &traces as &[Option<&Value>],
        &started_by,
        &callbacks as &[Option<&str>],
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
