//! Route groups, each an `OpenApiRouter` so the OpenAPI document is built
//! from the handlers themselves, and what they share.

pub mod access;
pub mod admin;
pub mod connectors;
pub mod credentials;
pub mod executions;
pub mod hooks;
pub mod oauth;
pub mod ops;
pub mod schedules;
pub mod subscriptions;
pub mod templates;
pub mod triggers;
pub mod usage;
pub mod webhooks;
pub mod workspaces;

use axum::Json;
use chrono::{DateTime, Utc};
use conveyor_engine::state::ExecutionStatus;
use conveyor_engine::store::access::{self as access_store, AuditEntry};
use conveyor_engine::store::history::{self, ExecutionFilter};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, check_id};
use crate::error::{ApiError, ApiResult};
use crate::extract::Cursor;

/// Default page size of listings.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page size of listings.
pub const MAX_PAGE: i64 = 200;

/// 422 naming `field` unless `id` is a valid `what` (workspace, user) id:
/// 1 to 128 printable characters ([`check_id`]).
pub(crate) fn valid_id(field: &str, what: &str, id: &str) -> ApiResult<()> {
    check_id(what, id).map_err(|message| {
        ApiError::validation(
            format!("{field}: {message}"),
            json!([{"path": field, "message": message}]),
        )
    })
}

/// `caller`'s audit entry of `action` on an object (kind, id).
pub(crate) fn audit_entry<'a>(
    caller: &'a Caller,
    action: &'a str,
    (object_type, object_id): (&'a str, Option<&'a str>),
    details: Value,
) -> AuditEntry<'a> {
    AuditEntry {
        workspace_id: Some(&caller.workspace_id),
        actor: &caller.actor,
        action,
        object_type,
        object_id,
        request_id: caller.request_id.as_deref(),
        details,
    }
}

/// Records an audit entry for a successful mutation. The mutation has
/// happened, so a failure here is logged rather than turned into an error.
pub async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &str,
    object_type: &str,
    object_id: Option<&str>,
    details: Value,
) {
    let entry = audit_entry(caller, action, (object_type, object_id), details);
    if let Err(e) = access_store::audit(&state.pool, &entry).await {
        tracing::error!(error = %e, action, "could not write the audit entry");
    }
}

/// Filters and pagination of execution listings.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExecutionPageQuery {
    /// Only this status.
    #[param(schema_with = execution_status_schema)]
    pub status: Option<String>,
    /// Only this connector.
    pub connector_id: Option<Uuid>,
    /// Created at or after (RFC 3339).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    pub created_after: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    pub created_before: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    /// Page size (default 50, at most 200).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// The `status` filter of execution listings: one of the execution
/// statuses.
pub fn execution_status_schema() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(ExecutionStatus::ALL.iter().map(|s| s.as_str())))
}

/// One page of executions, newest first, with the cursor of the next page.
///
/// # Errors
///
/// 400 for a bad status, limit or cursor; database errors.
pub async fn execution_page(
    state: &AppState,
    workspace_id: Option<String>,
    q: ExecutionPageQuery,
) -> ApiResult<Json<Value>> {
    let status = q
        .status
        .as_deref()
        .map(str::parse::<ExecutionStatus>)
        .transpose()
        .map_err(|e| {
            ApiError::bad_request(format!(
                "invalid `status` `{}`: expected one of {}",
                e.value, e.expected
            ))
        })?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_PAGE}"
        )));
    }
    let cursor = q.cursor.as_deref().map(Cursor::decode).transpose()?;
    let filter = ExecutionFilter {
        workspace_id,
        status,
        connector_id: q.connector_id,
        created_after: q.created_after,
        created_before: q.created_before,
        cursor: cursor.map(|c| (c.created_at, c.id)),
        limit: limit + 1,
    };
    let mut items = history::list_executions(&state.pool, &filter).await?;
    let more = items.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = if more {
        items.last().map(|e| {
            Cursor {
                created_at: e.created_at,
                id: e.id,
            }
            .encode()
        })
    } else {
        None
    };
    Ok(Json(json!({"items": items, "next_cursor": next})))
}
