//! Workspace credentials, sealed with AES-256-GCM. Plaintext exists only in
//! memory: on the way in (`put`) and inside a worker at send time (`load`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::crypto::{CryptoError, Keyring, Sealed};
use crate::oauth::CredentialKind;
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
    /// `bearer`, `api_key`, `basic` or `custom`, inferred from the fields;
    /// `oauth2` for the OAuth and Nango kinds.
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
    /// `static`, `oauth2_client_credentials`, `oauth2_authorization_code`
    /// or `nango`.
    pub kind: String,
    /// `connected`; `expiring` (an OAuth access token expires within five
    /// minutes; it is renewed when next used); `needs_reconnect` (the
    /// provider revoked the grant, or the authorization was never
    /// completed: start it again); `error` (the token endpoint refused the
    /// client, see `status_reason`).
    #[schema(pattern = "^(connected|expiring|needs_reconnect|error)$")]
    pub status: String,
    /// Why the status is `needs_reconnect` or `error` (never a secret).
    pub status_reason: Option<String>,
    /// The OAuth provider preset, when it came from one.
    pub provider: Option<String>,
    /// When the current OAuth access token expires (`null`: unknown, or
    /// not an OAuth credential).
    pub access_token_expires_at: Option<DateTime<Utc>>,
    /// When a token was last fetched or refreshed.
    pub last_refreshed_at: Option<DateTime<Utc>>,
}

/// A credential to store: its kind, fields and (for OAuth kinds) the
/// provider settings.
#[derive(Debug, Clone)]
pub struct NewCredential<'a> {
    /// How it gets its token.
    pub kind: CredentialKind,
    /// The sealed fields.
    pub fields: &'a BTreeMap<String, String>,
    /// The provider settings (`OAuthConfig` as JSON), OAuth kinds only.
    pub oauth: Option<serde_json::Value>,
    /// `connected`, or `needs_reconnect` for an authorization that has not
    /// been completed yet.
    pub status: &'a str,
    /// Why, for a status other than `connected`.
    pub status_reason: Option<&'a str>,
}

/// How a run sees one credential besides its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenState {
    /// Its kind.
    pub kind: CredentialKind,
    /// When its access token expires, if known.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Infers the auth kind from the field names a static credential holds
/// (OAuth and Nango credentials are `oauth2`).
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

/// Creates or replaces a static credential.
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
    let new = NewCredential {
        kind: CredentialKind::Static,
        fields,
        oauth: None,
        status: "connected",
        status_reason: None,
    };
    put_kind(pool, keyring, workspace_id, name, &new).await
}

/// Creates or replaces a credential of any kind. A replacement starts
/// over: tokens, expiry and status are the new ones.
///
/// # Errors
///
/// Database or sealing errors.
pub async fn put_kind(
    pool: &PgPool,
    keyring: &Keyring,
    workspace_id: &str,
    name: &str,
    new: &NewCredential<'_>,
) -> Result<CredentialMeta, CredentialError> {
    let fields = new.fields;
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
        r#"INSERT INTO workspace_api_credentials
             (workspace_id, name, auth_kind, fields, key_id, nonce, ciphertext, kind, oauth,
              status, status_reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (workspace_id, name) DO UPDATE SET
             auth_kind = EXCLUDED.auth_kind, fields = EXCLUDED.fields, key_id = EXCLUDED.key_id,
             nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, updated_at = now(),
             kind = EXCLUDED.kind, oauth = EXCLUDED.oauth, status = EXCLUDED.status,
             status_reason = EXCLUDED.status_reason, access_token_expires_at = NULL,
             last_refreshed_at = NULL
         RETURNING name, auth_kind, fields, key_id, created_at, updated_at, last_used_at, kind,
             CASE WHEN status = 'connected' AND access_token_expires_at < now() + interval '5 minutes'
                  THEN 'expiring' ELSE status END AS "status!",
             status_reason, oauth->>'provider' AS provider, access_token_expires_at,
             last_refreshed_at"#,
        workspace_id,
        name,
        match new.kind {
            CredentialKind::Static => auth_kind(fields),
            _ => "oauth2",
        },
        &field_names,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext,
        new.kind.as_str(),
        new.oauth,
        new.status,
        new.status_reason,
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
        r#"SELECT name, auth_kind, fields, key_id, created_at, updated_at, last_used_at, kind,
             CASE WHEN status = 'connected' AND access_token_expires_at < now() + interval '5 minutes'
                  THEN 'expiring' ELSE status END AS "status!",
             status_reason, oauth->>'provider' AS provider, access_token_expires_at,
             last_refreshed_at
         FROM workspace_api_credentials WHERE workspace_id = $1 AND name = $2"#,
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
        r#"SELECT name, auth_kind, fields, key_id, created_at, updated_at, last_used_at, kind,
             CASE WHEN status = 'connected' AND access_token_expires_at < now() + interval '5 minutes'
                  THEN 'expiring' ELSE status END AS "status!",
             status_reason, oauth->>'provider' AS provider, access_token_expires_at,
             last_refreshed_at
         FROM workspace_api_credentials WHERE workspace_id = $1 ORDER BY name"#,
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
    Ok(load_for_run(pool, keyring, workspace_id, names).await?.0)
}

/// [`load`], with each credential's kind and access token expiry.
///
/// # Errors
///
/// Database errors, or a row that does not decrypt.
pub async fn load_for_run(
    pool: &PgPool,
    keyring: &Keyring,
    workspace_id: &str,
    names: &[String],
) -> Result<(Credentials, BTreeMap<String, TokenState>), CredentialError> {
    if names.is_empty() {
        return Ok((Credentials::new(), BTreeMap::new()));
    }
    let rows = sqlx::query!(
        "WITH touched AS (
             UPDATE workspace_api_credentials SET last_used_at = now()
             WHERE workspace_id = $1 AND name = ANY($2)
               AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
         )
         SELECT name, key_id, nonce, ciphertext, kind, access_token_expires_at
         FROM workspace_api_credentials
         WHERE workspace_id = $1 AND name = ANY($2)",
        workspace_id,
        names
    )
    .fetch_all(pool)
    .await?;
    let mut out = Credentials::new();
    let mut states = BTreeMap::new();
    for row in rows {
        let sealed = Sealed {
            key_id: row.key_id,
            nonce: row.nonce,
            ciphertext: row.ciphertext,
        };
        let fields = open(keyring, workspace_id, &row.name, &sealed)?;
        states.insert(
            row.name.clone(),
            TokenState {
                kind: CredentialKind::parse(&row.kind),
                expires_at: row.access_token_expires_at,
            },
        );
        out.insert(row.name, fields);
    }
    Ok((out, states))
}

