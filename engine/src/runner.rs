//! Runs one claimed execution: steps in order from the first unfinished
//! one, each result committed (fenced) before the next step starts.
//!
//! The runner never sleeps for a retry: a retryable failure is committed as
//! `queued` with a future `run_at`, freeing the worker slot. It stops at a
//! step boundary when the worker shuts down (releasing the lease) and as
//! soon as it learns of a cancel request.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

use crate::Result;
use crate::cache::DefinitionCache;
use crate::connector::{Connector, OnError};
use crate::crypto::Keyring;
use crate::http::{Attempt, Credentials, Retry, StepClient, StepResult, idempotency_key};
use crate::retry::next_delay;
use crate::store;
use crate::store::credentials;
use crate::store::executions::{self, Claimed, StepRow, Transition};

/// Settings of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Recorded as the lease owner and on every step row.
    pub worker_id: String,
    /// Lease length; heartbeats extend it every third of it.
    pub lease: Duration,
    /// Largest persisted context (the step results so far); past it the
    /// step fails with `context_too_large`.
    pub max_context_bytes: usize,
    /// Upper bound for a server's `Retry-After`.
    pub max_retry_after: Duration,
    /// Label metrics with the workspace id
    /// (`CONVEYOR_METRICS_WORKSPACE_LABELS`; off: unbounded label values).
    pub metrics_workspace_labels: bool,
    /// Bytes of connector definitions the definition cache may hold
    /// (`CONVEYOR_DEFINITION_CACHE_BYTES`).
    pub definition_cache_bytes: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            worker_id: "worker".to_owned(),
            lease: Duration::from_secs(30),
            max_context_bytes: 1024 * 1024,
            max_retry_after: Duration::from_secs(3600),
            metrics_workspace_labels: false,
            definition_cache_bytes: crate::cache::DEFAULT_CACHE_BYTES,
        }
    }
}

/// How a run ended for this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every step succeeded; the output is stored.
    Succeeded,
    /// The execution failed (step, deadline, definition).
    Failed,
    /// It was cancelled on request.
    Cancelled,
    /// A retry is scheduled; the row is queued again.
    RetryScheduled,
    /// Shutdown: the row went back to the queue unfinished.
    Released,
    /// Another worker holds the lease now; nothing was written.
    LeaseLost,
}

/// A connector version prepared for running: immutable, so it never goes
/// stale in the (bounded) definition cache.
struct Prepared {
    connector: Connector,
    credential_names: Vec<String>,
}

/// Commits waiting for the group committer, with their reply channels.
type CommitRequest = (
    executions::Commit,
    oneshot::Sender<Result<Option<String>, String>>,
);

/// Most step commits one group-commit statement carries.
const GROUP_COMMIT_MAX: usize = 64;
/// Group-commit statements in flight at once.
const GROUP_COMMITS_IN_FLIGHT: usize = 2;

/// Runs claimed executions. Share one per worker process.
pub struct Runner {
    pool: PgPool,
    commits: mpsc::Sender<CommitRequest>,
    client: StepClient,
    keyring: Arc<Keyring>,
    config: RunnerConfig,
    definitions: DefinitionCache<Prepared>,
}

impl Runner {
    /// A runner over `pool`, sending with `client`, opening credentials
    /// with `keyring`.
    pub fn new(
        pool: PgPool,
        client: StepClient,
        keyring: Arc<Keyring>,
        config: RunnerConfig,
    ) -> Self {
        let (commits, queue) = mpsc::channel(GROUP_COMMIT_MAX * GROUP_COMMITS_IN_FLIGHT * 4);
        tokio::spawn(group_commit(pool.clone(), queue));
        Self {
            pool,
            commits,
            client,
            keyring,
            definitions: DefinitionCache::new(config.definition_cache_bytes),
            config,
        }
    }

    /// Commits a step through the group committer: concurrent executions'
    /// commits share one statement, each still fenced by its own token.
    async fn commit(&self, commit: executions::Commit) -> Result<Option<String>> {
        let (reply, answer) = oneshot::channel();
        self.commits
            .send((commit, reply))
            .await
            .map_err(|_| crate::Error::Commit("the group committer stopped".into()))?;
        answer
            .await
            .map_err(|_| crate::Error::Commit("the group committer dropped the commit".into()))?
            .map_err(crate::Error::Commit)
    }

