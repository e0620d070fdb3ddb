//! Console sign-in, sessions and CSRF tokens. The browser holds a random
//! token in an `HttpOnly; SameSite=Strict` cookie (`Secure` when the
//! public URL is https); the database holds only its SHA-256 beside the
//! session's CSRF token, which every state-changing form carries.

use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use chrono::Utc;
use conveyor_engine::crypto::token_digest;
use conveyor_engine::state::AdminRole;
use conveyor_engine::store::access;
use conveyor_engine::store::console::{self as store, ConsoleSession};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{Fields, Layout, Nav, PageError, PageResult, render};
use crate::AppState;
use crate::auth::{API_KEY_PREFIX, Caller, Scope, api_key_caller, check_membership, jwt_caller};
use crate::error::ApiError;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "conveyor_console";
/// How long a console session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The sign-in URL printed by `conveyor-api console-link`.
pub fn link_url(public_url: &str, token: &str) -> String {
    format!(
        "{}/console/login/link?token={token}",
        public_url.trim_end_matches('/')
    )
}

/// A signed-in console user: who, the CSRF token, the admin role.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub caller: Caller,
    pub csrf: String,
    pub admin: Option<AdminRole>,
}

impl Session {
    /// The page frame for a page titled `title` under `nav`.
    pub fn layout(&self, title: impl Into<String>, nav: Nav) -> Layout {
        let (css, js) = Layout::assets();
        Layout {
            title: title.into(),
            nav,
            workspace: self.caller.workspace_id.clone(),
            actor: self.caller.actor.clone(),
            csrf: self.csrf.clone(),
            admin: self.admin.is_some(),
            css,
            js,
        }
    }

    /// Refuses a form whose `csrf` field is not this session's token.
    ///
    /// # Errors
    ///
    /// 403 when the field is missing or wrong.
    pub fn check(&self, form: &Fields) -> Result<(), PageError> {
        let sent = form.get("csrf").unwrap_or_default();
        if bool::from(sent.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this form lacks a valid CSRF token (field `csrf`); reload the page and try again",
            )
            .into())
        }
    }

    /// The admin role, or 403.
    ///
    /// # Errors
    ///
    /// 403 for a non-admin, or an admin whose role is below `needed`.
    pub fn admin(&self, needed: AdminRole) -> Result<AdminRole, PageError> {
        match self.admin {
            Some(role) if role.covers(needed) => Ok(role),
            Some(role) => Err(ApiError::forbidden(format!(
                "this needs the admin role `{needed}` or above; yours is `{role}`"
            ))
            .into()),
            None => Err(ApiError::forbidden("this page is for admins").into()),
        }
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_login = || Redirect::to("/console/login").into_response();
        let token = cookie_token(&parts.headers).ok_or_else(to_login)?;
        let found = store::find_session(&state.pool, &token_digest(&token), Utc::now())
            .await
            .map_err(|e| PageError::from(e).into_response())?
            .ok_or_else(to_login)?;
        if !state.limiter.allow(&found.workspace_id) {
            return Err(PageError::from(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this workspace exceeds its request rate; retry shortly",
            ))
            .into_response());
        }
        let admin = match found.user_id.as_deref() {
            Some(user) => access::admin_role(&state.pool, user)
                .await
                .map_err(|e| PageError::from(e).into_response())?,
            None => None,
        };
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let caller = Caller {
            workspace_id: found.workspace_id,
            actor: found.actor,
            user_id: found.user_id,
            api_key_id: found.api_key_id,
            request_id,
        };
        check_membership(state, &caller)
            .await
            .map_err(|e| PageError::from(e).into_response())?;
        Ok(Self {
            caller,
            csrf: found.csrf_token,
            admin,
        })
    }
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage<'a> {
    error: Option<&'a str>,
    css: &'a str,
}

fn login_form(status: StatusCode, error: Option<&str>) -> PageResult {
    let page = LoginPage {
        error,
        css: Layout::assets().0,
    };
    let mut response = render(&page)?;
    *response.status_mut() = status;
    Ok(response)
}

/// `GET /console/login`: paste a token.
pub(super) async fn login_page() -> PageResult {
    login_form(StatusCode::OK, None)
}

/// `POST /console/login`: a JWT, or an API key holding every scope.
pub(super) async fn login(State(state): State<AppState>, Form(form): Form<Fields>) -> PageResult {
    let Some(token) = form.text("token") else {
        return login_form(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("token: paste a JWT or an API key"),
        );
    };
    let caller = if token.starts_with(API_KEY_PREFIX) {
        match api_key_caller(&state, token, None).await {
            Ok((caller, scopes))
                if Scope::ALL
                    .iter()
                    .all(|s| scopes.iter().any(|k| k == s.as_str())) =>
            {
                caller
            }
            Ok(_) => {
                return login_form(
                    StatusCode::FORBIDDEN,
                    Some(
                        "token: the console needs an API key with the read, execute and manage scopes",
                    ),
                );
            }
            Err(e) => return login_form(e.status(), Some(&format!("token: {}", e.message()))),
        }
    } else {
        match jwt_caller(&state, token, None) {
            Ok(caller) => caller,
            Err(e) => return login_form(e.status(), Some(&format!("token: {}", e.message()))),
        }
    };
    start(&state, caller).await
}

/// `?token=` of a sign-in link.
#[derive(Debug, Deserialize)]
pub(super) struct LinkQuery {
    token: String,
}

#[derive(Template)]
#[template(path = "console/link.html")]
struct LinkPage<'a> {
    workspace: &'a str,
    user: &'a str,
    token: &'a str,
    css: &'a str,
}

