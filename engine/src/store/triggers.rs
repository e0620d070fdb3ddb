//! Inbound webhook triggers and their deliveries. A trigger's secret is
//! sealed with the credentials keyring (the workspace and `trigger:<id>`
//! as associated data, so a ciphertext cannot be moved to another row)
//! and only ever opened to verify a delivery.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, Keyring, Sealed};
use crate::webhook::{Scheme, Settings};

/// A trigger as shown (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TriggerMeta {
    /// Id: 128 random bits, hex; the URL is `/hooks/{id}`.
    pub id: String,
    /// The connector it starts (its latest version).
    pub connector_id: Uuid,
    /// How deliveries are verified.
    pub scheme: Scheme,
    /// The scheme's settings (header, encoding, prefix, tolerance_secs,
    /// id_header).
    pub settings: Settings,
    /// Input field -> JSONPath or `<<...>>` template (`null`: the JSON
    /// body is the input).
    pub mapping: Option<Value>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// What a delivery needs: the trigger, its opened secret and the
/// connector's latest version.
pub struct Loaded {
    /// The trigger.
    pub meta: TriggerMeta,
    /// Its workspace.
    pub workspace_id: String,
    /// The opened secret (empty for `none`); zeroized on drop.
    pub secret: Zeroizing<Vec<u8>>,
    /// The connector's latest version.
    pub version: i32,
    /// Its definition.
    pub definition: Value,
    /// Whether the connector was deleted.
    pub connector_deleted: bool,
}

/// Why a trigger could not be stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// Sealing or opening the secret failed.
    #[error("the trigger secret could not be sealed or opened: {0}")]
    Crypto(#[from] CryptoError),
    /// A database error.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

impl From<sqlx::Error> for TriggerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A recorded delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// Id.
    pub id: Uuid,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// The HTTP status answered.
    pub status: i16,
    /// `started`, `duplicate` (its delivery id was seen: no second
    /// execution), `unverified` (401), `unmapped` (422: mapping or input
    /// schema), `handshake` (a provider's URL check, answered).
    pub outcome: String,
    /// The provider's delivery id.
    pub delivery_id: Option<String>,
    /// The execution it started (or, for a duplicate, the first one).
    pub execution_id: Option<Uuid>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// The associated-data name binding a trigger's sealed secret.
fn aad_name(id: &str) -> String {
    format!("trigger:{id}")
}

/// 128 random bits as 32 lowercase hex characters.
fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    crate::webhook::to_hex(&bytes)
}

struct Row {
    id: String,
    connector_id: Uuid,
    scheme: String,
    settings: Value,
    mapping: Option<Value>,
    created_at: DateTime<Utc>,
}

impl From<Row> for TriggerMeta {
    fn from(r: Row) -> Self {
        Self {
            id: r.id,
            connector_id: r.connector_id,
            scheme: serde_json::from_value(Value::String(r.scheme)).unwrap_or(Scheme::None),
            settings: serde_json::from_value(r.settings).unwrap_or_default(),
            mapping: r.mapping,
            created_at: r.created_at,
        }
    }
}

/// Creates a trigger, sealing `secret` (required unless the scheme is
/// `none`, where it is ignored).
///
/// # Errors
///
/// Sealing or database errors.
pub async fn create(
    pool: &PgPool,
    keyring: &Keyring,
    workspace_id: &str,
    connector_id: Uuid,
    (scheme, settings): (Scheme, &Settings),
    mapping: Option<&Value>,
    secret: Option<&str>,
) -> Result<TriggerMeta, TriggerError> {
    let id = new_id();
    let sealed = match secret.filter(|_| scheme.needs_secret()) {
        Some(s) => Some(keyring.seal(workspace_id, &aad_name(&id), s.as_bytes())?),
        None => None,
    };
    let (key_id, nonce, ciphertext) = match sealed {
        Some(s) => (Some(s.key_id), Some(s.nonce), Some(s.ciphertext)),
        None => (None, None, None),
    };
    let row = sqlx::query_as!(
        Row,
        "INSERT INTO webhook_triggers
             (id, workspace_id, connector_id, scheme, settings, mapping, key_id, nonce, ciphertext, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
         RETURNING id, connector_id, scheme, settings, mapping, created_at",
        id,
        workspace_id,
        connector_id,
        scheme.as_str(),
        serde_json::to_value(settings).unwrap_or(Value::Null),
        mapping,
        key_id,
        nonce,
        ciphertext
    )
    .fetch_one(pool)
    .await?;
    Ok(row.into())
}

/// A trigger of the workspace.
///
/// # Errors
///
/// Database errors.
pub async fn get(
    pool: &PgPool,
    workspace_id: &str,
    id: &str,
) -> crate::Result<Option<TriggerMeta>> {
    let row = sqlx::query_as!(
        Row,
        "SELECT id, connector_id, scheme, settings, mapping, created_at
         FROM webhook_triggers WHERE id = $1 AND workspace_id = $2",
        id,
        workspace_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Into::into))
}

