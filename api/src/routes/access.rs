//! Workspace API keys (created, listed, revoked) and the workspace's own
//! audit log.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use conveyor_engine::store::access::{self as access_store, AuditFilter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{DEFAULT_PAGE, MAX_PAGE, audit};
use crate::AppState;
use crate::auth::{Caller, Scope, new_api_key};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::schemas::{ApiKeyCreated, ApiKeyList, AuditPage};

/// Longest API key name (the `workspace_api_keys_name_length` CHECK).
pub const MAX_KEY_NAME_CHARS: usize = 200;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
        .routes(routes!(list_audit))
}

/// Keys are managed by people: an API key may not mint or revoke keys, so a
/// leaked key cannot entrench itself or lock others out.
fn require_user(caller: &Caller) -> ApiResult<()> {
    if caller.user_id.is_some() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "API keys are managed with a user token, not an API key",
        ))
    }
}

/// The body of `POST /api-keys`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateApiKeyRequest {
    /// A label to recognise the key by (1 to 200 printable characters,
    /// surrounding blanks trimmed).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    name: String,
    /// What the key may do: any of `read`, `execute`, `manage` (default:
    /// all three).
    scopes: Option<Vec<String>>,
    /// When the key stops working (RFC 3339, in the future); default never.
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The scopes asked for, deduplicated and in order; 422 naming the first
/// unknown one.
fn parse_scopes(asked: Option<Vec<String>>) -> ApiResult<Vec<String>> {
    let Some(asked) = asked else {
        return Ok(Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect());
    };
    let mut scopes = Vec::new();
    for (i, name) in asked.iter().enumerate() {
        let scope = Scope::parse(name).ok_or_else(|| {
            let message = format!("unknown scope `{name}`: expected read, execute or manage");
            ApiError::validation(
                format!("scopes[{i}]: {message}"),
                json!([{"path": format!("scopes[{i}]"), "message": message}]),
            )
        })?;
        scopes.push(scope);
    }
    if scopes.is_empty() {
        let message = "must name at least one of read, execute, manage";
        return Err(ApiError::validation(
            format!("scopes: {message}"),
            json!([{"path": "scopes", "message": message}]),
        ));
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes.iter().map(|s| s.as_str().to_owned()).collect())
}

/// Create a workspace API key (user tokens only). The key is in this
/// response and nowhere else: only its SHA-256 is stored.
#[utoipa::path(post, path = "/api-keys", tag = "access", operation_id = "create_api_key",
    request_body(content = CreateApiKeyRequest, example = json!({"name": "ci pipeline"})),
    responses((status = 201, description = "The key, shown this once", body = ApiKeyCreated),
              (status = 403, description = "Called with an API key: keys are managed with user tokens"),
              (status = 422, description = "Invalid name; `details.errors` lists `{path, message}`")))]
async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateApiKeyRequest>,
) -> ApiResult<Response> {
    require_user(&caller)?;
    issue_api_key(&state, &caller, body).await
}

/// Creates a key in the caller's workspace, created by the caller, and
/// audits it: 201 with the key, shown this once.
pub(super) async fn issue_api_key(
    state: &AppState,
    caller: &Caller,
    body: CreateApiKeyRequest,
) -> ApiResult<Response> {
    let name = body.name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_KEY_NAME_CHARS || name.chars().any(char::is_control) {
        let message = format!("must be 1 to {MAX_KEY_NAME_CHARS} printable characters");
        return Err(ApiError::validation(
            format!("name: {message}"),
            json!([{"path": "name", "message": message}]),
        ));
    }
    let scopes = parse_scopes(body.scopes)?;
    if body.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        let message = "must be in the future";
        return Err(ApiError::validation(
            format!("expires_at: {message}"),
            json!([{"path": "expires_at", "message": message}]),
        ));
    }
    let (key, prefix, digest) = new_api_key();
    let meta = access_store::create_api_key(
        &state.pool,
        &caller.workspace_id,
        &access_store::NewApiKey {
            name,
            prefix: &prefix,
            digest: &digest,
            created_by: &caller.actor,
            scopes: &scopes,
            expires_at: body.expires_at,
        },
    )
    .await?;
    let id = meta.id.to_string();
    audit(
        state,
        caller,
        "api_key.create",
        "api_key",
        Some(&id),
        json!({"name": meta.name, "prefix": meta.prefix, "scopes": meta.scopes, "expires_at": meta.expires_at}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": meta.id, "name": meta.name, "prefix": meta.prefix, "key": key,
            "created_by": meta.created_by, "created_at": meta.created_at,
            "scopes": meta.scopes, "expires_at": meta.expires_at,
        })),
    )
        .into_response())
}

/// List the workspace's API keys, newest first, revoked ones included
/// (metadata only: never a key).
#[utoipa::path(get, path = "/api-keys", tag = "access", operation_id = "list_api_keys",
    responses((status = 200, description = "Every key's metadata, newest first (never a key)", body = ApiKeyList)))]
async fn list_api_keys(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let items = access_store::list_api_keys(&state.pool, &caller.workspace_id).await?;
    Ok(Json(json!({ "items": items })))
}

