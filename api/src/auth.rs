//! Authentication: `Authorization: Bearer <token>` where the token is a
//! JWT (HS256 only, `CONVEYOR_JWT_SECRET`; claims `sub`, `workspace_id`,
//! `exp` required, `iat`/`nbf` honoured, 30 s clock-skew leeway; `iss` and
//! `aud` checked when configured; a lifetime of at most
//! `CONVEYOR_JWT_MAX_LIFETIME_SECS`) or a workspace API key (`cvk_...`,
//! stored as its SHA-256, with scopes and an optional expiry).

use std::time::Duration;

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use base64::Engine as _;
use conveyor_engine::crypto::token_digest;
use conveyor_engine::state::{AdminRole, StartedBy};
use conveyor_engine::store::access::ApiKeyAuth;
use conveyor_engine::store::members;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

mod keys;
pub use keys::{DEFAULT_KEY_CACHE, KeyCache, Ticket};

/// Clock-skew leeway for `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// Longest accepted workspace or user id.
pub const MAX_ID_LEN: usize = 128;
/// Prefix of workspace API keys.
pub const API_KEY_PREFIX: &str = "cvk_";
/// Default longest token lifetime (`CONVEYOR_JWT_MAX_LIFETIME_SECS`).
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What a token must satisfy beyond its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Required `iss` (`CONVEYOR_JWT_ISSUER`); `None`: not checked.
    pub issuer: Option<String>,
    /// Required `aud` (`CONVEYOR_JWT_AUDIENCE`); `None`: not checked.
    pub audience: Option<String>,
    /// Longest lifetime: `exp` minus `iat` (or minus now, without `iat`).
    pub max_lifetime: Duration,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            max_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
        }
    }
}

/// The JWT claims Conveyor reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (the calling product's own).
    pub sub: String,
    /// The workspace id (the calling product's own).
    pub workspace_id: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Set only in a console sign-in link ([`Authenticator::mint_link`]):
    /// such a token opens one console session from the link's page
    /// ([`Authenticator::verify_link`]) and is refused everywhere else;
    /// any other token is refused there.
    #[serde(
        default,
        rename = "conveyor_console_link",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub console_link: bool,
}

/// The longest a console sign-in link may work.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(3600);

/// What [`Authenticator::mint`] signs: the claims plus the policy's
/// issuer and audience (checked by `jsonwebtoken` from the raw token).
#[derive(Serialize)]
struct Signed<'a> {
    #[serde(flatten)]
    claims: &'a Claims,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Verifies (and, for the CLI, signs) tokens.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    policy: TokenPolicy,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator(<secret>)")
    }
}