/// Opens a sealed credential into its fields.
///
/// # Errors
///
/// A row that does not decrypt.
pub fn open(
    keyring: &Keyring,
    workspace_id: &str,
    name: &str,
    sealed: &Sealed,
) -> Result<BTreeMap<String, String>, CredentialError> {
    let crypto = |source| CredentialError::Crypto {
        name: name.to_owned(),
        source,
    };
    let plaintext = keyring.open(workspace_id, name, sealed).map_err(crypto)?;
    serde_json::from_slice(&plaintext).map_err(|_| crypto(CryptoError::Decrypt))
}

/// A credential sealed with a key other than the keyring's current one,
/// as [`stale`] read it: what [`reseal`] writes back, and fences on.
#[derive(Debug, Clone)]
pub struct Stale {
    /// Owning workspace.
    pub workspace_id: String,
    /// Credential name.
    pub name: String,
    /// The sealed fields as read.
    pub sealed: Sealed,
}

/// The credentials not sealed with `keyring`'s current key.
///
/// # Errors
///
/// Database errors.
pub async fn stale(pool: &PgPool, keyring: &Keyring) -> crate::Result<Vec<Stale>> {
    let rows = sqlx::query!(
        "SELECT workspace_id, name, key_id, nonce, ciphertext FROM workspace_api_credentials
         WHERE key_id <> $1",
        keyring.current_id()
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Stale {
            workspace_id: row.workspace_id,
            name: row.name,
            sealed: Sealed {
                key_id: row.key_id,
                nonce: row.nonce,
                ciphertext: row.ciphertext,
            },
        })
        .collect())
}

/// Re-seals `stale` with `keyring`'s current key, unless the row changed
/// since it was read; returns whether it was written.
///
/// The write is fenced on the nonce read (fresh and random for every
/// seal), not on the key id alone: a worker still on the old key that
/// refreshes an OAuth token meanwhile saves the provider's new refresh
/// token under that same key id, and the old one, re-sealed over it,
/// would be refused at the next refresh (the credential then needs a
/// reconnect).
///
/// # Errors
///
/// Database errors, or a row whose key is not in the keyring.
pub async fn reseal(
    pool: &PgPool,
    keyring: &Keyring,
    stale: &Stale,
) -> Result<bool, CredentialError> {
    let Stale {
        workspace_id,
        name,
        sealed: old,
    } = stale;
    let sealed =
        keyring
            .reseal(workspace_id, name, old)
            .map_err(|source| CredentialError::Crypto {
                name: name.clone(),
                source,
            })?;
    let done = sqlx::query!(
        "UPDATE workspace_api_credentials SET key_id = $5, nonce = $6, ciphertext = $7
         WHERE workspace_id = $1 AND name = $2 AND key_id = $3 AND nonce = $4",
        workspace_id,
        name,
        old.key_id,
        old.nonce,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Re-seals every credential not sealed with the keyring's current key;
/// returns how many were re-sealed. Each row is written only if it still
/// holds what was read ([`reseal`]), so a concurrent `put` or token
/// refresh is never overwritten.
///
/// # Errors
///
/// Database errors, or a row whose key is not in the keyring.
pub async fn rotate(pool: &PgPool, keyring: &Keyring) -> Result<u64, CredentialError> {
    let mut count = 0;
    for row in stale(pool, keyring).await? {
        if reseal(pool, keyring, &row).await? {
            count += 1;
        }
    }
    Ok(count)
}
