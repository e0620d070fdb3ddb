//! Authentication: `Authorization: Bearer <token>` where the token is a
//! JWT (HS256 only, `CONVEYOR_JWT_SECRET`; claims `sub`, `workspace_id`,
//! `exp` required, `iat`/`nbf` honoured, 30 s clock-skew leeway) or a
//! workspace API key (`cvk_...`, stored as its SHA-256).

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// Clock-skew leeway for `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// Longest accepted workspace or user id.
pub const MAX_ID_LEN: usize = 128;
/// Prefix of workspace API keys.
pub const API_KEY_PREFIX: &str = "cvk_";

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
}

/// Verifies (and, for the CLI, signs) tokens.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator(<secret>)")
    }
}

impl Authenticator {
    /// Uses `secret`'s UTF-8 bytes as the HMAC key, exactly as given.
    ///
    /// # Errors
    ///
    /// A secret shorter than 32 bytes.
    pub fn new(secret: &str) -> anyhow::Result<Self> {
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
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        })
    }

    /// Signs a token for `workspace_id`/`user_id` valid for `ttl`.
    ///
    /// # Errors
    ///
    /// Invalid ids, or a signing failure.
    pub fn mint(&self, workspace_id: &str, user_id: &str, ttl: Duration) -> anyhow::Result<String> {
        check_id("workspace", workspace_id).map_err(anyhow::Error::msg)?;
        check_id("user", user_id).map_err(anyhow::Error::msg)?;
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let claims = Claims {
            sub: user_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            nbf: None,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "the token signature is invalid",
                    ErrorKind::InvalidAlgorithm => "only HS256 tokens are accepted",
                    ErrorKind::MissingRequiredClaim(_) => {
                        "the token lacks a required claim (sub, workspace_id, exp)"
                    }
                    _ => "the token is malformed",
                };
                ApiError::unauthorized(why)
            })?;
        let claims = data.claims;
        check_id("workspace_id", &claims.workspace_id).map_err(ApiError::unauthorized)?;
        check_id("sub", &claims.sub).map_err(ApiError::unauthorized)?;
        Ok(claims)
    }
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(format!(
            "the {what} id must be 1 to {MAX_ID_LEN} printable characters"
        ));
    }
    Ok(())
}

/// A new API key and its digest: `(key, prefix, sha256)`.
pub fn new_api_key() -> (String, String, Vec<u8>) {
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "{API_KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let prefix = key.chars().take(API_KEY_PREFIX.len() + 6).collect();
    let digest = Sha256::digest(key.as_bytes()).to_vec();
    (key, prefix, digest)
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
    /// The request id, for the audit log.
    pub request_id: Option<String>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let caller = if token.starts_with(API_KEY_PREFIX) {
            let digest = Sha256::digest(token.as_bytes());
            let (id, workspace_id) =
                conveyor_engine::store::access::authenticate_api_key(&state.pool, &digest)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("the API key is invalid or revoked"))?;
            Caller {
                workspace_id,
                actor: format!("api-key:{id}"),
                user_id: None,
                request_id,
            }
        } else {
            let claims = state.auth.verify(token)?;
            Caller {
                workspace_id: claims.workspace_id,
                actor: claims.sub.clone(),
                user_id: Some(claims.sub),
                request_id,
            }
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

/// A caller who is a SaaS admin (listed in `saas_admin_users`).
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Some(user) = caller.user_id.as_deref() else {
            return Err(ApiError::forbidden(
                "admin routes need a user token, not an API key",
            ));
        };
        if conveyor_engine::store::access::is_admin(&state.pool, user).await? {
            Ok(Admin(caller))
        } else {
            Err(ApiError::forbidden("this route is for admins"))
        }
    }
}
