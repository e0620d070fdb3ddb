//! Connectors: versioned definitions, and starting executions of them.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use conveyor_engine::connector::{self, Connector};
use conveyor_engine::marketplace::{Template, parse_version, upgrade};
use conveyor_engine::start::{StartError, count_created};
use conveyor_engine::state::ReviewStatus;
use conveyor_engine::store::access;
use conveyor_engine::store::executions::{Enqueued, Execute, NewExecution};
use conveyor_engine::store::history::ExecutionView;
use conveyor_engine::store::{connectors, history, templates};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::templates::credential_kinds;
use super::{ExecutionPageQuery, audit, audit_entry, execution_page};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::schemas::{
    BatchAccepted, ConnectorDetail, ConnectorList, ConnectorStatsReport, ConnectorVersionRef,
    ExecutionPage, InstalledConnector,
};
use crate::{AppState, Grouped, LiveConnector};

/// Most items in one batch execute.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_connectors, create_connector))
        .routes(routes!(get_connector, update_connector, delete_connector))
        .routes(routes!(execute))
        .routes(routes!(execute_batch))
        .routes(routes!(connector_stats))
        .routes(routes!(connector_executions))
        .routes(routes!(upgrade_connector))
}

fn definition_errors(e: connector::ValidationErrors) -> ApiError {
    ApiError::validation(
        format!("invalid connector: {e}"),
        serde_json::to_value(&e.0).unwrap_or(Value::Null),
    )
}

pub(super) async fn live_connector(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> ApiResult<(connectors::ConnectorVersion, Connector)> {
    let found = connectors::get(&state.pool, &caller.workspace_id, id, None)
        .await?
        .filter(|c| c.deleted_at.is_none())
        .ok_or_else(|| ApiError::not_found("connector"))?;
    let definition: Connector =
        serde_json::from_value(found.definition.clone()).map_err(|e| ApiError::internal(&e))?;
    Ok((found, definition))
}

/// The connector as shown; an installed one says which template version
/// it runs and whether a newer one is available.
pub(crate) async fn connector_json(
    state: &AppState,
    c: &connectors::ConnectorVersion,
) -> ApiResult<Value> {
    let mut body = json!({
        "id": c.id, "version": c.version, "latest_version": c.latest_version,
        "definition": c.definition, "created_at": c.created_at, "deleted_at": c.deleted_at,
        "template_slug": c.template_slug, "template_version": c.template_version,
    });
    if let (Some(slug), Some(installed)) = (&c.template_slug, &c.template_version) {
        let latest = templates::get(&state.pool, slug, None)
            .await?
            .filter(|(t, _)| t.review_status != ReviewStatus::Retired)
            .and_then(|(t, _)| t.approved_version);
        let available = latest
            .as_deref()
            .filter(|l| parse_version(l) > parse_version(installed));
        body["update_available"] = json!(available);
    }
    Ok(body)
}

/// List the workspace's connectors.
#[utoipa::path(get, path = "/connectors", tag = "connectors", operation_id = "list_connectors",
    responses((status = 200, description = "Live connectors, newest first", body = ConnectorList)))]
async fn list_connectors(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let items = connectors::list(&state.pool, &caller.workspace_id).await?;
    Ok(Json(json!({ "items": items })))
}

/// The example definition of the create and update operations.
fn connector_example() -> Value {
    json!({
        "name": "Create contact and notify",
        "input_schema": {"type": "object", "required": ["email"]},
        "steps": [
            {"name": "create", "method": "POST", "url": "https://api.example.com/contacts",
             "auth": {"type": "bearer", "credential": "crm"},
             "body": {"type": "json", "content": {"email": "<<input.email>>"}},
             "extract": {"id": "$.id"}},
            {"name": "notify", "method": "POST", "url": "https://hooks.example.com/notify",
             "body": {"type": "form", "content": {"text": "Created <<steps.create.extract.id>>"}},
             "on_error": "continue"}
        ],
        "output": {"contact_id": "<<steps.create.extract.id>>"}
    })
}

/// Create a connector from a definition (version 1).
#[utoipa::path(post, path = "/connectors", tag = "connectors", operation_id = "create_connector",
    request_body(content = Connector, description = "A connector definition", example = connector_example),
    responses((status = 201, description = "Created: the connector's `id` and `version` 1", body = ConnectorVersionRef,
               example = json!({"id": "0193a4a8-7c1e-7d2a-9b51-2f4f0b1c9e77", "version": 1})),
              (status = 422, description = "Invalid definition; `details.errors` lists `{path, message}` for every problem")))]
