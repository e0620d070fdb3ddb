//! The executions list (`/console`) and one execution's page, which
//! follows the execution's event stream while it runs.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, NaiveDateTime, Utc};
use conveyor_engine::state::ExecutionStatus;
use conveyor_engine::store::{connectors, history};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::session::Session;
use super::{
    Fields, Layout, Nav, PageError, PageResult, body_json, millis, pretty, render, see_other, when,
    when_opt,
};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiPath, YEARS, in_years};
use crate::routes::executions::{cancel_execution, events_response, rerun_execution};
use crate::routes::{ExecutionPageQuery, execution_page};

/// A path id; one that does not parse names nothing.
pub(super) fn parse_id(text: &str, what: &str) -> Result<Uuid, PageError> {
    text.parse()
        .map_err(|_| PageError::from(ApiError::not_found(what)))
}

/// The list's filters, as the filter form sends them.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    connector: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    cursor: String,
}

/// One row of the list.
#[derive(Debug)]
struct Row {
    id: String,
    short_id: String,
    connector: String,
    version: i64,
    status: String,
    created: String,
    duration: String,
    started_by: String,
}

/// A connector in the filter's choices.
#[derive(Debug)]
struct Choice {
    id: String,
    name: String,
}

#[derive(Template)]
#[template(path = "console/executions.html")]
struct ListPage {
    layout: Layout,
    q: ListQuery,
    statuses: Vec<&'static str>,
    connectors: Vec<Choice>,
    rows: Vec<Row>,
    next: Option<String>,
    live: bool,
}

