//! A `for_each` step in the runner: up to `concurrency` items of the
//! execution in flight at once, all within this worker and its one lease.
//!
//! Items are sent lowest index first. Each one passes the step's
//! flow-control gate on its own (its own concurrency slot, its own
//! rate-limit send) and, once its outcome is in, is committed on its own:
//! its step row and the loop's [`Progress`] in one fenced commit, one
//! commit at a time, while the other items stay in flight. A heartbeat
//! keeps the lease for all of them.
//!
//! What stops new items from being sent: a retryable failure (the
//! execution is retried later at that item), a failure for good under
//! `on_error: fail`, a full flow-control key (the execution is parked), the
//! run's deadline, and shutdown. The items in flight then finish and are
//! committed first; the row that stopped the loop carries the execution's
//! transition last. A lost lease, a cancel request or the database away
//! past five sixths of the lease drop what is in flight: a successor sends
//! those items again with the same `Idempotency-Key`.
//!
//! An item that fails for good under `on_error: continue` is recorded and
//! the loop goes on. Once every item has its outcome, the row of the item
//! that finished last carries the collected fields and moves the
//! execution on ([`decide::finish_loop`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, info, warn};
use uuid::Uuid;

use super::flow::Admit;
use super::language::{self, Secrets};
use super::oauth::RunCredentials;
use super::{RunOutcome, Runner, cpu_bound, heavy, observe};
use crate::Result;
use crate::connector::for_each::ForEach;
use crate::connector::{Connector, OnError, Step};
use crate::decide::{self, Decision, ExecutionError, Next, StepAttempt, Verdict};
use crate::flow::WaitReason;
use crate::for_each::{self as items, Due, Progress};
use crate::http::{Attempt, INLINE_WORK_BYTES, StepResult, idempotency_key};
use crate::redact::Credentials;
use crate::state::{ExecutionStatus, StepOutcome};
use crate::store::executions::{self, Claimed, Transition};

/// What a loop needs of its run that does not change.
pub(super) struct Run<'a> {
    pub(super) id: Uuid,
    pub(super) token: i64,
    pub(super) claimed: &'a Claimed,
    pub(super) connector: &'a Connector,
    /// The step's position.
    pub(super) index: usize,
    pub(super) deadline: DateTime<Utc>,
    pub(super) labels: &'a [(&'static str, String)],
    pub(super) shutdown: &'a CancellationToken,
}

/// The run's state a loop grows.
pub(super) struct State<'a> {
    pub(super) ctx: &'a mut Value,
    pub(super) credentials: &'a mut RunCredentials,
    pub(super) secrets: &'a mut Secrets,
    /// When the lease was last set.
    pub(super) extended_at: &'a mut tokio::time::Instant,
}

/// Why no more items are sent in this claim.
enum Stop {
    /// The run fails: its deadline passed or a key did not render.
    End(ExecutionError),
    /// A flow-control key is full until then.
    Park(DateTime<Utc>, WaitReason, String),
    /// The worker shuts down.
    Shutdown,
}

/// An item sent: what its outcome is committed with.
struct Launch {
    index: u32,
    attempt: u32,
    /// Already re-sent once after a 401 with a renewed OAuth token.
    resent: bool,
    /// The OAuth access token it was sent with, if any.
    sent_with: Option<String>,
    key: String,
    timeout: Duration,
    span: Span,
}

/// The row of the item that stopped the loop, committed once the items in
/// flight are: it carries the execution's transition.
struct Held {
    launch: Launch,
    result: StepResult,
    next: HeldNext,
}

enum HeldNext {
    /// Retry the execution (at this item) at `run_at`.
    Retry {
        run_at: DateTime<Utc>,
        throttled: bool,
    },
    /// The execution fails.
    Fail(ExecutionError),
}

/// The loop's bookkeeping within this claim.
struct Window {
    progress: Progress,
    total: u32,
    /// Items in flight and the concurrency slot each holds.
    in_flight: BTreeMap<u32, Option<String>>,
    stop: Option<Stop>,
    held: Option<Held>,
}

