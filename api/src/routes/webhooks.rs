//! Outbound webhooks: the workspace's signing secret (read, rotate) and
//! the completion callbacks of an execution with every attempt.

use axum::Json;
use axum::extract::State;
use conveyor_engine::store::callbacks::{self, CallbackView, SecretError};
use conveyor_engine::store::history;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::audit;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_signing_secret))
        .routes(routes!(rotate_signing_secret))
        .routes(routes!(list_callbacks))
}

/// The workspace's signing secret.
#[derive(Debug, Serialize, ToSchema)]
struct SigningSecret {
    /// `whsec_` + base64 of 32 random bytes: the Standard Webhooks key of
    /// every callback's `webhook-signature`.
    secret: String,
}

/// An execution's callbacks.
#[derive(Debug, Serialize, ToSchema)]
struct CallbackList {
    items: Vec<CallbackView>,
}

fn user_only(caller: &Caller) -> ApiResult<()> {
    if caller.api_key_id.is_some() {
        return Err(ApiError::forbidden(
            "only a user token (JWT) may read or rotate the signing secret",
        ));
    }
    Ok(())
}

fn secret_error(e: SecretError) -> ApiError {
    match e {
        SecretError::Store(e) => e.into(),
        e @ SecretError::Crypto(_) => ApiError::internal(&e),
    }
}

/// The workspace's callback signing secret (created on first read). Only
/// user tokens may read it.
#[utoipa::path(get, path = "/webhooks/signing-secret", tag = "webhooks", operation_id = "get_signing_secret",
    responses((status = 200, description = "The `whsec_...` secret", body = SigningSecret),
              (status = 403, description = "Called with an API key")))]
async fn get_signing_secret(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SigningSecret>> {
    user_only(&caller)?;
    let secret = callbacks::secret(&state.pool, &state.keyring, &caller.workspace_id)
        .await
        .map_err(secret_error)?;
    Ok(Json(SigningSecret { secret }))
}

/// Replace the signing secret. For the next 24 hours callbacks carry two
/// signatures, with the new and the previous secret, so receivers can
/// switch without losing any.
#[utoipa::path(post, path = "/webhooks/signing-secret/rotate", tag = "webhooks", operation_id = "rotate_signing_secret",
    responses((status = 200, description = "The new `whsec_...` secret", body = SigningSecret),
              (status = 403, description = "Called with an API key")))]
async fn rotate_signing_secret(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SigningSecret>> {
    user_only(&caller)?;
    let secret = callbacks::rotate(&state.pool, &state.keyring, &caller.workspace_id)
        .await
        .map_err(secret_error)?;
    audit(
        &state,
        &caller,
        "signing_secret.rotate",
        "workspace",
        None,
        json!({}),
    )
    .await;
    Ok(Json(SigningSecret { secret }))
}

/// The completion callbacks of an execution, each with every attempt
/// (status code, error, duration).
#[utoipa::path(get, path = "/executions/{id}/callbacks", tag = "webhooks", operation_id = "list_execution_callbacks",
    params(("id" = Uuid, Path, description = "The execution")),
    responses((status = 200, description = "The execution's callbacks, oldest first", body = CallbackList),
              (status = 404, description = "No such execution in this workspace")))]
async fn list_callbacks(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<CallbackList>> {
    history::get(&state.pool, &caller.workspace_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("execution"))?;
    let items = callbacks::for_execution(&state.pool, &caller.workspace_id, id).await?;
    Ok(Json(CallbackList { items }))
}