async fn create_connector(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let definition = connector::parse_and_validate(&body).map_err(definition_errors)?;
    let (id, version) = connectors::create(&state.pool, &caller.workspace_id, &definition).await?;
    audit(
        &state,
        &caller,
        "connector.create",
        "connector",
        Some(&id.to_string()),
        json!({"version": version}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "version": version})),
    )
        .into_response())
}

/// `?version=N`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VersionQuery {
    /// A specific version (default: the latest).
    #[param(minimum = 1, maximum = 2_147_483_647)]
    version: Option<i32>,
}

/// Read a connector: the latest version, or `?version=N`.
#[utoipa::path(get, path = "/connectors/{id}", tag = "connectors", operation_id = "get_connector",
    params(("id" = Uuid, Path, description = "The connector"), VersionQuery),
    responses((status = 200, description = "The version asked for (deleted connectors stay readable)", body = ConnectorDetail),
              (status = 404, description = "No such connector or version in this workspace")))]
async fn get_connector(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> ApiResult<Json<Value>> {
    let found = connectors::get(&state.pool, &caller.workspace_id, id, q.version)
        .await?
        .ok_or_else(|| ApiError::not_found("connector"))?;
    Ok(Json(connector_json(&state, &found).await?))
}

/// Store a new version of a connector.
#[utoipa::path(put, path = "/connectors/{id}", tag = "connectors", operation_id = "update_connector",
    params(("id" = Uuid, Path, description = "The connector")),
    request_body(content = Connector, description = "The new definition", example = connector_example),
    responses((status = 200, description = "Stored: `id` and the new `version`", body = ConnectorVersionRef),
              (status = 404, description = "No such live connector in this workspace"),
              (status = 422, description = "Invalid definition; `details.errors` lists `{path, message}` for every problem (for a connector installed from a template, also each `credential_bindings.NAME` naming a credential of a kind the template does not accept)")))]
pub(crate) async fn update_connector(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let definition = connector::parse_and_validate(&body).map_err(definition_errors)?;
    let (found, _) = live_connector(&state, &caller, id).await?;
    if let Some(slug) = &found.template_slug {
        check_binding_kinds(&state, &caller, slug, &definition).await?;
    }
    let version = connectors::update(&state.pool, &caller.workspace_id, id, &definition)
        .await?
        .ok_or_else(|| ApiError::not_found("connector"))?;
    audit(
        &state,
        &caller,
        "connector.update",
        "connector",
        Some(&id.to_string()),
        json!({"version": version}),
    )
    .await;
    Ok(Json(json!({"id": id, "version": version})))
}

/// An installed connector's saved bindings must name credentials of the
/// kinds its template accepts (`credential_bindings.NAME`); a template no
/// longer available checks nothing.
async fn check_binding_kinds(
    state: &AppState,
    caller: &Caller,
    slug: &str,
    definition: &Connector,
) -> ApiResult<()> {
    let Some((_, json)) = templates::get(&state.pool, slug, Some(&caller.workspace_id)).await?
    else {
        return Ok(());
    };
    let template = Template::parse(&json).map_err(|e| ApiError::internal(&e))?;
    let kinds = credential_kinds(state, &caller.workspace_id).await?;
    let problems = template.kind_problems(
        "credential_bindings",
        |name| definition.credential_bindings.get(name).cloned(),
        &kinds,
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(definition_errors(connector::ValidationErrors(problems)))
    }
}

