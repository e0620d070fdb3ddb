//! All SQL. Every query is scoped by workspace, and every write to a
//! running execution is fenced by its token: zero rows affected means the
//! lease was lost and the caller must stop.

pub mod connectors;
pub mod credentials;
pub mod executions;

use sqlx::PgExecutor;

use crate::Result;

/// Creates the workspace row on first use. Workspace ids are the calling
/// product's own opaque strings; no sign-up is needed.
///
/// # Errors
///
/// Database errors, including an id longer than 128 characters.
pub async fn ensure_workspace<'e>(db: impl PgExecutor<'e>, workspace_id: &str) -> Result<()> {
    sqlx::query!(
        "INSERT INTO workspaces (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
        workspace_id
    )
    .execute(db)
    .await?;
    Ok(())
}
