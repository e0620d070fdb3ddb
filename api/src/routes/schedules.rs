//! Cron schedules of a connector: create, list, read (with the next five
//! fire times and the recent ticks), update, pause, resume, delete. The
//! ticks themselves are fired by the workers' scheduler loop.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use conveyor_engine::connector::Connector;
use conveyor_engine::schedule::{CronSchedule, UPCOMING};
use conveyor_engine::store::schedules::{self, Overlap, Schedule, ScheduleSpec, Tick};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::audit;
use super::connectors::live_connector;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};

/// Recent ticks shown with a schedule.
const RECENT_TICKS: i64 = 20;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_schedule, list_schedules))
        .routes(routes!(get_schedule, update_schedule, delete_schedule))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
}

/// The body of `POST /connectors/{id}/schedules`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateScheduleRequest {
    /// 5 fields (`minute hour day-of-month month day-of-week`), 6 with
    /// seconds first, or `@yearly`, `@monthly`, `@weekly`, `@daily`,
    /// `@hourly`.
    #[schema(min_length = 1, max_length = 200)]
    cron: String,
    /// IANA time zone the expression is read in (default `UTC`).
    #[schema(min_length = 1, max_length = 64)]
    timezone: Option<String>,
    /// Input of every execution (default `{}`), checked against the
    /// connector's `input_schema`.
    input: Option<Value>,
    /// When the previous run is still queued or running: `skip` (default),
    /// `allow`, or `queue_one`.
    overlap: Option<Overlap>,
    /// No tick after this time.
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    end_at: Option<DateTime<Utc>>,
}

/// The body of `PATCH /schedules/{id}`: any of the fields to change.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateScheduleRequest {
    /// New cron expression.
    #[schema(min_length = 1, max_length = 200)]
    cron: Option<String>,
    /// New time zone.
    #[schema(min_length = 1, max_length = 64)]
    timezone: Option<String>,
    /// New input.
    input: Option<Value>,
    /// New overlap policy.
    overlap: Option<Overlap>,
    /// New end (`null` removes it).
    #[serde(default, deserialize_with = "present_time")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    end_at: Option<Option<DateTime<Utc>>>,
    /// Pause (`true`) or resume (`false`).
    paused: Option<bool>,
}

/// A field that is present (possibly `null`), as opposed to absent.
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// [`present`] for a time, bounded as [`crate::extract::bounded`] bounds
/// one.
fn present_time<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<DateTime<Utc>>>, D::Error> {
    crate::extract::bounded(d).map(Some)
}

/// A schedule as shown.
#[derive(Debug, Serialize, ToSchema)]
struct ScheduleView {
    #[serde(flatten)]
    schedule: Schedule,
    /// The next five fire times (none when paused or ended).
    next_fire_times: Vec<DateTime<Utc>>,
    /// The most recent ticks, newest first (on `GET /schedules/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    recent_ticks: Option<Vec<Tick>>,
}

/// A connector's schedules.
#[derive(Debug, Serialize, ToSchema)]
struct ScheduleList {
    items: Vec<ScheduleView>,
}

fn view(schedule: Schedule, recent_ticks: Option<Vec<Tick>>) -> ScheduleView {
    let next_fire_times = match (&schedule.next_fire_at, schedule.paused) {
        (Some(next), false) => CronSchedule::parse(&schedule.cron, &schedule.timezone)
            .map(|c| {
                let mut times = vec![*next];
                let after = next.to_owned();
                times.extend(c.upcoming(after, UPCOMING - 1, schedule.end_at));
                times
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    ScheduleView {
        schedule,
        next_fire_times,
        recent_ticks,
    }
}

/// The connector a changed spec is checked against: id, version,
/// definition. Pause and resume change no field and check none.
type Against<'a> = Option<(Uuid, i32, &'a Connector)>;

/// Parses and checks a spec (its input and end only `against` a
/// connector); every problem names its field. The next tick after `now`.
fn check(
    state: &AppState,
    against: Against<'_>,
    spec: &ScheduleSpec,
    now: DateTime<Utc>,
) -> ApiResult<Option<DateTime<Utc>>> {
    let mut errors = Vec::new();
    let calc = CronSchedule::parse(&spec.cron, &spec.timezone)
        .map_err(|e| errors.extend(e.into_iter().map(|e| json!(e))))
        .ok();
    if let Some((id, version, connector)) = against {
        if let Err(e) = state
            .starter
            .check_input(id, version, connector, &spec.input, "input")
        {
            errors.extend(e.into_iter().map(|e| json!(e)));
        }
        if spec.end_at.is_some_and(|end| end <= now) {
            errors.push(json!({"path": "end_at", "message": "must be in the future"}));
        }
    }
    let Some(calc) = calc.filter(|_| errors.is_empty()) else {
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
            format!("invalid schedule: {first}"),
            Value::Array(errors),
        ));
    };
    Ok(calc
        .next_after(now)
        .filter(|t| spec.end_at.is_none_or(|end| *t <= end)))
}

