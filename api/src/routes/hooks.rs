//! `POST /hooks/{id}`: deliveries from webhook providers. No bearer token:
//! the unguessable id finds the trigger and its verification scheme
//! proves the sender. A delivery that fails verification (401) or mapping
//! (422) starts nothing; every delivery is recorded. The provider's
//! delivery id is the execution's idempotency key, so a provider's retry
//! never starts a second execution. The answer comes as soon as the
//! execution is enqueued (202).

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use conveyor_engine::connector::{Connector, ValidationError};
use conveyor_engine::start::StartError;
use conveyor_engine::state::StartedBy;
use conveyor_engine::store::executions::NewExecution;
use conveyor_engine::store::triggers::{self, Loaded, TriggerError};
use conveyor_engine::webhook::mapping::{self, Mapping};
use conveyor_engine::webhook::{self, Scheme};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{ApiBytes, ApiPath, refuse_nul};

/// Longest delivery id used as is in the idempotency key; longer ones are
/// hashed.
const MAX_PLAIN_DELIVERY_ID: usize = 200;

/// The route (outside `/api/v1` and the OpenAPI document: providers call
/// it, not API clients).
pub fn router() -> Router<AppState> {
    Router::new().route("/hooks/{id}", post(receive))
}

/// What a delivery came to.
struct Answer {
    status: StatusCode,
    outcome: &'static str,
    execution_id: Option<Uuid>,
    error: Option<String>,
    body: Response,
}

impl Answer {
    fn refused(e: ApiError, outcome: &'static str, error: String) -> Self {
        Self {
            status: e.status(),
            outcome,
            execution_id: None,
            error: Some(error),
            body: e.into_response(),
        }
    }
}

async fn receive(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Response {
    let now = Utc::now();
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return ApiError::not_found("trigger").into_response();
    }
    let loaded = match triggers::load(&state.pool, &state.keyring, &id).await {
        Ok(Some(t)) => t,
        Ok(None) => return ApiError::not_found("trigger").into_response(),
        Err(TriggerError::Store(e)) => return ApiError::from(e).into_response(),
        Err(e @ TriggerError::Crypto(_)) => return ApiError::internal(&e).into_response(),
    };
    let (delivery_id, answer) =
        handle(&state, &loaded, &headers, query.as_deref(), &body, now).await;
    metrics::counter!("conveyor_webhook_deliveries_total", "outcome" => answer.outcome)
        .increment(1);
    if let Err(e) = triggers::record(
        &state.pool,
        &id,
        now,
        (answer.status.as_u16(), answer.outcome),
        delivery_id.as_deref(),
        answer.execution_id,
        answer.error.as_deref(),
    )
    .await
    {
        tracing::error!(error = %e, trigger.id = %id, "could not record a webhook delivery");
    }
    answer.body
}