/// Delete a connector (soft: its versions and executions stay readable).
#[utoipa::path(delete, path = "/connectors/{id}", tag = "connectors", operation_id = "delete_connector",
    params(("id" = Uuid, Path, description = "The connector")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such live connector in this workspace")))]
async fn delete_connector(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    if !connectors::delete(&state.pool, &caller.workspace_id, id).await? {
        return Err(ApiError::not_found("connector"));
    }
    audit(
        &state,
        &caller,
        "connector.delete",
        "connector",
        Some(&id.to_string()),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `execute`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecuteRequest {
    /// The execution input (validated against the connector's `input_schema`;
    /// default `{}`).
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, Value>>)]
    input: Option<Value>,
    /// A second execute with the same key returns the first execution
    /// (1 to 255 characters).
    #[schema(min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
    /// Higher runs first, within the workspace only (-100 to 100, default
    /// 0).
    #[schema(minimum = -100, maximum = 100)]
    priority: Option<i16>,
    /// Do not start before this time.
    #[serde(default, deserialize_with = "crate::extract::bounded")]
    run_at: Option<DateTime<Utc>>,
    /// POSTed the signed execution summary when it ends (default: the
    /// connector's `callback_url`); http or https, up to 2048 characters.
    #[schema(max_length = 2048)]
    callback_url: Option<String>,
}

/// The callback URL of an execution: its own, else the connector's;
/// 422 naming `path` when invalid.
fn callback_url(
    given: Option<String>,
    connector: &Connector,
    path: &str,
) -> ApiResult<Option<String>> {
    let url = given.or_else(|| connector.callback_url.clone());
    if let Some(Err(message)) = url.as_deref().map(conveyor_engine::callback::check_url) {
        return Err(ApiError::validation(
            format!("{path}: {message}"),
            json!([{"path": path, "message": message}]),
        ));
    }
    Ok(url)
}

fn reused_key(path: &str) -> ApiError {
    ApiError::conflict(format!(
        "{path}: this key was already used for a different request (another connector or input)"
    ))
    .with_details(json!({"path": path}))
}

/// The `{path, message}` problem of an idempotency key, if any.
fn key_error(key: Option<&str>, path: impl fmt::Display) -> Option<Value> {
    // Characters, as the database's CHECK and JSON Schema's maxLength count.
    key.filter(|k| k.is_empty() || k.chars().count() > 255)
        .map(|_| json!({"path": path.to_string(), "message": "must be 1 to 255 characters"}))
}

/// Start an execution. The key may also come as an `Idempotency-Key` header.
#[utoipa::path(post, path = "/connectors/{id}/execute", tag = "executions", operation_id = "execute_connector",
    params(("id" = Uuid, Path, description = "The connector"),
           ("Idempotency-Key" = Option<String>, Header, description = "Same as `idempotency_key` in the body (the body wins); 1 to 255 characters")),
    request_body(content = ExecuteRequest, example = json!({"input": {"email": "ada@example.com"}, "idempotency_key": "signup-1042"})),
    responses((status = 202, description = "Enqueued: the execution", body = ExecutionView),
              (status = 200, description = "An execution with this idempotency key already existed: that one", body = ExecutionView),
              (status = 404, description = "No such live connector in this workspace"),
              (status = 409, description = "The idempotency key was used for another connector or input, or the connector changed under the execute three times in a row (retry it)"),
              (status = 422, description = "The input does not match the connector's `input_schema`, a bad idempotency key (an `Idempotency-Key` header that is not UTF-8), a priority outside -100 to 100, or a `run_at` outside the years 1 to 9999")))]
pub(crate) async fn execute(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    ApiJson(mut body): ApiJson<ExecuteRequest>,
) -> ApiResult<Response> {
    if body.idempotency_key.is_none() {
        body.idempotency_key = header_key(&headers)?;
    }
    let mut input = body.input.take().unwrap_or_else(|| json!({}));
    let mut target = execute_target(&state, &caller, id, true).await?;
    // The version comes from this process's cache first; the enqueue
    // statement writes nothing unless the connector is still live at it.
    // A refused execute looks the connector up afresh: a newer version is
    // enqueued instead, a deleted connector answers 404, and an unchanged
    // one means the idempotency key exists.
    for _ in 0..EXECUTE_ATTEMPTS {
        let new = execution_of(&state, &caller, id, &target, input, &body)?;
        let answer = state
            .executes
            .ask(Execute {
                new,
                actor: caller.actor.clone(),
                request_id: caller.request_id.clone(),
            })
            .await
            .map_err(|e| ApiError::internal(&e))??;
        let refused = match answer {
            Grouped::Enqueued(view) => {
                count_created(&[Enqueued {
                    id: view.id,
                    created: true,
                    same_request: true,
                }]);
                return Ok((StatusCode::ACCEPTED, Json(view)).into_response());
            }
            Grouped::Refused(execute) => execute.new,
        };
        target = execute_target(&state, &caller, id, false).await?;
        if target.version == refused.connector_version && refused.idempotency_key.is_some() {
            return execute_keyed(&state, &caller, id, refused).await;
        }
        input = refused.input;
    }
    Err(ApiError::conflict(
        "the connector changed while the execution was enqueued; retry the request",
    ))
}
/// The `Idempotency-Key` header as the UTF-8 it is: `to_str` refuses
/// anything beyond visible ASCII, and a key passed over would let a
/// retried execute start a second execution. 422 when it is not UTF-8.
fn header_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match std::str::from_utf8(value.as_bytes()) {
        Ok(key) => Ok(Some(key.to_owned())),
        Err(_) => {
            let message = "must be UTF-8";
            Err(ApiError::validation(
                format!("Idempotency-Key: {message}"),
                json!([{"path": "Idempotency-Key", "message": message}]),
            ))
        }
    }
}

