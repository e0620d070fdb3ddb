//! The completion-callback outbox and the workspace signing secret.
//!
//! A `callback_deliveries` row is created by the row trigger on the UPDATE
//! that finalizes an execution with a `callback_url` (see the migration),
//! so a final state never loses its callback. Event subscriptions
//! (`super::subscriptions`) add their deliveries to the same outbox. Workers claim due rows with
//! a lease (`FOR UPDATE SKIP LOCKED`), send outside any transaction, and
//! record each attempt; failures are retried with exponential backoff for
//! up to 24 hours.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::crypto::{CryptoError, Keyring, Sealed};
use crate::webhook::WHSEC_PREFIX;

/// The associated-data names of the current and previous secret.
const CURRENT: &str = "signing-secret";
const PREVIOUS: &str = "signing-secret:previous";
/// How long the previous secret keeps signing after a rotation.
pub const ROTATION_OVERLAP: Duration = Duration::hours(24);

/// Why the signing secret could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Sealing or opening failed.
    #[error("the signing secret could not be sealed or opened: {0}")]
    Crypto(#[from] CryptoError),
    /// A database error.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

impl From<sqlx::Error> for SecretError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{WHSEC_PREFIX}{}", STANDARD.encode(bytes))
}

fn open(keyring: &Keyring, ws: &str, name: &str, sealed: Sealed) -> Result<String, SecretError> {
    let plain = keyring.open(ws, name, &sealed)?;
    Ok(String::from_utf8_lossy(&plain).into_owned())
}

/// The workspace's `whsec_...` signing secret, created on first use.
///
/// # Errors
///
/// Sealing, opening or database errors.
pub async fn secret(pool: &PgPool, keyring: &Keyring, ws: &str) -> Result<String, SecretError> {
    create_if_absent(pool, keyring, ws).await?;
    let row = sqlx::query!(
        "SELECT key_id, nonce, ciphertext FROM workspace_signing_secrets WHERE workspace_id = $1",
        ws
    )
    .fetch_one(pool)
    .await?;
    open(
        keyring,
        ws,
        CURRENT,
        Sealed {
            key_id: row.key_id,
            nonce: row.nonce,
            ciphertext: row.ciphertext,
        },
    )
}