/// Create a cron schedule that starts this connector (its latest version
/// at each tick) with a fixed input. `started_by` of its executions is
/// `schedule:<id>`.
#[utoipa::path(post, path = "/connectors/{id}/schedules", tag = "schedules", operation_id = "create_schedule",
    params(("id" = Uuid, Path, description = "The connector")),
    request_body(content = CreateScheduleRequest, example = json!({"cron": "0 9 * * MON-FRI", "timezone": "Europe/Paris", "input": {}, "overlap": "skip"})),
    responses((status = 201, description = "Created: the schedule with `next_fire_times`", body = ScheduleView),
              (status = 404, description = "No such live connector in this workspace"),
              (status = 422, description = "Invalid cron, timezone, input, overlap or end_at; `details.errors` names each field")))]
async fn create_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CreateScheduleRequest>,
) -> ApiResult<Response> {
    let (found, definition) = live_connector(&state, &caller, id).await?;
    let spec = ScheduleSpec {
        // Stored as checked: the length limit applies to the trimmed
        // expression, and so does the table's CHECK.
        cron: body.cron.trim().to_owned(),
        timezone: body.timezone.unwrap_or_else(|| "UTC".to_owned()),
        input: body.input.unwrap_or_else(|| json!({})),
        overlap: body.overlap.unwrap_or(Overlap::Skip),
        end_at: body.end_at,
    };
    // The scheduler's clock, so that this process's clock cannot skip or
    // repeat a tick.
    let now = schedules::database_now(&state.pool).await?;
    let next = check(&state, Some((id, found.version, &definition)), &spec, now)?;
    let schedule =
        schedules::create(&state.pool, &caller.workspace_id, id, &spec, next, now).await?;
    audit(
        &state,
        &caller,
        "schedule.create",
        "schedule",
        Some(&schedule.id.to_string()),
        json!({"connector_id": id, "cron": spec.cron, "timezone": spec.timezone}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view(schedule, None))).into_response())
}

/// The connector's schedules, oldest first.
#[utoipa::path(get, path = "/connectors/{id}/schedules", tag = "schedules", operation_id = "list_schedules",
    params(("id" = Uuid, Path, description = "The connector")),
    responses((status = 200, description = "The connector's schedules", body = ScheduleList),
              (status = 404, description = "No such live connector in this workspace")))]
async fn list_schedules(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<ScheduleList>> {
    live_connector(&state, &caller, id).await?;
    let items = schedules::list(&state.pool, &caller.workspace_id, id)
        .await?
        .into_iter()
        .map(|s| view(s, None))
        .collect();
    Ok(Json(ScheduleList { items }))
}

async fn find(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<Schedule> {
    schedules::get(&state.pool, &caller.workspace_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("schedule"))
}

/// A schedule with its next five fire times and its recent ticks (each
/// `started` with its execution, `skipped` or `queued` by the overlap
/// policy, or `failed` with the reason).
#[utoipa::path(get, path = "/schedules/{id}", tag = "schedules", operation_id = "get_schedule",
    params(("id" = Uuid, Path, description = "The schedule")),
    responses((status = 200, description = "The schedule, `next_fire_times` and `recent_ticks`", body = ScheduleView),
              (status = 404, description = "No such schedule in this workspace")))]
async fn get_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<ScheduleView>> {
    let schedule = find(&state, &caller, id).await?;
    let ticks = schedules::ticks(&state.pool, id, RECENT_TICKS).await?;
    Ok(Json(view(schedule, Some(ticks))))
}