impl Runner {
    /// Runs the `for_each` step `run.index` from its stored progress (when
    /// `resumed`) until every item has its outcome: `None` when the run
    /// goes on with the next step (the loop's decision is committed and
    /// `state.ctx` holds the step's entry), or the outcome that took the
    /// execution out of this worker.
    ///
    /// # Errors
    ///
    /// Database errors; the lease then expires and a successor resumes.
    pub(super) async fn run_for_each(
        &self,
        run: &Run<'_>,
        each: &ForEach,
        mut st: State<'_>,
        resumed: bool,
    ) -> Result<Option<RunOutcome>> {
        let step = &run.connector.steps[run.index];
        let list = match items::items(each, self.client.renderer(), st.ctx) {
            Ok(list) => list,
            Err(refused) => return self.settle_unsent(run, &mut st, *refused, None).await,
        };
        let mut w = Window {
            progress: if resumed {
                Progress::stored(&run.claimed.context, &step.name)
            } else {
                Progress::default()
            },
            total: u32::try_from(list.len()).unwrap_or(u32::MAX),
            in_flight: BTreeMap::new(),
            stop: None,
            held: None,
        };
        if w.progress.done() >= w.total {
            // No items, or every one finished before a crash: settle now.
            let loop_end = (&w.progress, w.total);
            return self
                .settle_unsent(run, &mut st, items::empty_result(), Some(loop_end))
                .await;
        }
        // The variant for the credentials' kinds, and the OAuth credential
        // it sends with, if any.
        let resolved = step
            .resolved(|name| st.credentials.kind_of(name))
            .into_owned();
        let oauth = st.credentials.oauth_credential(&resolved);
        let every = self.config.lease / 3;
        let valid_for = self.config.lease * 5 / 6;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut flight = FuturesUnordered::new();
        let mut launched = 0_u32;
        loop {
            while w.stop.is_none() && w.held.is_none() && flight.len() < each.concurrency as usize {
                let busy = !flight.is_empty();
                let Some((mut launch, ctx, ready)) = self
                    .next_launch(
                        run,
                        &mut st,
                        &mut w,
                        (&list, &resolved, oauth.as_deref()),
                        (busy, launched),
                    )
                    .await?
                else {
                    break;
                };
                let credentials = st.credentials.fields.clone();
                launch.sent_with = oauth
                    .as_deref()
                    .and_then(|n| st.credentials.access_token(n));
                flight.push(self.fly(&resolved, launch, ctx, credentials, ready));
                launched += 1;
            }
            if flight.is_empty() {
                break;
            }
            tokio::select! {
                Some((mut launch, result)) = flight.next() => {
                    // A 401 with an OAuth token: renew it (unless another item
                    // did meanwhile) and re-send the same attempt once (same
                    // key), as for any step.
                    if let Some(name) = &oauth
                        && !launch.resent
                        && result.response.as_ref().map(|r| r.status) == Some(401)
                        && let Some(rejected) = launch.sent_with.take()
                    {
                        let renewed = if st.credentials.access_token(name) == Some(rejected.clone()) {
                            self.ensure_token(&resolved, st.credentials, name, Some(&rejected))
                                .await?
                        } else {
                            Ok(())
                        };
                        info!("401 with an OAuth token: re-sending the item once with a renewed token");
                        launch.resent = true;
                        let ctx = item_ctx(st.ctx, &list, launch.index, launch.attempt);
                        let credentials = st.credentials.fields.clone();
                        flight.push(self.fly(&resolved, launch, ctx, credentials, renewed.err()));
                        continue;
                    }
                    let slot = w.in_flight.remove(&launch.index).flatten();
                    let holder = i32::try_from(launch.index + 1).unwrap_or(i32::MAX);
                    self.release_slot(slot.as_deref(), (run.id, holder)).await?;
                    if let Some(outcome) = self.item_done(run, &mut st, &mut w, launch, result).await? {
                        self.abandon(run.id, &mut w).await?;
                        return Ok(Some(outcome));
                    }
                }
                () = tokio::time::sleep_until(*st.extended_at + valid_for) => {
                    warn!("the lease could not be extended and is about to pass; aborting the items in flight");
                    metrics::counter!("conveyor_steps_aborted_lease_total").increment(1);
                    return Ok(Some(RunOutcome::LeaseLost));
                }
                _ = beat.tick() => {
                    let asked = tokio::time::Instant::now();
                    match executions::heartbeat(&self.pool, run.id, run.token, self.config.lease).await {
                        Ok(Some(false)) => *st.extended_at = asked,
                        Ok(Some(true)) => {
                            info!("cancel requested while items were in flight");
                            self.abandon(run.id, &mut w).await?;
                            return self.end(run.id, run.token, None).await.map(Some);
                        }
                        Ok(None) => {
                            warn!("lease lost while items were in flight");
                            return Ok(Some(RunOutcome::LeaseLost));
                        }
                        Err(e) => warn!(error = %e, "heartbeat failed"),
                    }
                }
            }
        }
        self.drained(run, &mut st, w).await
    }