impl Authenticator {
    /// Uses `secret`'s UTF-8 bytes as the HMAC key, exactly as given, with
    /// the default [`TokenPolicy`].
    ///
    /// # Errors
    ///
    /// A secret shorter than 32 bytes.
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        Self::with_policy(secret, TokenPolicy::default())
    }

    /// Like [`Authenticator::new`], with `policy`.
    ///
    /// # Errors
    ///
    /// A secret shorter than 32 bytes, or a zero maximum lifetime.
    pub fn with_policy(secret: &str, policy: TokenPolicy) -> anyhow::Result<Self> {
        if policy.max_lifetime.is_zero() {
            anyhow::bail!("CONVEYOR_JWT_MAX_LIFETIME_SECS must be at least 1");
        }
        if secret.len() < 32 {
            anyhow::bail!(
                "CONVEYOR_JWT_SECRET must be at least 32 bytes (it has {})",
                secret.len()
            );
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &policy.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &policy.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
            policy,
        })
    }

    /// Signs a token for `workspace_id`/`user_id` valid for `ttl`, with the
    /// policy's issuer and audience.
    ///
    /// # Errors
    ///
    /// Invalid ids, a `ttl` over the policy's maximum lifetime, or a
    /// signing failure.
    pub fn mint(&self, workspace_id: &str, user_id: &str, ttl: Duration) -> anyhow::Result<String> {
        self.sign(workspace_id, user_id, ttl, false)
    }

    /// Signs a console sign-in link's token for `workspace_id`/`user_id`,
    /// valid for `ttl` (at most [`MAX_LINK_TTL`]).
    ///
    /// # Errors
    ///
    /// As [`Authenticator::mint`], and a `ttl` of zero or over
    /// [`MAX_LINK_TTL`].
    pub fn mint_link(
        &self,
        workspace_id: &str,
        user_id: &str,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(
            !ttl.is_zero() && ttl <= MAX_LINK_TTL,
            "a sign-in link works for at most {} s",
            MAX_LINK_TTL.as_secs()
        );
        self.sign(workspace_id, user_id, ttl, true)
    }

    fn sign(
        &self,
        workspace_id: &str,
        user_id: &str,
        ttl: Duration,
        console_link: bool,
    ) -> anyhow::Result<String> {
        check_id("workspace", workspace_id).map_err(anyhow::Error::msg)?;
        check_id("user", user_id).map_err(anyhow::Error::msg)?;
        if ttl > self.policy.max_lifetime {
            anyhow::bail!(
                "the lifetime {} s exceeds the maximum of {} s (CONVEYOR_JWT_MAX_LIFETIME_SECS)",
                ttl.as_secs(),
                self.policy.max_lifetime.as_secs()
            );
        }
        let now = now_secs();
        let claims = Claims {
            sub: user_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            nbf: None,
            console_link,
        };
        let signed = Signed {
            claims: &claims,
            iss: self.policy.issuer.as_deref(),
            aud: self.policy.audience.as_deref(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &signed,
            &self.encoding,
        )?)
    }

    /// The claims of `token`, once its signature, lifetime and ids check;
    /// a console sign-in link is refused.
    ///
    /// # Errors
    ///
    /// 401 saying what is wrong.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let claims = self.decode(token)?;
        if claims.console_link {
            return Err(ApiError::unauthorized(
                "the token is a console sign-in link: open the link in a browser",
            ));
        }
        Ok(claims)
    }

    /// The claims of a console sign-in link's `token`: signed by
    /// [`Authenticator::mint_link`] and issued (`iat`) for at most
    /// [`MAX_LINK_TTL`]. Any other token is refused, so a token a user
    /// holds cannot be sent to someone else as a link.
    ///
    /// # Errors
    ///
    /// 401 saying what is wrong.
    pub fn verify_link(&self, token: &str) -> Result<Claims, ApiError> {
        let claims = self.decode(token)?;
        if !claims.console_link {
            return Err(ApiError::unauthorized(
                "the token is not a sign-in link from `conveyor-api console-link`",
            ));
        }
        let issued = claims
            .iat
            .ok_or_else(|| ApiError::unauthorized("the sign-in link lacks its issue time (iat)"))?;
        if claims.exp.saturating_sub(issued) > MAX_LINK_TTL.as_secs() {
            return Err(ApiError::unauthorized(
                "the sign-in link's lifetime exceeds 1 hour",
            ));
        }
        Ok(claims)
    }

    fn decode(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "the token signature is invalid",
                    ErrorKind::InvalidAlgorithm => "only HS256 tokens are accepted",
                    ErrorKind::MissingRequiredClaim(_) => {
                        "the token lacks a required claim (sub, workspace_id, exp, and iss or aud when configured)"
                    }
                    ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted",
                    ErrorKind::InvalidAudience => "the token's audience (aud) is not accepted",
                    _ => "the token is malformed",
                };
                ApiError::unauthorized(why)
            })?;
        let claims = data.claims;
        check_lifetime(&claims, now_secs(), self.policy.max_lifetime)
            .map_err(ApiError::unauthorized)?;
        check_id("workspace_id", &claims.workspace_id).map_err(ApiError::unauthorized)?;
        check_id("sub", &claims.sub).map_err(ApiError::unauthorized)?;
        Ok(claims)
    }
}

fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

/// A token may not be issued in the future (beyond the leeway) nor live
/// longer than `max`: `exp - iat`, or `exp - now` without `iat`.
fn check_lifetime(claims: &Claims, now: u64, max: Duration) -> Result<(), &'static str> {
    let issued = claims.iat.unwrap_or(now);
    if issued > now.saturating_add(LEEWAY_SECS) {
        return Err("the token is issued in the future (iat)");
    }
    if claims.exp.saturating_sub(issued) > max.as_secs() {
        return Err("the token's lifetime exceeds the maximum (CONVEYOR_JWT_MAX_LIFETIME_SECS)");
    }
    Ok(())
}

/// `Err` naming `what` unless `id` is 1 to 128 printable characters.
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), String> {
    // Characters, as the database's `length()` counts them.
    if id.is_empty() || id.chars().count() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(format!(
            "the {what} id must be 1 to {MAX_ID_LEN} printable characters"
        ));
    }
    Ok(())
}

/// What an API key may do. User tokens may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read: every `GET` except API keys and the audit log.
    Read,
    /// Execute: start, batch, cancel and re-run executions.
    Execute,
    /// Manage: everything else (connectors, credentials, templates, keys).
    Manage,
}

