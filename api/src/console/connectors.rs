//! Connectors: the list with 24-hour statistics, and one connector's page
//! with its versions, a JSON editor whose save-time validation errors are
//! shown by field path, and a "run with this input" form.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use conveyor_engine::store::connectors;
use conveyor_engine::store::history::ConnectorStats;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::diff::{Line, hunks};
use super::executions::parse_id;
use super::session::Session;
use super::stats::STATS_TTL_SECS;
use super::{
    Fields, Layout, Nav, PageError, PageResult, Problem, body_json, handler_body, millis_opt,
    percent, pretty, problems, render, see_other, when,
};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::routes::connectors::{connector_json, execute, update_connector, upgrade_connector};

/// One row of the list.
#[derive(Debug)]
struct Row {
    id: String,
    name: String,
    version: i32,
    template: String,
    total: i64,
    succeeded: i64,
    failed: i64,
    success_rate: String,
    p50: String,
    p95: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "console/connectors.html")]
struct ListPage {
    layout: Layout,
    rows: Vec<Row>,
    as_of: String,
    ttl: i64,
}

/// `GET /console/connectors`: statistics from the workspace's cached
/// 24-hour figures (see [`super::stats`]).
pub(super) async fn list(State(state): State<AppState>, session: Session) -> PageResult {
    let ws = &session.caller.workspace_id;
    let stats = state.console_stats.get(&state.pool, ws, Utc::now()).await?;
    let none = ConnectorStats {
        by_status: json!({}),
        success_rate: None,
        p50_duration_ms: None,
        p95_duration_ms: None,
    };
    let mut rows = Vec::new();
    for c in connectors::list(&state.pool, ws).await? {
        let stats = stats.by_connector.get(&c.id).unwrap_or(&none);
        let count = |status: &str| stats.by_status[status].as_i64().unwrap_or(0);
        let total = stats
            .by_status
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_i64).sum());
        rows.push(Row {
            id: c.id.to_string(),
            name: c.name,
            version: c.latest_version,
            template: c.template_slug.unwrap_or_default(),
            total,
            succeeded: count("succeeded"),
            failed: count("failed"),
            success_rate: percent(stats.success_rate),
            p50: millis_opt(stats.p50_duration_ms),
            p95: millis_opt(stats.p95_duration_ms),
            updated: when(&c.updated_at),
        });
    }
    render(&ListPage {
        layout: session.layout("Connectors", Nav::Connectors),
        rows,
        as_of: when(&stats.as_of),
        ttl: STATS_TTL_SECS,
    })
}