    /// The next item to send, its context and, when known before a send,
    /// its outcome (a failed OAuth renewal), having passed the step's
    /// flow-control gate; `None` when no item may start now (the loop may
    /// have stopped: `w.stop`). `busy`: items of this loop are in flight;
    /// `launched`: items started in this claim.
    async fn next_launch(
        &self,
        run: &Run<'_>,
        st: &mut State<'_>,
        w: &mut Window,
        (list, resolved, oauth): (&[Value], &Step, Option<&str>),
        (busy, launched): (bool, u32),
    ) -> Result<Option<(Launch, Value, Option<StepResult>)>> {
        let step = &run.connector.steps[run.index];
        let in_flight: BTreeSet<u32> = w.in_flight.keys().copied().collect();
        let Some(i) = w.progress.next_due(w.total, &in_flight) else {
            return Ok(None);
        };
        if launched > 0 && run.shutdown.is_cancelled() {
            w.stop = Some(Stop::Shutdown);
            return Ok(None);
        }
        let now = Utc::now();
        if let Some(e) = decide::deadline_passed(run.connector, run.index, now, run.deadline) {
            w.stop = Some(Stop::End(e));
            return Ok(None);
        }
        let Due { attempt, .. } = w.progress.due(i);
        let ctx = item_ctx(st.ctx, list, i, attempt);
        let at = (run.id, run.token);
        let ws = run.claimed.workspace_id.as_str();
        let holder = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let slot = match self.admit(at, ws, (step, run.index, holder), &ctx).await? {
            Admit::Go(slot) => slot,
            // Items of this loop are in flight: the next one is tried
            // again when one of them finishes (and frees its slot).
            Admit::Wait(_, WaitReason::Concurrency, _) if busy => return Ok(None),
            Admit::Wait(until, reason, key) => {
                w.stop = Some(Stop::Park(until, reason, key));
                return Ok(None);
            }
            Admit::Broken(e) => {
                w.stop = Some(Stop::End(e));
                return Ok(None);
            }
        };
        w.in_flight.insert(i, slot);
        let ready = match oauth {
            Some(name) => self
                .ensure_token(resolved, st.credentials, name, None)
                .await?
                .err(),
            None => None,
        };
        let remaining = (run.deadline - now).to_std().unwrap_or(Duration::ZERO);
        let span = super::step_span(step, run.index, Some(i), attempt);
        let launch = Launch {
            index: i,
            attempt,
            resent: false,
            sent_with: None,
            key: idempotency_key(run.id, &format!("{}#item{i}", step.name), attempt),
            timeout: Duration::from_millis(step.timeout_ms).min(remaining),
            span,
        };
        Ok(Some((launch, ctx, ready)))
    }

    /// Sends one item (or returns `ready`, an outcome known before a send:
    /// a failed OAuth renewal).
    async fn fly(
        &self,
        step: &Step,
        launch: Launch,
        ctx: Value,
        credentials: Credentials,
        ready: Option<StepResult>,
    ) -> (Launch, StepResult) {
        if let Some(result) = ready {
            return (launch, result);
        }
        let span = launch.span.clone();
        let traceparent = span.in_scope(crate::telemetry::current_traceparent);
        let call = Attempt {
            idempotency_key: &launch.key,
            timeout: launch.timeout,
            traceparent: traceparent.as_deref(),
            small_context: crate::json::within(&ctx, INLINE_WORK_BYTES),
        };
        let result = self
            .client
            .run_attempt(step, &ctx, &credentials, &call)
            .instrument(span)
            .await;
        (launch, result)
    }

