//! Event subscriptions: a workspace's URLs told about its events
//! (`execution.succeeded`, `execution.failed`, `execution.cancelled`,
//! `credential.needs_reconnect`, or `*`), delivered like completion
//! callbacks: same payload shape, same signing secret, same retries, every
//! attempt recorded.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use conveyor_engine::callback;
use conveyor_engine::store::callbacks::CallbackView;
use conveyor_engine::store::subscriptions::{
    self, Change, MAX_PER_WORKSPACE, NewSubscription, Subscription,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::audit;
use super::schedules::present;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};

/// Deliveries listed per subscription (the most recent).
const RECENT_DELIVERIES: i64 = 100;
/// Longest description.
const MAX_DESCRIPTION: usize = 500;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_subscription, list_subscriptions))
        .routes(routes!(
            get_subscription,
            update_subscription,
            delete_subscription
        ))
        .routes(routes!(list_subscription_deliveries))
}

/// An event type, or `*` for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
enum EventType {
    /// Every event type, present and future.
    #[serde(rename = "*")]
    All,
    /// An execution succeeded.
    #[serde(rename = "execution.succeeded")]
    ExecutionSucceeded,
    /// An execution failed (a step, the deadline, or poisoned).
    #[serde(rename = "execution.failed")]
    ExecutionFailed,
    /// An execution was cancelled.
    #[serde(rename = "execution.cancelled")]
    ExecutionCancelled,
    /// An OAuth credential's grant was revoked (`invalid_grant`): a person
    /// must connect it again.
    #[serde(rename = "credential.needs_reconnect")]
    CredentialNeedsReconnect,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::All => callback::ALL_EVENTS,
            Self::ExecutionSucceeded => callback::EVENT_TYPES[0],
            Self::ExecutionFailed => callback::EVENT_TYPES[1],
            Self::ExecutionCancelled => callback::EVENT_TYPES[2],
            Self::CredentialNeedsReconnect => callback::EVENT_TYPES[3],
        }
    }
}

/// The body of `POST /webhooks/subscriptions`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSubscriptionRequest {
    /// Where events are POSTed: an absolute `http`/`https` URL without
    /// credentials. Private and loopback addresses are refused when sending
    /// unless `CONVEYOR_ALLOW_PRIVATE_NETWORKS`.
    #[schema(min_length = 8, max_length = 2048, pattern = "^https?://")]
    url: String,
    /// The event types to receive, each once: `execution.succeeded`,
    /// `execution.failed`, `execution.cancelled`,
    /// `credential.needs_reconnect`, or `*` for every type.
    #[schema(min_items = 1, max_items = 5)]
    events: Vec<EventType>,
    /// A note for people.
    #[schema(max_length = 500)]
    description: Option<String>,
    /// Deliver new events (default `true`).
    enabled: Option<bool>,
}

/// The body of `PATCH /webhooks/subscriptions/{id}`: any of the fields.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateSubscriptionRequest {
    /// New URL (events already created keep theirs).
    #[schema(min_length = 8, max_length = 2048, pattern = "^https?://")]
    url: Option<String>,
    /// New event types.
    #[schema(min_items = 1, max_items = 5)]
    events: Option<Vec<EventType>>,
    /// New note (`null` removes it).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 500)]
    description: Option<Option<String>>,
    /// Enable or disable: a disabled subscription gets no new events;
    /// deliveries already created are still attempted.
    enabled: Option<bool>,
}

/// The workspace's subscriptions.
#[derive(Debug, Serialize, ToSchema)]
struct SubscriptionList {
    items: Vec<Subscription>,
}

/// A subscription's recent deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct SubscriptionDeliveries {
    items: Vec<CallbackView>,
}

/// Every problem of the given fields, each naming its field.
fn check(url: Option<&str>, events: Option<&[String]>, description: Option<&str>) -> ApiResult<()> {
    let mut errors = Vec::new();
    if let Some(Err(m)) = url.map(callback::check_url) {
        errors.push(json!({"path": "url", "message": m}));
    }
    if let Some(Err(m)) = events.map(callback::check_events) {
        errors.push(json!({"path": "events", "message": m}));
    }
    if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        errors.push(json!({"path": "description", "message": format!("must be at most {MAX_DESCRIPTION} characters")}));
    }
    match errors.first() {
        None => Ok(()),
        Some(first) => Err(ApiError::validation(
            format!(
                "invalid subscription: {}: {}",
                first["path"].as_str().unwrap_or(""),
                first["message"].as_str().unwrap_or("")
            ),
            Value::Array(errors),
        )),
    }
}

fn names(events: &[EventType]) -> Vec<String> {
    events.iter().map(|e| e.as_str().to_owned()).collect()
}