/// Times a single execute is sent to the enqueue statement before it
/// gives up on a connector that keeps changing under it.
const EXECUTE_ATTEMPTS: usize = 3;

/// The live connector `id` of the caller's workspace at its latest
/// version ([`live_connector`]): from this process's cache when `cached`
/// and held there (the executes that find it missing wait for one
/// lookup), else from the database, then cached. One that is gone is
/// forgotten.
async fn execute_target(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    cached: bool,
) -> ApiResult<Arc<LiveConnector>> {
    let key = (caller.workspace_id.clone(), id);
    let load = async {
        let (found, definition) = live_connector(state, caller, id).await?;
        let bytes = serde_json::to_vec(&found.definition).map_or(usize::MAX, |v| v.len());
        let live = Arc::new(LiveConnector {
            version: found.version,
            definition,
        });
        Ok::<_, ApiError>(Ok::<_, Infallible>((live, bytes)))
    };
    let loaded = if cached {
        state.live_connectors.get_or_load(&key, load).await
    } else {
        load.await.map(|loaded| {
            loaded.map(|(live, bytes)| {
                state
                    .live_connectors
                    .insert(key.clone(), live.clone(), bytes);
                live
            })
        })
    };
    let Ok(live) = loaded.inspect_err(|_| state.live_connectors.remove(&key))?;
    Ok(live)
}

/// The execution a single execute asks for at `target`'s version, or the
/// 422 naming what is wrong with the request.
fn execution_of(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    target: &LiveConnector,
    input: Value,
    body: &ExecuteRequest,
) -> ApiResult<NewExecution> {
    state
        .starter
        .check_input(id, target.version, &target.definition, &input, "input")
        .map_err(|errors| {
            ApiError::validation(
                "the input does not match the connector's input_schema",
                json!(errors),
            )
        })?;
    let callback_url = callback_url(
        body.callback_url.clone(),
        &target.definition,
        "callback_url",
    )?;
    if let Some(e) = key_error(body.idempotency_key.as_deref(), "idempotency_key") {
        return Err(ApiError::validation(
            "idempotency_key: must be 1 to 255 characters",
            json!([e]),
        ));
    }
    let range = conveyor_engine::store::executions::PRIORITY_RANGE;
    if body.priority.is_some_and(|p| !range.contains(&p)) {
        let message = format!("must be between {} and {}", range.start(), range.end());
        return Err(ApiError::validation(
            format!("priority: {message}"),
            json!([{"path": "priority", "message": message}]),
        ));
    }
    Ok(NewExecution {
        workspace_id: caller.workspace_id.clone(),
        connector_id: id,
        connector_version: target.version,
        input,
        idempotency_key: body.idempotency_key.clone(),
        priority: body.priority.unwrap_or(0),
        run_at: body.run_at,
        rerun_of: None,
        trace_context: conveyor_engine::telemetry::current_context(),
        started_by: caller.started_by(),
        callback_url,
    })
}