    /// Records an item's outcome: commits its row now, or holds it when it
    /// stops the loop. `Some` when the execution left this worker.
    async fn item_done(
        &self,
        run: &Run<'_>,
        st: &mut State<'_>,
        w: &mut Window,
        launch: Launch,
        mut result: StepResult,
    ) -> Result<Option<RunOutcome>> {
        let step = &run.connector.steps[run.index];
        let now = Utc::now();
        let due = w.progress.due(launch.index);
        let attempt = StepAttempt {
            connector: run.connector,
            index: run.index,
            attempt: launch.attempt,
            throttled: due.throttled,
            result: &result,
            deadline: run.deadline,
        };
        // An outcome to commit now, or what stops the loop (held).
        let outcome = match decide::verdict(&attempt, &self.policy(), now, rand::random::<f64>) {
            Verdict::Succeeded => {
                w.progress.succeed(launch.index, result.extracted.clone());
                Ok(StepOutcome::Succeeded)
            }
            Verdict::Retry {
                run_at,
                attempt,
                throttled,
            } => {
                let counted = due.throttled + u32::from(throttled);
                let next = Due {
                    attempt,
                    throttled: counted,
                };
                w.progress.retries.insert(launch.index, next);
                if throttled
                    && let Some(key) = self.rate_key(&run.claimed.workspace_id, step, st.ctx)
                {
                    // The provider's wait slows every execution of the key.
                    self.push_back(&key, run_at, now).await?;
                }
                Err(HeldNext::Retry { run_at, throttled })
            }
            Verdict::Failed(error) if step.on_error == OnError::Fail => Err(HeldNext::Fail(error)),
            Verdict::Failed(error) => {
                w.progress.fail(launch.index, error.to_json());
                Ok(StepOutcome::Continued)
            }
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(next) => {
                let held = Held {
                    launch,
                    result,
                    next,
                };
                return self.hold(run, st, w, held).await;
            }
        };
        let finished = w.progress.done() == w.total;
        // Collecting a finished loop's items walks all of them.
        let decision = cpu_bound(
            finished || heavy(crate::json::within(st.ctx, INLINE_WORK_BYTES), &result),
            || {
                if finished {
                    result.extracted = items::collect(step, &w.progress, w.total);
                    let summary = items::summary(&w.progress, w.total);
                    let failure = items::first_failure(&w.progress);
                    decide::finish_loop(
                        run.connector,
                        (run.index, launch.attempt),
                        (&result, outcome),
                        (summary, failure),
                        st.ctx,
                        &self.policy(),
                    )
                } else {
                    self.unit_decision(run, st.ctx, &w.progress, outcome)
                }
            },
        );
        self.commit_item(run, st, (launch, result), decision, None)
            .await
    }

    /// Holds the row that stops the loop; a row held before it is
    /// committed now as a plain item row (a failure outranks a retry, the
    /// latest retry time wins).
    async fn hold(
        &self,
        run: &Run<'_>,
        st: &mut State<'_>,
        w: &mut Window,
        mut held: Held,
    ) -> Result<Option<RunOutcome>> {
        let Some(mut earlier) = w.held.take() else {
            w.held = Some(held);
            return Ok(None);
        };
        if let (HeldNext::Retry { run_at: a, .. }, HeldNext::Retry { run_at: b, .. }) =
            (&mut held.next, &earlier.next)
        {
            *a = (*a).max(*b);
        }
        if matches!(earlier.next, HeldNext::Fail(_)) {
            std::mem::swap(&mut earlier, &mut held);
        }
        w.held = Some(held);
        let outcome = match earlier.next {
            HeldNext::Retry { .. } => StepOutcome::RetryScheduled,
            HeldNext::Fail(_) => StepOutcome::Failed,
        };
        let decision = self.unit_decision(run, st.ctx, &w.progress, outcome);
        self.commit_item(run, st, (earlier.launch, earlier.result), decision, None)
            .await
    }

