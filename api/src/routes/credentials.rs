//! Workspace credentials: sealed on the way in, never shown again. Every
//! response carries metadata only (name, auth kind, field names,
//! timestamps, last use), and no error message quotes a submitted value.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use conveyor_engine::connector::ValidationErrors;
use conveyor_engine::connector::is_credential_name;
use conveyor_engine::credential_rules::OAuthInput;
use conveyor_engine::credential_rules::{self, MAX_FIELD_BYTES, MAX_FIELDS};
use conveyor_engine::oauth::CredentialKind;
use conveyor_engine::oauth::connect::{self, ConnectError};
use conveyor_engine::store::credentials::{self, CredentialError, CredentialMeta, NewCredential};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::schemas::CredentialList;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_credentials))
        .routes(routes!(get_credential, put_credential, delete_credential))
        .routes(routes!(start_oauth))
}

/// The body of `PUT /credentials/{name}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutCredentialRequest {
    /// How the credential gets its secret: `static` (default: the fields
    /// as given), `oauth2_client_credentials` (needs `client_id`,
    /// `client_secret` and `oauth`), `oauth2_authorization_code` (needs
    /// `client_id`, usually `client_secret`, and `oauth`; then connect it
    /// with `POST .../oauth/start`) or `nango` (needs `connection_id`,
    /// `provider_config_key`, `secret_key`, optional `base_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^(static|oauth2_client_credentials|oauth2_authorization_code|nango)$")]
    kind: Option<CredentialKind>,
    /// The provider settings of the OAuth kinds: a preset, or the
    /// endpoints of any standards-compliant provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth: Option<OAuthInput>,
    /// The secret fields: at least one, names `[A-Za-z0-9_]{1,64}`, string
    /// values up to 8 KiB. `token` makes a bearer credential, `key` an API
    /// key, `username` + `password` basic auth; anything else is custom.
    // Read as a raw value and checked here, so that a wrongly typed secret
    // is refused without serde quoting it back in the error message.
    #[schema(schema_with = credential_data_schema)]
    data: Value,
}

/// `data` as [`check_data`] accepts it.
fn credential_data_schema() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .min_properties(Some(1))
        .max_properties(Some(MAX_FIELDS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z0-9_]{1,64}$")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_FIELD_BYTES))
                .description(Some("At most 8 KiB (UTF-8 bytes)")),
        ))
        .examples([json!({"token": "s3cr3t"})])
}

fn credential_error(e: CredentialError) -> ApiError {
    match e {
        CredentialError::Store(e) => e.into(),
        e @ CredentialError::Crypto { .. } => ApiError::internal(&e),
    }
}

/// List the workspace's credentials (metadata only, by name).
#[utoipa::path(get, path = "/credentials", tag = "credentials", operation_id = "list_credentials",
    responses((status = 200, description = "Metadata of every credential (never a value)", body = CredentialList)))]
async fn list_credentials(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let items = credentials::list(&state.pool, &caller.workspace_id).await?;
    Ok(Json(json!({ "items": items })))
}

/// Read a credential's metadata (never its values): whether it exists,
/// which fields it holds, when it changed and was last used.
#[utoipa::path(get, path = "/credentials/{name}", tag = "credentials", operation_id = "get_credential", params(("name" = String, Path, description = "The credential: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}`", pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")),
    responses((status = 200, description = "The credential's metadata", body = CredentialMeta),
              (status = 404, description = "No such credential in this workspace")))]
async fn get_credential(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    if !is_credential_name(&name) {
        return Err(ApiError::not_found("credential"));
    }
    let meta = credentials::get(&state.pool, &caller.workspace_id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("credential"))?;
    Ok(Json(json!(meta)))
}

/// Create or replace a credential. The values are sealed (AES-256-GCM)
/// and never returned; the response is the metadata.
#[utoipa::path(put, path = "/credentials/{name}", tag = "credentials", operation_id = "put_credential", params(("name" = String, Path, description = "The credential: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}`", pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")),
    request_body(content = PutCredentialRequest, examples(
        ("static" = (value = json!({"data": {"token": "s3cr3t-token"}}))),
        ("oauth2" = (value = json!({"kind": "oauth2_authorization_code", "data": {"client_id": "id", "client_secret": "s3cr3t"}, "oauth": {"provider": "hubspot"}}))))),
    responses((status = 201, description = "Created: the metadata", body = CredentialMeta),
              (status = 200, description = "Replaced: the metadata", body = CredentialMeta),
              (status = 422, description = "Invalid name or data; `details.errors` lists `{path, message}` (never a submitted value)")))]
