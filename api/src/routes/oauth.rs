//! `GET /oauth/callback`: where OAuth providers send the person back. It
//! takes no bearer token: the single-use `state` (bound to a workspace, a
//! credential and an expiry when the connection was started) is what
//! authenticates it. It answers a small HTML page: connected, or why not.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use conveyor_engine::oauth::connect::{self, Callback, ConnectError};
use conveyor_engine::oauth::token::{TOKEN_TIMEOUT, TokenClient};
use conveyor_engine::store::access::{self as access_store, AuditEntry};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::ApiQuery;

/// This group's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(oauth_callback))
}

/// What the provider appends to the redirect URI (others are ignored).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    /// The `state` handed out by `oauth/start`.
    state: Option<String>,
    /// The authorization code.
    code: Option<String>,
    /// The provider's error code, when the person declined or it failed.
    error: Option<String>,
}

/// The OAuth redirect URI (`CONVEYOR_PUBLIC_URL` + `/api/v1/oauth/callback`):
/// exchanges the code for tokens and seals them into the credential. A
/// wrong, replayed or expired `state`, or an error from the provider,
/// stores nothing; the page says why.
#[utoipa::path(get, path = "/oauth/callback", tag = "credentials", operation_id = "oauth_callback",
    params(CallbackQuery), security(()),
    responses((status = 200, description = "Connected: an HTML page", content_type = "text/html", body = String),
              (status = 400, description = "Not connected (unknown, used or expired state; the provider's error; a failed code exchange): an HTML page saying why", content_type = "text/html", body = String)))]
async fn oauth_callback(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<CallbackQuery>,
) -> Response {
    let tokens = match TokenClient::new(state.config.allow_private_networks, TOKEN_TIMEOUT) {
        Ok(t) => t,
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    let callback = Callback {
        state: q.state.as_deref(),
        code: q.code.as_deref(),
        error: q.error.as_deref(),
    };
    let redirect_uri = state.config.oauth_redirect_uri();
    let finished = connect::finish(
        &state.pool,
        &state.keyring,
        &tokens,
        &callback,
        &redirect_uri,
        chrono::Utc::now(),
    )
    .await;
    match finished {
        Ok(connected) => {
            let entry = AuditEntry {
                workspace_id: Some(&connected.workspace_id),
                actor: "oauth-callback",
                action: "credential.oauth_connected",
                object_type: "credential",
                object_id: Some(&connected.name),
                request_id: None,
                details: json!({}),
            };
            if let Err(e) = access_store::audit(&state.pool, &entry).await {
                tracing::error!(error = %e, "could not write the audit entry");
            }
            page(
                StatusCode::OK,
                "Connected",
                &format!(
                    "Credential `{}` is connected. You can close this window.",
                    connected.name
                ),
            )
        }
        Err(ConnectError::Store(e)) => ApiError::from(e).into_response(),
        Err(e @ ConnectError::Crypto(_)) => ApiError::internal(&e).into_response(),
        Err(e) => {
            tracing::info!(reason = %e, "OAuth callback refused");
            page(StatusCode::BAD_REQUEST, "Not connected", &e.to_string())
        }
    }
}

/// The page the person lands on: connected, or why not.
#[derive(Template)]
#[template(path = "oauth/callback.html")]
struct CallbackPage<'a> {
    title: &'a str,
    connected: bool,
    /// Escaped by the template: it may quote what the provider (or whoever
    /// crafted the link) put in the query.
    message: &'a str,
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let page = CallbackPage {
        title,
        connected: status.is_success(),
        message,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}
