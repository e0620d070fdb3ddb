//! The connector language in the runner: `when` conditions and secret
//! extracts.
//!
//! A step whose `when` is false is not sent: it is committed as `skipped`
//! (see [`decide::skip`] for its context entry) and the run moves on. A
//! condition that cannot be evaluated (a missing name, a value that is not
//! a boolean) fails the run with the step's `render` error.
//!
//! A secret extract (`"secret": true`) stays in the run's memory in plain
//! text, for later steps, but is stored only sealed: in the persisted
//! context it is `{"$sealed": {"key_id", "nonce", "ciphertext"}}`, sealed
//! with the workspace credentials key and bound to the workspace, the
//! execution, the step and the field. A resumed run (after a crash, a
//! durable retry or a parked wait) opens it again. Its text forms join the
//! run's [`Credentials`] under [`SECRET_EXTRACTS`], so every later request,
//! response and extracted value is redacted of them; its own step row shows
//! `[REDACTED]`, and the output is redacted too.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use serde_json::{Map, Value, json};
use tracing::{info, warn};
use uuid::Uuid;

use super::{RunOutcome, Runner};
use crate::Result;
use crate::connector::{Connector, Step};
use crate::crypto::{Keyring, Sealed};
use crate::decide::{self, Decision, ErrorKind, ExecutionError, Next, RunErrorKind};
use crate::http::{StepErrorKind, StepResult, Traffic};
use crate::redact::{Credentials, REDACTED, Redactor, SECRET_EXTRACTS, secret_texts};
use crate::state::ExecutionStatus;
use crate::store::executions;

/// The key of a sealed value in the persisted context.
const SEALED: &str = "$sealed";

/// The secret extracts of one run: their sealed forms, by step and field.
pub(super) struct Secrets {
    workspace_id: String,
    execution_id: Uuid,
    sealed: BTreeMap<(String, String), Value>,
}

impl Secrets {
    pub(super) fn new(workspace_id: &str, execution_id: Uuid) -> Self {
        Self {
            workspace_id: workspace_id.to_owned(),
            execution_id,
            sealed: BTreeMap::new(),
        }
    }

    /// The associated-data name a secret extract is sealed under; a
    /// credential name never contains `/`.
    fn name(&self, step: &str, field: &str) -> String {
        format!("extract/{}/{step}/{field}", self.execution_id)
    }

    /// Opens, in place, the sealed secret extracts of a resumed run's
    /// context and adds their texts to `credentials` for redaction.
    ///
    /// # Errors
    ///
    /// Why one could not be opened (its key left the keyring, or it was
    /// altered); never the value.
    pub(super) fn open(
        &mut self,
        keyring: &Keyring,
        connector: &Connector,
        ctx: &mut Value,
        credentials: &mut Credentials,
    ) -> std::result::Result<(), String> {
        for (step, field) in secret_fields(connector.steps.iter()) {
            let pointer = format!("/steps/{step}/extract/{field}");
            let Some(slot) = ctx.pointer_mut(&pointer) else {
                continue;
            };
            let Some(envelope) = slot.get(SEALED) else {
                continue;
            };
            let fail = |why: &str| {
                format!(
                    "the secret extract `steps.{step}.extract.{field}` could not be opened: {why}"
                )
            };
            let text = |key: &str| {
                envelope[key]
                    .as_str()
                    .and_then(|t| BASE64.decode(t).ok())
                    .ok_or_else(|| fail("it is malformed"))
            };
            let sealed = Sealed {
                key_id: envelope["key_id"].as_str().unwrap_or_default().to_owned(),
                nonce: text("nonce")?,
                ciphertext: text("ciphertext")?,
            };
            let plain = keyring
                .open(&self.workspace_id, &self.name(step, field), &sealed)
                .map_err(|e| fail(&e.to_string()))?;
            let value: Value =
                serde_json::from_slice(&plain).map_err(|_| fail("it is malformed"))?;
            self.sealed
                .insert((step.to_owned(), field.to_owned()), slot.clone());
            add_texts(credentials, step, field, &value);
            *slot = value;
        }
        Ok(())
    }

