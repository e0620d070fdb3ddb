//! Cross-workspace operations views for SaaS admins (users listed by
//! `conveyor-api admin add`); everyone else gets 403. The admin routes of
//! the marketplace live with the templates.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use conveyor_engine::state::AdminRole;
use conveyor_engine::store::access::{self as access_store, AuditFilter};
use conveyor_engine::store::admin as admin_store;
use conveyor_engine::store::history::{self, Located};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::access::{audit_format_schema, audit_response};
use super::executions::{EventsQuery, cancel_execution, events_response, rerun_execution};
use super::{ExecutionPageQuery, audit, execution_page, execution_status_schema, valid_id};
use crate::AppState;
use crate::auth::{Admin, Caller, Operator, Owner};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::schemas::{AdminStats, AuditPage, ExecutionPage, WorkspaceUsage};

/// Default usage window, in days.
pub const DEFAULT_USAGE_DAYS: u32 = 30;
/// Longest usage window, in days.
pub const MAX_USAGE_DAYS: u32 = 366;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(admin_stats))
        .routes(routes!(workspace_usage))
        .routes(routes!(admin_executions))
        .routes(routes!(admin_execution))
        .routes(routes!(admin_execution_events))
        .routes(routes!(admin_cancel_execution))
        .routes(routes!(admin_rerun_execution))
        .routes(routes!(list_admins))
        .routes(routes!(put_retention))
        .routes(routes!(put_admin, delete_admin))
        .routes(routes!(admin_audit))
}

/// `?window_hours=N`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StatsQuery {
    /// Window in hours for the finished counts (default 24, at most 8760).
    #[param(minimum = 1, maximum = 8760)]
    window_hours: Option<u32>,
}

/// Queue health across workspaces: executions by status (`queued` and
/// `running` now; `succeeded`, `failed` and `cancelled` finished within
/// `window_hours`), `queue_depth` (ready to run now), `scheduled` (queued
/// for later), `oldest_ready_age_seconds`, and `workers_last_minute`
/// (distinct workers holding a lease or finishing a step in the last
/// minute).
#[utoipa::path(get, path = "/admin/stats", tag = "admin", operation_id = "admin_stats", params(StatsQuery),
    responses((status = 403, description = "Needs the admin role `viewer` or above"),
              (status = 200, description = "Queue health across workspaces", body = AdminStats)))]
async fn admin_stats(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> ApiResult<Json<Value>> {
    let hours = q.window_hours.unwrap_or(24);
    if hours == 0 || hours > 8760 {
        return Err(ApiError::bad_request(
            "window_hours must be between 1 and 8760",
        ));
    }
    let now = Utc::now();
    let since = now - chrono::Duration::hours(i64::from(hours));
    let stats = admin_store::queue_stats(&state.pool, now, since).await?;
    let mut body = serde_json::to_value(&stats).map_err(|e| ApiError::internal(&e))?;
    body["at"] = json!(now);
    body["window_hours"] = json!(hours);
    body["finished_since"] = json!(since);
    Ok(Json(body))
}

/// `?days=N`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// Days counted back from today, today included (UTC; default 30, at
    /// most 366).
    #[param(minimum = 1, maximum = 366)]
    days: Option<u32>,
}

/// One workspace's usage: executions created per UTC day (every day of
/// the window, zeros included) and per connector with its failure rate
/// (failed / (succeeded + failed)), most used first.
#[utoipa::path(get, path = "/admin/workspaces/{id}/usage", tag = "admin", operation_id = "admin_workspace_usage",
    params(("id" = String, Path, description = "The workspace id: 1 to 128 printable characters", min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"), UsageQuery),
    responses((status = 403, description = "Needs the admin role `viewer` or above"),
              (status = 200, description = "Executions per day and per connector", body = WorkspaceUsage),
              (status = 404, description = "No such workspace"),
              (status = 422, description = "`id` is not a valid workspace id")))]