/// A single execute whose idempotency key exists: a replay (the existing
/// execution, 200), the key reused for another request (409), or, when
/// the row holding it vanished meanwhile, enqueued now (202).
async fn execute_keyed(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    new: NewExecution,
) -> ApiResult<Response> {
    let started = start_audited(state, caller, &[new], "execution.start", |e| {
        e[0].created.then(|| {
            (
                "execution",
                e[0].id.to_string(),
                json!({"connector_id": id}),
            )
        })
    })
    .await;
    let enqueued = match started {
        Ok(enqueued) => enqueued[0],
        Err(StartError::ReusedKey { .. }) => return Err(reused_key("idempotency_key")),
        Err(StartError::Store(e)) => return Err(e.into()),
    };
    let view = history::get(&state.pool, &caller.workspace_id, enqueued.id)
        .await?
        .ok_or_else(|| ApiError::not_found("execution"))?;
    let status = if enqueued.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

/// Enqueues `news` and records `action` in the audit log in one
/// transaction: an execute waits for one durable commit, not two, and its
/// audit entry is never missing. `object` names what the entry is about
/// (kind, id, details) from what was enqueued; `None` records nothing.
async fn start_audited(
    state: &AppState,
    caller: &Caller,
    news: &[NewExecution],
    action: &str,
    object: impl FnOnce(&[Enqueued]) -> Option<(&'static str, String, Value)>,
) -> Result<Vec<Enqueued>, StartError> {
    let store = |e: sqlx::Error| StartError::Store(e.into());
    let mut tx = state.pool.begin().await.map_err(store)?;
    let enqueued = state.starter.start_in(&mut tx, news, Utc::now()).await?;
    if let Some((object_type, object_id, details)) = object(&enqueued) {
        let entry = audit_entry(caller, action, (object_type, Some(&object_id)), details);
        access::audit(&mut *tx, &entry).await?;
    }
    tx.commit().await.map_err(store)?;
    count_created(&enqueued);
    Ok(enqueued)
}

/// The body of a batch execute.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    /// Up to 1,000 items, enqueued in one transaction.
    #[schema(min_items = 1, max_items = 1000)]
    items: Vec<BatchItem>,
    /// Callback URL of every item (default: the connector's).
    #[schema(max_length = 2048)]
    callback_url: Option<String>,
}

/// One item of a batch execute.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    /// The input (default `{}`).
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, Value>>)]
    input: Option<Value>,
    /// Idempotency key of this item (1 to 255 characters).
    #[schema(min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
}

/// Start many executions in one transaction; ids come back in order.
#[utoipa::path(post, path = "/connectors/{id}/execute/batch", tag = "executions", operation_id = "execute_connector_batch",
    params(("id" = Uuid, Path, description = "The connector")),
    request_body(content = BatchRequest, example = json!({"items": [{"input": {"email": "ada@example.com"}}, {"input": {"email": "grace@example.com"}, "idempotency_key": "signup-1043"}]})),
    responses((status = 202, description = "Enqueued: `ids` in item order", body = BatchAccepted),
              (status = 404, description = "No such live connector in this workspace"),
              (status = 409, description = "An item's idempotency key was used for another connector or input (nothing is enqueued)"),
              (status = 422, description = "Invalid items, each by path (nothing is enqueued)")))]
async fn execute_batch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<BatchRequest>,
) -> ApiResult<Response> {
    let (found, definition) = live_connector(&state, &caller, id).await?;
    if body.items.is_empty() || body.items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::validation(
            format!("items: must hold 1 to {MAX_BATCH_ITEMS} items"),
            json!([{"path": "items", "message": format!("must hold 1 to {MAX_BATCH_ITEMS} items")}]),
        ));
    }
    let callback_url = callback_url(body.callback_url, &definition, "callback_url")?;
    let mut errors = Vec::new();
    let mut news = Vec::with_capacity(body.items.len());
    // One request, one span: every item carries the same trace context.
    let trace_context = conveyor_engine::telemetry::current_context();
    for (i, item) in body.items.into_iter().enumerate() {
        let input = item.input.unwrap_or_else(|| json!({}));
        if let Err(e) = state.starter.check_input(
            id,
            found.version,
            &definition,
            &input,
            format_args!("items[{i}].input"),
        ) {
            errors.extend(e.into_iter().map(|e| json!(e)));
        }
        errors.extend(key_error(
            item.idempotency_key.as_deref(),
            format_args!("items[{i}].idempotency_key"),
        ));
        news.push(NewExecution {
            workspace_id: caller.workspace_id.clone(),
            connector_id: id,
            connector_version: found.version,
            input,
            idempotency_key: item.idempotency_key,
            priority: 0,
            run_at: None,
            rerun_of: None,
            trace_context: trace_context.clone(),
            started_by: caller.started_by(),
            callback_url: callback_url.clone(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(
            "some items are invalid",
            Value::Array(errors),
        ));
    }
    let started = start_audited(&state, &caller, &news, "execution.start_batch", |e| {
        let created = e.iter().filter(|e| e.created).count();
        Some((
            "connector",
            id.to_string(),
            json!({"count": e.len(), "created": created}),
        ))
    })
    .await;
    let enqueued = match started {
        Ok(enqueued) => enqueued,
        Err(StartError::ReusedKey { index }) => {
            return Err(reused_key(&format!("items[{index}].idempotency_key")));
        }
        Err(StartError::Store(e)) => return Err(e.into()),
    };
    let ids: Vec<Uuid> = enqueued.iter().map(|e| e.id).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({"ids": ids}))).into_response())
}

