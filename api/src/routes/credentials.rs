//! Workspace credentials: sealed on the way in, never shown again. Every
//! response carries metadata only (name, auth kind, field names,
//! timestamps, last use), and no error message quotes a submitted value.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use conveyor_engine::connector::is_credential_name;
use conveyor_engine::store::credentials::{self, CredentialError, CredentialMeta};
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

/// Largest value of one credential field, in bytes.
pub const MAX_FIELD_BYTES: usize = 8 * 1024;
/// Most fields in one credential.
pub const MAX_FIELDS: usize = 32;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_credentials))
        .routes(routes!(get_credential, put_credential, delete_credential))
}

/// The body of `PUT /credentials/{name}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PutCredentialRequest {
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

fn is_field_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The credential's fields, or every problem as `{path, message}`. No
/// message contains a submitted value.
fn check_data(data: Value) -> Result<BTreeMap<String, String>, Vec<Value>> {
    let Value::Object(map) = data else {
        return Err(vec![
            json!({"path": "data", "message": "must be an object of string fields"}),
        ]);
    };
    let mut errors = Vec::new();
    if map.is_empty() {
        errors.push(json!({"path": "data", "message": "must hold at least one field"}));
    }
    if map.len() > MAX_FIELDS {
        errors.push(
            json!({"path": "data", "message": format!("must hold at most {MAX_FIELDS} fields")}),
        );
    }
    let mut fields = BTreeMap::new();
    for (name, value) in map {
        if !is_field_name(&name) {
            // The name may be mistyped data: do not echo it either.
            errors.push(json!({"path": "data", "message": "field names must be 1 to 64 characters of A-Z, a-z, 0-9 and _"}));
            continue;
        }
        let path = format!("data.{name}");
        match value {
            Value::String(s) if s.len() > MAX_FIELD_BYTES => errors.push(
                json!({"path": path, "message": format!("must be at most {MAX_FIELD_BYTES} bytes")}),
            ),
            Value::String(s) => {
                fields.insert(name, s);
            }
            _ => errors.push(json!({"path": path, "message": "must be a string"})),
        }
    }
    if errors.is_empty() {
        Ok(fields)
    } else {
        Err(errors)
    }
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
    request_body(content = PutCredentialRequest, example = json!({"data": {"token": "s3cr3t-token"}})),
    responses((status = 201, description = "Created: the metadata", body = CredentialMeta),
              (status = 200, description = "Replaced: the metadata", body = CredentialMeta),
              (status = 422, description = "Invalid name or data; `details.errors` lists `{path, message}` (never a submitted value)")))]
async fn put_credential(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutCredentialRequest>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    if !is_credential_name(&name) {
        errors.push(
            json!({"path": "name", "message": "must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"}),
        );
    }
    let fields = match check_data(body.data) {
        Ok(fields) => Some(fields),
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    };
    let Some(fields) = fields.filter(|_| errors.is_empty()) else {
        let first = errors
            .first()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["path"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_default();
        return Err(ApiError::validation(
            format!("invalid credential: {first}"),
            Value::Array(errors),
        ));
    };
    let meta = credentials::put(
        &state.pool,
        &state.keyring,
        &caller.workspace_id,
        &name,
        &fields,
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
        json!({"created": created, "auth_kind": meta.auth_kind, "fields": meta.fields}),
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
async fn delete_credential(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_name_the_field_and_never_quote_a_value() {
        let secret = "planted-secret-value";
        let cases = [
            (json!(secret), "data"),
            (json!({}), "data"),
            (json!({"token": 5}), "data.token"),
            (json!({"token": [secret]}), "data.token"),
            (
                json!({"token": "x".repeat(MAX_FIELD_BYTES + 1)}),
                "data.token",
            ),
            (json!({ secret: "x", "bad-name": "y" }), "data"),
        ];
        for (data, path) in cases {
            let errors = check_data(data.clone()).expect_err("invalid");
            assert_eq!(errors[0]["path"], json!(path), "{data}");
            assert!(!Value::Array(errors).to_string().contains(secret));
        }
        let ok = check_data(json!({"token": "t", "api_key_2": "k"})).expect("valid");
        assert_eq!(ok.len(), 2);
        assert!(check_data(json!({"token": "x".repeat(MAX_FIELD_BYTES)})).is_ok());
    }
}
