//! A fresh access token for a step, with one refresh per credential at a
//! time across every process: the refresh runs in a transaction that
//! holds the credential row's lock (`SELECT ... FOR UPDATE`), re-reads the
//! row once it has the lock, refreshes only if the token is still
//! expiring (or still the one a provider just rejected), and commits the
//! new pair before any request uses it. Waiters then read the new token.
//! This is the one transaction that spans an outbound call: it is bounded
//! by the token client's timeout and touches only the credential row.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tracing::{info, warn};

use super::token::{TokenClient, TokenError, TokenSet};
use super::{CredentialKind, OAuthConfig};
use crate::crypto::Keyring;
use crate::store::credentials::{self, CredentialError};
use crate::store::oauth as store;
use crate::store::subscriptions;

/// Why no usable token came back.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// A database error: the step is not attempted.
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// The credential is gone, does not open, or its settings are unusable.
    #[error("{0}")]
    Unusable(String),
    /// The provider revoked the grant: `needs_reconnect`.
    #[error("credential `{name}` needs to be connected again: {reason}")]
    Revoked {
        /// The credential.
        name: String,
        /// Why (never a secret).
        reason: String,
    },
    /// The token endpoint refused for another reason: `error`.
    #[error("credential `{name}`: {reason}")]
    Refused {
        /// The credential.
        name: String,
        /// Why (never a secret).
        reason: String,
    },
    /// 5xx, timeout, no connection: retried with the step's policy.
    #[error("credential `{name}`: {reason}")]
    Transient {
        /// The credential.
        name: String,
        /// Why.
        reason: String,
    },
}

impl From<sqlx::Error> for RefreshError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<CredentialError> for RefreshError {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::Store(e) => Self::Store(e),
            e @ CredentialError::Crypto { .. } => Self::Unusable(e.to_string()),
        }
    }
}

/// A credential's fields with a usable access token.
#[derive(Debug, Clone)]
pub struct Fresh {
    /// Every field, `access_token` included.
    pub fields: BTreeMap<String, String>,
    /// When the access token expires, if known.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a refresh needs.
#[derive(Debug, Clone, Copy)]
pub struct Refresher<'a> {
    /// The database.
    pub pool: &'a PgPool,
    /// Opens and seals the credential.
    pub keyring: &'a Keyring,
    /// Calls the token endpoint.
    pub tokens: &'a TokenClient,
    /// A token expiring within this margin is refreshed first.
    pub margin: Duration,
}

