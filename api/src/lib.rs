//! Conveyor's HTTP API: the axum front door. [`app`] builds the router for
//! a [`AppState`]; `main.rs` reads settings, migrates and serves.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
}

/// The API router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The database is reachable and every migration this build knows of is
/// applied.
async fn readyz(State(state): State<AppState>) -> Response {
    match conveyor_engine::store::schema_ready(&state.pool).await {
        Ok(true) => Json(json!({"status": "ready"})).into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": "migrations_pending", "message": "database migrations are not all applied", "details": null}})),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": "database_unavailable", "message": "the database is not reachable", "details": null}})),
        )
            .into_response(),
    }
}
