//! Inbound webhook triggers of a connector: create (the secret is sealed
//! and never shown again), list, read, delete, and the recent deliveries.
//! Deliveries themselves arrive at `POST /hooks/{id}` ([`super::hooks`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use conveyor_engine::store::triggers::{self, Delivery, TriggerError, TriggerMeta};
use conveyor_engine::webhook::mapping::Mapping;
use conveyor_engine::webhook::{self, Encoding, Scheme, Settings};
use serde::{Deserialize, Serialize};
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

/// Deliveries listed per trigger (the most recent).
const RECENT_DELIVERIES: i64 = 100;
/// Longest accepted secret.
const MAX_SECRET_BYTES: usize = 1024;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_trigger, list_triggers))
        .routes(routes!(get_trigger, delete_trigger))
        .routes(routes!(list_deliveries))
}

/// How deliveries are verified.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct VerificationRequest {
    /// `none`, `header`, `hmac_sha256`, `stripe`, `shopify`, `slack`,
    /// `github` or `standard_webhooks`.
    #[serde(rename = "type")]
    kind: Scheme,
    /// The shared secret (required unless `none`; for `standard_webhooks`
    /// `whsec_` + base64). Sealed; never returned.
    #[schema(min_length = 1, max_length = 1024, write_only)]
    secret: Option<String>,
    /// The header holding the secret or signature (`header`,
    /// `hmac_sha256`).
    #[schema(min_length = 1, max_length = 128)]
    header: Option<String>,
    /// `hex` (default) or `base64` (`hmac_sha256`).
    encoding: Option<Encoding>,
    /// Text before the signature, e.g. `sha256=` (`hmac_sha256`).
    #[schema(max_length = 64)]
    prefix: Option<String>,
    /// Largest distance of a signed timestamp from now, seconds (default
    /// 300).
    #[schema(minimum = 1, maximum = 86400)]
    tolerance_secs: Option<u64>,
    /// The header naming a delivery for deduplication (generic schemes;
    /// default `Idempotency-Key`).
    #[schema(min_length = 1, max_length = 128)]
    id_header: Option<String>,
}

/// The body of `POST /connectors/{id}/triggers`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTriggerRequest {
    /// How deliveries are verified.
    verification: VerificationRequest,
    /// Input field -> JSONPath (`$.body.data.email`) or `<<...>>` template
    /// over `body`, `headers` (lowercase names) and `query`; absent: the
    /// JSON body is the input.
    #[schema(value_type = Option<Object>)]
    input: Option<Value>,
}

/// A trigger as shown: never its secret.
#[derive(Debug, Serialize, ToSchema)]
struct TriggerView {
    /// Id (128 random bits): whoever knows the URL can deliver.
    id: String,
    /// Where the provider posts: `/hooks/{id}` on the API's host.
    url: String,
    /// The connector it starts.
    connector_id: Uuid,
    /// `type` and the settings (never the secret).
    #[schema(value_type = Object)]
    verification: Value,
    /// The input mapping (`null`: the body).
    #[schema(value_type = Option<Object>)]
    input: Option<Value>,
    /// Created.
    created_at: chrono::DateTime<chrono::Utc>,
}

/// A connector's triggers.
#[derive(Debug, Serialize, ToSchema)]
struct TriggerList {
    items: Vec<TriggerView>,
}

/// A trigger's recent deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct DeliveryList {
    items: Vec<Delivery>,
}

fn view(t: TriggerMeta) -> TriggerView {
    let mut verification = serde_json::to_value(&t.settings).unwrap_or_else(|_| json!({}));
    verification["type"] = json!(t.scheme);
    TriggerView {
        url: format!("/hooks/{}", t.id),
        id: t.id,
        connector_id: t.connector_id,
        verification,
        input: t.mapping,
        created_at: t.created_at,
    }
}

/// Every problem of a create request, each naming its field.
fn check(v: &VerificationRequest, settings: &Settings, input: Option<&Value>) -> Vec<Value> {
    let mut errors: Vec<Value> = webhook::check_settings(v.kind, settings)
        .into_iter()
        .map(|(path, message)| json!({"path": path, "message": message}))
        .collect();
    match (&v.secret, v.kind.needs_secret()) {
        (None, true) => errors.push(json!({"path": "verification.secret", "message": "required for this type"})),
        (Some(_), false) => errors.push(json!({"path": "verification.secret", "message": "not used by type `none`"})),
        (Some(s), true) if s.is_empty() || s.len() > MAX_SECRET_BYTES => errors.push(
            json!({"path": "verification.secret", "message": format!("must be 1 to {MAX_SECRET_BYTES} bytes")}),
        ),
        (Some(s), true) => {
            if let Err(m) = webhook::key_of(v.kind, s) {
                errors.push(json!({"path": "verification.secret", "message": m}));
            }
        }
        (None, false) => {}
    }
    if let Err(e) = Mapping::parse(input) {
        errors.extend(e.into_iter().map(|e| json!(e)));
    }
    errors
}