    /// The runner's settings.
    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// The prepared connector version, or why it cannot run (the inner
    /// error). A database error is the outer one: the execution must not
    /// fail for it; its lease expires and another worker tries again.
    async fn prepared(&self, id: Uuid, version: i32) -> Result<Result<Arc<Prepared>, String>> {
        if let Some(p) = self.definitions.get(id, version) {
            return Ok(Ok(p));
        }
        let Some(json) = store::connectors::definition(&self.pool, id, version).await? else {
            return Ok(Err("the connector version no longer exists".to_owned()));
        };
        let bytes = serde_json::to_vec(&json).map_or(usize::MAX, |v| v.len());
        let connector: Connector = match serde_json::from_value(json) {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("stored definition is invalid: {e}"))),
        };
        let (credential_names, _) = connector.names_used(self.client.renderer());
        let prepared = Arc::new(Prepared {
            connector,
            credential_names,
        });
        self.definitions
            .insert(id, version, prepared.clone(), bytes);
        Ok(Ok(prepared))
    }

    /// Runs `claimed` until it finishes, is rescheduled, is released at
    /// shutdown, or its lease is lost.
    ///
    /// # Errors
    ///
    /// Database errors. The lease then simply expires and another worker
    /// resumes the execution.
    pub async fn run(&self, claimed: Claimed, shutdown: &CancellationToken) -> Result<RunOutcome> {
        let span = info_span!(
            "execution",
            execution.id = %claimed.id,
            connector.id = %claimed.connector_id,
            workspace.id = %claimed.workspace_id,
            attempt = claimed.claims
        );
        crate::telemetry::continue_trace(&span, claimed.trace_context.as_ref());
        let labels = self.labels(&claimed);
        let outcome = self.run_inner(claimed, shutdown).instrument(span).await?;
        let status = match outcome {
            RunOutcome::Succeeded => Some("succeeded"),
            RunOutcome::Failed => Some("failed"),
            RunOutcome::Cancelled => Some("cancelled"),
            RunOutcome::RetryScheduled | RunOutcome::Released | RunOutcome::LeaseLost => None,
        };
        if let Some(status) = status {
            let mut labels = labels;
            labels.push(("status", status.to_owned()));
            metrics::counter!("conveyor_executions_finished_total", &labels).increment(1);
        }
        Ok(outcome)
    }

    /// Metric labels of an execution: its connector, and its workspace only
    /// when configured (workspace ids are unbounded).
    fn labels(&self, claimed: &Claimed) -> Vec<(&'static str, String)> {
        let mut labels = vec![("connector", claimed.connector_id.to_string())];
        if self.config.metrics_workspace_labels {
            labels.push(("workspace", claimed.workspace_id.clone()));
        }
        labels
    }

    async fn run_inner(
        &self,
        claimed: Claimed,
        shutdown: &CancellationToken,
    ) -> Result<RunOutcome> {
        let (id, token) = (claimed.id, claimed.fencing_token);
        let prepared = match self
            .prepared(claimed.connector_id, claimed.connector_version)
            .await?
        {
            Ok(p) => p,
            Err(message) => {
                let error = json!({"kind": "definition", "message": message});
                return self.end(id, token, Some(&error)).await;
            }
        };
        let connector = &prepared.connector;
        let deadline = claimed.started_at + Duration::from_millis(connector.timeout_ms);
        let credentials = match self
            .load_credentials(&claimed.workspace_id, &prepared)
            .await
        {
            Ok(c) => c,
            Err(credentials::CredentialError::Store(e)) => return Err(e),
            Err(e) => {
                let error = json!({"kind": "credential", "message": e.to_string()});
                return self.end(id, token, Some(&error)).await;
            }
        };

        let mut ctx = json!({
            "input": claimed.input,
            "steps": claimed.context.get("steps").cloned().unwrap_or_else(|| json!({})),
            "execution": {"id": id, "attempt": 1},
            "connector": {"id": claimed.connector_id, "version": claimed.connector_version},
            "workspace": {"id": claimed.workspace_id},
            "settings": connector.settings,
        });
        let claimed_labels = self.labels(&claimed);
        let first = usize::try_from(claimed.next_step).unwrap_or(0);
        // When the lease was last set (by the claim just before this run,
        // then by each heartbeat and step commit).
        let mut extended_at = tokio::time::Instant::now();
        for (index, step) in connector.steps.iter().enumerate().skip(first) {
            if index > first && shutdown.is_cancelled() {
                executions::release(&self.pool, id, token, Utc::now()).await?;
                info!("released at a step boundary for shutdown");
                return Ok(RunOutcome::Released);
            }
            let now = Utc::now();
            if now >= deadline {
                let error = json!({
                    "kind": "deadline", "step": step.name, "step_index": index,
                    "message": format!("the run exceeded its timeout_ms of {} ms", connector.timeout_ms),
                });
                return self.end(id, token, Some(&error)).await;
            }
            let attempt = if index == first {
                u32::try_from(claimed.step_attempt).unwrap_or(1)
            } else {
                1
            };
            ctx["execution"]["attempt"] = json!(attempt);
            let remaining = (deadline - now).to_std().unwrap_or(Duration::ZERO);
            let timeout = Duration::from_millis(step.timeout_ms).min(remaining);
            let key = idempotency_key(id, &step.name, attempt);
            let span = info_span!(
                "step",
                otel.kind = "client",
                step.name = %step.name,
                step.index = index,
                attempt,
                http.request.method = step.method.as_str(),
                url.full = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
                conveyor.retry = tracing::field::Empty,
            );
            let traceparent = span.in_scope(crate::telemetry::current_traceparent);
            let call = Attempt {
                idempotency_key: &key,
                timeout,
                traceparent: traceparent.as_deref(),
            };
            let sent = self
                .send_with_heartbeat(id, token, step, &ctx, &credentials, &call, &mut extended_at)
                .instrument(span.clone())
                .await?;
            let result = match sent {
                InFlight::Done(result) => result,
                InFlight::LeaseLost => return Ok(RunOutcome::LeaseLost),
                InFlight::CancelRequested => return self.end(id, token, None).await,
            };
            let last = index + 1 == connector.steps.len();
            let (row, transition) =
                self.decide(connector, index, attempt, &result, &mut ctx, last, deadline);
            let outcome = match &transition {
                Transition::Continue { .. } => None,
                Transition::Succeed { .. } => Some(RunOutcome::Succeeded),
                Transition::Retry { .. } => Some(RunOutcome::RetryScheduled),
                Transition::Fail { .. } => Some(RunOutcome::Failed),
            };
            observe_step(&span, &claimed_labels, step, &result, &row);
            let committing = tokio::time::Instant::now();
            let status = self
                .commit(executions::Commit {
                    id,
                    token,
                    step: row,
                    transition,
                })
                .await?;
            match status.as_deref() {
                None => {
                    warn!("lease lost before the step commit; dropping the execution");
                    return Ok(RunOutcome::LeaseLost);
                }
                Some(executions::status::CANCELLED) => {
                    info!("cancelled at a step boundary");
                    return Ok(RunOutcome::Cancelled);
                }
                Some(_) => extended_at = committing,
            }
            if let Some(outcome) = outcome {
                info!(?outcome, "execution left the worker");
                return Ok(outcome);
            }
        }
        // Only reachable when no step was left to run (an empty tail).
        let output = render_output(self, connector, &ctx);
        self.end(id, token, output.err().as_ref()).await
    }

    /// Loads the credentials the connector's steps name, through its
    /// bindings, keyed by the names the steps use.
    async fn load_credentials(
        &self,
        workspace_id: &str,
        prepared: &Prepared,
    ) -> Result<Credentials, credentials::CredentialError> {
        let connector = &prepared.connector;
        let bound: Vec<String> = prepared
            .credential_names
            .iter()
            .map(|n| connector.bound_credential(n).to_owned())
            .collect();
        let loaded = credentials::load(&self.pool, &self.keyring, workspace_id, &bound).await?;
        let mut out = Credentials::new();
        for name in &prepared.credential_names {
            if let Some(fields) = loaded.get(connector.bound_credential(name)) {
                out.insert(name.clone(), fields.clone());
            }
        }
        Ok(out)
    }

    /// Ends the execution without a step row: failed with `error`, or
    /// cancelled when `error` is `None`.
    async fn end(&self, id: Uuid, token: i64, error: Option<&Value>) -> Result<RunOutcome> {
        // A message may quote a provider's value; U+0000 cannot be stored.
        let mut error = error.cloned();
        if let Some(e) = error.as_mut() {
            store::group::storable(e);
        }
        let error = error.as_ref();
        if !executions::finish(&self.pool, id, token, error, Utc::now()).await? {
            return Ok(RunOutcome::LeaseLost);
        }
        Ok(match error {
            Some(e) => {
                warn!(error = %e, "execution failed");
                RunOutcome::Failed
            }
            None => RunOutcome::Cancelled,
        })
    }

    /// Sends the step while extending the lease every third of it. When
    /// the lease cannot be extended (the database is away), the request is
    /// aborted once five sixths of the lease have passed since it was last
    /// set, before another worker can take the execution over and send the
    /// same attempt.
    #[allow(clippy::too_many_arguments)]
    async fn send_with_heartbeat(
        &self,
        id: Uuid,
        token: i64,
        step: &crate::connector::Step,
        ctx: &Value,
        credentials: &Credentials,
        call: &Attempt<'_>,
        extended_at: &mut tokio::time::Instant,
    ) -> Result<InFlight> {
        let send = self.client.run_attempt(step, ctx, credentials, call);
        tokio::pin!(send);
        let every = self.config.lease / 3;
        let valid_for = self.config.lease * 5 / 6;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                result = &mut send => return Ok(InFlight::Done(Box::new(result))),
                () = tokio::time::sleep_until(*extended_at + valid_for) => {
                    warn!("the lease could not be extended and is about to pass; aborting the request");
                    metrics::counter!("conveyor_steps_aborted_lease_total").increment(1);
                    return Ok(InFlight::LeaseLost);
                }
                _ = beat.tick() => {
                    let asked = tokio::time::Instant::now();
                    let until = Utc::now() + self.config.lease;
                    match executions::heartbeat(&self.pool, id, token, until).await {
                        Ok(Some(false)) => *extended_at = asked,
                        Ok(Some(true)) => {
                            info!("cancel requested while a step was in flight");
                            return Ok(InFlight::CancelRequested);
                        }
                        Ok(None) => {
                            warn!("lease lost while a step was in flight");
                            return Ok(InFlight::LeaseLost);
                        }
                        // The database may be briefly away: the next beat may
                        // succeed; past five sixths of the lease the request
                        // is aborted (above), and fencing protects the rest.
                        Err(e) => warn!(error = %e, "heartbeat failed"),
                    }
                }
            }
        }
    }

    /// Turns a step result into its stored row and the execution's next
    /// state, growing `ctx` when the execution moves on.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        connector: &Connector,
        index: usize,
        attempt: u32,
        result: &StepResult,
        ctx: &mut Value,
        last: bool,
        deadline: DateTime<Utc>,
    ) -> (StepRow, Transition) {
        let step = &connector.steps[index];
        let now = Utc::now();
        let mut row = StepRow {
            step_index: i32::try_from(index).unwrap_or(i32::MAX),
            attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
            step_name: step.name.clone(),
            outcome: "succeeded",
            request: result.request.clone(),
            response_status: result.response.as_ref().map(|r| i32::from(r.status)),
            response_headers: result
                .response
                .as_ref()
                .map(|r| Value::Object(r.headers.clone())),
            response_body: result.response.as_ref().map(|r| r.body.clone()),
            extracted: Some(Value::Object(result.extracted.clone())),
            error: result.error.as_ref().map(|e| json!(e)),
            worker_id: self.config.worker_id.clone(),
            started_at: result.started_at,
            finished_at: now,
            duration_ms: i32::try_from(result.duration_ms).unwrap_or(i32::MAX),
        };
        let mut entry = result.context_entry();
        if let Some(error) = &result.error {
            let policy = connector.retry_for(step);
            let retry_after = match error.retry {
                Retry::Fatal => None,
                Retry::Retryable => Some(None),
                Retry::RetryAfter(d) => Some(Some(d)),
            };
            let mut why = error.message.clone();
            if let Some(retry_after) = retry_after {
                if attempt < policy.max_attempts {
                    let delay = next_delay(
                        policy,
                        attempt,
                        rand::random::<f64>(),
                        retry_after,
                        self.config.max_retry_after,
                    );
                    let run_at = now + delay;
                    if run_at < deadline {
                        row.outcome = "retry_scheduled";
                        let attempt = i32::try_from(attempt + 1).unwrap_or(i32::MAX);
                        return (row, Transition::Retry { run_at, attempt });
                    }
                    why = format!("{why}; a retry would pass the run deadline");
                } else {
                    why = format!("{why}; gave up after {attempt} attempts");
                }
            }
            let error_json = json!({
                "step": step.name, "step_index": index, "attempt": attempt,
                "kind": error.kind, "message": why,
                "status": result.response.as_ref().map(|r| r.status),
            });
            if step.on_error == OnError::Fail {
                row.outcome = "failed";
                return (row, Transition::Fail { error: error_json });
            }
            row.outcome = "continued";
            entry["error"] = error_json;
        }
        ctx["steps"][step.name.as_str()] = entry;
        let persisted = json!({"steps": ctx["steps"]});
        let size = serde_json::to_vec(&persisted).map_or(usize::MAX, |v| v.len());
        if size > self.config.max_context_bytes {
            row.outcome = "failed";
            let error = json!({
                "step": step.name, "step_index": index, "attempt": attempt, "kind": "context_too_large",
                "message": format!("the execution context would grow to {size} bytes, over the {} byte limit; extract fewer fields or lower the stored body size", self.config.max_context_bytes),
            });
            return (row, Transition::Fail { error });
        }
        if !last {
            let transition = Transition::Continue {
                context: persisted,
                next_step: i32::try_from(index + 1).unwrap_or(i32::MAX),
                lease_until: now + self.config.lease,
            };
            return (row, transition);
        }
        match render_output(self, connector, ctx) {
            Ok(output) => (
                row,
                Transition::Succeed {
                    context: persisted,
                    output,
                },
            ),
            Err(error) => {
                row.outcome = "failed";
                (row, Transition::Fail { error })
            }
        }
    }
}