    /// After a decision on `step` that moves the run on: seals the step's
    /// secret extracts (plain in `ctx`), adds their texts to `credentials`,
    /// puts every sealed form in the decision's persisted context and
    /// redacts the output. A value that cannot be sealed fails the run.
    pub(super) fn protect(
        &mut self,
        keyring: &Keyring,
        step: &Step,
        ctx: &Value,
        decision: &mut Decision,
        credentials: &mut Credentials,
    ) {
        let (Next::Continue { context, .. } | Next::Succeed { context, .. }) = &mut decision.next
        else {
            return;
        };
        for (name, field) in secret_fields(std::iter::once(step)) {
            let Some(value) = ctx
                .pointer(&format!("/steps/{name}/extract/{field}"))
                .filter(|v| !v.is_null())
            else {
                continue;
            };
            let plain = zeroize::Zeroizing::new(value.to_string().into_bytes());
            match keyring.seal(&self.workspace_id, &self.name(name, field), &plain) {
                Ok(sealed) => {
                    let envelope = json!({SEALED: {
                        "key_id": sealed.key_id,
                        "nonce": BASE64.encode(&sealed.nonce),
                        "ciphertext": BASE64.encode(&sealed.ciphertext),
                    }});
                    self.sealed
                        .insert((name.to_owned(), field.to_owned()), envelope);
                    add_texts(credentials, name, field, value);
                }
                Err(e) => {
                    decision.next = Next::Fail(ExecutionError::run(
                        RunErrorKind::Credential,
                        format!(
                            "the secret extract `steps.{name}.extract.{field}` could not be sealed: {e}"
                        ),
                    ));
                    return;
                }
            }
        }
        for ((name, field), envelope) in &self.sealed {
            if let Some(slot) = context.pointer_mut(&format!("/steps/{name}/extract/{field}")) {
                *slot = envelope.clone();
            }
        }
        if let Next::Succeed { output, .. } = &mut decision.next
            && let Some(texts) = credentials.get(SECRET_EXTRACTS)
        {
            *output = Redactor::of_texts(texts.values()).value(std::mem::take(output));
        }
    }
}

/// `(step, field)` of every secret extract of `steps`.
fn secret_fields<'a>(steps: impl Iterator<Item = &'a Step>) -> Vec<(&'a str, &'a str)> {
    steps
        .flat_map(|s| {
            s.extract
                .iter()
                .filter(|(_, e)| e.secret)
                .map(|(field, _)| (s.name.as_str(), field.as_str()))
        })
        .collect()
}

/// Adds the text forms of a secret extract to the run's redaction.
fn add_texts(credentials: &mut Credentials, step: &str, field: &str, value: &Value) {
    let mut texts = Vec::new();
    secret_texts(value, &mut texts);
    let entry = credentials.entry(SECRET_EXTRACTS.to_owned()).or_default();
    for (i, text) in texts.into_iter().enumerate() {
        entry.insert(format!("{step}.{field}.{i}"), text);
    }
}

/// Replaces the values of `step`'s secret extracts in its stored row.
pub(super) fn redact_extracts(step: &Step, extracted: &mut Map<String, Value>) {
    for (field, spec) in &step.extract {
        if spec.secret
            && let Some(value) = extracted.get_mut(field)
            && !value.is_null()
        {
            *value = Value::String(REDACTED.to_owned());
        }
    }
}

impl Runner {
    /// Evaluates step `index`'s `when` (true without one), or the error
    /// that ends the run when it cannot be evaluated.
    pub(super) fn condition(
        &self,
        step: &Step,
        index: usize,
        attempt: u32,
        ctx: &Value,
    ) -> std::result::Result<bool, ExecutionError> {
        let Some(when) = &step.when else {
            return Ok(true);
        };
        self.client
            .renderer()
            .condition(when, ctx)
            .map_err(|e| ExecutionError {
                kind: ErrorKind::Step(StepErrorKind::Render),
                message: format!("when: {e}"),
                step: Some(step.name.clone()),
                step_index: Some(index),
                attempt: Some(attempt),
                status: None,
            })
    }