async fn workspace_usage(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Json<Value>> {
    valid_id("id", "workspace", &id)?;
    let days = q.days.unwrap_or(DEFAULT_USAGE_DAYS);
    if days == 0 || days > MAX_USAGE_DAYS {
        return Err(ApiError::bad_request(format!(
            "days must be between 1 and {MAX_USAGE_DAYS}"
        )));
    }
    if !admin_store::workspace_exists(&state.pool, &id).await? {
        return Err(ApiError::not_found("workspace"));
    }
    let today = Utc::now().date_naive();
    let first = today - chrono::Days::new(u64::from(days - 1));
    let since = first.and_time(chrono::NaiveTime::MIN).and_utc();
    let days_i32 = i32::try_from(days).map_err(|e| ApiError::internal(&e))?;
    let (per_day, per_connector) =
        admin_store::workspace_usage(&state.pool, &id, since, days_i32).await?;
    let total: i64 = per_day.iter().map(|d| d.total).sum();
    let failed: i64 = per_day.iter().map(|d| d.failed).sum();
    let succeeded: i64 = per_day.iter().map(|d| d.succeeded).sum();
    let failure_rate =
        (succeeded + failed > 0).then(|| failed as f64 / (succeeded + failed) as f64);
    Ok(Json(json!({
        "workspace_id": id, "days": days, "since": since,
        "total": total, "succeeded": succeeded, "failed": failed, "failure_rate": failure_rate,
        "per_day": per_day, "per_connector": per_connector,
    })))
}

/// Filters and pagination of the cross-workspace execution listing: those
/// of `/executions`, plus `workspace_id`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AdminExecutionQuery {
    /// Only this workspace.
    workspace_id: Option<String>,
    /// Only this status.
    #[param(schema_with = execution_status_schema)]
    status: Option<String>,
    /// Only this connector.
    connector_id: Option<Uuid>,
    /// Created at or after (RFC 3339).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    created_after: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    created_before: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Page size (default 50, at most 200).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// Executions of every workspace, newest first, with the filters of
/// `/executions` (and `workspace_id`) and a cursor.
#[utoipa::path(get, path = "/admin/executions", tag = "admin", operation_id = "admin_list_executions", params(AdminExecutionQuery),
    responses((status = 403, description = "Needs the admin role `viewer` or above"),
              (status = 200, description = "One page of every workspace's executions, newest first", body = ExecutionPage)))]
async fn admin_executions(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AdminExecutionQuery>,
) -> ApiResult<Json<Value>> {
    let page = ExecutionPageQuery {
        status: q.status,
        connector_id: q.connector_id,
        created_after: q.created_after,
        created_before: q.created_before,
        cursor: q.cursor,
        limit: q.limit,
    };
    execution_page(&state, q.workspace_id, page).await
}

async fn locate(state: &AppState, id: Uuid) -> ApiResult<Located> {
    history::locate(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("execution"))
}

/// One execution of any workspace: the execution (with its
/// `workspace_id` and `started_by`), `trace_id` (of the request that
/// enqueued it, when traced), every attempt of every step, and the stored
/// events.
#[utoipa::path(get, path = "/admin/executions/{id}", tag = "admin", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The execution with `trace_id`, `steps` and `events`", body = Object),
              (status = 400), (status = 403, description = "Needs the admin role `viewer` or above"), (status = 404)))]
async fn admin_execution(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Value>> {
    let found = locate(&state, id).await?;
    let ws = &found.workspace_id;
    let execution = history::get(&state.pool, ws, id)
        .await?
        .ok_or_else(|| ApiError::not_found("execution"))?;
    let steps = history::steps(&state.pool, ws, id).await?;
    let events = history::events(&state.pool, ws, id, 0).await?;
    let mut body = serde_json::to_value(&execution).map_err(|e| ApiError::internal(&e))?;
    body["trace_id"] = json!(found.trace_id);
    body["steps"] = serde_json::to_value(&steps).map_err(|e| ApiError::internal(&e))?;
    body["events"] = serde_json::to_value(&events).map_err(|e| ApiError::internal(&e))?;
    Ok(Json(body))
}

/// The event log of one execution of any workspace, as
/// `/executions/{id}/events` serves it: Server-Sent Events by default,
/// the stored list with `?format=json`.
#[utoipa::path(get, path = "/admin/executions/{id}/events", tag = "admin", params(("id" = Uuid, Path), EventsQuery),
    responses((status = 200, description = "A Server-Sent-Events stream of the execution's events; with `?format=json` the stored list",
               content((crate::schemas::ExecutionEvent = "text/event-stream"), (crate::schemas::EventList = "application/json"))),
              (status = 400), (status = 403, description = "Needs the admin role `viewer` or above"), (status = 404)))]