/// Creates the workspace's signing secret unless it has one (concurrent
/// first uses agree on the row that won).
async fn create_if_absent(pool: &PgPool, keyring: &Keyring, ws: &str) -> Result<(), SecretError> {
    super::ensure_workspace(pool, ws).await?;
    let fresh = new_secret();
    let sealed = keyring.seal(ws, CURRENT, fresh.as_bytes())?;
    sqlx::query!(
        "INSERT INTO workspace_signing_secrets (workspace_id, key_id, nonce, ciphertext, created_at)
         VALUES ($1, $2, $3, $4, now()) ON CONFLICT (workspace_id) DO NOTHING",
        ws,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Replaces the signing secret; the old one keeps signing beside it for
/// [`ROTATION_OVERLAP`] (by the database's clock, which the senders
/// compare with). Returns the new secret.
///
/// The secret it replaces is read and written in one transaction that
/// locks the row, so concurrent rotations take turns: each one's secret
/// is current until the next rotation and then previous, never lost
/// because two rotations replaced the same secret.
///
/// # Errors
///
/// Sealing, opening or database errors.
pub async fn rotate(pool: &PgPool, keyring: &Keyring, ws: &str) -> Result<String, SecretError> {
    create_if_absent(pool, keyring, ws).await?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        "SELECT key_id, nonce, ciphertext FROM workspace_signing_secrets
         WHERE workspace_id = $1 FOR UPDATE",
        ws
    )
    .fetch_one(&mut *tx)
    .await?;
    let old = open(
        keyring,
        ws,
        CURRENT,
        Sealed {
            key_id: row.key_id,
            nonce: row.nonce,
            ciphertext: row.ciphertext,
        },
    )?;
    let fresh = new_secret();
    let current = keyring.seal(ws, CURRENT, fresh.as_bytes())?;
    let previous = keyring.seal(ws, PREVIOUS, old.as_bytes())?;
    sqlx::query!(
        "UPDATE workspace_signing_secrets SET key_id = $2, nonce = $3, ciphertext = $4,
             previous_key_id = $5, previous_nonce = $6, previous_ciphertext = $7,
             previous_until = now() + make_interval(secs => $8), rotated_at = now()
         WHERE workspace_id = $1",
        ws,
        current.key_id,
        current.nonce,
        current.ciphertext,
        previous.key_id,
        previous.nonce,
        previous.ciphertext,
        ROTATION_OVERLAP.num_seconds() as f64
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(fresh)
}

/// The keys a callback of workspace `ws` is signed with now: the current
/// secret's, then the previous one's during a rotation (by the database's
/// clock).
///
/// # Errors
///
/// Sealing, opening or database errors.
pub async fn signing_keys(
    pool: &PgPool,
    keyring: &Keyring,
    ws: &str,
) -> Result<Vec<Vec<u8>>, SecretError> {
    let current = secret(pool, keyring, ws).await?;
    let mut secrets = vec![current];
    let row = sqlx::query!(
        "SELECT previous_key_id, previous_nonce, previous_ciphertext FROM workspace_signing_secrets
         WHERE workspace_id = $1 AND previous_until > now()",
        ws
    )
    .fetch_optional(pool)
    .await?;
    if let Some(r) = row
        && let (Some(key_id), Some(nonce), Some(ciphertext)) =
            (r.previous_key_id, r.previous_nonce, r.previous_ciphertext)
    {
        secrets.push(open(
            keyring,
            ws,
            PREVIOUS,
            Sealed {
                key_id,
                nonce,
                ciphertext,
            },
        )?);
    }
    Ok(secrets
        .iter()
        .filter_map(|s| crate::webhook::key_of(crate::webhook::Scheme::StandardWebhooks, s).ok())
        .collect())
}

/// A callback due for an attempt, leased to the caller.
#[derive(Debug, Clone)]
pub struct Due {
    /// The delivery id (also the `webhook-id`).
    pub id: Uuid,
    /// Its workspace.
    pub workspace_id: String,
    /// Where to POST.
    pub url: String,
    /// `execution.succeeded`, `execution.failed`, `execution.cancelled` or
    /// `credential.needs_reconnect`.
    pub event: String,
    /// This attempt's number.
    pub attempts: i32,
    /// When the event happened (the execution ended).
    pub created_at: DateTime<Utc>,
    /// The payload's `data`: the event's own (a credential's), else the
    /// execution summary (`null` when retention already removed it).
    pub data: Option<Value>,
    /// The database's clock at the claim: what the attempt's time and its
    /// retry are reckoned from, since `created_at` and every other
    /// process's lease are on that clock too.
    pub claimed_at: DateTime<Utc>,
}

/// Leases up to `limit` due callbacks for `lease`, counting the attempt;
/// what is due and when the lease ends are judged by the database's
/// clock, so a sender whose clock runs ahead cannot take over a live
/// lease.
///
/// Fair across workspaces: a loose index scan finds each workspace with
/// pending deliveries (one probe each, however deep its backlog), each
/// offers its oldest due ones, and a workspace's `n`-th offered row ranks
/// at `n` plus its deliveries already in flight. One workspace's backlog,
/// even to a receiver that takes the whole timeout, thus holds back
/// another's callbacks by at most the sends already under way, and while
/// it has many in flight a workspace with none goes first.
///
/// # Errors
///
/// Database errors.
pub async fn claim(pool: &PgPool, limit: i64, lease: Duration) -> crate::Result<Vec<Due>> {
    let lease_secs = lease.num_milliseconds() as f64 / 1000.0;
    // The lock re-checks the row's own conditions: a concurrent claimer
    // may have leased it since this statement's snapshot.
    Ok(sqlx::query_as!(
        Due,
        r#"WITH RECURSIVE ws AS (
               (SELECT workspace_id FROM callback_deliveries
                WHERE status = 'pending' ORDER BY workspace_id LIMIT 1)
               UNION ALL
               SELECT (SELECT d.workspace_id FROM callback_deliveries d
                       WHERE d.status = 'pending' AND d.workspace_id > ws.workspace_id
                       ORDER BY d.workspace_id LIMIT 1)
               FROM ws WHERE ws.workspace_id IS NOT NULL
           ), candidates AS (
               SELECT ws.workspace_id, c.id, c.next_attempt_at, in_flight.n
               FROM ws
               CROSS JOIN LATERAL (
                   SELECT count(*) AS n FROM callback_deliveries f
                   WHERE f.workspace_id = ws.workspace_id AND f.status = 'pending'
                     AND f.lease_expires_at > now()
               ) in_flight
               CROSS JOIN LATERAL (
                   SELECT d.id, d.next_attempt_at FROM callback_deliveries d
                   WHERE d.workspace_id = ws.workspace_id AND d.status = 'pending'
                     AND d.next_attempt_at <= now()
                     AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
                   ORDER BY d.next_attempt_at, d.id
                   LIMIT $1
               ) c
               WHERE ws.workspace_id IS NOT NULL
           ), ranked AS (
               SELECT id, next_attempt_at,
                      n + row_number() OVER (PARTITION BY workspace_id ORDER BY next_attempt_at, id)
                          AS share
               FROM candidates
           ), due AS (
               -- In rank order, each row looked up by primary key and
               -- locked, until the batch is full: the locking subquery is
               -- never flattened, so this is a nested loop, which keeps
               -- its outer order and locks only the rows it takes (as in
               -- the execution claim, `super::claim`).
               SELECT d.id FROM (
                   SELECT id, share, next_attempt_at FROM ranked
                   ORDER BY share, next_attempt_at, id
               ) r
               CROSS JOIN LATERAL (
                   SELECT d.id FROM callback_deliveries d
                   WHERE d.id = r.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                     AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
                   FOR UPDATE SKIP LOCKED
               ) d
               LIMIT $1
           ), leased AS (
               UPDATE callback_deliveries d SET attempts = d.attempts + 1,
                   lease_expires_at = now() + make_interval(secs => $2)
               FROM due WHERE d.id = due.id
               RETURNING d.id, d.workspace_id, d.url, d.event, d.attempts, d.created_at,
                         d.execution_id, d.payload
           )
           SELECT l.id AS "id!", l.workspace_id AS "workspace_id!", l.url AS "url!",
                  l.event AS "event!", l.attempts AS "attempts!", l.created_at AS "created_at!",
                  COALESCE(l.payload, (SELECT jsonb_build_object(
                       'id', e.id, 'connector_id', e.connector_id,
                       'connector_version', e.connector_version, 'status', e.status,
                       'output', e.output, 'error', e.error, 'started_by', e.started_by,
                       'created_at', e.created_at, 'started_at', e.started_at,
                       'finished_at', e.finished_at)
                   FROM connector_executions e WHERE e.id = l.execution_id)) AS data,
                  now() AS "claimed_at!"
           FROM leased l"#,
        limit,
        lease_secs
    )
    .fetch_all(pool)
    .await?)
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// 2xx: done.
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Out of time: given up.
    GiveUp,
}

/// Records attempt `attempt` of delivery `id` and moves the delivery on,
/// if that attempt still holds the delivery: false when its lease had
/// expired and a later attempt took it over (or finished it), whose
/// outcome stands. The attempt itself is recorded either way.
///
/// # Errors
///
/// Database errors.
pub async fn finish_attempt(
    pool: &PgPool,
    id: Uuid,
    (attempt, at): (i32, DateTime<Utc>),
    (status_code, error, duration_ms): (Option<u16>, Option<&str>, i32),
    next: Next,
) -> crate::Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO callback_attempts (delivery_id, workspace_id, attempt, at, status_code, error, duration_ms)
         SELECT id, workspace_id, $2, $3, $4, $5, $6 FROM callback_deliveries WHERE id = $1
         ON CONFLICT DO NOTHING",
        id,
        attempt,
        at,
        status_code.and_then(|c| i16::try_from(c).ok()),
        error,
        duration_ms
    )
    .execute(&mut *tx)
    .await?;
    let (status, next_at) = match next {
        Next::Delivered => ("delivered", None),
        Next::RetryAt(t) => ("pending", Some(t)),
        Next::GiveUp => ("failed", None),
    };
    // Fenced by the attempt number, which each claim bumps: a sender that
    // stalled past its lease must neither clear the lease of the attempt
    // that took over nor undo its delivery (and so send it again).
    let moved = sqlx::query!(
        "UPDATE callback_deliveries SET status = $2, lease_expires_at = NULL,
             next_attempt_at = COALESCE($3, next_attempt_at),
             finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE $4::timestamptz END
         WHERE id = $1 AND attempts = $5 AND status = 'pending'",
        id,
        status,
        next_at,
        at,
        attempt
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(moved.rows_affected() == 1)
}

