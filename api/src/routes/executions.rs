//! Execution history, cancel, re-run, and live updates over SSE.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use conveyor_engine::start::StartError;
use conveyor_engine::state::{ExecutionStatus, StartedBy};
use conveyor_engine::store::executions::{self, CancelOutcome, NewExecution};
use conveyor_engine::store::history;
use conveyor_engine::store::history::ExecutionView;
use futures_util::stream::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ExecutionPageQuery, audit, execution_page};
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::ratelimit::StreamSlot;
use crate::schemas::{CancelResult, EventList, ExecutionDetail, ExecutionEvent, ExecutionPage};

/// How long a watcher row lives without renewal (renewed while streaming).
const WATCH_TTL: Duration = Duration::from_secs(120);

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_executions))
        .routes(routes!(get_execution))
        .routes(routes!(cancel_execution))
        .routes(routes!(rerun_execution))
        .routes(routes!(execution_events))
}

async fn find(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<ExecutionView> {
    history::get(&state.pool, &caller.workspace_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("execution"))
}

/// The workspace's executions, newest first, with filters and a cursor.
#[utoipa::path(get, path = "/executions", tag = "executions", operation_id = "list_executions", params(ExecutionPageQuery),
    responses((status = 200, description = "One page of the workspace's executions, newest first", body = ExecutionPage)))]
async fn list_executions(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ExecutionPageQuery>,
) -> ApiResult<Json<Value>> {
    execution_page(&state, Some(caller.workspace_id), q).await
}

/// One execution with every attempt of every step.
#[utoipa::path(get, path = "/executions/{id}", tag = "executions", operation_id = "get_execution",
    params(("id" = Uuid, Path, description = "The execution")),
    responses((status = 200, description = "The execution and its `steps`", body = ExecutionDetail),
              (status = 404, description = "No such execution in this workspace")))]
async fn get_execution(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Value>> {
    let execution = find(&state, &caller, id).await?;
    let steps = history::steps(&state.pool, &caller.workspace_id, id).await?;
    let mut body = serde_json::to_value(&execution).map_err(|e| ApiError::internal(&e))?;
    body["steps"] = serde_json::to_value(&steps).map_err(|e| ApiError::internal(&e))?;
    if let Some(waiting) = execution.waiting_for(Utc::now()) {
        body["waiting_for"] = serde_json::to_value(waiting).map_err(|e| ApiError::internal(&e))?;
    }
    Ok(Json(body))
}

/// Cancel: a queued execution ends at once; a running one stops at the next
/// step boundary at the latest; a finished one is left as it is.
#[utoipa::path(post, path = "/executions/{id}/cancel", tag = "executions", operation_id = "cancel_execution",
    params(("id" = Uuid, Path, description = "The execution")),
    responses((status = 200, description = "Cancelled (it was queued), or already finished (nothing changed)", body = CancelResult,
               example = json!({"id": "0193a4a8-7c1e-7d2a-9b51-2f4f0b1c9e77", "status": "cancelled", "message": "cancelled"})),
              (status = 202, description = "Cancellation requested; the worker stops at the next step boundary at the latest", body = CancelResult),
              (status = 404, description = "No such execution in this workspace")))]
pub(crate) async fn cancel_execution(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Response> {
    let outcome = executions::cancel(&state.pool, &caller.workspace_id, id, Utc::now()).await?;
    let (status, body) = match outcome {
        CancelOutcome::NotFound => return Err(ApiError::not_found("execution")),
        CancelOutcome::Cancelled => (
            StatusCode::OK,
            json!({"id": id, "status": "cancelled", "message": "cancelled"}),
        ),
        CancelOutcome::Requested => (
            StatusCode::ACCEPTED,
            json!({"id": id, "status": "running", "message": "cancellation requested; it stops at the next step boundary at the latest"}),
        ),
        CancelOutcome::AlreadyFinished(s) => (
            StatusCode::OK,
            json!({"id": id, "status": s, "message": format!("already {s}; nothing changed")}),
        ),
    };
    if status == StatusCode::ACCEPTED || body["message"] == json!("cancelled") {
        audit(
            &state,
            &caller,
            "execution.cancel",
            "execution",
            Some(&id.to_string()),
            json!({}),
        )
        .await;
    }
    Ok((status, Json(body)).into_response())
}

/// Run again: a new execution of the same connector version and input,
/// linked to the original by `rerun_of`.
#[utoipa::path(post, path = "/executions/{id}/rerun", tag = "executions", operation_id = "rerun_execution",
    params(("id" = Uuid, Path, description = "The execution to run again")),
    responses((status = 202, description = "The new execution (`rerun_of` names the original)", body = ExecutionView),
              (status = 404, description = "No such execution in this workspace")))]