async fn admin_execution_events(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    let found = locate(&state, id).await?;
    events_response(state, found.workspace_id, id, q).await
}

/// The admin acting in the execution's workspace, so the tenant's own
/// audit log shows what an operator did to its execution.
fn acting_in(admin: Caller, found: Located) -> Caller {
    Caller {
        workspace_id: found.workspace_id,
        ..admin
    }
}

/// Cancel any workspace's execution, as `/executions/{id}/cancel` does;
/// audited in that workspace with the operator as actor.
#[utoipa::path(post, path = "/admin/executions/{id}/cancel", tag = "admin", params(("id" = Uuid, Path)),
    responses((status = 200, description = "Cancelled, or already finished (nothing changed)", body = Object),
              (status = 202, description = "Cancellation requested", body = Object),
              (status = 403, description = "Needs the admin role `operator` or above"), (status = 404)))]
async fn admin_cancel_execution(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Response> {
    let found = locate(&state, id).await?;
    cancel_execution(State(state), acting_in(caller, found), ApiPath(id)).await
}

/// Re-run any workspace's execution, as `/executions/{id}/rerun` does;
/// audited in that workspace with the operator as actor.
#[utoipa::path(post, path = "/admin/executions/{id}/rerun", tag = "admin", params(("id" = Uuid, Path)),
    responses((status = 202, description = "The new execution", body = Object),
              (status = 403, description = "Needs the admin role `operator` or above"), (status = 404)))]
async fn admin_rerun_execution(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Response> {
    let found = locate(&state, id).await?;
    rerun_execution(State(state), acting_in(caller, found), ApiPath(id)).await
}

/// Every SaaS admin with their `role` and since when.
#[utoipa::path(get, path = "/admin/admins", tag = "admin",
    responses((status = 200, description = "`items`", body = Object),
              (status = 403, description = "Needs the admin role `owner`")))]
async fn list_admins(State(state): State<AppState>, _owner: Owner) -> ApiResult<Json<Value>> {
    let items = access_store::list_admins(&state.pool).await?;
    Ok(Json(json!({ "items": items })))
}

/// The body of `PUT /admin/admins/{user_id}`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    /// `viewer`, `operator` or `owner`.
    #[schema(pattern = "^(viewer|operator|owner)$", example = "operator")]
    role: String,
}

/// An owner may not change or remove their own entry: the last owner
/// would otherwise be able to lock everyone out.
fn not_self(caller: &Caller, user_id: &str) -> ApiResult<()> {
    if caller.user_id.as_deref() == Some(user_id) {
        return Err(ApiError::conflict(
            "an owner cannot change or remove their own admin entry; ask another owner",
        ));
    }
    Ok(())
}

/// Make a user an admin with `role`, or change an admin's role: 201 when
/// new, 200 when changed.
#[utoipa::path(put, path = "/admin/admins/{user_id}", tag = "admin",
    params(("user_id" = String, Path, description = "The user id (a token's `sub`): 1 to 128 printable characters", min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$")), request_body = AdminBody,
    responses((status = 200, description = "Role changed", body = Object), (status = 201, description = "Added", body = Object),
              (status = 403, description = "Needs the admin role `owner`"),
              (status = 409, description = "Your own entry"), (status = 422, description = "`role` or `user_id` is invalid")))]
async fn put_admin(
    State(state): State<AppState>,
    Owner(caller): Owner,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<AdminBody>,
) -> ApiResult<Response> {
    let Ok(role) = body.role.parse::<AdminRole>() else {
        let message = "must be one of viewer, operator, owner";
        return Err(ApiError::validation(
            format!("role: {message}"),
            json!([{"path": "role", "message": message}]),
        ));
    };
    valid_id("user_id", "user", &user_id)?;
    not_self(&caller, &user_id)?;
    let before = access_store::set_admin_role(&state.pool, &user_id, role).await?;
    audit(
        &state,
        &caller,
        "admin.put",
        "admin",
        Some(&user_id),
        json!({"role": role, "previous_role": before}),
    )
    .await;
    let status = if before.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!({"user_id": user_id, "role": role}))).into_response())
}