async fn handle(
    state: &AppState,
    t: &Loaded,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> (Option<String>, Answer) {
    // Values as the UTF-8 they are (`to_str` refuses all beyond visible
    // ASCII): a delivery id passed over would let a provider's retry start
    // a second execution. Bytes that are not UTF-8 are replaced, so the
    // same bytes always read the same.
    let header = &|name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let scheme = t.meta.scheme;
    let key = match webhook::key_of(scheme, &String::from_utf8_lossy(&t.secret)) {
        Ok(key) => key,
        Err(m) => {
            let e = ApiError::internal(&format!("trigger secret unusable: {m}"));
            return (
                None,
                Answer::refused(
                    e,
                    "unverified",
                    "the trigger's secret is unusable".to_owned(),
                ),
            );
        }
    };
    if let Err(f) = webhook::verify(scheme, &t.meta.settings, &key, header, body, now) {
        let message = format!("verification failed: {f}");
        return (
            None,
            Answer::refused(ApiError::unauthorized(&message), "unverified", message),
        );
    }
    let content_type = header("content-type");
    // The shared-secret header, credentials and cookies never reach the
    // mapping (and so never an execution's stored input).
    let secret_header = match scheme {
        Scheme::Header => t
            .meta
            .settings
            .header
            .as_deref()
            .map(str::to_ascii_lowercase),
        _ => None,
    };
    let visible = headers.iter().filter_map(|(k, v)| {
        let name = k.as_str();
        let hidden = matches!(name, "authorization" | "cookie" | "proxy-authorization")
            || secret_header.as_deref() == Some(name);
        (!hidden).then_some((name, std::str::from_utf8(v.as_bytes()).ok()?))
    });
    let doc = match mapping::document(body, content_type.as_deref(), visible, query) {
        Ok(doc) => doc,
        Err(m) => {
            let e = ApiError::validation(
                format!("body: {m}"),
                json!([{"path": "body", "message": m}]),
            );
            return (None, Answer::refused(e, "unmapped", m));
        }
    };
    // Refused as the JSON API refuses it: PostgreSQL cannot store NUL, in
    // an input or a delivery id.
    if let Err(e) = refuse_nul(&doc, "delivery") {
        let message = e.message().to_owned();
        return (None, Answer::refused(e, "unmapped", message));
    }
    let delivery_id = webhook::delivery_id(scheme, &t.meta.settings, header, Some(&doc["body"]));
    if doc["body"]["type"] == "url_verification"
        && let Some(challenge) = doc["body"]["challenge"].as_str()
    {
        let answer = Answer {
            status: StatusCode::OK,
            outcome: "handshake",
            execution_id: None,
            error: None,
            body: Json(json!({"challenge": challenge})).into_response(),
        };
        return (delivery_id, answer);
    }
    let answer = start(state, t, &doc, delivery_id.as_deref(), now).await;
    (delivery_id, answer)
}

fn unmapped(message: &str, errors: Vec<ValidationError>) -> Answer {
    let first = errors
        .first()
        .map(|e| format!("{}: {}", e.path, e.message))
        .unwrap_or_default();
    let e = ApiError::validation(format!("{message}: {first}"), json!(errors));
    Answer::refused(e, "unmapped", format!("{message}: {first}"))
}

async fn start(
    state: &AppState,
    t: &Loaded,
    doc: &Value,
    delivery_id: Option<&str>,
    now: DateTime<Utc>,
) -> Answer {
    if t.connector_deleted {
        return Answer::refused(
            ApiError::not_found("connector"),
            "unmapped",
            "the connector was deleted".to_owned(),
        );
    }
    let mapping = match Mapping::parse(t.meta.mapping.as_ref()) {
        Ok(m) => m,
        Err(errors) => return unmapped("the trigger's input mapping is invalid", errors),
    };
    let input = match mapping.apply(doc) {
        Ok(input) => input,
        Err(errors) => return unmapped("the delivery does not map to an input", errors),
    };
    let connector: Connector = match serde_json::from_value(t.definition.clone()) {
        Ok(c) => c,
        Err(e) => {
            let e = ApiError::internal(&e);
            return Answer::refused(
                e,
                "unmapped",
                "the connector definition is unreadable".to_owned(),
            );
        }
    };
    if let Err(errors) =
        state
            .starter
            .check_input(t.meta.connector_id, t.version, &connector, &input, "input")
    {
        return unmapped(
            "the input does not match the connector's input_schema",
            errors,
        );
    }
    let new = NewExecution {
        workspace_id: t.workspace_id.clone(),
        connector_id: t.meta.connector_id,
        connector_version: t.version,
        input,
        idempotency_key: delivery_id.map(|d| idempotency_key(&t.meta.id, d)),
        priority: 0,
        run_at: None,
        rerun_of: None,
        trace_context: conveyor_engine::telemetry::current_context(),
        started_by: StartedBy::Trigger(t.meta.id.clone()),
        callback_url: None,
    };
    let (execution_id, duplicate, error) =
        match state.starter.start_one(&state.pool, &new, now).await {
            Ok(e) => (Some(e.id), !e.created, None),
            // The provider reused a delivery id for another payload: the first
            // delivery's execution stands, and nothing new starts.
            Err(StartError::ReusedKey { .. }) => (
                None,
                true,
                Some("this delivery id was seen with another payload; nothing started".to_owned()),
            ),
            // The cause is logged (by `ApiError::from`), never recorded
            // where the workspace reads it.
            Err(StartError::Store(e)) => {
                let e = ApiError::from(e);
                let message = e.message().to_owned();
                return Answer::refused(e, "unmapped", message);
            }
        };
    let outcome = if duplicate { "duplicate" } else { "started" };
    Answer {
        status: StatusCode::ACCEPTED,
        outcome,
        execution_id,
        error,
        body: (
            StatusCode::ACCEPTED,
            Json(json!({"execution_id": execution_id, "duplicate": duplicate})),
        )
            .into_response(),
    }
}

/// `trigger:<trigger id>:<delivery id>`, the delivery id hashed when long.
fn idempotency_key(trigger_id: &str, delivery_id: &str) -> String {
    if delivery_id.chars().count() <= MAX_PLAIN_DELIVERY_ID {
        format!("trigger:{trigger_id}:{delivery_id}")
    } else {
        let digest = Sha256::digest(delivery_id.as_bytes());
        format!("trigger:{trigger_id}:sha256:{}", webhook::to_hex(&digest))
    }
}