pub(crate) async fn rerun_execution(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Response> {
    let original = find(&state, &caller, id).await?;
    let new = NewExecution {
        workspace_id: caller.workspace_id.clone(),
        connector_id: original.connector_id,
        connector_version: original.connector_version,
        input: original.input,
        idempotency_key: None,
        priority: original.priority,
        run_at: None,
        rerun_of: Some(id),
        trace_context: conveyor_engine::telemetry::current_context(),
        started_by: StartedBy::RerunOf(id),
        callback_url: None,
    };
    let enqueued = state
        .starter
        .start_one(&state.pool, &new, Utc::now())
        .await
        .map_err(|e| match e {
            StartError::Store(e) => ApiError::from(e),
            e @ StartError::ReusedKey { .. } => ApiError::internal(&e),
        })?;
    audit(
        &state,
        &caller,
        "execution.rerun",
        "execution",
        Some(&enqueued.id.to_string()),
        json!({"rerun_of": id}),
    )
    .await;
    let view = find(&state, &caller, enqueued.id).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// `?format=json` returns the stored event list instead of a stream.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// `json` for the stored list; default: a Server-Sent-Events stream.
    #[param(schema_with = events_format_schema)]
    format: Option<String>,
}

fn events_format_schema() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["json"]))
}

/// The execution's event log. As Server-Sent Events (the default) it
/// replays every stored event first, then streams live ones, each as an SSE
/// event named by its kind (`enqueued`, `claimed`, `step_started`,
/// `step_finished`, `retry_scheduled`, `lease_lost`, `released`, `parked`,
/// `cancel_requested`, `cancelled`, `finished`), plus a `status` event per
/// status change; the stream ends after the final status. Live updates are
/// driven by LISTEN/NOTIFY, not by polling.
#[utoipa::path(get, path = "/executions/{id}/events", tag = "executions", operation_id = "get_execution_events",
    params(("id" = Uuid, Path, description = "The execution"), EventsQuery),
    responses((status = 200, description = "A Server-Sent-Events stream (each event's data is an event row, or for `status` events `{id, status, output, error}`); with `?format=json` the stored list",
               content((ExecutionEvent = "text/event-stream"), (EventList = "application/json"))),
              (status = 404, description = "No such execution in this workspace")))]
async fn execution_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    find(&state, &caller, id).await?;
    events_response(state, caller.workspace_id, id, q).await
}

/// The event log of execution `id` of workspace `ws` (known to exist), as
/// the stored list or a stream per `q`.
pub(crate) async fn events_response(
    state: AppState,
    ws: String,
    id: Uuid,
    q: EventsQuery,
) -> ApiResult<Response> {
    match q.format.as_deref() {
        Some("json") => {
            let items = history::events(&state.pool, &ws, id, 0).await?;
            return Ok(Json(json!({"items": items})).into_response());
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid `format` `{other}`: expected json"
            )));
        }
        None => {}
    }
    let slot = stream_slot(&state, &ws)?;
    let watcher = Uuid::now_v7();
    // Subscribe before reading so no change between the read and the
    // subscription is missed.
    let rx = state.events.subscribe();
    history::watch(&state.pool, &ws, id, watcher, Utc::now() + WATCH_TTL).await?;
    let stream = event_stream(state, ws, id, (watcher, slot), rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One of workspace `ws`'s event-stream slots (its open streams are
/// capped by `CONVEYOR_MAX_STREAMS_PER_WORKSPACE`).
///
/// # Errors
///
/// 429 `too_many_streams` when the workspace holds them all.
pub(crate) fn stream_slot(state: &AppState, ws: &str) -> ApiResult<StreamSlot> {
    let max = state.config.max_streams_per_workspace;
    state.streams.acquire(ws, max).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!("this workspace already has {max} open event streams (CONVEYOR_MAX_STREAMS_PER_WORKSPACE); close one or use ?format=json"),
        )
    })
}

