//! Event subscriptions of a workspace, and the events that are not about
//! an execution.
//!
//! A subscription's deliveries are rows of the completion-callback outbox
//! (`callback_deliveries` with `subscription_id` set): the callback sender
//! signs, sends, retries and records them like any callback. Execution
//! events are created by a row trigger on the UPDATE that finalizes an
//! execution (see the migration); `credential.needs_reconnect` by
//! [`mark_needs_reconnect`], in the statement that changes the status.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use super::callbacks::{CallbackView, views};

/// Most subscriptions one workspace may have: every event of a workspace
/// becomes one delivery per matching subscription.
pub const MAX_PER_WORKSPACE: i64 = 20;

/// A subscription as stored and shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Subscription {
    /// Id.
    pub id: Uuid,
    /// Where its events are POSTed.
    pub url: String,
    /// The event types it receives (`*`: all).
    pub events: Vec<String>,
    /// A note for people.
    pub description: Option<String>,
    /// Whether new events are delivered to it.
    pub enabled: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// What a new subscription says.
#[derive(Debug, Clone)]
pub struct NewSubscription<'a> {
    /// Where to POST (checked by `callback::check_url`).
    pub url: &'a str,
    /// Event types (checked by `callback::check_events`).
    pub events: &'a [String],
    /// A note.
    pub description: Option<&'a str>,
    /// Delivering or not.
    pub enabled: bool,
}

/// A change to a subscription; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    /// New URL.
    pub url: Option<&'a str>,
    /// New event types.
    pub events: Option<&'a [String]>,
    /// New note (`Some(None)` removes it).
    pub description: Option<Option<&'a str>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// Creates a subscription; `None` when the workspace already has
/// [`MAX_PER_WORKSPACE`].
///
/// # Errors
///
/// Database errors.
pub async fn create(
    pool: &PgPool,
    ws: &str,
    new: &NewSubscription<'_>,
    now: DateTime<Utc>,
) -> crate::Result<Option<Subscription>> {
    super::ensure_workspace(pool, ws).await?;
    Ok(sqlx::query_as!(
        Subscription,
        r#"INSERT INTO webhook_subscriptions
               (id, workspace_id, url, events, description, enabled, created_at, updated_at)
           SELECT $1, $2, $3, $4, $5, $6, $7, $7
           WHERE (SELECT count(*) FROM webhook_subscriptions WHERE workspace_id = $2) < $8
           RETURNING id, url, events, description, enabled, created_at, updated_at"#,
        Uuid::now_v7(),
        ws,
        new.url,
        new.events,
        new.description,
        new.enabled,
        now,
        MAX_PER_WORKSPACE
    )
    .fetch_optional(pool)
    .await?)
}

/// The workspace's subscriptions, oldest first.
///
/// # Errors
///
/// Database errors.
pub async fn list(pool: &PgPool, ws: &str) -> crate::Result<Vec<Subscription>> {
    Ok(sqlx::query_as!(
        Subscription,
        "SELECT id, url, events, description, enabled, created_at, updated_at
         FROM webhook_subscriptions WHERE workspace_id = $1 ORDER BY created_at, id",
        ws
    )
    .fetch_all(pool)
    .await?)
}

/// One subscription of `ws`.
///
/// # Errors
///
/// Database errors.
pub async fn get(pool: &PgPool, ws: &str, id: Uuid) -> crate::Result<Option<Subscription>> {
    Ok(sqlx::query_as!(
        Subscription,
        "SELECT id, url, events, description, enabled, created_at, updated_at
         FROM webhook_subscriptions WHERE workspace_id = $1 AND id = $2",
        ws,
        id
    )
    .fetch_optional(pool)
    .await?)
}

/// Applies `change` to a subscription of `ws`; `None` when there is none.
/// Events already created keep the URL they were created with.
///
/// # Errors
///
/// Database errors.
pub async fn update(
    pool: &PgPool,
    ws: &str,
    id: Uuid,
    change: &Change<'_>,
    now: DateTime<Utc>,
) -> crate::Result<Option<Subscription>> {
    Ok(sqlx::query_as!(
        Subscription,
        r#"UPDATE webhook_subscriptions SET
               url = COALESCE($3, url),
               events = COALESCE($4, events),
               description = CASE WHEN $5 THEN $6 ELSE description END,
               enabled = COALESCE($7, enabled),
               updated_at = $8
           WHERE workspace_id = $1 AND id = $2
           RETURNING id, url, events, description, enabled, created_at, updated_at"#,
        ws,
        id,
        change.url,
        change.events,
        change.description.is_some(),
        change.description.flatten(),
        change.enabled,
        now
    )
    .fetch_optional(pool)
    .await?)
}

/// Deletes a subscription of `ws` with its deliveries; false when there
/// is none.
///
/// # Errors
///
/// Database errors.
pub async fn delete(pool: &PgPool, ws: &str, id: Uuid) -> crate::Result<bool> {
    let done = sqlx::query!(
        "DELETE FROM webhook_subscriptions WHERE workspace_id = $1 AND id = $2",
        ws,
        id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The subscription's last `limit` deliveries, newest first, each with
/// its attempts. The caller has checked that the subscription is the
/// workspace's.
///
/// # Errors
///
/// Database errors.
pub async fn deliveries(
    pool: &PgPool,
    subscription_id: Uuid,
    limit: i64,
) -> crate::Result<Vec<CallbackView>> {
    let rows = sqlx::query!(
        "SELECT id, url, event, status, next_attempt_at, created_at, finished_at
         FROM callback_deliveries WHERE subscription_id = $1
         ORDER BY created_at DESC, id DESC LIMIT $2",
        subscription_id,
        limit
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

/// Sets a credential's status to `needs_reconnect` with `reason`, and, only
/// when it was not already so, creates a `credential.needs_reconnect`
/// event for each subscription of the workspace that wants it: one
/// statement, so a transition yields its events exactly once however many
/// workers see the same revoked grant (the row lock orders them, and the
/// later one finds the status already set).
///
/// # Errors
///
/// Database errors.
pub async fn mark_needs_reconnect(
    conn: &mut PgConnection,
    ws: &str,
    name: &str,
    reason: &str,
) -> crate::Result<()> {
    sqlx::query!(
        r#"WITH before AS (
               SELECT status FROM workspace_api_credentials
               WHERE workspace_id = $1 AND name = $2
               FOR UPDATE
           ), changed AS (
               UPDATE workspace_api_credentials c SET status = 'needs_reconnect', status_reason = $3
               FROM before WHERE c.workspace_id = $1 AND c.name = $2
               RETURNING c.kind, before.status <> 'needs_reconnect' AS transition
           )
           INSERT INTO callback_deliveries
               (id, workspace_id, subscription_id, url, event, payload, next_attempt_at, created_at)
           SELECT gen_random_uuid(), s.workspace_id, s.id, s.url, 'credential.needs_reconnect',
                  jsonb_build_object('name', $2::text, 'kind', changed.kind,
                                     'status', 'needs_reconnect', 'reason', $3::text),
                  now(), now()
           FROM changed JOIN webhook_subscriptions s ON s.workspace_id = $1
           WHERE changed.transition AND s.enabled
             AND s.events && ARRAY['*', 'credential.needs_reconnect']"#,
        ws,
        name,
        reason
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