/// The sign-in page saying why a sign-in link does not work.
fn refused_link(e: &ApiError) -> PageResult {
    login_form(
        e.status(),
        Some(&format!("this sign-in link does not work: {}", e.message())),
    )
}

/// `GET /console/login/link?token=`: a one-time link from
/// `conveyor-api console-link`. It changes nothing: it asks the person
/// to confirm the workspace and user it signs in as, and the button
/// posts the token back. A cross-site page that opens the link (or
/// embeds it) therefore cannot replace the browser's session with the
/// link's, which a link forwarded by its owner would otherwise do.
pub(super) async fn link(State(state): State<AppState>, Query(q): Query<LinkQuery>) -> PageResult {
    let claims = match state.auth.verify_link(&q.token) {
        Ok(claims) => claims,
        Err(e) => return refused_link(&e),
    };
    render(&LinkPage {
        workspace: &claims.workspace_id,
        user: &claims.sub,
        token: &q.token,
        css: Layout::assets().0,
    })
}

/// `POST /console/login/link` (`token`): uses the link, once, and opens
/// its session. Refused from another site, as every console `POST` is.
pub(super) async fn use_link(
    State(state): State<AppState>,
    Form(form): Form<Fields>,
) -> PageResult {
    let Some(token) = form.text("token") else {
        return login_form(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("token: open the sign-in link again"),
        );
    };
    let claims = match state.auth.verify_link(token) {
        Ok(claims) => claims,
        Err(e) => return refused_link(&e),
    };
    let expires = i64::try_from(claims.exp)
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .unwrap_or_else(Utc::now);
    if !store::use_link(&state.pool, &token_digest(token), expires).await? {
        return login_form(
            StatusCode::GONE,
            Some("this sign-in link was already used; ask for a new one"),
        );
    }
    let caller = Caller {
        workspace_id: claims.workspace_id,
        actor: claims.sub.clone(),
        user_id: Some(claims.sub),
        api_key_id: None,
        request_id: None,
    };
    start(&state, caller).await
}

/// Opens a session for `caller` (a member of its workspace, when
/// `CONVEYOR_REQUIRE_MEMBERSHIP` asks) and lands on the executions list.
async fn start(state: &AppState, caller: Caller) -> PageResult {
    if let Err(e) = check_membership(state, &caller).await {
        return login_form(e.status(), Some(&format!("token: {}", e.message())));
    }
    let random =
        || base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let token = random();
    let now = Utc::now();
    let session = ConsoleSession {
        workspace_id: caller.workspace_id,
        actor: caller.actor,
        user_id: caller.user_id,
        api_key_id: caller.api_key_id,
        csrf_token: random(),
        expires_at: now + SESSION_TTL,
    };
    store::create_session(&state.pool, &token_digest(&token), &session, now).await?;
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE_NAME}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut response = Redirect::to("/console").into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(&e))?,
    );
    Ok(response)
}

/// `POST /console/logout`: ends the session and clears the cookie.
pub(super) async fn logout(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<Fields>,
) -> PageResult {
    session.check(&form)?;
    if let Some(token) = cookie_token(&headers) {
        store::delete_session(&state.pool, &token_digest(&token)).await?;
    }
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static(
            "conveyor_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(admin: Option<AdminRole>) -> Session {
        Session {
            caller: Caller {
                workspace_id: "ws".to_owned(),
                actor: "ada".to_owned(),
                user_id: Some("ada".to_owned()),
                api_key_id: None,
                request_id: None,
            },
            csrf: "csrf-token-1".to_owned(),
            admin,
        }
    }

    fn form(pairs: &[(&str, &str)]) -> Fields {
        Fields(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn status<T: std::fmt::Debug>(result: Result<T, PageError>) -> StatusCode {
        result.expect_err("refused").0.status()
    }

    #[test]
    fn a_form_passes_only_with_this_sessions_csrf_token() {
        let s = session(None);
        assert!(
            s.check(&form(&[("csrf", "csrf-token-1"), ("x", "1")]))
                .is_ok()
        );
        for sent in [
            form(&[]),
            form(&[("csrf", "")]),
            form(&[("csrf", "csrf-token-")]),
            form(&[("csrf", "csrf-token-12")]),
            form(&[("csrf", "csrf-token-2")]),
            form(&[("x", "csrf-token-1")]),
        ] {
            assert_eq!(status(s.check(&sent)), StatusCode::FORBIDDEN, "{sent:?}");
        }
    }

    #[test]
    fn admin_pages_need_a_role_that_covers_theirs() {
        assert_eq!(
            status(session(None).admin(AdminRole::Viewer)),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(session(Some(AdminRole::Viewer)).admin(AdminRole::Operator)),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            session(Some(AdminRole::Operator))
                .admin(AdminRole::Operator)
                .unwrap(),
            AdminRole::Operator
        );
        assert_eq!(
            session(Some(AdminRole::Owner))
                .admin(AdminRole::Viewer)
                .unwrap(),
            AdminRole::Owner
        );
    }

    #[test]
    fn the_session_token_is_read_from_its_own_cookie_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(cookie_token(&headers), None);
        headers.append(COOKIE, HeaderValue::from_static("theme=dark"));
        headers.append(
            COOKIE,
            HeaderValue::from_static(
                "conveyor_console_old=stale; x=1;conveyor_console=tok=en; y=2",
            ),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some("tok=en"));
        let mut other = HeaderMap::new();
        other.insert(
            COOKIE,
            HeaderValue::from_static("conveyor_console_old=stale; my_conveyor_console=x"),
        );
        assert_eq!(cookie_token(&other), None);
    }
}
