//! Workspace membership: which users a workspace lists as its members.
//! Consulted only when the API runs with `CONVEYOR_REQUIRE_MEMBERSHIP=true`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::Result;

/// One member of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Member {
    /// The user id (a token's `sub`).
    pub user_id: String,
    /// Who added them (an admin's user id, or `cli`).
    pub added_by: String,
    /// When.
    pub added_at: DateTime<Utc>,
}

/// Adds `user_id` to the workspace (creating the workspace row on first
/// use); whether they were not a member before.
///
/// # Errors
///
/// Database errors, including ids over 128 characters.
pub async fn add(pool: &PgPool, workspace_id: &str, user_id: &str, added_by: &str) -> Result<bool> {
    let mut tx = pool.begin().await?;
    super::ensure_workspace(&mut *tx, workspace_id).await?;
    let added = sqlx::query!(
        "INSERT INTO workspace_members (workspace_id, user_id, added_by) VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id, user_id) DO NOTHING",
        workspace_id,
        user_id,
        added_by
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    tx.commit().await?;
    Ok(added)
}

/// Removes `user_id` from the workspace; whether they were a member.
///
/// # Errors
///
/// Database errors.
pub async fn remove(pool: &PgPool, workspace_id: &str, user_id: &str) -> Result<bool> {
    let done = sqlx::query!(
        "DELETE FROM workspace_members WHERE workspace_id = $1 AND user_id = $2",
        workspace_id,
        user_id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The workspace's members, in user id order.
///
/// # Errors
///
/// Database errors.
pub async fn list(pool: &PgPool, workspace_id: &str) -> Result<Vec<Member>> {
    Ok(sqlx::query_as!(
        Member,
        "SELECT user_id, added_by, added_at FROM workspace_members
         WHERE workspace_id = $1 ORDER BY user_id",
        workspace_id
    )
    .fetch_all(pool)
    .await?)
}

/// Whether `user_id` is a member of the workspace (one primary-key probe).
///
/// # Errors
///
/// Database errors.
pub async fn is_member(pool: &PgPool, workspace_id: &str, user_id: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM workspace_members WHERE workspace_id = $1 AND user_id = $2) AS "member!""#,
        workspace_id,
        user_id
    )
    .fetch_one(pool)
    .await?)
}
