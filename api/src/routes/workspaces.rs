//! Owner-only management of any workspace: its members (consulted when
//! `CONVEYOR_REQUIRE_MEMBERSHIP=true`) and its API keys. Every change is
//! audited in the workspace concerned, with the owner as actor.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use conveyor_engine::store::access as access_store;
use conveyor_engine::store::members;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::access::{CreateApiKeyRequest, issue_api_key, withdraw_api_key};
use super::{audit, valid_id};
use crate::AppState;
use crate::auth::{Caller, Owner};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::schemas::{ApiKeyCreated, ApiKeyList, MemberList};

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_members))
        .routes(routes!(put_member, delete_member))
        .routes(routes!(list_workspace_keys, create_workspace_key))
        .routes(routes!(revoke_workspace_key))
}

/// `/admin/workspaces/{id}/...`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct WorkspacePath {
    /// The workspace id: 1 to 128 printable characters.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    id: String,
}

/// `/admin/workspaces/{id}/members/{user_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct MemberPath {
    /// The workspace id: 1 to 128 printable characters.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    id: String,
    /// The user id (a token's `sub`): 1 to 128 printable characters.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    user_id: String,
}

/// `/admin/workspaces/{id}/api-keys/{key_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct KeyPath {
    /// The workspace id: 1 to 128 printable characters.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    id: String,
    /// The key.
    key_id: Uuid,
}

/// The owner, acting in `workspace_id` (where the audit rows go).
fn acting_in(owner: Caller, workspace_id: String) -> Caller {
    Caller {
        workspace_id,
        ..owner
    }
}

/// The workspace's members, in user id order.
#[utoipa::path(get, path = "/admin/workspaces/{id}/members", tag = "admin",
    params(WorkspacePath),
    responses((status = 200, description = "`items`: every member", body = MemberList),
              (status = 403, description = "Needs the admin role `owner`"),
              (status = 422, description = "`id` is invalid")))]
async fn list_members(
    State(state): State<AppState>,
    _owner: Owner,
    ApiPath(WorkspacePath { id }): ApiPath<WorkspacePath>,
) -> ApiResult<Json<Value>> {
    valid_id("id", "workspace", &id)?;
    let items = members::list(&state.pool, &id).await?;
    Ok(Json(json!({ "items": items })))
}

/// Add a user to a workspace's members: 201 when added, 200 when they
/// already were one.
#[utoipa::path(put, path = "/admin/workspaces/{id}/members/{user_id}", tag = "admin",
    params(MemberPath),
    responses((status = 200, description = "Already a member", body = Object),
              (status = 201, description = "Added", body = Object),
              (status = 403, description = "Needs the admin role `owner`"),
              (status = 422, description = "`id` or `user_id` is invalid")))]
async fn put_member(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiPath(MemberPath { id, user_id }): ApiPath<MemberPath>,
) -> ApiResult<Response> {
    valid_id("id", "workspace", &id)?;
    valid_id("user_id", "user", &user_id)?;
    let added = members::add(&state.pool, &id, &user_id, &owner.actor).await?;
    let status = if added {
        audit(
            &state,
            &acting_in(owner, id.clone()),
            "member.add",
            "member",
            Some(&user_id),
            json!({}),
        )
        .await;
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"workspace_id": id, "user_id": user_id})),
    )
        .into_response())
}

/// Remove a user from a workspace's members.
#[utoipa::path(delete, path = "/admin/workspaces/{id}/members/{user_id}", tag = "admin",
    params(MemberPath),
    responses((status = 204, description = "Removed"),
              (status = 403, description = "Needs the admin role `owner`"),
              (status = 404, description = "Not a member of this workspace"),
              (status = 422, description = "`id` or `user_id` is invalid")))]
async fn delete_member(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiPath(MemberPath { id, user_id }): ApiPath<MemberPath>,
) -> ApiResult<StatusCode> {
    valid_id("id", "workspace", &id)?;
    valid_id("user_id", "user", &user_id)?;
    if !members::remove(&state.pool, &id, &user_id).await? {
        return Err(ApiError::not_found("member"));
    }
    audit(
        &state,
        &acting_in(owner, id),
        "member.remove",
        "member",
        Some(&user_id),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Any workspace's API keys, newest first (metadata only: never a key).
#[utoipa::path(get, path = "/admin/workspaces/{id}/api-keys", tag = "admin",
    params(WorkspacePath),
    responses((status = 200, description = "Every key's metadata, newest first", body = ApiKeyList),
              (status = 403, description = "Needs the admin role `owner`"),
              (status = 422, description = "`id` is invalid")))]
async fn list_workspace_keys(
    State(state): State<AppState>,
    _owner: Owner,
    ApiPath(WorkspacePath { id }): ApiPath<WorkspacePath>,
) -> ApiResult<Json<Value>> {
    valid_id("id", "workspace", &id)?;
    let items = access_store::list_api_keys(&state.pool, &id).await?;
    Ok(Json(json!({ "items": items })))
}

/// Create an API key for any workspace, as `POST /api-keys` does there;
/// the key is in this response and nowhere else.
#[utoipa::path(post, path = "/admin/workspaces/{id}/api-keys", tag = "admin",
    params(WorkspacePath),
    request_body(content = CreateApiKeyRequest, example = json!({"name": "support tooling", "scopes": ["read"]})),
    responses((status = 201, description = "The key, shown this once", body = ApiKeyCreated),
              (status = 403, description = "Needs the admin role `owner`"),
              (status = 422, description = "`id`, `name`, `scopes` or `expires_at` is invalid")))]
async fn create_workspace_key(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiPath(WorkspacePath { id }): ApiPath<WorkspacePath>,
    ApiJson(body): ApiJson<CreateApiKeyRequest>,
) -> ApiResult<Response> {
    valid_id("id", "workspace", &id)?;
    issue_api_key(&state, &acting_in(owner, id), body).await
}

/// Revoke any workspace's API key.
#[utoipa::path(delete, path = "/admin/workspaces/{id}/api-keys/{key_id}", tag = "admin",
    params(KeyPath),
    responses((status = 204, description = "Revoked"),
              (status = 403, description = "Needs the admin role `owner`"),
              (status = 404, description = "No live key with this id in this workspace"),
              (status = 422, description = "`id` is invalid")))]
async fn revoke_workspace_key(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ApiPath(KeyPath { id, key_id }): ApiPath<KeyPath>,
) -> ApiResult<StatusCode> {
    valid_id("id", "workspace", &id)?;
    withdraw_api_key(&state, &acting_in(owner, id), key_id).await
}