pub(crate) async fn put_credential(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutCredentialRequest>,
) -> ApiResult<Response> {
    let invalid = |errors: ValidationErrors| {
        let first = errors
            .0
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        ApiError::validation(format!("invalid credential: {first}"), json!(errors.0))
    };
    let fields = credential_rules::check(&name, body.data).map_err(invalid)?;
    let kind = body.kind.unwrap_or(CredentialKind::Static);
    let oauth = credential_rules::check_kind(kind, &fields, body.oauth).map_err(invalid)?;
    // An authorization code credential is connected once the provider
    // gave a token (or one was imported with it).
    let pending = kind == CredentialKind::AuthorizationCode
        && !fields.contains_key("access_token")
        && !fields.contains_key("refresh_token");
    let new = NewCredential {
        kind,
        fields: &fields,
        oauth: oauth.map(|o| json!(o)),
        status: if pending {
            "needs_reconnect"
        } else {
            "connected"
        },
        status_reason: pending
            .then_some("not connected yet: POST /api/v1/credentials/{name}/oauth/start"),
    };
    let meta = credentials::put_kind(
        &state.pool,
        &state.keyring,
        &caller.workspace_id,
        &name,
        &new,
    )
    .await
    .map_err(credential_error)?;
    // Both timestamps are the inserting transaction's `now()` only when the
    // row is new; a replacement moves `updated_at` alone.
    let created = meta.created_at == meta.updated_at;
    audit(
        &state,
        &caller,
        "credential.put",
        "credential",
        Some(&name),
        json!({"created": created, "auth_kind": meta.auth_kind, "kind": meta.kind, "fields": meta.fields}),
    )
    .await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(meta))).into_response())
}

/// Delete a credential. Steps that use it fail from then on, naming it.
#[utoipa::path(delete, path = "/credentials/{name}", tag = "credentials", operation_id = "delete_credential", params(("name" = String, Path, description = "The credential: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}`", pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such credential in this workspace")))]
pub(crate) async fn delete_credential(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if !is_credential_name(&name)
        || !credentials::delete(&state.pool, &caller.workspace_id, &name).await?
    {
        return Err(ApiError::not_found("credential"));
    }
    audit(
        &state,
        &caller,
        "credential.delete",
        "credential",
        Some(&name),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer of `POST /credentials/{name}/oauth/start`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OAuthStarted {
    /// Send the person here; the provider redirects back to
    /// `CONVEYOR_PUBLIC_URL` + `/api/v1/oauth/callback`. Valid ten minutes,
    /// once.
    pub(crate) authorization_url: String,
}

/// Start connecting an `oauth2_authorization_code` credential: the
/// authorization URL (PKCE S256, a single-use `state` bound to this
/// workspace, the credential and ten minutes).
#[utoipa::path(post, path = "/credentials/{name}/oauth/start", tag = "credentials", operation_id = "start_oauth", params(("name" = String, Path, description = "The credential: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}`", pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")),
    responses((status = 200, description = "Where to send the person", body = OAuthStarted),
              (status = 409, description = "The credential is not of kind `oauth2_authorization_code`, or has no authorization URL")))]
pub(crate) async fn start_oauth(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<OAuthStarted>> {
    if !is_credential_name(&name) {
        return Err(ApiError::not_found("credential"));
    }
    let url = connect::start(
        &state.pool,
        &state.keyring,
        &caller.workspace_id,
        &name,
        &state.config.oauth_redirect_uri(),
        chrono::Utc::now(),
    )
    .await
    .map_err(|e| match e {
        ConnectError::Store(e) => e.into(),
        ConnectError::NotFound => ApiError::not_found("credential"),
        ConnectError::NotStartable(m) => ApiError::conflict(m),
        e => ApiError::internal(&e),
    })?;
    audit(
        &state,
        &caller,
        "credential.oauth_start",
        "credential",
        Some(&name),
        json!({}),
    )
    .await;
    Ok(Json(OAuthStarted {
        authorization_url: url,
    }))
}