/// One attempt as shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Attempt {
    /// 1, 2, ...
    pub attempt: i32,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// The receiver's status (none: no response).
    pub status_code: Option<i16>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i32,
}

/// A callback as shown, with its attempts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CallbackView {
    /// Id (the `webhook-id` header).
    pub id: Uuid,
    /// Where it goes.
    pub url: String,
    /// The event.
    pub event: String,
    /// `pending`, `delivered` or `failed` (given up after 24 hours).
    pub status: String,
    /// When the next attempt is due (pending ones).
    pub next_attempt_at: DateTime<Utc>,
    /// Created (when the execution ended).
    pub created_at: DateTime<Utc>,
    /// Delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

/// The completion callbacks of an execution of `ws` (not the events of
/// its subscriptions), with their attempts.
///
/// # Errors
///
/// Database errors.
pub async fn for_execution(
    pool: &PgPool,
    ws: &str,
    execution_id: Uuid,
) -> crate::Result<Vec<CallbackView>> {
    let rows = sqlx::query!(
        "SELECT id, url, event, status, next_attempt_at, created_at, finished_at
         FROM callback_deliveries
         WHERE workspace_id = $1 AND execution_id = $2 AND subscription_id IS NULL
         ORDER BY created_at, id",
        ws,
        execution_id
    )
    .fetch_all(pool)
    .await?;
    views(
        pool,
        rows.into_iter()
            .map(|r| {
                (
                    r.id,
                    r.url,
                    r.event,
                    r.status,
                    (r.next_attempt_at, r.created_at, r.finished_at),
                )
            })
            .collect(),
    )
    .await
}