enum InFlight {
    Done(Box<StepResult>),
    LeaseLost,
    CancelRequested,
}

/// The group committer: takes whatever commits are waiting (up to
/// [`GROUP_COMMIT_MAX`]) and writes them in one statement, with up to
/// [`GROUP_COMMITS_IN_FLIGHT`] statements at once. No window is waited
/// for: at low load a batch is one commit, under load commits queue up
/// while statements run, so batches grow exactly when it pays.
async fn group_commit(pool: PgPool, mut queue: mpsc::Receiver<CommitRequest>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(GROUP_COMMITS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let (commits, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            metrics::histogram!("conveyor_group_commit_size").record(commits.len() as f64);
            let results = store::group::commit_group(&pool, commits, Utc::now()).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
            drop(slot);
        });
    }
}

/// Records a step attempt on its span and in the metrics.
fn observe_step(
    span: &tracing::Span,
    labels: &[(&'static str, String)],
    step: &crate::connector::Step,
    result: &StepResult,
    row: &StepRow,
) {
    let status = result.response.as_ref().map(|r| r.status);
    if let Some(url) = result.request["url"].as_str() {
        span.record("url.full", redact_query(url));
    }
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    let retry = match row.outcome {
        "retry_scheduled" => "scheduled",
        "failed" | "continued" if result.error.is_some() => "not_retried",
        _ => "none",
    };
    span.record("conveyor.retry", retry);
    let mut step_labels = labels.to_vec();
    step_labels.push(("step", step.name.clone()));
    let mut outcome_labels = step_labels.clone();
    outcome_labels.push(("outcome", row.outcome.to_owned()));
    metrics::counter!("conveyor_steps_total", &outcome_labels).increment(1);
    metrics::histogram!("conveyor_step_duration_seconds", &step_labels)
        .record(result.duration_ms as f64 / 1000.0);
    if row.outcome == "retry_scheduled" {
        metrics::counter!("conveyor_retries_scheduled_total", &step_labels).increment(1);
    }
    let class = match status {
        Some(s) => format!("{}xx", s / 100),
        None => "none".to_owned(),
    };
    metrics::counter!("conveyor_outbound_responses_total", "class" => class).increment(1);
}

/// A URL for traces: query values replaced, since they may carry ids or
/// keys (credentials are already redacted).
fn redact_query(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.query().is_some() => {
            let names: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
            u.query_pairs_mut()
                .clear()
                .extend_pairs(names.iter().map(|k| (k.as_str(), "REDACTED")));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Renders the connector's `output` template; without one, the output is
/// every step's extracted fields by step name.
fn render_output(runner: &Runner, connector: &Connector, ctx: &Value) -> Result<Value, Value> {
    if connector.output.is_null() {
        let mut out = Map::new();
        if let Some(steps) = ctx["steps"].as_object() {
            for (name, entry) in steps {
                out.insert(name.clone(), entry["extract"].clone());
            }
        }
        return Ok(Value::Object(out));
    }
    runner
        .client
        .renderer()
        .render_json(&connector.output, ctx)
        .map_err(|e| json!({"kind": "output", "message": format!("output: {e}")}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_urls_hide_query_values() {
        assert_eq!(
            redact_query("https://x.test/a?q=1&key=s"),
            "https://x.test/a?q=REDACTED&key=REDACTED"
        );
        assert_eq!(redact_query("https://x.test/a"), "https://x.test/a");
    }
}
