//! What happens after a step attempt, and the execution's output: pure.
//!
//! [`decide`] takes the attempt, the policy, `now` and a jitter source and
//! returns a [`Decision`]: the step's [`StepOutcome`] and where the
//! execution goes next (continue, succeed, retry at a time, fail with an
//! [`ExecutionError`]). The runner only carries decisions out: it sends
//! steps, commits rows and never judges a result itself.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::connector::{Connector, OnError, Step};
use crate::flow::provider_wait;
use crate::http::{Retry, StepErrorKind, StepResult};
use crate::retry::next_delay;
use crate::state::StepOutcome;
use crate::template::Renderer;

/// Why an execution failed. Stored as the execution's `error` and shown by
/// the API; `docs/errors.md` lists every kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecutionError {
    /// The cause.
    pub kind: ErrorKind,
    /// What happened; never a secret.
    pub message: String,
    /// The step it happened at, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// That step's position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_index: Option<usize>,
    /// That step's attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// For a failed step: the response status, `null` when no response
    /// arrived. Absent for other errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Option<u16>>,
}

/// The kind of an [`ExecutionError`]: a failed step's own kind, or one of
/// the execution's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ErrorKind {
    /// A step failed for good (after its retries).
    Step(StepErrorKind),
    /// The execution itself failed.
    Run(RunErrorKind),
}

/// Ways an execution fails other than a step's own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunErrorKind {
    /// The pinned connector version is gone or cannot be read.
    Definition,
    /// The workspace's credentials could not be loaded or opened.
    Credential,
    /// The run passed its `timeout_ms`.
    Deadline,
    /// The `output` template failed to render.
    Output,
    /// The persisted context would exceed its size limit.
    ContextTooLarge,
    /// A step's `rate_limit` or `concurrency` key failed to render.
    FlowControl,
    /// Its lease expired more often than the reclaim cap allows (written by
    /// the store's rescue, listed here for completeness).
    Poisoned,
}

impl ExecutionError {
    /// An execution-level error not tied to a step.
    pub fn run(kind: RunErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Run(kind),
            message: message.into(),
            step: None,
            step_index: None,
            attempt: None,
            status: None,
        }
    }

    /// The error as stored.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| json!({"message": self.message}))
    }

    fn at(mut self, step: &Step, index: usize) -> Self {
        self.step = Some(step.name.clone());
        self.step_index = Some(index);
        self
    }
}

/// The limits a decision applies, from the runner's settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Renders the connector's `output`.
    pub renderer: &'a Renderer,
    /// Largest persisted context (the step results so far).
    pub max_context_bytes: usize,
    /// Upper bound for a server's `Retry-After`.
    pub max_retry_after: Duration,
}

/// One finished attempt to decide on.
#[derive(Debug, Clone, Copy)]
pub struct StepAttempt<'a> {
    /// The connector being run.
    pub connector: &'a Connector,
    /// The step's position in it.
    pub index: usize,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// Earlier attempts of this step a provider refused with a rate-limit
    /// signal: the retry policy does not count them.
    pub throttled: u32,
    /// What the attempt gave.
    pub result: &'a StepResult,
    /// The run's deadline (start plus `timeout_ms`).
    pub deadline: DateTime<Utc>,
}

/// The decision on an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The step row's outcome.
    pub outcome: StepOutcome,
    /// Where the execution goes.
    pub next: Next,
}

/// Where an execution goes after a step attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Run the next step; store the grown context and extend the lease.
    Continue {
        /// The persisted context (`{"steps": ...}`).
        context: Value,
        /// The next step's index.
        next_step: usize,
    },
    /// The last step is done.
    Succeed {
        /// The persisted context.
        context: Value,
        /// The rendered output.
        output: Value,
    },
    /// Try the step again at `run_at` (the worker slot is freed).
    Retry {
        /// When.
        run_at: DateTime<Utc>,
        /// The retry's attempt number.
        attempt: u32,
        /// The provider refused with a rate-limit signal (429 or 503 with
        /// `Retry-After` or `RateLimit` headers): the wait is the
        /// provider's, and the attempt is not charged to the retry policy.
        throttled: bool,
    },
    /// The execution failed.
    Fail(ExecutionError),
}

/// What an attempt's result means for its step, before the execution
/// moves: see [`verdict`].
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The attempt succeeded.
    Succeeded,
    /// Try the step (or the item) again at `run_at`.
    Retry {
        /// When.
        run_at: DateTime<Utc>,
        /// The retry's attempt number.
        attempt: u32,
        /// The provider refused with a rate-limit signal: not charged to
        /// the retry policy.
        throttled: bool,
    },
    /// It failed for good (not retryable, out of attempts, or a retry
    /// would pass the deadline); the error names the step. The step's
    /// `on_error` says whether the execution fails.
    Failed(ExecutionError),
}

