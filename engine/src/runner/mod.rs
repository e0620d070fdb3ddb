//! Runs one claimed execution: steps in order from the first unfinished
//! one, each result committed (fenced) before the next step starts.
//!
//! The runner never sleeps for a retry: a retryable failure is committed as
//! `queued` with a future `run_at`, freeing the worker slot. It stops at a
//! step boundary when the worker shuts down (releasing the lease) and as
//! soon as it learns of a cancel request.
//!
//! This module orchestrates; [`GroupCommitter`] (in `commit`) writes the
//! step commits, `for_each` runs a loop step's items (several at once with
//! `concurrency`), and `observe` records what a run tells the metrics and
//! traces.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

use crate::Result;
use crate::cache::DefinitionCache;
use crate::connector::Connector;
use crate::crypto::Keyring;
use crate::decide::{self, Decision, ExecutionError, Next, Policy, RunErrorKind, StepAttempt};
use crate::http::{Attempt, INLINE_WORK_BYTES, StepClient, StepResult, idempotency_key};
use crate::paging::{self, Progress};
use crate::state::ExecutionStatus;
use crate::store;
use crate::store::credentials;
use crate::store::executions::{self, Claimed, StepRow, Transition};

mod commit;
mod flow;
mod for_each;
mod language;
mod oauth;
mod observe;

use commit::Committer;
pub use commit::GroupCommitter;
use oauth::RunCredentials;

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
    /// An OAuth access token expiring within this margin is renewed before
    /// a step uses it (`CONVEYOR_OAUTH_REFRESH_MARGIN_SECS`).
    pub oauth_refresh_margin: Duration,
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
            oauth_refresh_margin: Duration::from_secs(60),
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
    /// Flow control parked it before a step was sent (a rate-limit or
    /// concurrency key was full); the row is queued again.
    Parked,
}

/// A connector version prepared for running: immutable, so it never goes
/// stale in the (bounded) definition cache.
struct Prepared {
    connector: Connector,
    credential_names: Vec<String>,
}

/// Runs claimed executions. Share one per worker process.
pub struct Runner {
    pool: PgPool,
    commits: Committer,
    client: StepClient,
    keyring: Arc<Keyring>,
    config: RunnerConfig,
    definitions: DefinitionCache<Prepared>,
    wakes: flow::Wakes,
    blocks: flow::Blocks,
}

impl Runner {
    /// A runner over `pool`, sending with `client`, opening credentials
    /// with `keyring`, and the [`GroupCommitter`] that writes its step
    /// commits. Nothing is spawned: run the committer's
    /// [`run`](GroupCommitter::run) beside the runner (it ends once the
    /// runner is dropped) and join it on shutdown.
    pub fn new(
        pool: PgPool,
        client: StepClient,
        keyring: Arc<Keyring>,
        config: RunnerConfig,
    ) -> (Self, GroupCommitter) {
        let (commits, committer) = commit::channel(pool.clone());
        let runner = Self {
            pool,
            commits,
            client,
            keyring,
            definitions: DefinitionCache::new(config.definition_cache_bytes),
            config,
            wakes: flow::Wakes::default(),
            blocks: flow::Blocks::default(),
        };
        (runner, committer)
    }