/// Change a schedule: any of its fields, or pause it. The next tick stays
/// as it was, even one due but not yet fired, unless `cron` or `timezone`
/// changes or a paused schedule is resumed: then it is the first tick
/// after now (missed ticks are not replayed). An `end_at` before it ends
/// the schedule.
#[utoipa::path(patch, path = "/schedules/{id}", tag = "schedules", operation_id = "update_schedule",
    params(("id" = Uuid, Path, description = "The schedule")),
    request_body(content = UpdateScheduleRequest, example = json!({"cron": "*/30 * * * *", "overlap": "queue_one"})),
    responses((status = 200, description = "The updated schedule", body = ScheduleView),
              (status = 404, description = "No such schedule in this workspace, or its connector was deleted"),
              (status = 422, description = "Invalid fields; `details.errors` names each one")))]
async fn update_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateScheduleRequest>,
) -> ApiResult<Json<ScheduleView>> {
    let old = find(&state, &caller, id).await?;
    let paused = body.paused;
    let spec = ScheduleSpec {
        cron: body.cron.map_or(old.cron, |c| c.trim().to_owned()),
        timezone: body.timezone.unwrap_or(old.timezone),
        input: body.input.unwrap_or(old.input),
        overlap: body.overlap.unwrap_or(old.overlap),
        end_at: body.end_at.unwrap_or(old.end_at),
    };
    let (found, definition) = live_connector(&state, &caller, old.connector_id).await?;
    let against = Some((old.connector_id, found.version, &definition));
    save(
        &state,
        &caller,
        id,
        &spec,
        (against, paused),
        "schedule.update",
    )
    .await
}

async fn save(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    spec: &ScheduleSpec,
    (against, paused): (Against<'_>, Option<bool>),
    action: &str,
) -> ApiResult<Json<ScheduleView>> {
    let now = schedules::database_now(&state.pool).await?;
    let next = check(state, against, spec, now)?;
    let schedule = schedules::update(
        &state.pool,
        &caller.workspace_id,
        id,
        spec,
        paused,
        next,
        now,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("schedule"))?;
    audit(
        state,
        caller,
        action,
        "schedule",
        Some(&id.to_string()),
        json!({"paused": schedule.paused}),
    )
    .await;
    Ok(Json(view(schedule, None)))
}

/// Pause a schedule: no tick fires until it is resumed, not even one that
/// is due but not yet fired.
#[utoipa::path(post, path = "/schedules/{id}/pause", tag = "schedules", operation_id = "pause_schedule",
    params(("id" = Uuid, Path, description = "The schedule")),
    responses((status = 200, description = "The paused schedule", body = ScheduleView),
              (status = 404, description = "No such schedule in this workspace")))]
async fn pause_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<ScheduleView>> {
    set_paused(&state, &caller, id, true).await
}

/// Resume a schedule from now: ticks missed while paused are not replayed
/// (nor one that was due but not yet fired when it was paused). Resuming
/// a schedule that is not paused changes nothing.
#[utoipa::path(post, path = "/schedules/{id}/resume", tag = "schedules", operation_id = "resume_schedule",
    params(("id" = Uuid, Path, description = "The schedule")),
    responses((status = 200, description = "The resumed schedule with its `next_fire_times`", body = ScheduleView),
              (status = 404, description = "No such schedule in this workspace")))]
async fn resume_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<ScheduleView>> {
    set_paused(&state, &caller, id, false).await
}

async fn set_paused(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    paused: bool,
) -> ApiResult<Json<ScheduleView>> {
    let old = find(state, caller, id).await?;
    let spec = ScheduleSpec {
        cron: old.cron,
        timezone: old.timezone,
        input: old.input,
        overlap: old.overlap,
        end_at: old.end_at,
    };
    let action = if paused {
        "schedule.pause"
    } else {
        "schedule.resume"
    };
    save(state, caller, id, &spec, (None, Some(paused)), action).await
}

/// Delete a schedule and its tick records; executions it started remain.
#[utoipa::path(delete, path = "/schedules/{id}", tag = "schedules", operation_id = "delete_schedule",
    params(("id" = Uuid, Path, description = "The schedule")),
    responses((status = 204, description = "Deleted"),
              (status = 404, description = "No such schedule in this workspace")))]
async fn delete_schedule(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    if !schedules::delete(&state.pool, &caller.workspace_id, id).await? {
        return Err(ApiError::not_found("schedule"));
    }
    audit(
        &state,
        &caller,
        "schedule.delete",
        "schedule",
        Some(&id.to_string()),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