/// `?version=N`, and `from=A&to=B` to compare two versions.
#[derive(Debug, Default, Deserialize)]
pub(super) struct VersionQuery {
    version: Option<i32>,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// Two versions compared: a line diff of their pretty-printed JSON.
#[derive(Debug)]
struct Comparison {
    from: i32,
    to: i32,
    hunks: Vec<Vec<Line>>,
}

#[derive(Template)]
#[template(path = "console/connector.html")]
struct DetailPage {
    layout: Layout,
    id: String,
    name: String,
    version: i32,
    latest_version: i32,
    versions: Vec<i32>,
    deleted: bool,
    template: Option<String>,
    update_available: Option<String>,
    definition: String,
    definition_problems: Vec<Problem>,
    input: String,
    input_problems: Vec<Problem>,
    notice: Option<String>,
    compare_from: i32,
    compare_to: i32,
    diff: Option<Comparison>,
}

/// What a failed form sends back into the page.
#[derive(Debug, Default)]
struct Retry {
    definition: Option<(String, Vec<Problem>)>,
    input: Option<(String, Vec<Problem>)>,
    notice: Option<String>,
}

/// A version number of the compare form: 1 to `latest`, or a 400 naming
/// `field`.
fn version_field(field: &str, text: &str, latest: i32) -> Result<i32, ApiError> {
    text.trim()
        .parse()
        .ok()
        .filter(|v| (1..=latest).contains(v))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{field}`: `{text}` is not a version of this connector (1 to {latest})"
            ))
        })
}

/// The diff between versions `from` and `to` of connector `id`.
async fn compare(
    state: &AppState,
    session: &Session,
    id: Uuid,
    (from, to): (i32, i32),
) -> Result<Comparison, PageError> {
    let ws = &session.caller.workspace_id;
    let mut texts = Vec::with_capacity(2);
    for v in [from, to] {
        let found = connectors::get(&state.pool, ws, id, Some(v))
            .await?
            .ok_or_else(|| ApiError::not_found("connector"))?;
        texts.push(pretty(&found.definition));
    }
    Ok(Comparison {
        from,
        to,
        hunks: hunks(&texts[0], &texts[1]),
    })
}

async fn show(
    state: &AppState,
    session: &Session,
    id: Uuid,
    version: Option<i32>,
    status: StatusCode,
    retry: Retry,
    versions: (&str, &str),
) -> PageResult {
    let found = connectors::get(&state.pool, &session.caller.workspace_id, id, version)
        .await?
        .ok_or_else(|| ApiError::not_found("connector"))?;
    let latest = found.latest_version;
    let diff = if versions.0.trim().is_empty() && versions.1.trim().is_empty() {
        None
    } else {
        let pair = (
            version_field("from", versions.0, latest)?,
            version_field("to", versions.1, latest)?,
        );
        Some(compare(state, session, id, pair).await?)
    };
    let shown = connector_json(state, &found).await?;
    let name = found.definition["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (definition, definition_problems) = retry
        .definition
        .unwrap_or_else(|| (pretty(&found.definition), Vec::new()));
    let (input, input_problems) = retry.input.unwrap_or_else(|| ("{}".to_owned(), Vec::new()));
    let mut response = render(&DetailPage {
        layout: session.layout(format!("Connector {name}"), Nav::Connectors),
        id: id.to_string(),
        version: found.version,
        latest_version: found.latest_version,
        versions: (1..=found.latest_version).rev().collect(),
        deleted: found.deleted_at.is_some(),
        template: found.template_slug.clone(),
        update_available: shown["update_available"].as_str().map(str::to_owned),
        name,
        definition,
        definition_problems,
        input,
        input_problems,
        notice: retry.notice,
        compare_from: diff.as_ref().map_or((latest - 1).max(1), |d| d.from),
        compare_to: diff.as_ref().map_or(latest, |d| d.to),
        diff,
    })?;
    *response.status_mut() = status;
    Ok(response)
}

/// `GET /console/connectors/{id}[?version=N][&from=A&to=B]`.
pub(super) async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<VersionQuery>,
) -> PageResult {
    let id = parse_id(&id, "connector")?;
    show(
        &state,
        &session,
        id,
        q.version,
        StatusCode::OK,
        Retry::default(),
        (&q.from, &q.to),
    )
    .await
}

/// The JSON of a textarea, or a 400 naming `field`.
fn json_field(form: &Fields, field: &str) -> Result<Value, ApiError> {
    let text = form.get(field).unwrap_or_default();
    serde_json::from_str(text).map_err(|e| {
        let message = format!("not valid JSON: {e}");
        ApiError::bad_request(format!("{field}: {message}"))
            .with_details(json!({"errors": [{"path": field, "message": message}]}))
    })
}

/// Whether the person can fix `e` in the form (anything but a missing
/// connector or a server fault).
fn fixable(e: &ApiError) -> bool {
    e.status().is_client_error() && e.status() != StatusCode::NOT_FOUND
}

/// `POST /console/connectors/{id}`: save a new version from the editor
/// (or `action=upgrade`: move to the template's newest version).
pub(super) async fn save(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    let id = parse_id(&id, "connector")?;
    let caller = session.caller.clone();
    let outcome = if form.get("action") == Some("upgrade") {
        upgrade_connector(State(state.clone()), caller, ApiPath(id))
            .await
            .map(drop)
    } else {
        match json_field(&form, "definition") {
            Ok(definition) => update_connector(
                State(state.clone()),
                caller,
                ApiPath(id),
                ApiJson(definition),
            )
            .await
            .map(drop),
            Err(e) => Err(e),
        }
    };
    match outcome {
        Ok(()) => see_other(&format!("/console/connectors/{id}")),
        Err(e) if fixable(&e) => {
            let retry = if form.get("action") == Some("upgrade") {
                Retry {
                    notice: Some(e.message().to_owned()),
                    ..Retry::default()
                }
            } else {
                let text = form.get("definition").unwrap_or_default().to_owned();
                Retry {
                    definition: Some((text, problems(&e))),
                    ..Retry::default()
                }
            };
            show(&state, &session, id, None, e.status(), retry, ("", "")).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /console/connectors/{id}/run`: start an execution with the
/// form's input and show it.
pub(super) async fn run(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    let id = parse_id(&id, "connector")?;
    let started =
        match json_field(&form, "input").and_then(|input| handler_body(&json!({"input": input}))) {
            Ok(body) => {
                execute(
                    State(state.clone()),
                    session.caller.clone(),
                    ApiPath(id),
                    HeaderMap::new(),
                    ApiJson(body),
                )
                .await
            }
            Err(e) => Err(e),
        };
    match started {
        Ok(response) => {
            let created = body_json(response).await?;
            see_other(&format!(
                "/console/executions/{}",
                created["id"].as_str().unwrap_or_default()
            ))
        }
        Err(e) if fixable(&e) => {
            let text = form.get("input").unwrap_or_default().to_owned();
            let retry = Retry {
                input: Some((text, problems(&e))),
                ..Retry::default()
            };
            show(&state, &session, id, None, e.status(), retry, ("", "")).await
        }
        Err(e) => Err(e.into()),
    }
}