/// Removes the watcher row and frees the stream slot when the stream ends
/// or the client goes away.
struct Unwatch {
    pool: sqlx::PgPool,
    id: Uuid,
    watcher: Uuid,
    _slot: StreamSlot,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        let (pool, id, watcher) = (self.pool.clone(), self.id, self.watcher);
        tokio::spawn(async move {
            if let Err(e) = history::unwatch(&pool, id, watcher).await {
                tracing::debug!(error = %e, "could not remove a watcher row; it expires on its own");
            }
        });
    }
}

struct Progress {
    status: Option<ExecutionStatus>,
    last_event: i64,
    done: bool,
    /// When to renew the watcher row: a deadline, not a timer restarted
    /// per wake-up, so other executions' notifications cannot postpone it.
    renew_at: tokio::time::Instant,
}

fn event_stream(
    state: AppState,
    workspace_id: String,
    id: Uuid,
    (watcher, slot): (Uuid, StreamSlot),
    rx: broadcast::Receiver<Uuid>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let guard = Unwatch {
        pool: state.pool.clone(),
        id,
        watcher,
        _slot: slot,
    };
    let progress = Progress {
        status: None,
        last_event: 0,
        done: false,
        renew_at: tokio::time::Instant::now() + WATCH_TTL / 3,
    };
    let pending: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    futures_util::stream::unfold(
        (state, workspace_id, rx, progress, pending, guard, true),
        move |(state, ws, mut rx, mut progress, mut pending, guard, mut refresh)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((
                        Ok(event),
                        (state, ws, rx, progress, pending, guard, refresh),
                    ));
                }
                if progress.done {
                    return None;
                }
                if refresh {
                    refresh = false;
                    match collect(&state, &ws, id, &mut progress).await {
                        Ok(events) => pending.extend(events),
                        Err(e) => {
                            tracing::warn!(error = %e, "SSE refresh failed");
                            let data = json!({"message": "the database is not reachable; reconnect to resume"});
                            pending
                                .push_back(Event::default().event("error").data(data.to_string()));
                            progress.done = true;
                        }
                    }
                    continue;
                }
                // Renew the watcher well before it expires; also re-read
                // then, which covers a notification lost in a reconnect.
                let renew = tokio::time::sleep_until(progress.renew_at);
                tokio::select! {
                    changed = rx.recv() => match changed {
                        Ok(changed) if changed == id => refresh = true,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => refresh = true,
                        Err(broadcast::error::RecvError::Closed) => progress.done = true,
                    },
                    () = renew => {
                        progress.renew_at = tokio::time::Instant::now() + WATCH_TTL / 3;
                        let _ = history::watch(&state.pool, &ws, id, watcher, Utc::now() + WATCH_TTL).await;
                        refresh = true;
                    }
                }
            }
        },
    )
}

/// New events since `progress`: stored events not sent yet, then the
/// status if it changed.
async fn collect(
    state: &AppState,
    ws: &str,
    id: Uuid,
    progress: &mut Progress,
) -> Result<Vec<Event>, ApiError> {
    // Status and events from one snapshot: the final status and the
    // `finished` event are written by one statement, so a final status
    // comes with every event; and a status read before later events were
    // written is never sent after them (`running` after `finished`).
    let mut snapshot = state
        .pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    let execution = history::get(&mut *snapshot, ws, id)
        .await?
        .ok_or_else(|| ApiError::not_found("execution"))?;
    let stored = history::events(&mut *snapshot, ws, id, progress.last_event).await?;
    snapshot.commit().await?;
    let mut events = Vec::with_capacity(stored.len() + 1);
    for event in &stored {
        let data = serde_json::to_string(event).map_err(|e| ApiError::internal(&e))?;
        events.push(
            Event::default()
                .event(event.kind.clone())
                .id(event.id.to_string())
                .data(data),
        );
        progress.last_event = event.id;
    }
    if progress.status != Some(execution.status) {
        let data = json!({"id": id, "status": execution.status, "output": execution.output, "error": execution.error});
        events.push(Event::default().event("status").data(data.to_string()));
        progress.status = Some(execution.status);
    }
    progress.done = execution.status.is_final();
    Ok(events)
}
