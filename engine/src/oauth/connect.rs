//! Connecting an authorization code credential: [`start`] stores a
//! single-use state (bound to the workspace, the credential and an expiry,
//! with a sealed PKCE verifier) and builds the authorization URL;
//! [`finish`] uses the state up, exchanges the code and seals the tokens.
//! A wrong, replayed or expired state, or an error from the provider,
//! stores nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::token::{TokenClient, TokenError};
use super::{CredentialKind, OAuthConfig, authorization_url, random_token};
use crate::crypto::{Keyring, token_digest};
use crate::store::credentials::{self, CredentialError};
use crate::store::oauth::{self as store, StateLookup};

/// How long a started authorization may take.
pub const STATE_TTL: Duration = Duration::from_secs(600);

/// Why a connection could not be started or finished.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A database error.
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// No such credential in the workspace.
    #[error("no such credential")]
    NotFound,
    /// The credential is not an authorization code credential, or cannot
    /// start one.
    #[error("{0}")]
    NotStartable(String),
    /// The `state` is unknown (or missing).
    #[error("the state is unknown: start the connection again")]
    UnknownState,
    /// The `state` was used before.
    #[error("the state was already used: start the connection again")]
    StateUsed,
    /// The `state` expired.
    #[error("the state expired: start the connection again")]
    StateExpired,
    /// The provider sent the person back with an error.
    #[error("the provider refused: {0}")]
    Provider(String),
    /// The code exchange failed.
    #[error("the code exchange failed: {0}")]
    Exchange(TokenError),
    /// Sealing or opening failed.
    #[error("{0}")]
    Crypto(String),
}

impl From<sqlx::Error> for ConnectError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<CredentialError> for ConnectError {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::Store(e) => Self::Store(e),
            e @ CredentialError::Crypto { .. } => Self::Crypto(e.to_string()),
        }
    }
}

/// Starts connecting credential `name`: the URL to send the person to.
///
/// # Errors
///
/// [`ConnectError::NotFound`], [`ConnectError::NotStartable`], database
/// and sealing errors.
pub async fn start(
    pool: &PgPool,
    keyring: &Keyring,
    workspace_id: &str,
    name: &str,
    redirect_uri: &str,
    now: DateTime<Utc>,
) -> Result<String, ConnectError> {
    let row = store::read(pool, workspace_id, name)
        .await?
        .ok_or(ConnectError::NotFound)?;
    if CredentialKind::parse(&row.kind) != CredentialKind::AuthorizationCode {
        return Err(ConnectError::NotStartable(format!(
            "credential `{name}` is of kind `{}`; only `oauth2_authorization_code` credentials are connected through the provider",
            row.kind
        )));
    }
    let config: OAuthConfig = row
        .oauth
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| ConnectError::NotStartable("the credential has no OAuth settings".into()))?;
    let fields = credentials::open(keyring, workspace_id, name, &row.sealed)?;
    let client_id = fields.get("client_id").map_or("", String::as_str);
    let (state, verifier) = (random_token(), random_token());
    let url = authorization_url(&config, client_id, redirect_uri, &state, &verifier).ok_or_else(
        || ConnectError::NotStartable("the credential has no authorization URL".into()),
    )?;
    let sealed = keyring
        .seal(workspace_id, name, verifier.as_bytes())
        .map_err(|e| ConnectError::Crypto(e.to_string()))?;
    let expires_at = now + STATE_TTL;
    store::insert_state(
        pool,
        &token_digest(&state),
        workspace_id,
        name,
        &sealed,
        expires_at,
        now,
    )
    .await?;
    Ok(url)
}

/// What the provider sent back to the callback.
#[derive(Debug, Clone, Default)]
pub struct Callback<'a> {
    /// `state`.
    pub state: Option<&'a str>,
    /// `code`.
    pub code: Option<&'a str>,
    /// `error`, when the person declined or the provider failed.
    pub error: Option<&'a str>,
}

/// The credential a finished connection stored tokens in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// Its workspace.
    pub workspace_id: String,
    /// Its name.
    pub name: String,
}

/// Finishes a connection: uses the state up, exchanges the code with the
/// PKCE verifier, seals the tokens into the credential.
///
/// # Errors
///
/// See [`ConnectError`]; nothing is stored on any error.
pub async fn finish(
    pool: &PgPool,
    keyring: &Keyring,
    tokens: &TokenClient,
    callback: &Callback<'_>,
    redirect_uri: &str,
    now: DateTime<Utc>,
) -> Result<Connected, ConnectError> {
    let state = callback.state.ok_or(ConnectError::UnknownState)?;
    let (workspace_id, name, verifier) =
        match store::consume_state(pool, &token_digest(state), now).await? {
            StateLookup::Unknown => return Err(ConnectError::UnknownState),
            StateLookup::Used => return Err(ConnectError::StateUsed),
            StateLookup::Expired => return Err(ConnectError::StateExpired),
            StateLookup::Valid {
                workspace_id,
                credential_name,
                verifier,
            } => (workspace_id, credential_name, verifier),
        };
    if let Some(error) = callback.error {
        let code: String = error
            .chars()
            .filter(char::is_ascii_graphic)
            .take(64)
            .collect();
        return Err(ConnectError::Provider(code));
    }
    let code = callback
        .code
        .ok_or_else(|| ConnectError::Provider("no code in the callback".into()))?;
    let verifier = keyring
        .open(&workspace_id, &name, &verifier)
        .map_err(|e| ConnectError::Crypto(e.to_string()))?;
    let verifier = String::from_utf8_lossy(&verifier).into_owned();
    let row = store::read(pool, &workspace_id, &name)
        .await?
        .ok_or(ConnectError::NotFound)?;
    let config: OAuthConfig = row
        .oauth
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| ConnectError::NotStartable("the credential has no OAuth settings".into()))?;
    let mut fields = credentials::open(keyring, &workspace_id, &name, &row.sealed)?;
    let set = tokens
        .exchange_code(&config, &fields, code, &verifier, redirect_uri)
        .await
        .map_err(ConnectError::Exchange)?;
    let expires_at = set.expires_at;
    set.apply(&mut fields);
    let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(&fields).unwrap_or_default());
    let sealed = keyring
        .seal(&workspace_id, &name, &plaintext)
        .map_err(|e| ConnectError::Crypto(e.to_string()))?;
    let names: Vec<String> = fields.keys().cloned().collect();
    let mut conn = pool.acquire().await?;
    store::save_tokens(
        &mut conn,
        &workspace_id,
        &name,
        &names,
        &sealed,
        expires_at,
        Utc::now(),
    )
    .await?;
    Ok(Connected { workspace_id, name })
}