/// A connector's triggers, oldest first.
///
/// # Errors
///
/// Database errors.
pub async fn list(
    pool: &PgPool,
    workspace_id: &str,
    connector_id: Uuid,
) -> crate::Result<Vec<TriggerMeta>> {
    let rows = sqlx::query_as!(
        Row,
        "SELECT id, connector_id, scheme, settings, mapping, created_at
         FROM webhook_triggers WHERE workspace_id = $1 AND connector_id = $2
         ORDER BY created_at, id",
        workspace_id,
        connector_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Deletes a trigger and its delivery records; whether it existed.
///
/// # Errors
///
/// Database errors.
pub async fn delete(pool: &PgPool, workspace_id: &str, id: &str) -> crate::Result<bool> {
    let done = sqlx::query!(
        "DELETE FROM webhook_triggers WHERE id = $1 AND workspace_id = $2",
        id,
        workspace_id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Loads a trigger by id alone (a delivery carries no workspace), opens
/// its secret, and reads its connector's latest version, in one query.
///
/// # Errors
///
/// Database errors, or a secret that does not open (a key missing from
/// the ring).
pub async fn load(
    pool: &PgPool,
    keyring: &Keyring,
    id: &str,
) -> Result<Option<Loaded>, TriggerError> {
    let row = sqlx::query!(
        r#"SELECT t.id, t.workspace_id, t.connector_id, t.scheme, t.settings, t.mapping, t.created_at,
                  t.key_id, t.nonce, t.ciphertext, c.latest_version, v.definition,
                  (c.deleted_at IS NOT NULL) AS "connector_deleted!"
           FROM webhook_triggers t
           JOIN connectors c ON c.id = t.connector_id
           JOIN connector_versions v ON v.connector_id = c.id AND v.version = c.latest_version
           WHERE t.id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let secret = match (r.key_id, r.nonce, r.ciphertext) {
        (Some(key_id), Some(nonce), Some(ciphertext)) => keyring.open(
            &r.workspace_id,
            &aad_name(&r.id),
            &Sealed {
                key_id,
                nonce,
                ciphertext,
            },
        )?,
        _ => Zeroizing::new(Vec::new()),
    };
    Ok(Some(Loaded {
        meta: Row {
            id: r.id,
            connector_id: r.connector_id,
            scheme: r.scheme,
            settings: r.settings,
            mapping: r.mapping,
            created_at: r.created_at,
        }
        .into(),
        workspace_id: r.workspace_id,
        secret,
        version: r.latest_version,
        definition: r.definition,
        connector_deleted: r.connector_deleted,
    }))
}

/// Records one delivery.
///
/// # Errors
///
/// Database errors.
pub async fn record(
    pool: &PgPool,
    trigger_id: &str,
    now: DateTime<Utc>,
    (status, outcome): (u16, &str),
    delivery_id: Option<&str>,
    execution_id: Option<Uuid>,
    error: Option<&str>,
) -> crate::Result<()> {
    sqlx::query!(
        "INSERT INTO trigger_deliveries
             (id, workspace_id, trigger_id, received_at, status, outcome, delivery_id, execution_id, error)
         SELECT $1, workspace_id, id, $3, $4, $5, $6, $7, $8 FROM webhook_triggers WHERE id = $2",
        Uuid::now_v7(),
        trigger_id,
        now,
        i16::try_from(status).unwrap_or(i16::MAX),
        outcome,
        delivery_id,
        execution_id,
        error
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A trigger's most recent `limit` deliveries, newest first.
///
/// # Errors
///
/// Database errors.
pub async fn deliveries(
    pool: &PgPool,
    trigger_id: &str,
    limit: i64,
) -> crate::Result<Vec<Delivery>> {
    Ok(sqlx::query_as!(
        Delivery,
        "SELECT id, received_at, status, outcome, delivery_id, execution_id, error
         FROM trigger_deliveries WHERE trigger_id = $1
         ORDER BY received_at DESC, id DESC LIMIT $2",
        trigger_id,
        limit
    )
    .fetch_all(pool)
    .await?)
}