impl Refresher<'_> {
    /// The credential's fields with an access token valid beyond the
    /// margin, refreshing (or fetching, for client credentials; or asking
    /// Nango) when needed. `rejected` is an access token a provider just
    /// answered 401 to: it is replaced even if not expiring, unless another
    /// process already replaced it.
    ///
    /// # Errors
    ///
    /// See [`RefreshError`].
    pub async fn fresh(
        &self,
        workspace_id: &str,
        name: &str,
        kind: CredentialKind,
        rejected: Option<&str>,
    ) -> Result<Fresh, RefreshError> {
        if kind == CredentialKind::Nango {
            return self.nango(workspace_id, name).await;
        }
        let mut tx = self.pool.begin().await?;
        let row = store::lock(&mut tx, workspace_id, name)
            .await?
            .ok_or_else(|| RefreshError::Unusable(format!("credential `{name}` does not exist")))?;
        let revoked = |reason: &str| RefreshError::Revoked {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        if row.status == "needs_reconnect" {
            return Err(revoked(
                "the provider refused the last refresh, or the authorization was never completed",
            ));
        }
        let mut fields = credentials::open(self.keyring, workspace_id, name, &row.sealed)?;
        // Read after the lock was granted: a refresh that finished while
        // this one waited is seen here.
        let now = Utc::now();
        let current = fields.get("access_token");
        let still_good = match rejected {
            Some(r) => current.is_some_and(|c| c != r),
            None => {
                current.is_some()
                    && row
                        .access_token_expires_at
                        .is_none_or(|t| t > now + self.margin)
            }
        };
        if still_good {
            tx.commit().await?;
            return Ok(Fresh {
                fields,
                expires_at: row.access_token_expires_at,
            });
        }
        let config: OAuthConfig = row
            .oauth
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| {
                RefreshError::Unusable(format!("credential `{name}` has no OAuth settings"))
            })?;
        let renewed = self
            .tokens
            .renew(&config, &fields, kind == CredentialKind::ClientCredentials)
            .await;
        match renewed {
            Ok(set) => {
                let expires_at = set.expires_at;
                set.apply(&mut fields);
                self.save(&mut tx, workspace_id, name, &fields, expires_at)
                    .await?;
                tx.commit().await?;
                metrics::counter!("conveyor_oauth_refreshes_total", "outcome" => "ok").increment(1);
                info!(credential = name, "OAuth access token renewed");
                Ok(Fresh { fields, expires_at })
            }
            Err(TokenError::Revoked(reason)) => {
                subscriptions::mark_needs_reconnect(&mut tx, workspace_id, name, &reason).await?;
                tx.commit().await?;
                metrics::counter!("conveyor_oauth_refreshes_total", "outcome" => "revoked")
                    .increment(1);
                warn!(credential = name, reason, "OAuth grant revoked");
                Err(revoked(&reason))
            }
            Err(TokenError::Refused(reason)) => {
                store::set_status(&mut tx, workspace_id, name, "error", &reason).await?;
                tx.commit().await?;
                metrics::counter!("conveyor_oauth_refreshes_total", "outcome" => "refused")
                    .increment(1);
                Err(RefreshError::Refused {
                    name: name.to_owned(),
                    reason,
                })
            }
            Err(TokenError::Transient(reason)) => {
                tx.rollback().await?;
                metrics::counter!("conveyor_oauth_refreshes_total", "outcome" => "transient")
                    .increment(1);
                Err(RefreshError::Transient {
                    name: name.to_owned(),
                    reason,
                })
            }
        }
    }

    /// Seals `fields` and writes them with the new expiry.
    async fn save(
        &self,
        conn: &mut sqlx::PgConnection,
        workspace_id: &str,
        name: &str,
        fields: &BTreeMap<String, String>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), RefreshError> {
        let plaintext = zeroize::Zeroizing::new(serde_json::to_vec(fields).unwrap_or_default());
        let sealed = self
            .keyring
            .seal(workspace_id, name, &plaintext)
            .map_err(|e| RefreshError::Unusable(format!("credential `{name}`: {e}")))?;
        let names: Vec<String> = fields.keys().cloned().collect();
        store::save_tokens(
            conn,
            workspace_id,
            name,
            &names,
            &sealed,
            expires_at,
            Utc::now(),
        )
        .await?;
        Ok(())
    }

    /// Asks Nango for the connection's current token (Nango refreshes it).
    async fn nango(&self, workspace_id: &str, name: &str) -> Result<Fresh, RefreshError> {
        let row = store::read(self.pool, workspace_id, name)
            .await?
            .ok_or_else(|| RefreshError::Unusable(format!("credential `{name}` does not exist")))?;
        let mut fields = credentials::open(self.keyring, workspace_id, name, &row.sealed)?;
        match self.tokens.nango(&fields).await {
            Ok(set) => Ok(merge(set, &mut fields)),
            Err(TokenError::Revoked(reason)) => {
                let mut conn = self.pool.acquire().await?;
                subscriptions::mark_needs_reconnect(&mut conn, workspace_id, name, &reason).await?;
                Err(RefreshError::Revoked {
                    name: name.to_owned(),
                    reason,
                })
            }
            Err(TokenError::Refused(reason)) => Err(RefreshError::Refused {
                name: name.to_owned(),
                reason,
            }),
            Err(TokenError::Transient(reason)) => Err(RefreshError::Transient {
                name: name.to_owned(),
                reason,
            }),
        }
    }
}

fn merge(set: TokenSet, fields: &mut BTreeMap<String, String>) -> Fresh {
    let expires_at = set.expires_at;
    set.apply(fields);
    Fresh {
        fields: std::mem::take(fields),
        expires_at,
    }
}
