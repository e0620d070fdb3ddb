//! The API's one error shape: `{"error": {"code", "message", "details"}}`.
//!
//! Caller mistakes are 4xx with a precise message; another workspace's
//! objects are 404 exactly like missing ones; anything else is a 500 whose
//! body says nothing more, while the cause is logged.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};

/// Every `code` an error body can carry.
pub const ERROR_CODES: [&str; 15] = [
    "malformed_json",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "payload_too_large",
    "unsupported_media_type",
    "validation_failed",
    "rate_limited",
    "internal",
    "database_unavailable",
    "migrations_pending",
    "metrics_unavailable",
];

/// Seconds a 429 asks the caller to wait (`Retry-After`): the workspace's
/// token bucket refills within a second.
pub const RATE_LIMIT_RETRY_AFTER_SECS: u32 = 1;
/// Seconds a 503 asks the caller to wait (`Retry-After`).
pub const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 5;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"error": {"code": "validation_failed", "message": "invalid connector: steps[0].url: must be an absolute http:// or https:// URL", "details": {"errors": [{"path": "steps[0].url", "message": "must be an absolute http:// or https:// URL"}]}}}))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Machine-readable; one of a fixed set.
    #[schema(schema_with = error_code_schema)]
    pub code: &'static str,
    /// For people; never quotes a secret.
    pub message: String,
    /// Structured details, or null: for `validation_failed`, `errors`
    /// lists every invalid field as `{path, message}`.
    pub details: Value,
}

fn error_code_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ERROR_CODES))
}

/// An error answered to an API caller.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Value,
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// Adds structured details (e.g. the list of invalid fields).
    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 400: the request is malformed (bad JSON, bad cursor, bad parameter).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no valid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: authenticated, not allowed (admin routes).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: absent, or belongs to another workspace.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 409: conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422: well-formed but invalid; `errors` lists `{path, message}`.
    pub fn validation(message: impl Into<String>, errors: Value) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
        .with_details(json!({ "errors": errors }))
    }

    /// 503: the database is unreachable, or no connection of this
    /// process's pool came free within its acquire timeout (sqlx reports
    /// both as the same timeout while the server refuses connections).
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is not reachable, or every database connection of this API process \
             stayed busy (CONVEYOR_DB_MAX_CONNECTIONS); retry shortly",
        )
    }

    /// 500 for a cause the caller cannot act on; the cause is logged, not
    /// returned.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the cause was logged",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The structured details (null when none).
    pub fn details(&self) -> &Value {
        &self.details
    }
}

impl From<conveyor_engine::Error> for ApiError {
    fn from(e: conveyor_engine::Error) -> Self {
        if e.is_connection() {
            tracing::warn!(error = %e, "database unreachable or connection pool exhausted");
            Self::unavailable()
        } else {
            Self::internal(&e)
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        conveyor_engine::Error::from(e).into()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match self.status {
            StatusCode::TOO_MANY_REQUESTS => Some(RATE_LIMIT_RETRY_AFTER_SECS),
            StatusCode::SERVICE_UNAVAILABLE => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
