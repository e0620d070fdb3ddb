//! Running a step once per item of an array, each item a durable unit:
//! pure.
//!
//! A step with `for_each` is sent once per item, up to `concurrency` items
//! at once, lowest index first. Whenever an item's outcome is in, the
//! runner commits the item's step row together with the [`Progress`]
//! (each finished item's extracted fields, the items that failed for good,
//! the attempt due for items awaiting a retry) inside the execution's
//! context, under `for_each.<step>`; a worker that resumes the execution
//! reads it back and sends only the items not finished, each with the
//! attempt (and so the `Idempotency-Key`) it had.
//!
//! [`items`] renders the array (or settles the step without a send: items
//! that cannot be looped over); [`Progress::next_due`] says which item to
//! send next; [`collect`] and [`summary`] make the step's outcome once
//! every item is finished.
//!
//! Collection rule: every extracted field becomes an array with exactly one
//! entry per item, in item order whatever order the items finished in
//! (`null` where an item selected nothing or failed).

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::connector::Step;
use crate::connector::for_each::ForEach;
use crate::http::{Retry, StepError, StepErrorKind, StepResult, Traffic};
use crate::template::Renderer;

/// How far a `for_each` step got: stored in the execution's context
/// between items.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Each succeeded item's extracted fields, by index.
    #[serde(default)]
    pub finished: BTreeMap<u32, Map<String, Value>>,
    /// Each item that failed after its retries (under `on_error:
    /// continue`): its error, by index.
    #[serde(default)]
    pub failed: BTreeMap<u32, Value>,
    /// Items whose last attempt failed and will be tried again, by index.
    #[serde(default)]
    pub retries: BTreeMap<u32, Due>,
}

/// The next attempt of an item whose last attempt failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due {
    /// The attempt number to send, from 2.
    pub attempt: u32,
    /// Earlier attempts a provider refused with a rate-limit signal: the
    /// retry policy does not count them.
    #[serde(default)]
    pub throttled: u32,
}

impl Progress {
    /// The progress of `step` stored in a persisted context, or a fresh
    /// one (no item finished) when there is none or it cannot be read.
    pub fn stored(context: &Value, step: &str) -> Progress {
        context
            .get("for_each")
            .and_then(|p| p.get(step))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// The progress as stored in the context.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Whether item `index` has its outcome (succeeded or failed for good).
    pub fn is_finished(&self, index: u32) -> bool {
        self.finished.contains_key(&index) || self.failed.contains_key(&index)
    }

    /// Items with their outcome.
    pub fn done(&self) -> u32 {
        u32::try_from(self.finished.len() + self.failed.len()).unwrap_or(u32::MAX)
    }

    /// The lowest item of `total` that is neither finished nor in
    /// `in_flight`: the next to send.
    pub fn next_due(&self, total: u32, in_flight: &BTreeSet<u32>) -> Option<u32> {
        (0..total).find(|i| !self.is_finished(*i) && !in_flight.contains(i))
    }

    /// The attempt due for item `index` (1 unless a retry is pending) and
    /// its throttled attempts so far.
    pub fn due(&self, index: u32) -> Due {
        self.retries.get(&index).copied().unwrap_or(Due {
            attempt: 1,
            throttled: 0,
        })
    }

    /// Records item `index` as succeeded with `extracted`.
    pub fn succeed(&mut self, index: u32, extracted: Map<String, Value>) {
        self.retries.remove(&index);
        self.finished.insert(index, extracted);
    }

    /// Records item `index` as failed for good with `error`.
    pub fn fail(&mut self, index: u32, error: Value) {
        self.retries.remove(&index);
        self.failed.insert(index, error);
    }
}

/// The items of `each` rendered against `ctx` (its steps are the stored
/// ones, so a resumed run sees the same items), or the step's outcome when
/// they cannot be looped over (not an array, over `max_items`): a fatal
/// `for_each` error, nothing sent.
///
/// # Errors
///
/// The settled step's result, as above.
pub fn items(
    each: &ForEach,
    renderer: &Renderer,
    ctx: &Value,
) -> Result<Vec<Value>, Box<StepResult>> {
    let fail = |message: String| {
        let mut result = empty_result();
        result.error = Some(StepError {
            kind: StepErrorKind::ForEach,
            message,
            retry: Retry::Fatal,
        });
        Box::new(result)
    };
    let items = match renderer.render_value(&each.items, ctx) {
        Ok(Value::Array(items)) => items,
        Ok(other) => {
            return Err(fail(format!(
                "for_each: items rendered to {}, not an array",
                kind_of(&other)
            )));
        }
        Err(e) => return Err(fail(format!("for_each: items: {e}"))),
    };
    let total = u32::try_from(items.len()).unwrap_or(u32::MAX);
    if total > each.max_items {
        return Err(fail(format!(
            "for_each: {total} items, over max_items ({}); nothing was sent",
            each.max_items
        )));
    }
    Ok(items)
}

/// One array per extracted field of `step`, one entry per item of
/// `total`, in item order: `null` where an item selected nothing or
/// failed.
pub fn collect(step: &Step, progress: &Progress, total: u32) -> Map<String, Value> {
    step.extract
        .keys()
        .map(|name| {
            let values = (0..total)
                .map(|i| {
                    progress
                        .finished
                        .get(&i)
                        .and_then(|r| r.get(name))
                        .cloned()
                        .unwrap_or(Value::Null)
                })
                .collect();
            (name.clone(), Value::Array(values))
        })
        .collect()
}

/// The step's `for_each` entry: how many items there were and the
/// positions (from 0, as `<<index>>`) of those that failed.
pub fn summary(progress: &Progress, total: u32) -> Value {
    let failed: Vec<u32> = progress.failed.keys().copied().collect();
    json!({"items": total, "failed": failed})
}

/// The error of the first failed item (lowest index), if any: the step
/// entry's `error`.
pub fn first_failure(progress: &Progress) -> Option<Value> {
    progress.failed.values().next().cloned()
}

/// The outcome of a step settled without a send.
pub fn empty_result() -> StepResult {
    StepResult {
        request: json!({}),
        response: None,
        extracted: Map::new(),
        started_at: Utc::now(),
        duration_ms: 0,
        error: None,
        traffic: Traffic::default(),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
