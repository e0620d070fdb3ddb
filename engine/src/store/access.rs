//! Who may call: workspace API keys (stored as SHA-256 digests), admins,
//! and the audit log of every mutating call.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::Result;
use crate::state::AdminRole;

/// An API key's metadata (never the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKeyMeta {
    /// Key id.
    pub id: Uuid,
    /// Label given at creation.
    pub name: String,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    /// The user who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last authenticated use (recorded at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// What it may do: `read`, `execute`, `manage`.
    pub scopes: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A live API key that authenticated a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyAuth {
    /// Key id.
    pub id: Uuid,
    /// Its workspace.
    pub workspace_id: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new API key's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey<'a> {
    /// Label.
    pub name: &'a str,
    /// The key's first characters.
    pub prefix: &'a str,
    /// SHA-256 of the key.
    pub digest: &'a [u8],
    /// The creating user.
    pub created_by: &'a str,
    /// Scopes (`read`, `execute`, `manage`).
    pub scopes: &'a [String],
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Stores a new API key by its digest.
///
/// # Errors
///
/// Database errors.
pub async fn create_api_key(
    pool: &PgPool,
    workspace_id: &str,
    key: &NewApiKey<'_>,
) -> Result<ApiKeyMeta> {
    let mut tx = pool.begin().await?;
    super::ensure_workspace(&mut *tx, workspace_id).await?;
    let meta = sqlx::query_as!(
        ApiKeyMeta,
        "INSERT INTO workspace_api_keys (id, workspace_id, name, prefix, key_hash, created_by, scopes, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, name, prefix, created_by, created_at, last_used_at, revoked_at, scopes, expires_at",
        Uuid::now_v7(),
        workspace_id,
        key.name,
        key.prefix,
        key.digest,
        key.created_by,
        key.scopes,
        key.expires_at
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(meta)
}

/// A workspace's API keys, newest first.
///
/// # Errors
///
/// Database errors.
pub async fn list_api_keys(pool: &PgPool, workspace_id: &str) -> Result<Vec<ApiKeyMeta>> {
    Ok(sqlx::query_as!(
        ApiKeyMeta,
        "SELECT id, name, prefix, created_by, created_at, last_used_at, revoked_at, scopes, expires_at
         FROM workspace_api_keys WHERE workspace_id = $1 ORDER BY created_at DESC, id DESC",
        workspace_id
    )
    .fetch_all(pool)
    .await?)
}

/// Revokes a key; whether a live key of this workspace was revoked.
///
/// # Errors
///
/// Database errors.
pub async fn revoke_api_key(pool: &PgPool, workspace_id: &str, id: Uuid) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE workspace_api_keys SET revoked_at = now()
         WHERE id = $1 AND workspace_id = $2 AND revoked_at IS NULL",
        id,
        workspace_id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Finds the live (not revoked, not expired) key with this digest.
/// Records use at most once a minute, in the same statement.
///
/// # Errors
///
/// Database errors.
pub async fn authenticate_api_key(pool: &PgPool, digest: &[u8]) -> Result<Option<ApiKeyAuth>> {
    Ok(sqlx::query_as!(
        ApiKeyAuth,
        "WITH touched AS (
             UPDATE workspace_api_keys SET last_used_at = now()
             WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
               AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
         )
         SELECT id, workspace_id, scopes, expires_at FROM workspace_api_keys
         WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
        digest
    )
    .fetch_optional(pool)
    .await?)
}

/// The role of SaaS admin `user_id`, or `None` when not an admin.
///
/// # Errors
///
/// Database errors.
pub async fn admin_role(pool: &PgPool, user_id: &str) -> Result<Option<AdminRole>> {
    Ok(sqlx::query_scalar!(
        r#"SELECT role AS "role: AdminRole" FROM saas_admin_users WHERE user_id = $1"#,
        user_id
    )
    .fetch_optional(pool)
    .await?)
}

/// Makes `user_id` an admin with `role` (changing the role of an existing
/// admin); the role they had before, if any.
///
/// # Errors
///
/// Database errors.
pub async fn set_admin_role(
    pool: &PgPool,
    user_id: &str,
    role: AdminRole,
) -> Result<Option<AdminRole>> {
    Ok(sqlx::query_scalar!(
        r#"WITH before AS (SELECT role FROM saas_admin_users WHERE user_id = $1),
                upsert AS (
                    INSERT INTO saas_admin_users (user_id, role) VALUES ($1, $2)
                    ON CONFLICT (user_id) DO UPDATE SET role = EXCLUDED.role)
           SELECT role AS "role: AdminRole" FROM before"#,
        user_id,
        role.as_str()
    )
    .fetch_optional(pool)
    .await?)
}

/// A SaaS admin.
#[derive(Debug, Clone, Serialize)]
pub struct AdminRow {
    /// The user id.
    pub user_id: String,
    /// The role.
    pub role: AdminRole,
    /// Since when.
    pub created_at: DateTime<Utc>,
}

/// Every SaaS admin, by user id.
///
/// # Errors
///
/// Database errors.
pub async fn list_admins(pool: &PgPool) -> Result<Vec<AdminRow>> {
    Ok(sqlx::query_as!(
        AdminRow,
        r#"SELECT user_id, role AS "role: AdminRole", created_at
           FROM saas_admin_users ORDER BY user_id"#
    )
    .fetch_all(pool)
    .await?)
}

/// Adds an admin (an `owner`, the column's default); whether they were
/// new.
///
/// # Errors
///
/// Database errors.
pub async fn add_admin(pool: &PgPool, user_id: &str) -> Result<bool> {
    let done = sqlx::query!(
        "INSERT INTO saas_admin_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING",
        user_id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes an admin; whether they were one.
///
/// # Errors
///
/// Database errors.
pub async fn remove_admin(pool: &PgPool, user_id: &str) -> Result<bool> {
    let done = sqlx::query!("DELETE FROM saas_admin_users WHERE user_id = $1", user_id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// One audit entry to record.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// The workspace acted in (none for global admin actions).
    pub workspace_id: Option<&'a str>,
    /// Who: a user id or `api-key:<id>`.
    pub actor: &'a str,
    /// What, e.g. `credential.put`.
    pub action: &'a str,
    /// The kind of object.
    pub object_type: &'a str,
    /// Its id or name.
    pub object_id: Option<&'a str>,
    /// The request id.
    pub request_id: Option<&'a str>,
    /// Small structured details; never a secret.
    pub details: Value,
}

/// Records an audit entry, on the pool or inside a caller's transaction
/// (so that it commits with what it records).
///
/// # Errors
///
/// Database errors.
pub async fn audit<'e>(db: impl PgExecutor<'e>, e: &AuditEntry<'_>) -> Result<()> {
    sqlx::query!(
        "INSERT INTO audit_log (workspace_id, actor, action, object_type, object_id, request_id, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        e.workspace_id,
        e.actor,
        e.action,
        e.object_type,
        e.object_id,
        e.request_id,
        e.details
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A stored audit entry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    /// Sequence number (also the pagination cursor).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Workspace.
    pub workspace_id: Option<String>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Object kind.
    pub object_type: String,
    /// Object id.
    pub object_id: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Details.
    pub details: Value,
}

/// Filters for reading the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this workspace (always set for workspace callers).
    pub workspace_id: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this target kind (`execution`, `connector`, ...).
    pub object_type: Option<String>,
    /// Only this target id.
    pub object_id: Option<String>,
    /// Entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time.
    pub until: Option<DateTime<Utc>>,
    /// Entries with an id below this one (the previous page's last id).
    pub before_id: Option<i64>,
    /// Page size.
    pub limit: i64,
}

/// Reads the audit log, newest first.
///
/// # Errors
///
/// Database errors.
pub async fn list_audit(pool: &PgPool, f: &AuditFilter) -> Result<Vec<AuditRow>> {
    Ok(sqlx::query_as!(
        AuditRow,
        "SELECT id, at, workspace_id, actor, action, object_type, object_id, request_id, details
         FROM audit_log
         WHERE ($1::text IS NULL OR workspace_id = $1)
           AND ($2::text IS NULL OR action = $2)
           AND ($3::text IS NULL OR actor = $3)
           AND ($4::bigint IS NULL OR id < $4)
           AND ($6::text IS NULL OR object_type = $6)
           AND ($7::text IS NULL OR object_id = $7)
           AND ($8::timestamptz IS NULL OR at >= $8)
           AND ($9::timestamptz IS NULL OR at < $9)
         ORDER BY id DESC LIMIT $5",
        f.workspace_id,
        f.action,
        f.actor,
        f.before_id,
        f.limit,
        f.object_type,
        f.object_id,
        f.since,
        f.until
    )
    .fetch_all(pool)
    .await?)
}