impl Scope {
    /// Every scope: what a key gets when none are named.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Execute, Scope::Manage];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Execute => "execute",
            Scope::Manage => "manage",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The scope a request needs, from its method and route template
/// (`/api/v1/executions/{id}/cancel`).
pub fn required_scope(method: &Method, route: &str) -> Scope {
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    let reading = *method == Method::GET || *method == Method::HEAD;
    match route {
        "/connectors/{id}/execute"
        | "/connectors/{id}/execute/batch"
        | "/executions/{id}/cancel"
        | "/executions/{id}/rerun"
            if *method == Method::POST =>
        {
            Scope::Execute
        }
        "/api-keys" | "/audit" => Scope::Manage,
        _ if reading => Scope::Read,
        _ => Scope::Manage,
    }
}

/// A new API key and its digest: `(key, prefix, sha256)`.
pub fn new_api_key() -> (String, String, Vec<u8>) {
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "{API_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let prefix = key.chars().take(API_KEY_PREFIX.len() + 6).collect();
    let digest = token_digest(&key);
    (key, prefix, digest)
}

/// The token of an `Authorization: Bearer <token>` header (scheme case
/// insensitive, surrounding blanks ignored); 401 saying what is wrong.
fn bearer(header: Option<&HeaderValue>) -> Result<&str, ApiError> {
    let header =
        header.ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))
}

/// Whether an API key with `scopes` may make this request; 403 naming the
/// scope it lacks.
fn key_allows(scopes: &[String], method: &Method, route: &str) -> Result<(), ApiError> {
    let needed = required_scope(method, route);
    if scopes.iter().any(|s| s == needed.as_str()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "this API key lacks the `{}` scope this request needs",
            needed.as_str()
        )))
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The workspace every query is scoped to.
    pub workspace_id: String,
    /// Who: the user id, or `api-key:<id>`.
    pub actor: String,
    /// The user id when authenticated by JWT (API keys are not users).
    pub user_id: Option<String>,
    /// The key's id when authenticated by API key.
    pub api_key_id: Option<Uuid>,
    /// The request id, for the audit log.
    pub request_id: Option<String>,
}

impl Caller {
    /// What an execution this caller starts records as its starter.
    pub fn started_by(&self) -> StartedBy {
        // A JWT caller's actor is its user id.
        match self.api_key_id {
            Some(key) => StartedBy::ApiKey(key),
            None => StartedBy::User(self.actor.clone()),
        }
    }

    /// The caller named by the bearer token or API key, within the
    /// workspace's request rate.
    async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts.headers.get(AUTHORIZATION))?;
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let caller = if token.starts_with(API_KEY_PREFIX) {
            let (caller, scopes) = api_key_caller(state, token, request_id).await?;
            let route = parts
                .extensions
                .get::<MatchedPath>()
                .map_or_else(|| parts.uri.path(), MatchedPath::as_str);
            key_allows(&scopes, &parts.method, route)?;
            caller
        } else {
            jwt_caller(state, token, request_id)?
        };
        if !state.limiter.allow(&caller.workspace_id) {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this workspace exceeds its request rate (CONVEYOR_RATE_LIMIT_PER_SEC); retry shortly",
            ));
        }
        Ok(caller)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// The authenticated caller; with `CONVEYOR_REQUIRE_MEMBERSHIP`, a
    /// user token is also refused (403) unless its user is a member of its
    /// workspace. Admin routes skip that check: the admin role is theirs.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::authenticate(parts, state).await?;
        check_membership(state, &caller).await?;
        Ok(caller)
    }
}

/// The caller behind API key `token`, with the key's scopes.
///
/// # Errors
///
/// 401 for an unknown, revoked or expired key; 429 while invalid keys
/// flood this process; database errors.
pub(crate) async fn api_key_caller(
    state: &AppState,
    token: &str,
    request_id: Option<String>,
) -> Result<(Caller, Vec<String>), ApiError> {
    let digest = token_digest(token);
    if let Some(key) = state.api_keys.get(&digest) {
        metrics::counter!("conveyor_api_key_lookups_total", "source" => "cache").increment(1);
        return Ok(key_caller(key, request_id));
    }
    if !state.key_guard.may_look_up(&digest) {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many invalid API keys from this API process; retry shortly",
        ));
    }
    let ticket = state.api_keys.before_lookup();
    let found = conveyor_engine::store::access::authenticate_api_key(&state.pool, &digest).await?;
    metrics::counter!("conveyor_api_key_lookups_total", "source" => "database").increment(1);
    let Some(key) = found else {
        state.key_guard.failed();
        return Err(ApiError::unauthorized(
            "the API key is invalid, revoked or expired",
        ));
    };
    state.key_guard.succeeded(&digest);
    state.api_keys.keep(ticket, &digest, &key);
    Ok(key_caller(key, request_id))
}