/// Judges `attempt` by its error, the step's retry policy and the run's
/// deadline. `jitter` yields a number in `[0, 1)`, drawn only when a retry
/// delay is computed.
pub fn verdict(
    attempt: &StepAttempt<'_>,
    policy: &Policy<'_>,
    now: DateTime<Utc>,
    jitter: impl FnOnce() -> f64,
) -> Verdict {
    let StepAttempt {
        connector,
        index,
        attempt: number,
        throttled,
        result,
        deadline,
    } = *attempt;
    let step = &connector.steps[index];
    let Some(error) = &result.error else {
        return Verdict::Succeeded;
    };
    let retry_policy = connector.retry_for(step);
    let retry_after = match error.retry {
        Retry::Fatal => None,
        Retry::Retryable => Some(None),
        Retry::RetryAfter(d) => Some(Some(d)),
    };
    let mut why = error.message.clone();
    if let Some(wait) = provider_throttle(error.retry, result, now) {
        let run_at = now + wait.min(policy.max_retry_after);
        if run_at < deadline {
            return Verdict::Retry {
                run_at,
                attempt: number + 1,
                throttled: true,
            };
        }
        why = format!("{why}; the provider's rate-limit wait would pass the run deadline");
    } else if let Some(retry_after) = retry_after {
        let counted = number.saturating_sub(throttled).max(1);
        if counted < retry_policy.max_attempts {
            let delay = next_delay(
                retry_policy,
                counted,
                jitter(),
                retry_after,
                policy.max_retry_after,
            );
            let run_at = now + delay;
            if run_at < deadline {
                return Verdict::Retry {
                    run_at,
                    attempt: number + 1,
                    throttled: false,
                };
            }
            why = format!("{why}; a retry would pass the run deadline");
        } else {
            why = format!("{why}; gave up after {counted} attempts");
        }
    }
    Verdict::Failed(
        ExecutionError {
            kind: ErrorKind::Step(error.kind),
            message: why,
            step: None,
            step_index: None,
            attempt: Some(number),
            status: Some(result.response.as_ref().map(|r| r.status)),
        }
        .at(step, index),
    )
}

/// Decides what follows `attempt`, growing `ctx` (the execution context)
/// with the step's entry when the execution moves on. `jitter` yields a
/// number in `[0, 1)`, drawn only when a retry delay is computed.
pub fn decide(
    attempt: &StepAttempt<'_>,
    ctx: &mut Value,
    policy: &Policy<'_>,
    now: DateTime<Utc>,
    jitter: impl FnOnce() -> f64,
) -> Decision {
    let (connector, index) = (attempt.connector, attempt.index);
    let step = &connector.steps[index];
    let mut outcome = StepOutcome::Succeeded;
    let mut entry = attempt.result.context_entry();
    match verdict(attempt, policy, now, jitter) {
        Verdict::Succeeded => {}
        Verdict::Retry {
            run_at,
            attempt,
            throttled,
        } => {
            return Decision {
                outcome: StepOutcome::RetryScheduled,
                next: Next::Retry {
                    run_at,
                    attempt,
                    throttled,
                },
            };
        }
        Verdict::Failed(failure) => {
            if step.on_error == OnError::Fail {
                return Decision {
                    outcome: StepOutcome::Failed,
                    next: Next::Fail(failure),
                };
            }
            outcome = StepOutcome::Continued;
            entry["error"] = failure.to_json();
        }
    }
    // A paginated step's last page: the runner left its summary here.
    if let Some(summary) = ctx
        .get_mut("paged")
        .and_then(Value::as_object_mut)
        .and_then(|p| p.remove(&step.name))
    {
        entry["paging"] = summary;
    }
    advance(
        connector,
        (index, attempt.attempt),
        outcome,
        entry,
        ctx,
        policy,
    )
}

/// The decision on a `for_each` step once every item has its outcome,
/// made with the row of the item that finished last (`result`, whose
/// `extracted` holds the collected arrays, and the row's `outcome`). The
/// step's entry gets `for_each` = `summary` and, when items failed under
/// `on_error: continue`, `error` = the first failed item's error; the
/// execution then moves on as after any step.
pub fn finish_loop(
    connector: &Connector,
    (index, number): (usize, u32),
    (result, outcome): (&StepResult, StepOutcome),
    (summary, failure): (Value, Option<Value>),
    ctx: &mut Value,
    policy: &Policy<'_>,
) -> Decision {
    let mut entry = result.context_entry();
    entry["for_each"] = summary;
    if let Some(error) = failure {
        entry["error"] = error;
    }
    advance(connector, (index, number), outcome, entry, ctx, policy)
}

/// The decision on step `index` whose `when` condition is false: the step
/// was not sent and is recorded as [`StepOutcome::Skipped`]. Its context
/// entry has a null `status` and `body`, no `headers`, and every field of
/// its `extract` null; the execution then moves on as after a success.
pub fn skip(connector: &Connector, index: usize, ctx: &mut Value, policy: &Policy<'_>) -> Decision {
    let extract: Map<String, Value> = connector.steps[index]
        .extract
        .keys()
        .map(|field| (field.clone(), Value::Null))
        .collect();
    let entry = json!({"status": null, "headers": {}, "body": null, "extract": extract});
    advance(
        connector,
        (index, 1),
        StepOutcome::Skipped,
        entry,
        ctx,
        policy,
    )
}