/// Subscribe a URL to the workspace's events. Each event is POSTed as
/// `{"type", "timestamp", "data"}`, signed per Standard Webhooks with the
/// workspace's signing secret (`GET /webhooks/signing-secret`), retried
/// with backoff for up to 24 hours; every attempt is listed at
/// `GET /webhooks/subscriptions/{id}/deliveries`.
#[utoipa::path(post, path = "/webhooks/subscriptions", tag = "webhooks", operation_id = "create_subscription",
    request_body(content = CreateSubscriptionRequest, example = json!({"url": "https://example.com/conveyor-events", "events": ["execution.failed", "credential.needs_reconnect"]})),
    responses((status = 201, description = "Created", body = Subscription),
              (status = 409, description = "The workspace already has the most subscriptions allowed (20)"),
              (status = 422, description = "Invalid `url`, `events` or `description`; `details.errors` names each field")))]
async fn create_subscription(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateSubscriptionRequest>,
) -> ApiResult<Response> {
    let events = names(&body.events);
    check(Some(&body.url), Some(&events), body.description.as_deref())?;
    let new = NewSubscription {
        url: &body.url,
        events: &events,
        description: body.description.as_deref(),
        enabled: body.enabled.unwrap_or(true),
    };
    let created = subscriptions::create(&state.pool, &caller.workspace_id, &new, Utc::now())
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "a workspace may have at most {MAX_PER_WORKSPACE} subscriptions"
            ))
        })?;
    let id = created.id.to_string();
    audit(
        &state,
        &caller,
        "subscription.create",
        "subscription",
        Some(&id),
        json!({"events": created.events}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// The workspace's event subscriptions, oldest first.
#[utoipa::path(get, path = "/webhooks/subscriptions", tag = "webhooks", operation_id = "list_subscriptions",
    responses((status = 200, description = "The workspace's subscriptions", body = SubscriptionList)))]
async fn list_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SubscriptionList>> {
    let items = subscriptions::list(&state.pool, &caller.workspace_id).await?;
    Ok(Json(SubscriptionList { items }))
}

async fn find(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<Subscription> {
    subscriptions::get(&state.pool, &caller.workspace_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription"))
}

/// An event subscription.
#[utoipa::path(get, path = "/webhooks/subscriptions/{id}", tag = "webhooks", operation_id = "get_subscription",
    params(("id" = Uuid, Path, description = "The subscription")),
    responses((status = 200, description = "The subscription", body = Subscription),
              (status = 404, description = "No such subscription in this workspace")))]
async fn get_subscription(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Subscription>> {
    Ok(Json(find(&state, &caller, id).await?))
}

/// Change a subscription: its URL, event types, description, or whether
/// it is enabled. Events already created keep their URL.
#[utoipa::path(patch, path = "/webhooks/subscriptions/{id}", tag = "webhooks", operation_id = "update_subscription",
    params(("id" = Uuid, Path, description = "The subscription")),
    request_body(content = UpdateSubscriptionRequest, example = json!({"enabled": false})),
    responses((status = 200, description = "The changed subscription", body = Subscription),
              (status = 404, description = "No such subscription in this workspace"),
              (status = 422, description = "Invalid `url`, `events` or `description`; `details.errors` names each field")))]
async fn update_subscription(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateSubscriptionRequest>,
) -> ApiResult<Json<Subscription>> {
    let events = body.events.as_deref().map(names);
    check(
        body.url.as_deref(),
        events.as_deref(),
        body.description.as_ref().and_then(Option::as_deref),
    )?;
    let change = Change {
        url: body.url.as_deref(),
        events: events.as_deref(),
        description: body.description.as_ref().map(Option::as_deref),
        enabled: body.enabled,
    };
    let updated = subscriptions::update(&state.pool, &caller.workspace_id, id, &change, Utc::now())
        .await?
        .ok_or_else(|| ApiError::not_found("subscription"))?;
    audit(
        &state,
        &caller,
        "subscription.update",
        "subscription",
        Some(&id.to_string()),
        json!({"events": updated.events, "enabled": updated.enabled}),
    )
    .await;
    Ok(Json(updated))
}

/// Delete a subscription with its deliveries; pending ones are not sent.
#[utoipa::path(delete, path = "/webhooks/subscriptions/{id}", tag = "webhooks", operation_id = "delete_subscription",
    params(("id" = Uuid, Path, description = "The subscription")),
    responses((status = 204, description = "Deleted"),
              (status = 404, description = "No such subscription in this workspace")))]
async fn delete_subscription(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    if !subscriptions::delete(&state.pool, &caller.workspace_id, id).await? {
        return Err(ApiError::not_found("subscription"));
    }
    audit(
        &state,
        &caller,
        "subscription.delete",
        "subscription",
        Some(&id.to_string()),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The subscription's last 100 deliveries, newest first, each with every
/// attempt (status code, error, duration).
#[utoipa::path(get, path = "/webhooks/subscriptions/{id}/deliveries", tag = "webhooks", operation_id = "list_subscription_deliveries",
    params(("id" = Uuid, Path, description = "The subscription")),
    responses((status = 200, description = "Recent deliveries, newest first", body = SubscriptionDeliveries),
              (status = 404, description = "No such subscription in this workspace")))]
async fn list_subscription_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<SubscriptionDeliveries>> {
    find(&state, &caller, id).await?;
    let items = subscriptions::deliveries(&state.pool, id, RECENT_DELIVERIES).await?;
    Ok(Json(SubscriptionDeliveries { items }))
}
