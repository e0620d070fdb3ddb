//! Workspace credentials, sealed with AES-256-GCM. Plaintext exists only in
//! memory: on the way in (`put`) and inside a worker at send time (`load`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::crypto::{CryptoError, Keyring, Sealed};
use crate::redact::Credentials;

/// Errors of the credential store.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A database error.
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// Sealing or opening failed (wrong key, tampered row).
    #[error("credential `{name}`: {source}")]
    Crypto {
        /// The credential.
        name: String,
        /// What failed.
        source: CryptoError,
    },
}

impl From<sqlx::Error> for CredentialError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// What the API may show of a credential: never its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CredentialMeta {
    /// Credential name, unique per workspace.
    pub name: String,
    /// `bearer`, `api_key`, `basic` or `custom`, inferred from the fields.
    pub auth_kind: String,
    /// The field names it holds (not their values).
    pub fields: Vec<String>,
    /// Id of the key that sealed it.
    pub key_id: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Last time a worker loaded it (at most once a minute is recorded).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Infers the auth kind from the field names a credential holds.
pub fn auth_kind(fields: &BTreeMap<String, String>) -> &'static str {
    if fields.contains_key("token") {
        "bearer"
    } else if fields.contains_key("key") {
        "api_key"
    } else if fields.contains_key("username") && fields.contains_key("password") {
        "basic"
    } else {
        "custom"
    }
}

/// Creates or replaces a credential.
///
/// # Errors
///
/// Database or sealing errors.
pub async fn put(
    pool: &PgPool,
    keyring: &Keyring,
    workspace_id: &str,
    name: &str,
    fields: &BTreeMap<String, String>,
) -> Result<CredentialMeta, CredentialError> {
    let plaintext = serde_json::to_vec(fields).unwrap_or_default();
    let sealed = keyring
        .seal(workspace_id, name, &plaintext)
        .map_err(|source| CredentialError::Crypto {
            name: name.to_owned(),
            source,
        })?;
    let field_names: Vec<String> = fields.keys().cloned().collect();
    let mut tx = pool.begin().await?;
    super::ensure_workspace(&mut *tx, workspace_id).await?;
    let meta = sqlx::query_as!(
        CredentialMeta,
        "INSERT INTO workspace_api_credentials
             (workspace_id, name, auth_kind, fields, key_id, nonce, ciphertext)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (workspace_id, name) DO UPDATE SET
             auth_kind = EXCLUDED.auth_kind, fields = EXCLUDED.fields, key_id = EXCLUDED.key_id,
             nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, updated_at = now()
         RETURNING name, auth_kind, fields, key_id, created_at, updated_at, last_used_at",
        workspace_id,
        name,
        auth_kind(fields),
        &field_names,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(meta)
}

/// One credential's metadata.
///
/// # Errors
///
/// Database errors.
pub async fn get(
    pool: &PgPool,
    workspace_id: &str,
    name: &str,
) -> crate::Result<Option<CredentialMeta>> {
    Ok(sqlx::query_as!(
        CredentialMeta,
        "SELECT name, auth_kind, fields, key_id, created_at, updated_at, last_used_at
         FROM workspace_api_credentials WHERE workspace_id = $1 AND name = $2",
        workspace_id,
        name
    )
    .fetch_optional(pool)
    .await?)
}

/// Every credential's metadata in a workspace, by name.
///
/// # Errors
///
/// Database errors.
pub async fn list(pool: &PgPool, workspace_id: &str) -> crate::Result<Vec<CredentialMeta>> {
    Ok(sqlx::query_as!(
        CredentialMeta,
        "SELECT name, auth_kind, fields, key_id, created_at, updated_at, last_used_at
         FROM workspace_api_credentials WHERE workspace_id = $1 ORDER BY name",
        workspace_id
    )
    .fetch_all(pool)
    .await?)
}

/// Deletes a credential; whether it existed.
///
/// # Errors
///
/// Database errors.
pub async fn delete(pool: &PgPool, workspace_id: &str, name: &str) -> crate::Result<bool> {
    let done = sqlx::query!(
        "DELETE FROM workspace_api_credentials WHERE workspace_id = $1 AND name = $2",
        workspace_id,
        name
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Loads and decrypts the named credentials for a run, recording use at
/// most once a minute per credential (in the same statement). Names that do
/// not exist are simply absent: the step that needs one fails naming it.
///
/// # Errors
///
/// Database errors, or a row that does not decrypt.
pub async fn load(
    pool: &PgPool,
    keyring: &Keyring,
    workspace_id: &str,
    names: &[String],
) -> Result<Credentials, CredentialError> {
    if names.is_empty() {
        return Ok(Credentials::new());
    }
    let rows = sqlx::query!(
        "WITH touched AS (
             UPDATE workspace_api_credentials SET last_used_at = now()
             WHERE workspace_id = $1 AND name = ANY($2)
               AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
         )
         SELECT name, key_id, nonce, ciphertext FROM workspace_api_credentials
         WHERE workspace_id = $1 AND name = ANY($2)",
        workspace_id,
        names
    )
    .fetch_all(pool)
    .await?;
    let mut out = Credentials::new();
    for row in rows {
        let sealed = Sealed {
            key_id: row.key_id,
            nonce: row.nonce,
            ciphertext: row.ciphertext,
        };
        let crypto = |source| CredentialError::Crypto {
            name: row.name.clone(),
            source,
        };
        let plaintext = keyring
            .open(workspace_id, &row.name, &sealed)
            .map_err(crypto)?;
        let fields: BTreeMap<String, String> =
            serde_json::from_slice(&plaintext).map_err(|_| crypto(CryptoError::Decrypt))?;
        out.insert(row.name, fields);
    }
    Ok(out)
}

/// Re-seals every credential not sealed with the keyring's current key;
/// returns how many were re-sealed. Each row is fenced on the key id it was
/// read with, so a concurrent `put` is never overwritten.
///
/// # Errors
///
/// Database errors, or a row whose key is not in the keyring.
pub async fn rotate(pool: &PgPool, keyring: &Keyring) -> Result<u64, CredentialError> {
    let current = keyring.current_id();
    let rows = sqlx::query!(
        "SELECT workspace_id, name, key_id, nonce, ciphertext FROM workspace_api_credentials
         WHERE key_id <> $1",
        current
    )
    .fetch_all(pool)
    .await?;
    let mut count = 0;
    for row in rows {
        let old = Sealed {
            key_id: row.key_id.clone(),
            nonce: row.nonce,
            ciphertext: row.ciphertext,
        };
        let sealed = keyring
            .reseal(&row.workspace_id, &row.name, &old)
            .map_err(|source| CredentialError::Crypto {
                name: row.name.clone(),
                source,
            })?;
        let done = sqlx::query!(
            "UPDATE workspace_api_credentials SET key_id = $4, nonce = $5, ciphertext = $6
             WHERE workspace_id = $1 AND name = $2 AND key_id = $3",
            row.workspace_id,
            row.name,
            row.key_id,
            sealed.key_id,
            sealed.nonce,
            sealed.ciphertext
        )
        .execute(pool)
        .await?;
        count += done.rows_affected();
    }
    Ok(count)
}