/// A delivery row as read: id, url, event, status and its
/// `(next_attempt_at, created_at, finished_at)`.
pub(super) type Row = (
    Uuid,
    String,
    String,
    String,
    (DateTime<Utc>, DateTime<Utc>, Option<DateTime<Utc>>),
);

/// The views of delivery rows, with their attempts (one query for all).
pub(super) async fn views(pool: &PgPool, rows: Vec<Row>) -> crate::Result<Vec<CallbackView>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let attempts = sqlx::query!(
        "SELECT delivery_id, attempt, at, status_code, error, duration_ms FROM callback_attempts
         WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
        &ids
    )
    .fetch_all(pool)
    .await?;
    let mut by_delivery: std::collections::HashMap<Uuid, Vec<Attempt>> =
        std::collections::HashMap::new();
    for a in attempts {
        by_delivery.entry(a.delivery_id).or_default().push(Attempt {
            attempt: a.attempt,
            at: a.at,
            status_code: a.status_code,
            error: a.error,
            duration_ms: a.duration_ms,
        });
    }
    Ok(rows
        .into_iter()
        .map(
            |(id, url, event, status, (next_attempt_at, created_at, finished_at))| CallbackView {
                attempts: by_delivery.remove(&id).unwrap_or_default(),
                id,
                url,
                event,
                status,
                next_attempt_at,
                created_at,
                finished_at,
            },
        )
        .collect())
}