/// The caller a live API key stands for, with the key's scopes.
fn key_caller(key: ApiKeyAuth, request_id: Option<String>) -> (Caller, Vec<String>) {
    let caller = Caller {
        workspace_id: key.workspace_id,
        actor: format!("api-key:{}", key.id),
        user_id: None,
        api_key_id: Some(key.id),
        request_id,
    };
    (caller, key.scopes)
}

/// The caller behind JWT `token`.
///
/// # Errors
///
/// 401 for a token that does not verify.
pub(crate) fn jwt_caller(
    state: &AppState,
    token: &str,
    request_id: Option<String>,
) -> Result<Caller, ApiError> {
    let claims = state.auth.verify(token)?;
    Ok(Caller {
        workspace_id: claims.workspace_id,
        actor: claims.sub.clone(),
        user_id: Some(claims.sub),
        api_key_id: None,
        request_id,
    })
}

/// With `CONVEYOR_REQUIRE_MEMBERSHIP`, 403 unless a user caller is a
/// member of its workspace (API keys belong to their workspace).
///
/// # Errors
///
/// 403 for a non-member; database errors.
pub(crate) async fn check_membership(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    if state.config.require_membership
        && let Some(user) = caller.user_id.as_deref()
        && !members::is_member(&state.pool, &caller.workspace_id, user).await?
    {
        return Err(ApiError::forbidden(format!(
            "user `{user}` is not a member of workspace `{}` (CONVEYOR_REQUIRE_MEMBERSHIP)",
            caller.workspace_id
        )));
    }
    Ok(())
}

/// A caller who is a SaaS admin (listed in `saas_admin_users`) of any
/// role: what the read-only admin routes need.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

/// An admin with the `operator` or `owner` role: cancel and re-run any
/// execution, manage templates.
#[derive(Debug, Clone)]
pub struct Operator(pub Caller);

/// An admin with the `owner` role: manage admins.
#[derive(Debug, Clone)]
pub struct Owner(pub Caller);

/// The caller, when a SaaS admin whose role covers `needed`; otherwise
/// 403, recorded in the audit log as `admin.denied` with the route.
async fn admin_caller(
    parts: &mut Parts,
    state: &AppState,
    needed: AdminRole,
) -> Result<Caller, ApiError> {
    let caller = Caller::authenticate(parts, state).await?;
    let role = match caller.user_id.as_deref() {
        Some(user) => conveyor_engine::store::access::admin_role(&state.pool, user).await?,
        None => None,
    };
    let Err(denied) = admin_verdict(caller.user_id.is_some(), role, needed) else {
        return Ok(caller);
    };
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(|| parts.uri.path(), MatchedPath::as_str);
    let target = format!("{} {route}", parts.method);
    crate::routes::audit(
        state,
        &caller,
        "admin.denied",
        "route",
        Some(&target),
        serde_json::json!({"needed": needed, "role": role}),
    )
    .await;
    Err(denied)
}

/// Whether a caller (a user or not) holding `role` may use a route
/// needing `needed`; the 403 says why not.
fn admin_verdict(
    is_user: bool,
    role: Option<AdminRole>,
    needed: AdminRole,
) -> Result<(), ApiError> {
    match (is_user, role) {
        (true, Some(role)) if role.covers(needed) => Ok(()),
        (false, _) => Err(ApiError::forbidden(
            "admin routes need a user token, not an API key",
        )),
        (true, None) => Err(ApiError::forbidden("this route is for admins")),
        (true, Some(role)) => Err(ApiError::forbidden(format!(
            "this route needs the admin role `{needed}` or above; yours is `{role}`"
        ))),
    }
}

/// Implements an admin extractor: the caller must be an admin holding at
/// least `$role`.
macro_rules! admin_extractor {
    ($name:ident, $role:expr) => {
        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, ApiError> {
                admin_caller(parts, state, $role).await.map($name)
            }
        }
    };
}

admin_extractor!(Admin, AdminRole::Viewer);
admin_extractor!(Operator, AdminRole::Operator);
admin_extractor!(Owner, AdminRole::Owner);

#[cfg(test)]
mod tests;