/// Create an inbound webhook trigger: deliveries to `POST /hooks/{id}`
/// (no bearer token; verified by `verification`) start this connector
/// with the mapped input. `started_by` of its executions is
/// `trigger:<id>`.
#[utoipa::path(post, path = "/connectors/{id}/triggers", tag = "triggers", operation_id = "create_trigger",
    params(("id" = Uuid, Path, description = "The connector")),
    request_body(content = CreateTriggerRequest, example = json!({"verification": {"type": "github", "secret": "It's a Secret to Everybody"}, "input": {"repository": "$.body.repository.full_name", "who": "<<body.sender.login>>"}})),
    responses((status = 201, description = "Created: `id` and `url` (the secret is never shown again)", body = TriggerView),
              (status = 404, description = "No such live connector in this workspace"),
              (status = 422, description = "Invalid verification settings, secret or input mapping; `details.errors` names each field")))]
async fn create_trigger(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CreateTriggerRequest>,
) -> ApiResult<Response> {
    live_connector(&state, &caller, id).await?;
    let v = &body.verification;
    let settings = Settings {
        header: v.header.clone(),
        encoding: v.encoding,
        prefix: v.prefix.clone(),
        tolerance_secs: v.tolerance_secs,
        id_header: v.id_header.clone(),
    };
    let errors = check(v, &settings, body.input.as_ref());
    if let Some(first) = errors.first() {
        return Err(ApiError::validation(
            format!(
                "invalid trigger: {}: {}",
                first["path"].as_str().unwrap_or(""),
                first["message"].as_str().unwrap_or("")
            ),
            Value::Array(errors),
        ));
    }
    let trigger = triggers::create(
        &state.pool,
        &state.keyring,
        &caller.workspace_id,
        id,
        (v.kind, &settings),
        body.input.as_ref().filter(|m| !m.is_null()),
        v.secret.as_deref(),
    )
    .await
    .map_err(|e| match e {
        TriggerError::Store(e) => e.into(),
        e @ TriggerError::Crypto(_) => ApiError::internal(&e),
    })?;
    audit(
        &state,
        &caller,
        "trigger.create",
        "trigger",
        Some(&trigger.id),
        json!({"connector_id": id, "type": trigger.scheme}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view(trigger))).into_response())
}

/// The connector's triggers (never a secret).
#[utoipa::path(get, path = "/connectors/{id}/triggers", tag = "triggers", operation_id = "list_triggers",
    params(("id" = Uuid, Path, description = "The connector")),
    responses((status = 200, description = "The connector's triggers", body = TriggerList),
              (status = 404, description = "No such live connector in this workspace")))]
async fn list_triggers(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<TriggerList>> {
    live_connector(&state, &caller, id).await?;
    let items = triggers::list(&state.pool, &caller.workspace_id, id)
        .await?
        .into_iter()
        .map(view)
        .collect();
    Ok(Json(TriggerList { items }))
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<TriggerMeta> {
    triggers::get(&state.pool, &caller.workspace_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("trigger"))
}

/// A trigger (never its secret).
#[utoipa::path(get, path = "/triggers/{id}", tag = "triggers", operation_id = "get_trigger",
    params(("id" = String, Path, description = "The trigger: 32 hex characters", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The trigger", body = TriggerView),
              (status = 404, description = "No such trigger in this workspace")))]
async fn get_trigger(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TriggerView>> {
    Ok(Json(view(find(&state, &caller, &id).await?)))
}

/// Delete a trigger: its URL answers 404 from then on; executions it
/// started remain.
#[utoipa::path(delete, path = "/triggers/{id}", tag = "triggers", operation_id = "delete_trigger",
    params(("id" = String, Path, description = "The trigger: 32 hex characters", pattern = "^[0-9a-f]{32}$")),
    responses((status = 204, description = "Deleted"),
              (status = 404, description = "No such trigger in this workspace")))]
async fn delete_trigger(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if !triggers::delete(&state.pool, &caller.workspace_id, &id).await? {
        return Err(ApiError::not_found("trigger"));
    }
    audit(
        &state,
        &caller,
        "trigger.delete",
        "trigger",
        Some(&id),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The trigger's last 100 deliveries, newest first: each with the status
/// answered, its outcome, the provider's delivery id, the execution and,
/// for a refusal, why.
#[utoipa::path(get, path = "/triggers/{id}/deliveries", tag = "triggers", operation_id = "list_trigger_deliveries",
    params(("id" = String, Path, description = "The trigger: 32 hex characters", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "Recent deliveries, newest first", body = DeliveryList),
              (status = 404, description = "No such trigger in this workspace")))]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeliveryList>> {
    find(&state, &caller, &id).await?;
    let items = triggers::deliveries(&state.pool, &id, RECENT_DELIVERIES).await?;
    Ok(Json(DeliveryList { items }))
}
