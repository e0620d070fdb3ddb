//! Web console sessions and one-time sign-in links. Tokens are stored only
//! as their SHA-256 digests.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// Who a console session acts as, and its CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The workspace every page is scoped to.
    pub workspace_id: String,
    /// Who: the user id, or `api-key:<id>`.
    pub actor: String,
    /// The user, when signed in with a JWT.
    pub user_id: Option<String>,
    /// The API key, when signed in with one.
    pub api_key_id: Option<Uuid>,
    /// The token every state-changing form must carry.
    pub csrf_token: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
}

/// Stores a new session under the digest of its cookie token, and drops
/// expired sessions and link uses on the way (sign-ins are rare enough
/// for this to be the whole clean-up).
///
/// # Errors
///
/// Database errors.
pub async fn create_session(
    pool: &PgPool,
    token_sha256: &[u8],
    session: &ConsoleSession,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query!("DELETE FROM console_sessions WHERE expires_at <= $1", now)
        .execute(&mut *tx)
        .await?;
    sqlx::query!("DELETE FROM console_link_uses WHERE expires_at <= $1", now)
        .execute(&mut *tx)
        .await?;
    super::ensure_workspace(&mut *tx, &session.workspace_id).await?;
    sqlx::query!(
        "INSERT INTO console_sessions
             (token_sha256, csrf_token, workspace_id, actor, user_id, api_key_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        token_sha256,
        session.csrf_token,
        session.workspace_id,
        session.actor,
        session.user_id,
        session.api_key_id,
        now,
        session.expires_at
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The live session whose cookie token has this digest. A session opened
/// with an API key ends when the key is revoked or expires.
///
/// # Errors
///
/// Database errors.
pub async fn find_session(
    pool: &PgPool,
    token_sha256: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<ConsoleSession>> {
    Ok(sqlx::query_as!(
        ConsoleSession,
        "SELECT s.workspace_id, s.actor, s.user_id, s.api_key_id, s.csrf_token, s.expires_at
         FROM console_sessions s
         LEFT JOIN workspace_api_keys k ON k.id = s.api_key_id
         WHERE s.token_sha256 = $1 AND s.expires_at > $2
           AND (s.api_key_id IS NULL
                OR (k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)))",
        token_sha256,
        now
    )
    .fetch_optional(pool)
    .await?)
}

/// Ends the session whose cookie token has this digest.
///
/// # Errors
///
/// Database errors.
pub async fn delete_session(pool: &PgPool, token_sha256: &[u8]) -> Result<()> {
    sqlx::query!(
        "DELETE FROM console_sessions WHERE token_sha256 = $1",
        token_sha256
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the use of a one-time sign-in link; `false` when it was used
/// before.
///
/// # Errors
///
/// Database errors.
pub async fn use_link(
    pool: &PgPool,
    token_sha256: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<bool> {
    let inserted = sqlx::query_scalar!(
        "INSERT INTO console_link_uses (token_sha256, expires_at) VALUES ($1, $2)
         ON CONFLICT (token_sha256) DO NOTHING RETURNING true",
        token_sha256,
        expires_at
    )
    .fetch_optional(pool)
    .await?;
    Ok(inserted.is_some())
}
