//! OAuth at send time: a step with `"auth": {"type": "oauth2"}` (or
//! `bearer` naming an OAuth or Nango credential) gets a
//! token valid beyond the refresh margin first (renewed through
//! [`Refresher`], one refresh per credential across every process), and a
//! 401 answer triggers one renewal and one re-send of the same attempt
//! (same `Idempotency-Key`): not a retry. A refused renewal fails the
//! step (`credential_revoked`, `token_endpoint`); a transient one retries
//! it with the step's policy. A step with `variants` is sent in the shape
//! its credentials' kinds pick.

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::{Map, Value, json};
use tracing::info;
use uuid::Uuid;

use super::{InFlight, Runner};
use crate::Result;
use crate::connector::{Auth, Step};
use crate::http::{Attempt, Retry, StepError, StepErrorKind, StepResult, Traffic};
use crate::oauth::CredentialKind;
use crate::oauth::refresh::{RefreshError, Refresher};
use crate::redact::Credentials;
use crate::store::credentials::TokenState;

/// The credentials of one run: the fields by the names the steps use, and
/// for each its kind, expiry and the stored credential it is bound to.
pub(super) struct RunCredentials {
    workspace_id: String,
    /// Fields by the names the steps use.
    pub(super) fields: Credentials,
    states: BTreeMap<String, (String, TokenState)>,
}

impl RunCredentials {
    pub(super) fn new(workspace_id: &str) -> Self {
        Self {
            workspace_id: workspace_id.to_owned(),
            fields: Credentials::new(),
            states: BTreeMap::new(),
        }
    }

    /// Whether step-facing `name` is an OAuth or Nango credential.
    fn is_oauth(&self, name: &str) -> bool {
        self.states
            .get(name)
            .is_some_and(|(_, s)| s.kind.is_oauth())
    }

    /// The kind of step-facing `name`, when it exists.
    pub(super) fn kind_of(&self, name: &str) -> Option<CredentialKind> {
        self.states.get(name).map(|(_, s)| s.kind)
    }

    /// The OAuth or Nango credential `step` (its variant resolved) sends
    /// with, if any.
    pub(super) fn oauth_credential(&self, step: &Step) -> Option<String> {
        match &step.auth {
            Auth::OAuth2 { credential, .. } => Some(credential.clone()),
            Auth::Bearer { credential } if self.is_oauth(credential) => Some(credential.clone()),
            _ => None,
        }
    }

    /// The access token of `name` now (the one a request is sent with).
    pub(super) fn access_token(&self, name: &str) -> Option<String> {
        self.fields
            .get(name)
            .and_then(|f| f.get("access_token"))
            .cloned()
    }

    /// Records the kind and expiry of step-facing `name`, bound to the
    /// stored credential `target`.
    pub(super) fn add_state(&mut self, name: &str, target: &str, state: TokenState) {
        self.states
            .insert(name.to_owned(), (target.to_owned(), state));
    }
}

impl Runner {
    /// Sends `step`, with a fresh OAuth token when it uses one, and once
    /// more with a renewed token after a 401.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_step(
        &self,
        id: Uuid,
        token: i64,
        step: &Step,
        ctx: &Value,
        credentials: &mut RunCredentials,
        call: &Attempt<'_>,
        extended_at: &mut tokio::time::Instant,
    ) -> Result<InFlight> {
        // The step's variant for its credentials' kinds, if it has one.
        let resolved = step.resolved(|name| credentials.kind_of(name));
        let step = resolved.as_ref();
        let credential = match &step.auth {
            Auth::OAuth2 { credential, .. } => credential,
            Auth::Bearer { credential } if credentials.is_oauth(credential) => credential,
            _ => {
                return self
                    .send_with_heartbeat(
                        id,
                        token,
                        step,
                        ctx,
                        &credentials.fields,
                        call,
                        extended_at,
                    )
                    .await;
            }
        };
        if let Err(failed) = self
            .ensure_token(step, credentials, credential, None)
            .await?
        {
            return Ok(InFlight::Done(Box::new(failed)));
        }
        let sent = self
            .send_with_heartbeat(id, token, step, ctx, &credentials.fields, call, extended_at)
            .await?;
        let InFlight::Done(result) = &sent else {
            return Ok(sent);
        };
        if result.response.as_ref().map(|r| r.status) != Some(401) {
            return Ok(sent);
        }
        let rejected = credentials
            .fields
            .get(credential)
            .and_then(|f| f.get("access_token"))
            .cloned();
        let Some(rejected) = rejected else {
            return Ok(sent);
        };
        if let Err(failed) = self
            .ensure_token(step, credentials, credential, Some(&rejected))
            .await?
        {
            return Ok(InFlight::Done(Box::new(failed)));
        }
        info!("401 with an OAuth token: re-sending the attempt once with a renewed token");
        self.send_with_heartbeat(id, token, step, ctx, &credentials.fields, call, extended_at)
            .await
    }

    /// Makes `name`'s access token usable: renewed when missing, expiring
    /// within the margin, or `rejected`. The inner error is the failed
    /// step's result; the outer one a database error.
    pub(super) async fn ensure_token(
        &self,
        step: &Step,
        credentials: &mut RunCredentials,
        name: &str,
        rejected: Option<&str>,
    ) -> Result<std::result::Result<(), StepResult>> {
        // A missing or static credential fails at render time, naming the
        // field it lacks.
        let Some((target, state)) = credentials.states.get(name) else {
            return Ok(Ok(()));
        };
        if !state.kind.is_oauth() {
            return Ok(Ok(()));
        }
        let has_token = credentials
            .fields
            .get(name)
            .is_some_and(|f| f.contains_key("access_token"));
        let margin = self.config.oauth_refresh_margin;
        let expiring = state.expires_at.is_some_and(|t| t <= Utc::now() + margin);
        if has_token && !expiring && rejected.is_none() {
            return Ok(Ok(()));
        }
        let refresher = Refresher {
            pool: &self.pool,
            keyring: &self.keyring,
            tokens: self.client.tokens(),
            margin,
        };
        let (target, kind) = (target.clone(), state.kind);
        match refresher
            .fresh(&credentials.workspace_id, &target, kind, rejected)
            .await
        {
            Ok(fresh) => {
                credentials.fields.insert(name.to_owned(), fresh.fields);
                if let Some((_, state)) = credentials.states.get_mut(name) {
                    state.expires_at = fresh.expires_at;
                }
                Ok(Ok(()))
            }
            Err(RefreshError::Store(e)) => Err(e),
            Err(e) => {
                let (kind, retry) = match &e {
                    RefreshError::Revoked { .. } => {
                        (StepErrorKind::CredentialRevoked, Retry::Fatal)
                    }
                    RefreshError::Transient { .. } => {
                        (StepErrorKind::TokenEndpoint, Retry::Retryable)
                    }
                    RefreshError::Refused { .. } => (StepErrorKind::TokenEndpoint, Retry::Fatal),
                    RefreshError::Unusable(_) | RefreshError::Store(_) => {
                        (StepErrorKind::Credential, Retry::Fatal)
                    }
                };
                Ok(Err(StepResult {
                    request: json!({"method": step.method.as_str(), "url": Value::Null}),
                    response: None,
                    extracted: Map::new(),
                    started_at: Utc::now(),
                    duration_ms: 0,
                    error: Some(StepError {
                        kind,
                        message: e.to_string(),
                        retry,
                    }),
                    traffic: Traffic::default(),
                }))
            }
        }
    }
}