    /// The items in flight are finished: carries out why the loop stopped.
    async fn drained(
        &self,
        run: &Run<'_>,
        st: &mut State<'_>,
        mut w: Window,
    ) -> Result<Option<RunOutcome>> {
        let (id, token) = (run.id, run.token);
        let now = Utc::now();
        match (w.held.take(), w.stop.take()) {
            (Some(held), stop) => {
                let Held {
                    launch,
                    result,
                    next,
                } = held;
                match next {
                    HeldNext::Fail(error) => {
                        let decision = Decision {
                            outcome: StepOutcome::Failed,
                            next: Next::Fail(error),
                        };
                        self.commit_item(run, st, (launch, result), decision, None)
                            .await
                    }
                    HeldNext::Retry { run_at, throttled } => {
                        let run_at = match &stop {
                            Some(Stop::Park(until, ..)) => run_at.max(*until),
                            _ => run_at,
                        };
                        let carrier = self.unit_decision(
                            run,
                            st.ctx,
                            &w.progress,
                            StepOutcome::RetryScheduled,
                        );
                        let Next::Continue { context, .. } = carrier.next else {
                            // The progress outgrew the context limit.
                            return self
                                .commit_item(run, st, (launch, result), carrier, None)
                                .await;
                        };
                        let decision = Decision {
                            outcome: StepOutcome::RetryScheduled,
                            next: Next::Retry {
                                run_at,
                                attempt: launch.attempt + 1,
                                throttled,
                            },
                        };
                        // A deadline or broken key that also stopped the loop
                        // ends the run when it is claimed again.
                        self.commit_item(run, st, (launch, result), decision, Some(context))
                            .await
                    }
                }
            }
            (None, Some(Stop::End(error))) => self.end(id, token, Some(&error)).await.map(Some),
            (None, Some(Stop::Park(until, reason, key))) => Ok(Some(
                match self.park(id, token, until, reason, &key).await? {
                    super::flow::Gate::LeaseLost => RunOutcome::LeaseLost,
                    _ => RunOutcome::Parked,
                },
            )),
            (None, Some(Stop::Shutdown)) => {
                executions::release(&self.pool, id, token, now).await?;
                info!("released between items for shutdown");
                Ok(Some(RunOutcome::Released))
            }
            // Every item has its outcome, and the last one's commit moved
            // the run on.
            (None, None) => Ok(None),
        }
    }

    /// A row of an item that another follows: the execution stays at this
    /// step with the progress stored; the row's outcome is `outcome` unless
    /// the context outgrew its limit (then the execution fails).
    fn unit_decision(
        &self,
        run: &Run<'_>,
        ctx: &Value,
        progress: &Progress,
        outcome: StepOutcome,
    ) -> Decision {
        let mut decision = decide::next_page(
            run.connector,
            (run.index, 1),
            ctx,
            ("for_each", progress.to_json()),
            &self.policy(),
        );
        if decision.outcome == StepOutcome::Succeeded {
            decision.outcome = outcome;
        }
        decision
    }

    /// Commits an item's row with `decision` (a retry's transition stores
    /// `retry_context`); `Some` when the execution left this worker.
    async fn commit_item(
        &self,
        run: &Run<'_>,
        st: &mut State<'_>,
        (launch, mut result): (Launch, StepResult),
        mut decision: Decision,
        retry_context: Option<Value>,
    ) -> Result<Option<RunOutcome>> {
        let step = &run.connector.steps[run.index];
        let now = Utc::now();
        let fields = &mut st.credentials.fields;
        st.secrets
            .protect(&self.keyring, step, st.ctx, &mut decision, fields);
        language::redact_extracts(step, &mut result.extracted);
        observe::observe_step(&launch.span, run.labels, step, &result, decision.outcome);
        let outcome = match &decision.next {
            Next::Continue { .. } => None,
            Next::Succeed { .. } => Some(RunOutcome::Succeeded),
            Next::Retry { .. } => Some(RunOutcome::RetryScheduled),
            Next::Fail(_) => Some(RunOutcome::Failed),
        };
        let (mut row, mut transition) =
            self.step_commit(&step.name, run.index, launch.attempt, result, decision, now);
        row.item = i32::try_from(launch.index + 1).ok();
        if let Transition::Retry { context, .. } = &mut transition {
            *context = retry_context;
        }
        self.commit_row(run, st, row, transition, outcome).await
    }