    /// Commits step `index` as skipped and moves the run on: the outcome
    /// to return, or `None` to go on with the next step.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn skip(
        &self,
        (id, token): (Uuid, i64),
        connector: &Connector,
        index: usize,
        ctx: &mut Value,
        secrets: &mut Secrets,
        credentials: &mut Credentials,
        extended_at: &mut tokio::time::Instant,
    ) -> Result<Option<RunOutcome>> {
        let step = &connector.steps[index];
        let now = Utc::now();
        let mut decision = decide::skip(connector, index, ctx, &self.policy());
        secrets.protect(&self.keyring, step, ctx, &mut decision, credentials);
        let outcome = match &decision.next {
            Next::Continue { .. } => None,
            Next::Succeed { .. } => Some(RunOutcome::Succeeded),
            Next::Retry { .. } => Some(RunOutcome::RetryScheduled),
            Next::Fail(_) => Some(RunOutcome::Failed),
        };
        let extracted = ctx["steps"][step.name.as_str()]["extract"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let result = StepResult {
            request: json!({"method": step.method.as_str(), "url": Value::Null}),
            response: None,
            extracted,
            started_at: now,
            duration_ms: 0,
            error: None,
            traffic: Traffic::default(),
        };
        let (row, transition) = self.step_commit(&step.name, index, 1, result, decision, now);
        let committing = tokio::time::Instant::now();
        let commit = executions::Commit {
            id,
            token,
            step: row,
            transition,
        };
        match self.commits.commit(commit).await? {
            None => {
                warn!("lease lost before the step commit; dropping the execution");
                Ok(Some(RunOutcome::LeaseLost))
            }
            Some(ExecutionStatus::Cancelled) => {
                info!("cancelled at a step boundary");
                Ok(Some(RunOutcome::Cancelled))
            }
            Some(_) => {
                *extended_at = committing;
                info!(step = %step.name, "skipped: its condition is false");
                Ok(outcome)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key;
    use crate::state::StepOutcome;

    fn connector() -> Connector {
        serde_json::from_value(json!({
            "name": "c",
            "steps": [
                {"name": "login", "method": "POST", "url": "https://x.test/login",
                 "extract": {"token": {"path": "$.token", "secret": true}, "user": "$.user"}},
                {"name": "use", "method": "GET", "url": "https://x.test/use"},
            ],
        }))
        .expect("connector")
    }

    fn moving_on(ctx: &Value, last: bool) -> Decision {
        let context = json!({"steps": ctx["steps"]});
        let next = if last {
            Next::Succeed {
                context,
                output: json!({"auth": "Bearer tok-123", "user": "ada", "n": 1}),
            }
        } else {
            Next::Continue {
                context,
                next_step: 1,
            }
        };
        Decision {
            outcome: StepOutcome::Succeeded,
            next,
        }
    }

    fn login_ctx() -> Value {
        json!({"steps": {"login": {"status": 200, "extract": {"token": "tok-123", "user": "ada"}}}})
    }

    #[test]
    fn secret_extracts_are_stored_sealed_and_opened_again_on_resume() {
        let keyring = Keyring::new(Key::generate(), []);
        let (c, id, ctx) = (connector(), Uuid::now_v7(), login_ctx());
        let mut secrets = Secrets::new("ws_a", id);
        let mut credentials = Credentials::new();
        let mut decision = moving_on(&ctx, false);
        secrets.protect(&keyring, &c.steps[0], &ctx, &mut decision, &mut credentials);
        let Next::Continue { context, .. } = &decision.next else {
            panic!("still moving on: {:?}", decision.next);
        };
        assert!(!context.to_string().contains("tok-123"), "{context}");
        let stored = &context["steps"]["login"]["extract"];
        assert!(
            stored["token"][SEALED]["ciphertext"].is_string(),
            "{stored}"
        );
        assert_eq!(stored["user"], "ada");
        let texts: Vec<&String> = credentials[SECRET_EXTRACTS].values().collect();
        assert_eq!(texts, ["tok-123"]);

        let mut resumed = context.clone();
        let mut reopened = Credentials::new();
        Secrets::new("ws_a", id)
            .open(&keyring, &c, &mut resumed, &mut reopened)
            .expect("opens");
        assert_eq!(resumed, ctx);
        assert_eq!(reopened, credentials);

        for (ws, other) in [("ws_a", Uuid::now_v7()), ("ws_b", id)] {
            let mut moved = context.clone();
            let err = Secrets::new(ws, other)
                .open(&keyring, &c, &mut moved, &mut Credentials::new())
                .expect_err("bound to its workspace and execution");
            assert!(
                err.contains("`steps.login.extract.token` could not be opened"),
                "{err}"
            );
        }
    }

    #[test]
    fn earlier_secrets_stay_sealed_in_later_contexts_and_leave_the_output() {
        let keyring = Keyring::new(Key::generate(), []);
        let (c, ctx) = (connector(), login_ctx());
        let mut secrets = Secrets::new("ws_a", Uuid::now_v7());
        let mut credentials = Credentials::new();
        let mut first = moving_on(&ctx, false);
        secrets.protect(&keyring, &c.steps[0], &ctx, &mut first, &mut credentials);
        let mut last = moving_on(&ctx, true);
        secrets.protect(&keyring, &c.steps[1], &ctx, &mut last, &mut credentials);
        let Next::Succeed { context, output } = &last.next else {
            panic!("the run succeeds: {:?}", last.next);
        };
        assert!(!context.to_string().contains("tok-123"), "{context}");
        assert_eq!(
            output,
            &json!({"auth": format!("Bearer {REDACTED}"), "user": "ada", "n": 1})
        );
    }

    #[test]
    fn a_stored_row_shows_secret_extracts_redacted_and_absent_ones_null() {
        let c = connector();
        let mut extracted = Map::new();
        extracted.insert("token".into(), json!("tok-123"));
        extracted.insert("user".into(), json!("ada"));
        redact_extracts(&c.steps[0], &mut extracted);
        assert_eq!(
            Value::Object(extracted),
            json!({"token": REDACTED, "user": "ada"})
        );
        let mut absent = Map::new();
        absent.insert("token".into(), Value::Null);
        redact_extracts(&c.steps[0], &mut absent);
        assert_eq!(Value::Object(absent), json!({"token": null}));
    }
}
