//! Operations: liveness and readiness (no authentication), and metrics
//! (on this port only with `CONVEYOR_METRICS_TOKEN`, as a bearer token).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// `/healthz` and `/readyz`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Prometheus text format (metric names in docs/observability.md). On the
/// API's own port only when `CONVEYOR_METRICS_TOKEN` is set (else 404, as
/// if absent: scrape `CONVEYOR_METRICS_LISTEN` instead), and then only with
/// `Authorization: Bearer <that token>` (else 401).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = &state.config.metrics_token else {
        return ApiError::not_found("route").into_response();
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared as digests: the time taken says nothing about the token.
    let matches = presented.is_some_and(|p| {
        Sha256::digest(p.as_bytes()) == Sha256::digest(token.expose_secret().as_bytes())
    });
    if !matches {
        return ApiError::unauthorized(
            "`/metrics` needs `Authorization: Bearer` with the metrics token",
        )
        .into_response();
    }
    match &state.metrics {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "no metrics recorder is installed in this process",
        )
        .into_response(),
    }
}

/// The process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The database is reachable and every migration this build knows of is
/// applied. Asked on the probe's own connection: a process whose pool is
/// busy serving requests is slow, not unready, and taking it out of
/// rotation would only move its load onto the others.
async fn readyz(State(state): State<AppState>) -> Response {
    match conveyor_engine::store::schema_ready(&state.probe).await {
        Ok(true) => Json(json!({"status": "ready"})).into_response(),
        Ok(false) => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "migrations_pending",
            "database migrations are not all applied",
        )
        .into_response(),
        Err(_) => ApiError::unavailable().into_response(),
    }
}