/// Records `entry` as the context entry of step `index` (attempt `number`)
/// and moves the execution on: to the next step, or to success with the
/// rendered output. Fails when the persisted context would pass its size
/// limit or the output does not render.
fn advance(
    connector: &Connector,
    (index, number): (usize, u32),
    outcome: StepOutcome,
    entry: Value,
    ctx: &mut Value,
    policy: &Policy<'_>,
) -> Decision {
    let step = &connector.steps[index];
    let fail = |outcome, error| Decision {
        outcome,
        next: Next::Fail(error),
    };
    ctx["steps"][step.name.as_str()] = entry;
    let persisted = json!({"steps": ctx["steps"]});
    let size = serde_json::to_vec(&persisted).map_or(usize::MAX, |v| v.len());
    if size > policy.max_context_bytes {
        let mut error = ExecutionError::run(
            RunErrorKind::ContextTooLarge,
            format!(
                "the execution context would grow to {size} bytes, over the {} byte limit; extract fewer fields or lower the stored body size",
                policy.max_context_bytes
            ),
        )
        .at(step, index);
        error.attempt = Some(number);
        return fail(StepOutcome::Failed, error);
    }
    if index + 1 < connector.steps.len() {
        return Decision {
            outcome,
            next: Next::Continue {
                context: persisted,
                next_step: index + 1,
            },
        };
    }
    match render_output(connector, policy.renderer, ctx) {
        Ok(output) => Decision {
            outcome,
            next: Next::Succeed {
                context: persisted,
                output,
            },
        },
        Err(error) => fail(StepOutcome::Failed, error),
    }
}

/// The decision on a successful unit of a step that another unit follows
/// (a page of a paginated step, an item of a `for_each` step): the unit's
/// row succeeds and the execution continues at the same step, its context
/// holding `<slot>.<step>` = `progress` (what a resumed run starts the
/// next unit from; `slot` is `paging` or `for_each`), unless that context
/// outgrows its limit.
pub fn next_page(
    connector: &Connector,
    (index, attempt): (usize, u32),
    ctx: &Value,
    (slot, progress): (&str, Value),
    policy: &Policy<'_>,
) -> Decision {
    let step = &connector.steps[index];
    let mut units = Map::new();
    units.insert(step.name.clone(), progress);
    let context = json!({"steps": ctx["steps"], slot: units});
    let size = serde_json::to_vec(&context).map_or(usize::MAX, |v| v.len());
    if size > policy.max_context_bytes {
        let mut error = ExecutionError::run(
            RunErrorKind::ContextTooLarge,
            format!(
                "the execution context would grow to {size} bytes with the fields {slot} has accumulated, over the {} byte limit; extract fewer fields or lower max_pages or max_items",
                policy.max_context_bytes
            ),
        )
        .at(step, index);
        error.attempt = Some(attempt);
        return Decision {
            outcome: StepOutcome::Failed,
            next: Next::Fail(error),
        };
    }
    Decision {
        outcome: StepOutcome::Succeeded,
        next: Next::Continue {
            context,
            next_step: index,
        },
    }
}

/// A provider's wait when a retryable attempt was refused with 429 or 503
/// and a rate-limit signal ([`provider_wait`]); `None` otherwise.
fn provider_throttle(retry: Retry, result: &StepResult, now: DateTime<Utc>) -> Option<Duration> {
    if retry == Retry::Fatal {
        return None;
    }
    let response = result.response.as_ref()?;
    if !matches!(response.status, 429 | 503) {
        return None;
    }
    provider_wait(&response.headers, now)
}

/// The error that ends a run whose deadline has come before step `index`
/// starts, or `None` while time is left.
pub fn deadline_passed(
    connector: &Connector,
    index: usize,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> Option<ExecutionError> {
    (now >= deadline).then(|| {
        ExecutionError::run(
            RunErrorKind::Deadline,
            format!(
                "the run exceeded its timeout_ms of {} ms",
                connector.timeout_ms
            ),
        )
        .at(&connector.steps[index], index)
    })
}

/// Renders the connector's `output` template against `ctx`; without one,
/// the output is every step's extracted fields by step name.
///
/// # Errors
///
/// An `output` error when the template fails to render.
pub fn render_output(
    connector: &Connector,
    renderer: &Renderer,
    ctx: &Value,
) -> Result<Value, ExecutionError> {
    if connector.output.is_null() {
        let mut out = Map::new();
        if let Some(steps) = ctx["steps"].as_object() {
            for (name, entry) in steps {
                out.insert(name.clone(), entry["extract"].clone());
            }
        }
        return Ok(Value::Object(out));
    }
    renderer
        .render_json(&connector.output, ctx)
        .map_err(|e| ExecutionError::run(RunErrorKind::Output, format!("output: {e}")))
}

#[cfg(test)]
mod tests;