/// Remove a user from the admins.
#[utoipa::path(delete, path = "/admin/admins/{user_id}", tag = "admin",
    params(("user_id" = String, Path, description = "The user id: 1 to 128 printable characters", min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$")),
    responses((status = 204), (status = 403, description = "Needs the admin role `owner`"),
              (status = 404, description = "Not an admin"), (status = 409, description = "Your own entry"),
              (status = 422, description = "`user_id` is not a valid user id")))]
async fn delete_admin(
    State(state): State<AppState>,
    Owner(caller): Owner,
    ApiPath(user_id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    valid_id("user_id", "user", &user_id)?;
    not_self(&caller, &user_id)?;
    if !access_store::remove_admin(&state.pool, &user_id).await? {
        return Err(ApiError::not_found("admin"));
    }
    audit(
        &state,
        &caller,
        "admin.delete",
        "admin",
        Some(&user_id),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `PUT /admin/workspaces/{id}/retention`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    /// `free` (90 days), `pro` (365 days), `custom` (with
    /// `retention_days`), or null for the global default.
    #[schema(pattern = "^(free|pro|custom)$")]
    plan: Option<String>,
    /// Days to keep finished executions, 1 to 3650; only with `custom`.
    #[schema(minimum = 1, maximum = 3650)]
    retention_days: Option<i32>,
}

/// Set how long a workspace's finished executions are kept: a plan (`free`
/// 90 days, `pro` 365), `custom` days, or null for the worker's
/// `CONVEYOR_RETENTION_DAYS`. The worker's retention loop applies it.
#[utoipa::path(put, path = "/admin/workspaces/{id}/retention", tag = "admin",
    params(("id" = String, Path, description = "The workspace id: 1 to 128 printable characters", min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$")), request_body = RetentionBody,
    responses((status = 200, description = "`workspace_id`, `plan`, `retention_days` (the effective days, null for the default)", body = Object),
              (status = 403, description = "Needs the admin role `operator` or above"),
              (status = 422, description = "`id`, `plan` or `retention_days` is invalid")))]
async fn put_retention(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RetentionBody>,
) -> ApiResult<Json<Value>> {
    let invalid = |path: &str, message: &str| {
        ApiError::validation(
            format!("{path}: {message}"),
            json!([{"path": path, "message": message}]),
        )
    };
    let days = match (body.plan.as_deref(), body.retention_days) {
        (Some("custom"), Some(days)) if (1..=3650).contains(&days) => Some(days),
        (Some("custom"), _) => {
            return Err(invalid(
                "retention_days",
                "must be 1 to 3650 with plan custom",
            ));
        }
        (_, Some(_)) => {
            return Err(invalid("retention_days", "only goes with plan custom"));
        }
        (Some("free"), None) => Some(90),
        (Some("pro"), None) => Some(365),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid("plan", "must be free, pro, custom or null"));
        }
    };
    valid_id("id", "workspace", &id)?;
    admin_store::set_retention(&state.pool, &id, body.plan.as_deref(), body.retention_days).await?;
    audit(
        &state,
        &caller,
        "workspace.retention",
        "workspace",
        Some(&id),
        json!({"plan": body.plan, "retention_days": days}),
    )
    .await;
    Ok(Json(
        json!({"workspace_id": id, "plan": body.plan, "retention_days": days}),
    ))
}

/// Filters and pagination of `GET /admin/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AdminAuditQuery {
    /// Only this workspace.
    workspace_id: Option<String>,
    /// Only this action (e.g. `api_key.create`).
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

/// The audit log of every workspace (and of global admin actions), newest
/// first.
#[utoipa::path(get, path = "/admin/audit", tag = "admin", operation_id = "admin_list_audit", params(AdminAuditQuery),
    responses((status = 403, description = "Needs the admin role `viewer` or above"),
              (status = 200, description = "One page of every audit entry, newest first; with `format=ndjson` every matching entry, one a line",
               content((AuditPage = "application/json"), (conveyor_engine::store::access::AuditRow = "application/x-ndjson")))))]
async fn admin_audit(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AdminAuditQuery>,
) -> ApiResult<Response> {
    let filter = AuditFilter {
        workspace_id: q.workspace_id,
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