/// `?window_hours=N`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StatsQuery {
    /// Window in hours, counted back from now (default 24, at most 8760).
    #[param(minimum = 1, maximum = 8760)]
    window_hours: Option<u32>,
}

/// Counts by status, success rate and p50/p95 duration over a window.
#[utoipa::path(get, path = "/connectors/{id}/stats", tag = "connectors", operation_id = "get_connector_stats",
    params(("id" = Uuid, Path, description = "The connector"), StatsQuery),
    responses((status = 200, description = "Counts by status, success rate and p50/p95 duration", body = ConnectorStatsReport),
              (status = 404, description = "No such connector in this workspace")))]
async fn connector_stats(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> ApiResult<Json<Value>> {
    connectors::get(&state.pool, &caller.workspace_id, id, None)
        .await?
        .ok_or_else(|| ApiError::not_found("connector"))?;
    let hours = q.window_hours.unwrap_or(24);
    if hours == 0 || hours > 8760 {
        return Err(ApiError::bad_request(
            "window_hours must be between 1 and 8760",
        ));
    }
    let since = Utc::now() - chrono::Duration::hours(i64::from(hours));
    let stats = history::connector_stats(&state.pool, &caller.workspace_id, id, since).await?;
    Ok(Json(
        json!({"connector_id": id, "window_hours": hours, "since": since, "stats": stats}),
    ))
}

/// A connector's executions, newest first (keyset pagination).
#[utoipa::path(get, path = "/connectors/{id}/executions", tag = "executions", operation_id = "list_connector_executions",
    params(("id" = Uuid, Path, description = "The connector"), ExecutionPageQuery),
    responses((status = 200, description = "One page of the connector's executions, newest first", body = ExecutionPage),
              (status = 404, description = "No such connector in this workspace")))]
async fn connector_executions(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(mut q): ApiQuery<ExecutionPageQuery>,
) -> ApiResult<Json<Value>> {
    connectors::get(&state.pool, &caller.workspace_id, id, None)
        .await?
        .ok_or_else(|| ApiError::not_found("connector"))?;
    q.connector_id = Some(id);
    execution_page(&state, Some(caller.workspace_id), q).await
}

/// Move a connector installed from a template to the template's newest
/// version: a new connector version, keeping its name, settings and
/// credential mappings (new settings take their defaults).
#[utoipa::path(post, path = "/connectors/{id}/upgrade", tag = "connectors", operation_id = "upgrade_connector",
    params(("id" = Uuid, Path, description = "The connector")),
    responses((status = 200, description = "Upgraded: the new connector version and template version", body = InstalledConnector),
              (status = 404, description = "No such live connector in this workspace"),
              (status = 409, description = "Not installed from a template, its template is gone, or already current"),
              (status = 422, description = "The new version needs a setting or credential the connector lacks, or does not accept the kind of a mapped credential")))]
pub(crate) async fn upgrade_connector(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Value>> {
    let (found, installed) = live_connector(&state, &caller, id).await?;
    let (Some(slug), Some(current)) = (&found.template_slug, &found.template_version) else {
        return Err(ApiError::conflict(
            "this connector was not installed from a template",
        ));
    };
    // The workspace's view: the approved version, never an unreviewed one.
    let (_, definition) = templates::get(&state.pool, slug, Some(&caller.workspace_id))
        .await?
        .filter(|(t, _)| t.approved_version.is_some())
        .ok_or_else(|| ApiError::conflict("its template is no longer available"))?;
    let template = Template::parse(&definition).map_err(|e| ApiError::internal(&e))?;
    if parse_version(&template.version) <= parse_version(current) {
        return Err(ApiError::conflict(format!(
            "already on the newest template version ({current})"
        )));
    }
    let kinds = credential_kinds(&state, &caller.workspace_id).await?;
    let upgraded = upgrade(&installed, &template, &kinds).map_err(|e| {
        ApiError::validation(
            format!("cannot upgrade: {e}"),
            serde_json::to_value(&e.0).unwrap_or(Value::Null),
        )
    })?;
    let version = templates::upgrade(
        &state.pool,
        &caller.workspace_id,
        id,
        &template.version,
        &upgraded,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("connector"))?;
    audit(
        &state,
        &caller,
        "connector.upgrade",
        "connector",
        Some(&id.to_string()),
        json!({"template_version": template.version, "version": version}),
    )
    .await;
    Ok(Json(
        json!({"id": id, "version": version, "template_slug": slug, "template_version": template.version}),
    ))
}