/// Revoke an API key (user tokens only): it answers 401 from then on.
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "access", operation_id = "revoke_api_key",
    params(("id" = Uuid, Path, description = "The key")),
    responses((status = 204, description = "Revoked"),
              (status = 403, description = "Called with an API key: keys are managed with user tokens"),
              (status = 404, description = "No live key with this id in this workspace")))]
async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    require_user(&caller)?;
    withdraw_api_key(&state, &caller, id).await
}

/// Revokes a live key of the caller's workspace and audits it: 204, or
/// 404 when there is none.
pub(super) async fn withdraw_api_key(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> ApiResult<StatusCode> {
    if !access_store::revoke_api_key(&state.pool, &caller.workspace_id, id).await? {
        return Err(ApiError::not_found("API key"));
    }
    // The other API processes hear it from the database (and so would
    // this one, a moment later).
    state.api_keys.forget(id);
    audit(
        state,
        caller,
        "api_key.revoke",
        "api_key",
        Some(&id.to_string()),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Filters and pagination of `GET /audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only this action (e.g. `credential.put`).
    action: Option<String>,
    /// Only this actor (a user id or `api-key:<id>`).
    actor: Option<String>,
    /// Only this target kind (`execution`, `connector`, `credential`, ...).
    object_type: Option<String>,
    /// Only this target id.
    object_id: Option<String>,
    /// Entries at or after this time (RFC 3339).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    since: Option<DateTime<Utc>>,
    /// Entries before this time (RFC 3339).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    until: Option<DateTime<Utc>>,
    /// Entries older than this one: the previous page's `next_before_id`.
    before_id: Option<i64>,
    /// Page size (default 50, at most 200).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `json` (default: one page) or `ndjson` (every matching entry, one
    /// JSON object a line, newest first, streamed).
    #[param(schema_with = audit_format_schema)]
    format: Option<String>,
}

/// The `format` of audit listings: `json` or `ndjson`.
pub(super) fn audit_format_schema() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["json", "ndjson"]))
}

/// One page of the audit log, newest first: `{"items", "next_before_id"}`,
/// where `next_before_id` is null on the last page.
///
/// # Errors
///
/// Database errors.
async fn audit_page(
    state: &AppState,
    mut filter: AuditFilter,
    limit: i64,
) -> ApiResult<Json<Value>> {
    filter.limit = limit + 1;
    let mut items = access_store::list_audit(&state.pool, &filter).await?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > page;
    items.truncate(page);
    let next = if more {
        items.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(json!({"items": items, "next_before_id": next})))
}

/// Rows one export statement reads.
const EXPORT_PAGE: i64 = 1000;

/// The audit log per `format`: one page as JSON, or every matching entry
/// as NDJSON, read in keyset pages of [`EXPORT_PAGE`] while streaming.
///
/// # Errors
///
/// 400 for a bad limit or format; database errors.
pub(crate) async fn audit_response(
    state: &AppState,
    filter: AuditFilter,
    limit: Option<i64>,
    format: Option<&str>,
) -> ApiResult<Response> {
    // Checked whatever the format, though an export ignores it: a bad
    // parameter is refused, not passed over.
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_PAGE}"
        )));
    }
    match format {
        None | Some("json") => Ok(audit_page(state, filter, limit).await?.into_response()),
        Some("ndjson") => {
            let stream = futures_util::stream::unfold(
                Some((state.pool.clone(), filter)),
                |next| async move {
                    let (pool, mut filter) = next?;
                    filter.limit = EXPORT_PAGE;
                    match access_store::list_audit(&pool, &filter).await {
                        Ok(rows) => {
                            let mut lines = String::new();
                            for row in &rows {
                                lines.push_str(&json!(row).to_string());
                                lines.push('\n');
                            }
                            let more = rows.len() == EXPORT_PAGE as usize;
                            filter.before_id = rows.last().map(|r| r.id);
                            Some((Ok(lines), more.then_some((pool, filter))))
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the audit export stopped");
                            Some((Err(std::io::Error::other("the audit export stopped")), None))
                        }
                    }
                },
            );
            Ok((
                [(CONTENT_TYPE, "application/x-ndjson")],
                Body::from_stream(stream),
            )
                .into_response())
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid `format` `{other}`: expected json or ndjson"
        ))),
    }
}

/// The workspace's audit log, newest first: every mutating call with who,
/// what, which object and which request (never a secret); filterable by
/// actor, action, target and time, keyset-paged, exportable as NDJSON.
#[utoipa::path(get, path = "/audit", tag = "access", operation_id = "list_audit", params(AuditQuery),
    responses((status = 200, description = "One page of the workspace's audit log, newest first; with `format=ndjson` every matching entry, one a line",
               content((AuditPage = "application/json"), (conveyor_engine::store::access::AuditRow = "application/x-ndjson")))))]
async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Response> {
    let filter = AuditFilter {
        workspace_id: Some(caller.workspace_id),
        action: q.action,
        actor: q.actor,
        object_type: q.object_type,
        object_id: q.object_id,
        since: q.since,
        until: q.until,
        before_id: q.before_id,
        limit: 0,
    };
    audit_response(&state, filter, q.limit, q.format.as_deref()).await
}
