//! Connectors and their immutable versions.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Result;
use crate::connector::Connector;

/// A stored connector version.
#[derive(Debug, Clone)]
pub struct ConnectorVersion {
    /// Connector id.
    pub id: Uuid,
    /// Owning workspace.
    pub workspace_id: String,
    /// This version's number.
    pub version: i32,
    /// The newest version's number.
    pub latest_version: i32,
    /// The definition of this version.
    pub definition: Value,
    /// When the connector was created.
    pub created_at: DateTime<Utc>,
    /// When it was deleted (soft), if it was.
    pub deleted_at: Option<DateTime<Utc>>,
    /// The template it was installed from.
    pub template_slug: Option<String>,
    /// The template version its latest connector version came from.
    pub template_version: Option<String>,
}

/// Creates a connector at version 1 (and the workspace on first use).
///
/// # Errors
///
/// Database errors.
pub async fn create(
    pool: &PgPool,
    workspace_id: &str,
    connector: &Connector,
) -> Result<(Uuid, i32)> {
    let mut tx = pool.begin().await?;
    let id = insert(&mut tx, workspace_id, connector, None).await?;
    tx.commit().await?;
    Ok((id, 1))
}

/// Inserts a connector and its version 1 in the caller's transaction,
/// recording the template (`slug`, `version`) it was installed from.
pub(crate) async fn insert(
    tx: &mut PgConnection,
    workspace_id: &str,
    connector: &Connector,
    template: Option<(&str, &str)>,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    let definition = serde_json::to_value(connector).unwrap_or(Value::Null);
    let (slug, template_version) = template.unzip();
    super::ensure_workspace(&mut *tx, workspace_id).await?;
    sqlx::query!(
        "INSERT INTO connectors (id, workspace_id, name, latest_version, template_slug, template_version)
         VALUES ($1, $2, $3, 1, $4, $5)",
        id,
        workspace_id,
        connector.name,
        slug,
        template_version
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO connector_versions (connector_id, version, workspace_id, definition)
         VALUES ($1, 1, $2, $3)",
        id,
        workspace_id,
        definition
    )
    .execute(&mut *tx)
    .await?;
    Ok(id)
}

/// Stores a new version of a live connector; `None` when the connector does
/// not exist in this workspace or was deleted.
///
/// # Errors
///
/// Database errors.
pub async fn update(
    pool: &PgPool,
    workspace_id: &str,
    id: Uuid,
    connector: &Connector,
) -> Result<Option<i32>> {
    let mut tx = pool.begin().await?;
    let version = add_version(&mut tx, workspace_id, id, connector, None).await?;
    tx.commit().await?;
    Ok(version)
}

/// Adds a version to a live connector in the caller's transaction; with
/// `template_version`, also records the template version it now follows.
pub(crate) async fn add_version(
    tx: &mut PgConnection,
    workspace_id: &str,
    id: Uuid,
    connector: &Connector,
    template_version: Option<&str>,
) -> Result<Option<i32>> {
    let definition = serde_json::to_value(connector).unwrap_or(Value::Null);
    let Some(version) = sqlx::query_scalar!(
        "UPDATE connectors SET latest_version = latest_version + 1, name = $3,
             template_version = COALESCE($4, template_version), updated_at = now()
         WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL
         RETURNING latest_version",
        id,
        workspace_id,
        connector.name,
        template_version
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    sqlx::query!(
        "INSERT INTO connector_versions (connector_id, version, workspace_id, definition)
         VALUES ($1, $2, $3, $4)",
        id,
        version,
        workspace_id,
        definition
    )
    .execute(&mut *tx)
    .await?;
    Ok(Some(version))
}

/// Reads a connector version (the latest when `version` is `None`),
/// deleted connectors included so their history stays readable.
///
/// # Errors
///
/// Database errors.
pub async fn get(
    pool: &PgPool,
    workspace_id: &str,
    id: Uuid,
    version: Option<i32>,
) -> Result<Option<ConnectorVersion>> {
    let row = sqlx::query_as!(
        ConnectorVersion,
        "SELECT c.id, c.workspace_id, v.version, c.latest_version, v.definition, c.created_at, c.deleted_at,
                c.template_slug, c.template_version
         FROM connectors c
         JOIN connector_versions v ON v.connector_id = c.id
         WHERE c.id = $1 AND c.workspace_id = $2 AND v.version = COALESCE($3, c.latest_version)",
        id,
        workspace_id,
        version
    )
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// Reads a version's definition by id alone: for workers, which hold the
/// workspace from the claimed row.
///
/// # Errors
///
/// Database errors.
pub async fn definition(pool: &PgPool, id: Uuid, version: i32) -> Result<Option<Value>> {
    let row = sqlx::query_scalar!(
        "SELECT definition FROM connector_versions WHERE connector_id = $1 AND version = $2",
        id,
        version
    )
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// A connector in a listing.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ConnectorSummary {
    /// Id.
    pub id: Uuid,
    /// Name of the latest version.
    pub name: String,
    /// Latest version number.
    pub latest_version: i32,
    /// Template it was installed from.
    pub template_slug: Option<String>,
    /// Template version it was installed from.
    pub template_version: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last new version.
    pub updated_at: DateTime<Utc>,
}

/// A workspace's live connectors, newest first.
///
/// # Errors
///
/// Database errors.
pub async fn list(pool: &PgPool, workspace_id: &str) -> Result<Vec<ConnectorSummary>> {
    Ok(sqlx::query_as!(
        ConnectorSummary,
        "SELECT id, name, latest_version, template_slug, template_version, created_at, updated_at
         FROM connectors WHERE workspace_id = $1 AND deleted_at IS NULL
         ORDER BY created_at DESC, id DESC",
        workspace_id
    )
    .fetch_all(pool)
    .await?)
}

/// Soft-deletes a connector (its versions and history stay readable);
/// whether a live connector of this workspace was deleted.
///
/// # Errors
///
/// Database errors.
pub async fn delete(pool: &PgPool, workspace_id: &str, id: Uuid) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE connectors SET deleted_at = now() WHERE id = $1 AND workspace_id = $2 AND deleted_at IS NULL",
        id,
        workspace_id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