/// A `datetime-local` value (UTC) or an RFC 3339 time.
fn parse_time(field: &str, text: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let t = match DateTime::parse_from_rfc3339(text) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
            .map(|t| t.and_utc())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{field}`: `{text}` is not a time (YYYY-MM-DDTHH:MM, UTC)"
                ))
            })?,
    };
    if !in_years(&t) {
        return Err(ApiError::bad_request(format!(
            "`{field}`: must fall in the years {} to {}",
            YEARS.start(),
            YEARS.end()
        )));
    }
    Ok(Some(t))
}

fn non_empty(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// `GET /console`: the workspace's executions, newest first.
pub(super) async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let connector_id = non_empty(&q.connector)
        .map(|c| {
            c.parse::<Uuid>()
                .map_err(|_| ApiError::bad_request("`connector`: not a connector id"))
        })
        .transpose()?;
    let page_query = ExecutionPageQuery {
        status: non_empty(&q.status),
        connector_id,
        created_after: parse_time("from", &q.from)?,
        created_before: parse_time("to", &q.to)?,
        cursor: non_empty(&q.cursor),
        limit: Some(50),
    };
    let ws = session.caller.workspace_id.clone();
    let page = execution_page(&state, Some(ws.clone()), page_query)
        .await?
        .0;
    let all = connectors::list(&state.pool, &ws).await?;
    let names: HashMap<String, String> = all
        .iter()
        .map(|c| (c.id.to_string(), c.name.clone()))
        .collect();
    let rows = page["items"]
        .as_array()
        .map(|items| items.iter().map(|e| row(e, &names)).collect())
        .unwrap_or_default();
    let live = q.cursor.trim().is_empty();
    render(&ListPage {
        layout: session.layout("Executions", Nav::Executions),
        statuses: ExecutionStatus::ALL.iter().map(|s| s.as_str()).collect(),
        connectors: all
            .into_iter()
            .map(|c| Choice {
                id: c.id.to_string(),
                name: c.name,
            })
            .collect(),
        rows,
        next: page["next_cursor"].as_str().map(str::to_owned),
        live,
        q,
    })
}

fn time_of(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn row(e: &Value, names: &HashMap<String, String>) -> Row {
    let id = e["id"].as_str().unwrap_or_default().to_owned();
    let connector_id = e["connector_id"].as_str().unwrap_or_default();
    let started = time_of(&e["started_at"]);
    let finished = time_of(&e["finished_at"]);
    let duration = match (started, finished) {
        (Some(s), Some(f)) => millis((f - s).num_milliseconds()),
        _ => "—".to_owned(),
    };
    Row {
        // UUIDv7 ids start with their timestamp; the random tail tells rows apart.
        short_id: id
            .get(id.len().saturating_sub(8)..)
            .unwrap_or_default()
            .to_owned(),
        connector: names
            .get(connector_id)
            .cloned()
            .unwrap_or_else(|| connector_id.to_owned()),
        version: e["connector_version"].as_i64().unwrap_or_default(),
        status: e["status"].as_str().unwrap_or_default().to_owned(),
        created: time_of(&e["created_at"]).map_or_else(String::new, |t| when(&t)),
        duration,
        started_by: e["started_by"].as_str().unwrap_or("—").to_owned(),
        id,
    }
}

/// One attempt of one step, as the page shows it.
#[derive(Debug)]
struct Attempt {
    step: String,
    attempt: i32,
    outcome: String,
    response_status: String,
    started: String,
    duration: String,
    gap: Option<String>,
    bar_x: String,
    bar_w: String,
    request: String,
    response_headers: Option<String>,
    response_body: Option<String>,
    extracted: Option<String>,
    error_kind: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/execution.html")]
struct DetailPage {
    layout: Layout,
    id: String,
    connector_id: String,
    connector: String,
    version: i32,
    status: String,
    live: bool,
    own: bool,
    cancellable: bool,
    started_by: String,
    trace_id: String,
    rerun_of: Option<String>,
    created: String,
    started: String,
    finished: String,
    duration: String,
    input: String,
    output: Option<String>,
    error: Option<String>,
    attempts: Vec<Attempt>,
}

/// `GET /console/executions/{id}`.
pub(super) async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> PageResult {
    let id = parse_id(&id, "execution")?;
    let ws = session.caller.workspace_id.clone();
    show(&state, &session, &ws, id, true).await
}

/// The page of execution `id` of workspace `ws`; `own` when it is the
/// session's workspace (actions and live updates), not an admin's look.
pub(super) async fn show(
    state: &AppState,
    session: &Session,
    ws: &str,
    id: Uuid,
    own: bool,
) -> PageResult {
    let e = history::get(&state.pool, ws, id)
        .await?
        .ok_or_else(|| ApiError::not_found("execution"))?;
    let steps = history::steps(&state.pool, ws, id).await?;
    let connector = connectors::get(&state.pool, ws, e.connector_id, Some(e.connector_version))
        .await?
        .and_then(|c| c.definition["name"].as_str().map(str::to_owned))
        .unwrap_or_else(|| e.connector_id.to_string());
    let trace_id = history::locate(&state.pool, id)
        .await?
        .and_then(|l| l.trace_id)
        .unwrap_or_else(|| "—".to_owned());
    let origin = steps.iter().map(|s| s.started_at).min();
    let end = steps.iter().map(|s| s.finished_at).max();
    let span = match (origin, end) {
        (Some(o), Some(e)) => (e - o).num_milliseconds().max(1) as f64,
        _ => 1.0,
    };
    // Keyed by step, page and item: a page's or an item's first attempt is
    // no retry.
    type Unit = (i32, Option<i32>, Option<i32>);
    let mut previous: HashMap<Unit, DateTime<Utc>> = HashMap::new();
    let attempts = steps
        .iter()
        .map(|s| {
            let offset = origin.map_or(0, |o| (s.started_at - o).num_milliseconds()) as f64;
            let gap = previous
                .insert((s.step_index, s.page, s.item), s.finished_at)
                .map(|before| {
                    format!(
                        "retried after {}",
                        millis((s.started_at - before).num_milliseconds())
                    )
                });
            let bar_x = (offset / span * 100.0).clamp(0.0, 99.5);
            let bar_w = (f64::from(s.duration_ms) / span * 100.0).clamp(0.5, 100.0 - bar_x);
            Attempt {
                step: match (s.page, s.item) {
                    (Some(page), _) => format!("{} (page {page})", s.step_name),
                    (None, Some(item)) => format!("{} (item {item})", s.step_name),
                    (None, None) => s.step_name.clone(),
                },
                attempt: s.attempt,
                outcome: s.outcome.as_str().to_owned(),
                response_status: s
                    .response_status
                    .map_or_else(|| "—".to_owned(), |c| c.to_string()),
                started: when(&s.started_at),
                duration: millis(i64::from(s.duration_ms)),
                gap,
                bar_x: format!("{bar_x:.2}"),
                bar_w: format!("{bar_w:.2}"),
                request: pretty(&s.request),
                response_headers: s.response_headers.as_ref().map(pretty),
                response_body: s.response_body.as_ref().map(pretty),
                extracted: s.extracted.as_ref().filter(|v| !v.is_null()).map(pretty),
                error_kind: s
                    .error
                    .as_ref()
                    .and_then(|e| e["kind"].as_str().map(str::to_owned)),
                error: s.error.as_ref().map(pretty),
            }
        })
        .collect();
    let duration = match (e.started_at, e.finished_at) {
        (Some(s), Some(f)) => millis((f - s).num_milliseconds()),
        _ => "—".to_owned(),
    };
    render(&DetailPage {
        layout: session.layout(format!("Execution {id}"), Nav::Executions),
        id: id.to_string(),
        connector_id: e.connector_id.to_string(),
        connector,
        version: e.connector_version,
        status: e.status.as_str().to_owned(),
        live: own && !e.status.is_final(),
        own,
        cancellable: own && !e.status.is_final() && e.cancel_requested_at.is_none(),
        started_by: e.started_by.clone().unwrap_or_else(|| "—".to_owned()),
        trace_id,
        rerun_of: e.rerun_of.map(|r| r.to_string()),
        created: when(&e.created_at),
        started: when_opt(e.started_at.as_ref()),
        finished: when_opt(e.finished_at.as_ref()),
        duration,
        input: pretty(&e.input),
        output: e.output.as_ref().map(pretty),
        error: e.error.as_ref().map(pretty),
        attempts,
    })
}

/// `GET /console/executions/{id}/live`: the JSON API's event stream of
/// the execution, for the page's script.
pub(super) async fn live(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = parse_id(&id, "execution")?;
    let ws = session.caller.workspace_id;
    history::get(&state.pool, &ws, id)
        .await?
        .ok_or_else(|| ApiError::not_found("execution"))?;
    // No `format`: the Server-Sent-Events stream.
    let query = serde_json::from_value(json!({})).map_err(|e| ApiError::internal(&e))?;
    Ok(events_response(state, ws, id, query).await?)
}

/// `POST /console/executions/{id}/cancel`.
pub(super) async fn cancel(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    let id = parse_id(&id, "execution")?;
    cancel_execution(State(state), session.caller, ApiPath(id)).await?;
    see_other(&format!("/console/executions/{id}"))
}

/// `POST /console/executions/{id}/rerun`: runs it again and shows the new
/// execution.
pub(super) async fn rerun(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    let id = parse_id(&id, "execution")?;
    let created =
        body_json(rerun_execution(State(state), session.caller, ApiPath(id)).await?).await?;
    see_other(&format!(
        "/console/executions/{}",
        created["id"].as_str().unwrap_or_default()
    ))
}