    /// Settles the step without sending an item: items that cannot be
    /// looped over (`result` holds the error), or, with `finished`, a loop
    /// whose items all have their outcome already (or that has none). The
    /// row has no item.
    async fn settle_unsent(
        &self,
        run: &Run<'_>,
        st: &mut State<'_>,
        mut result: StepResult,
        finished: Option<(&Progress, u32)>,
    ) -> Result<Option<RunOutcome>> {
        let step = &run.connector.steps[run.index];
        let now = Utc::now();
        let mut decision = cpu_bound(
            finished.is_some() || heavy(crate::json::within(st.ctx, INLINE_WORK_BYTES), &result),
            || match finished {
                Some((progress, total)) => {
                    result.extracted = items::collect(step, progress, total);
                    let summary = items::summary(progress, total);
                    let failure = items::first_failure(progress);
                    let outcome = StepOutcome::Succeeded;
                    decide::finish_loop(
                        run.connector,
                        (run.index, 1),
                        (&result, outcome),
                        (summary, failure),
                        st.ctx,
                        &self.policy(),
                    )
                }
                None => {
                    let attempt = StepAttempt {
                        connector: run.connector,
                        index: run.index,
                        attempt: 1,
                        throttled: 0,
                        result: &result,
                        deadline: run.deadline,
                    };
                    decide::decide(&attempt, st.ctx, &self.policy(), now, || 0.0)
                }
            },
        );
        let fields = &mut st.credentials.fields;
        st.secrets
            .protect(&self.keyring, step, st.ctx, &mut decision, fields);
        language::redact_extracts(step, &mut result.extracted);
        let outcome = match &decision.next {
            Next::Continue { .. } => None,
            Next::Succeed { .. } => Some(RunOutcome::Succeeded),
            Next::Retry { .. } => Some(RunOutcome::RetryScheduled),
            Next::Fail(_) => Some(RunOutcome::Failed),
        };
        let (row, transition) = self.step_commit(&step.name, run.index, 1, result, decision, now);
        self.commit_row(run, st, row, transition, outcome).await
    }

    /// Commits a row fenced by the run's token: `Some` when the execution
    /// left this worker (`outcome`, a cancel, a lost lease).
    async fn commit_row(
        &self,
        run: &Run<'_>,
        st: &mut State<'_>,
        row: executions::StepRow,
        transition: Transition,
        outcome: Option<RunOutcome>,
    ) -> Result<Option<RunOutcome>> {
        let committing = tokio::time::Instant::now();
        let commit = executions::Commit {
            id: run.id,
            token: run.token,
            step: row,
            transition,
        };
        match self.commits.commit(commit).await? {
            None => {
                warn!("lease lost before the item commit; dropping the execution");
                Ok(Some(RunOutcome::LeaseLost))
            }
            Some(ExecutionStatus::Cancelled) => {
                info!("cancelled at an item boundary");
                Ok(Some(RunOutcome::Cancelled))
            }
            Some(_) => {
                *st.extended_at = committing;
                if let Some(outcome) = outcome {
                    info!(?outcome, "execution left the worker");
                }
                Ok(outcome)
            }
        }
    }

    /// Gives back the concurrency slots of the items still in flight, which
    /// are dropped.
    async fn abandon(&self, id: Uuid, w: &mut Window) -> Result<()> {
        for (index, slot) in std::mem::take(&mut w.in_flight) {
            let holder = i32::try_from(index + 1).unwrap_or(i32::MAX);
            self.release_slot(slot.as_deref(), (id, holder)).await?;
        }
        Ok(())
    }
}

/// The context item `index` of `list` is sent with at `attempt`: the
/// run's, with `item`, `index` and the attempt.
fn item_ctx(ctx: &Value, list: &[Value], index: u32, attempt: u32) -> Value {
    let mut ctx = ctx.clone();
    ctx["item"] = list.get(index as usize).cloned().unwrap_or(Value::Null);
    ctx["index"] = json!(index);
    ctx["execution"]["attempt"] = json!(attempt);
    ctx
}