    /// When the next execution this runner parked is due again: the
    /// worker claims then rather than at its next poll. `None` when no park
    /// is pending.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.wakes.next()
    }

    /// Up to `max` of the executions this runner parked that are due at
    /// `now`, earliest first; each is handed out once, for the claim made
    /// now to take first (see
    /// [`claim_capped`](crate::store::executions::claim_capped)).
    pub fn woken(&self, now: DateTime<Utc>, max: usize) -> Vec<Uuid> {
        self.wakes.due(now, max)
    }

    /// The runner's settings.
    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// The prepared connector version, or why it cannot run (the inner
    /// error). A database error is the outer one: the execution must not
    /// fail for it; its lease expires and another worker tries again.
    /// Executions of a version no worker slot has prepared yet wait for
    /// one read of its definition.
    async fn prepared(&self, id: Uuid, version: i32) -> Result<Result<Arc<Prepared>, String>> {
        let load = async {
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
            Ok(Ok((prepared, bytes)))
        };
        self.definitions.get_or_load(&(id, version), load).await
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
        let labels = observe::labels(&claimed, self.config.metrics_workspace_labels);
        let outcome = self.run_inner(claimed, shutdown).instrument(span).await?;
        observe::observe_run(labels, outcome);
        Ok(outcome)
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
                let error = ExecutionError::run(RunErrorKind::Definition, message);
                return self.end(id, token, Some(&error)).await;
            }
        };
        let connector = &prepared.connector;
        let deadline = claimed.started_at + Duration::from_millis(connector.timeout_ms);
        let mut credentials = match self
            .load_credentials(&claimed.workspace_id, &prepared)
            .await
        {
            Ok(c) => c,
            Err(credentials::CredentialError::Store(e)) => return Err(e),
            Err(e) => {
                let error = ExecutionError::run(RunErrorKind::Credential, e.to_string());
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
        let mut secrets = language::Secrets::new(&claimed.workspace_id, id);
        let fields = &mut credentials.fields;
        if let Err(message) = secrets.open(&self.keyring, connector, &mut ctx, fields) {
            let error = ExecutionError::run(RunErrorKind::Credential, message);
            return self.end(id, token, Some(&error)).await;
        }
        let claimed_labels = observe::labels(&claimed, self.config.metrics_workspace_labels);
        let first = usize::try_from(claimed.next_step).unwrap_or(0);
        // When the lease was last set (by the claim just before this run,
        // then by each heartbeat and step commit).
        let mut extended_at = tokio::time::Instant::now();
        let mut index = first;
        // The first unit (step, or page of a paginated step) of this claim
        // resumes the stored attempt and paging progress.
        let mut resumed = true;
        // The progress of a paginated step between its pages in this claim.
        let mut carried: Option<Progress> = None;
        while let Some(step) = connector.steps.get(index) {
            if !resumed && shutdown.is_cancelled() {
                executions::release(&self.pool, id, token, Utc::now()).await?;
                info!("released at a step boundary for shutdown");
                return Ok(RunOutcome::Released);
            }
            let now = Utc::now();
            if let Some(error) = decide::deadline_passed(connector, index, now, deadline) {
                return self.end(id, token, Some(&error)).await;
            }
            let attempt = if resumed {
                u32::try_from(claimed.step_attempt).unwrap_or(1)
            } else {
                1
            };
            ctx["execution"]["attempt"] = json!(attempt);
            match self.condition(step, index, attempt, &ctx) {
                Ok(true) => {}
                Ok(false) => {
                    let fields = &mut credentials.fields;
                    let (at, secrets) = ((id, token), &mut secrets);
                    let skipped = self.skip(
                        at,
                        connector,
                        index,
                        &mut ctx,
                        secrets,
                        fields,
                        &mut extended_at,
                    );
                    if let Some(outcome) = skipped.await? {
                        return Ok(outcome);
                    }
                    resumed = false;
                    index += 1;
                    continue;
                }
                Err(error) => return self.end(id, token, Some(&error)).await,
            }
            if let Some(each) = &step.for_each {
                let run = for_each::Run {
                    id,
                    token,
                    claimed: &claimed,
                    connector,
                    index,
                    deadline,
                    labels: &claimed_labels,
                    shutdown,
                };
                let state = for_each::State {
                    ctx: &mut ctx,
                    credentials: &mut credentials,
                    secrets: &mut secrets,
                    extended_at: &mut extended_at,
                };
                if let Some(outcome) = self.run_for_each(&run, each, state, resumed).await? {
                    return Ok(outcome);
                }
                resumed = false;
                index += 1;
                continue;
            }
            let remaining = (deadline - now).to_std().unwrap_or(Duration::ZERO);
            let timeout = Duration::from_millis(step.timeout_ms).min(remaining);
            let progress = step.paginate.as_ref().map(|_| match carried.take() {
                Some(p) => p,
                None if resumed => Progress::stored(&claimed.context, &step.name),
                None => Progress::default(),
            });
            let page = progress.as_ref().map(|p| p.pages + 1);
            let key = match page {
                Some(n) if n > 1 => idempotency_key(id, &format!("{}#page{n}", step.name), attempt),
                _ => idempotency_key(id, &step.name, attempt),
            };
            let span = step_span(step, index, None, attempt);
            let ws = claimed.workspace_id.as_str();
            // Rendering the request and deciding on the answer run in
            // place on a small context (`cpu_bound`, the step client).
            let small_context = crate::json::within(&ctx, INLINE_WORK_BYTES);
            let mut result = {
                let slot = match self.gate((id, token), ws, (step, index), &ctx).await? {
                    flow::Gate::Go(slot) => slot,
                    flow::Gate::Parked => return Ok(RunOutcome::Parked),
                    flow::Gate::LeaseLost => return Ok(RunOutcome::LeaseLost),
                    flow::Gate::Broken(error) => return self.end(id, token, Some(&error)).await,
                };
                let paged = match (&step.paginate, &progress) {
                    (Some(p), Some(progress)) => {
                        let (shaped, page) = paging::page_step(step, p, progress);
                        ctx["page"] = page;
                        Some(shaped)
                    }
                    _ => None,
                };
                let traceparent = span.in_scope(crate::telemetry::current_traceparent);
                let call = Attempt {
                    idempotency_key: &key,
                    timeout,
                    traceparent: traceparent.as_deref(),
                    small_context,
                };
                let sent = self
                    .send_step(
                        id,
                        token,
                        paged.as_ref().unwrap_or(step),
                        &ctx,
                        &mut credentials,
                        &call,
                        &mut extended_at,
                    )
                    .instrument(span.clone())
                    .await?;
                self.release_slot(slot.as_deref(), (id, 0)).await?;
                if let Some(c) = ctx.as_object_mut() {
                    c.remove("page");
                }
                match sent {
                    InFlight::Done(result) => result,
                    InFlight::LeaseLost => return Ok(RunOutcome::LeaseLost),
                    InFlight::CancelRequested => return self.end(id, token, None).await,
                }
            };
            let more = match (&step.paginate, progress) {
                (Some(p), Some(progress)) if result.error.is_none() => {
                    paging::settle(p, progress, &mut result, &mut ctx, &step.name)
                }
                _ => None,
            };
            let now = Utc::now();
            let step_attempt = StepAttempt {
                connector,
                index,
                attempt,
                throttled: if resumed {
                    u32::try_from(claimed.throttled_attempts).unwrap_or(0)
                } else {
                    0
                },
                result: &result,
                deadline,
            };
            let unit = more.as_ref().map(|next| ("paging", next.to_json()));
            let mut decision = cpu_bound(heavy(small_context, &result), || match unit {
                Some(progress) => {
                    decide::next_page(connector, (index, attempt), &ctx, progress, &self.policy())
                }
                None => decide::decide(
                    &step_attempt,
                    &mut ctx,
                    &self.policy(),
                    now,
                    rand::random::<f64>,
                ),
            });
            let fields = &mut credentials.fields;
            secrets.protect(&self.keyring, step, &ctx, &mut decision, fields);
            language::redact_extracts(step, &mut result.extracted);
            observe::observe_step(&span, &claimed_labels, step, &result, decision.outcome);
            if let Next::Retry {
                run_at,
                throttled: true,
                ..
            } = decision.next
                && let Some(key) = self.rate_key(ws, step, &ctx)
            {
                // The provider's wait slows every execution of the key.
                self.push_back(&key, run_at, now).await?;
            }
            let outcome = match &decision.next {
                Next::Continue { .. } => None,
                Next::Succeed { .. } => Some(RunOutcome::Succeeded),
                Next::Retry { .. } => Some(RunOutcome::RetryScheduled),
                Next::Fail(_) => Some(RunOutcome::Failed),
            };
            let (mut row, transition) =
                self.step_commit(&step.name, index, attempt, *result, decision, now);
            row.page = page.and_then(|n| i32::try_from(n).ok());
            let committing = tokio::time::Instant::now();
            let status = self
                .commits
                .commit(executions::Commit {
                    id,
                    token,
                    step: row,
                    transition,
                })
                .await?;
            match status {
                None => {
                    warn!("lease lost before the step commit; dropping the execution");
                    return Ok(RunOutcome::LeaseLost);
                }
                Some(ExecutionStatus::Cancelled) => {
                    info!("cancelled at a step boundary");
                    return Ok(RunOutcome::Cancelled);
                }
                Some(_) => extended_at = committing,
            }
            if let Some(outcome) = outcome {
                info!(?outcome, "execution left the worker");
                return Ok(outcome);
            }
            resumed = false;
            match more {
                Some(next) => carried = Some(next),
                None => index += 1,
            }
        }
        // Only reachable when no step was left to run (an empty tail).
        let output = cpu_bound(!crate::json::within(&ctx, INLINE_WORK_BYTES), || {
            decide::render_output(connector, self.client.renderer(), &ctx)
        });
        self.end(id, token, output.err().as_ref()).await
    }

    /// Loads the credentials the connector's steps name, through its
    /// bindings, keyed by the names the steps use.
    async fn load_credentials(
        &self,
        workspace_id: &str,
        prepared: &Prepared,
    ) -> Result<RunCredentials, credentials::CredentialError> {
        let connector = &prepared.connector;
        let bound: Vec<String> = prepared
            .credential_names
            .iter()
            .map(|n| connector.bound_credential(n).to_owned())
            .collect();
        let (loaded, states) =
            credentials::load_for_run(&self.pool, &self.keyring, workspace_id, &bound).await?;
        let mut out = RunCredentials::new(workspace_id);
        for name in &prepared.credential_names {
            let target = connector.bound_credential(name);
            if let Some(fields) = loaded.get(target) {
                out.fields.insert(name.clone(), fields.clone());
            }
            if let Some(state) = states.get(target) {
                out.add_state(name, target, state.clone());
            }
        }
        Ok(out)
    }

    /// Ends the execution without a step row: failed with `error`, or
    /// cancelled when `error` is `None`.
    async fn end(
        &self,
        id: Uuid,
        token: i64,
        error: Option<&ExecutionError>,
    ) -> Result<RunOutcome> {
        // A message may quote a provider's value; U+0000 cannot be stored.
        let error = error.map(|e| {
            let mut json = e.to_json();
            store::group::storable(&mut json);
            json
        });
        if !executions::finish(&self.pool, id, token, error.as_ref(), Utc::now()).await? {
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
        credentials: &crate::redact::Credentials,
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
                    match executions::heartbeat(&self.pool, id, token, self.config.lease).await {
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

    /// The limits decisions apply.
    fn policy(&self) -> Policy<'_> {
        Policy {
            renderer: self.client.renderer(),
            max_context_bytes: self.config.max_context_bytes,
            max_retry_after: self.config.max_retry_after,
        }
    }

    /// The stored row of a decided attempt and the execution's transition.
    /// The attempt's result is moved into the row, not copied: it can be
    /// megabytes of response.
    #[allow(clippy::too_many_arguments)]
    fn step_commit(
        &self,
        step_name: &str,
        index: usize,
        attempt: u32,
        result: StepResult,
        decision: Decision,
        now: DateTime<Utc>,
    ) -> (StepRow, Transition) {
        let response_status = result.response.as_ref().map(|r| i32::from(r.status));
        let (response_headers, response_body) = match result.response {
            Some(r) => (Some(Value::Object(r.headers)), Some(r.body)),
            None => (None, None),
        };
        let row = StepRow {
            step_index: i32::try_from(index).unwrap_or(i32::MAX),
            attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
            page: None,
            item: None,
            step_name: step_name.to_owned(),
            outcome: decision.outcome,
            request: result.request,
            response_status,
            response_headers,
            response_body,
            extracted: Some(Value::Object(result.extracted)),
            error: result.error.as_ref().map(|e| json!(e)),
            worker_id: self.config.worker_id.clone(),
            started_at: result.started_at,
            finished_at: now,
            duration_ms: i32::try_from(result.duration_ms).unwrap_or(i32::MAX),
            request_bytes: i32::try_from(result.traffic.sent).unwrap_or(i32::MAX),
            response_bytes: i32::try_from(result.traffic.received).unwrap_or(i32::MAX),
        };
        let transition = match decision.next {
            Next::Continue { context, next_step } => Transition::Continue {
                context,
                next_step: i32::try_from(next_step).unwrap_or(i32::MAX),
                lease: self.config.lease,
            },
            Next::Succeed { context, output } => Transition::Succeed { context, output },
            // The store applies the delay to the database's clock: the
            // claim of any worker judges the retry's due time by it.
            Next::Retry {
                run_at,
                attempt,
                throttled,
            } => Transition::Retry {
                delay: (run_at - now).to_std().unwrap_or_default(),
                attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
                throttled,
                context: None,
            },
            Next::Fail(error) => Transition::Fail {
                error: error.to_json(),
            },
        };
        (row, transition)
    }
}

/// Runs CPU-bound work between steps (deciding, which sizes the context,
/// and rendering the output). When it is `heavy`, it does not hold up
/// the other executions' tasks on this thread: on a multi-threaded
/// runtime they move to another thread meanwhile. Light work runs here,
/// which costs less than that move (see `http::INLINE_WORK_BYTES`, which
/// the step client applies to rendering, parsing and extraction alike).
fn cpu_bound<T>(heavy: bool, work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) if heavy => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Whether deciding on `result` is heavy work for [`cpu_bound`]: the
/// context is not small ([`Attempt::small_context`]) or the attempt's
/// traffic is over `http::INLINE_WORK_BYTES`.
fn heavy(small_context: bool, result: &StepResult) -> bool {
    let traffic = result.traffic.sent.saturating_add(result.traffic.received);
    !small_context || usize::try_from(traffic).map_or(true, |t| t > INLINE_WORK_BYTES)
}

enum InFlight {
    Done(Box<StepResult>),
    LeaseLost,
    CancelRequested,
}

/// The client span of one attempt of `step` (the `index`th), and of one
/// of its `for_each` items when `item` is set.
fn step_span(
    step: &crate::connector::Step,
    index: usize,
    item: Option<u32>,
    attempt: u32,
) -> tracing::Span {
    let span = info_span!(
        "step",
        otel.kind = "client",
        step.name = %step.name,
        step.index = index,
        step.item = tracing::field::Empty,
        attempt,
        http.request.method = step.method.as_str(),
        url.full = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        conveyor.retry = tracing::field::Empty,
    );
    if let Some(item) = item {
        span.record("step.item", item);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Traffic;

    fn sent(sent: u64, received: u64) -> StepResult {
        StepResult {
            request: json!({"method": "GET", "url": "https://x.test/a"}),
            response: None,
            extracted: serde_json::Map::new(),
            started_at: Utc::now(),
            duration_ms: 1,
            error: None,
            traffic: Traffic { sent, received },
        }
    }

    #[test]
    fn a_decision_is_heavy_on_a_large_context_or_a_large_exchange() {
        let limit = INLINE_WORK_BYTES as u64;
        assert!(!heavy(true, &sent(100, 200)), "small: in place");
        assert!(!heavy(true, &sent(limit / 2, limit / 2)), "at the limit");
        assert!(heavy(false, &sent(100, 200)), "a large context");
        assert!(heavy(true, &sent(0, limit + 1)), "a large body received");
        assert!(
            heavy(true, &sent(limit / 2, limit / 2 + 1)),
            "both together"
        );
        assert!(heavy(true, &sent(u64::MAX, 1)), "no overflow");
    }
}
