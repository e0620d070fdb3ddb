//! OAuth SQL: the credential row locked for a refresh, the tokens written
//! back, the connection status, and the single-use authorization states.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::crypto::Sealed;

/// A credential row as the OAuth code reads it.
#[derive(Debug, Clone)]
pub struct OAuthRow {
    /// The stored kind.
    pub kind: String,
    /// The provider settings (`OAuthConfig` as JSON).
    pub oauth: Option<Value>,
    /// The stored status (`connected`, `needs_reconnect`, `error`).
    pub status: String,
    /// When the access token expires.
    pub access_token_expires_at: Option<DateTime<Utc>>,
    /// The sealed fields.
    pub sealed: Sealed,
}

/// Reads a credential and locks its row until the transaction `conn` is in
/// ends: concurrent refreshes of one credential queue here, in every
/// process.
///
/// # Errors
///
/// Database errors.
pub async fn lock(
    conn: &mut PgConnection,
    workspace_id: &str,
    name: &str,
) -> crate::Result<Option<OAuthRow>> {
    let row = sqlx::query!(
        "SELECT kind, oauth, status, access_token_expires_at, key_id, nonce, ciphertext
         FROM workspace_api_credentials WHERE workspace_id = $1 AND name = $2
         FOR UPDATE",
        workspace_id,
        name
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| OAuthRow {
        kind: r.kind,
        oauth: r.oauth,
        status: r.status,
        access_token_expires_at: r.access_token_expires_at,
        sealed: Sealed {
            key_id: r.key_id,
            nonce: r.nonce,
            ciphertext: r.ciphertext,
        },
    }))
}

/// Reads a credential without locking it.
///
/// # Errors
///
/// Database errors.
pub async fn read(
    pool: &PgPool,
    workspace_id: &str,
    name: &str,
) -> crate::Result<Option<OAuthRow>> {
    let row = sqlx::query!(
        "SELECT kind, oauth, status, access_token_expires_at, key_id, nonce, ciphertext
         FROM workspace_api_credentials WHERE workspace_id = $1 AND name = $2",
        workspace_id,
        name
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| OAuthRow {
        kind: r.kind,
        oauth: r.oauth,
        status: r.status,
        access_token_expires_at: r.access_token_expires_at,
        sealed: Sealed {
            key_id: r.key_id,
            nonce: r.nonce,
            ciphertext: r.ciphertext,
        },
    }))
}

/// Writes new tokens (sealed with the other fields) and marks the
/// credential connected.
///
/// # Errors
///
/// Database errors.
pub async fn save_tokens(
    conn: &mut PgConnection,
    workspace_id: &str,
    name: &str,
    field_names: &[String],
    sealed: &Sealed,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> crate::Result<()> {
    sqlx::query!(
        "UPDATE workspace_api_credentials SET fields = $3, key_id = $4, nonce = $5,
             ciphertext = $6, access_token_expires_at = $7, last_refreshed_at = $8,
             status = 'connected', status_reason = NULL
         WHERE workspace_id = $1 AND name = $2",
        workspace_id,
        name,
        field_names,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext,
        expires_at,
        now
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets a credential's status and its reason.
///
/// # Errors
///
/// Database errors.
pub async fn set_status(
    conn: &mut PgConnection,
    workspace_id: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> crate::Result<()> {
    sqlx::query!(
        "UPDATE workspace_api_credentials SET status = $3, status_reason = $4
         WHERE workspace_id = $1 AND name = $2",
        workspace_id,
        name,
        status,
        reason
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores a started authorization (and drops states expired for a day).
///
/// # Errors
///
/// Database errors.
pub async fn insert_state(
    pool: &PgPool,
    state_hash: &[u8],
    workspace_id: &str,
    name: &str,
    verifier: &Sealed,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> crate::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "DELETE FROM oauth_states WHERE expires_at < $1::timestamptz - interval '1 day'",
        now
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO oauth_states
             (state_hash, workspace_id, credential_name, key_id, nonce, ciphertext, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        state_hash,
        workspace_id,
        name,
        verifier.key_id,
        verifier.nonce,
        verifier.ciphertext,
        expires_at
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What a callback's `state` turned out to be.
#[derive(Debug, Clone)]
pub enum StateLookup {
    /// No authorization was started with it.
    Unknown,
    /// It was used before.
    Used,
    /// It expired (it is used up now as well).
    Expired,
    /// Valid, and now used up.
    Valid {
        /// The workspace it was started in.
        workspace_id: String,
        /// The credential it connects.
        credential_name: String,
        /// The sealed PKCE verifier.
        verifier: Sealed,
    },
}

/// Uses up a state: at most one caller ever gets [`StateLookup::Valid`].
///
/// # Errors
///
/// Database errors.
pub async fn consume_state(
    pool: &PgPool,
    state_hash: &[u8],
    now: DateTime<Utc>,
) -> crate::Result<StateLookup> {
    let used = sqlx::query!(
        "UPDATE oauth_states SET consumed_at = $2
         WHERE state_hash = $1 AND consumed_at IS NULL
         RETURNING workspace_id, credential_name, key_id, nonce, ciphertext, expires_at",
        state_hash,
        now
    )
    .fetch_optional(pool)
    .await?;
    let Some(row) = used else {
        let known = sqlx::query_scalar!(
            "SELECT 1 AS \"one!\" FROM oauth_states WHERE state_hash = $1",
            state_hash
        )
        .fetch_optional(pool)
        .await?;
        return Ok(if known.is_some() {
            StateLookup::Used
        } else {
            StateLookup::Unknown
        });
    };
    if row.expires_at <= now {
        return Ok(StateLookup::Expired);
    }
    Ok(StateLookup::Valid {
        workspace_id: row.workspace_id,
        credential_name: row.credential_name,
        verifier: Sealed {
            key_id: row.key_id,
            nonce: row.nonce,
            ciphertext: row.ciphertext,
        },
    })
}
