//! Running a step once per item of an array, one durable item at a time:
//! pure.
//!
//! A step with `for_each` is sent once per item, in order. After each item
//! the runner commits the item's step row and the [`Progress`] (items done
//! and each one's extracted fields) inside the execution's context, under
//! `for_each.<step>`; a worker that resumes the execution reads it back and
//! sends the next item, so no item that succeeded is sent again.
//!
//! [`next_unit`] says which item is due (or settles the step without a
//! send: no items, or items that cannot be looped over); [`settle`] folds a
//! successful item into the progress.
//!
//! Collection rule: every extracted field becomes an array with exactly one
//! entry per item, in item order (`null` where an item selected nothing).

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
    /// Items done.
    pub done: u32,
    /// Each done item's extracted fields, in item order.
    pub results: Vec<Map<String, Value>>,
}

impl Progress {
    /// The progress of `step` stored in a persisted context, or a fresh
    /// one (the first item) when there is none or it cannot be read.
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
}

/// What a `for_each` step does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    /// Send the item at `index` (from 0) of `total`.
    Item {
        /// The item's position, from 0: `<<index>>`.
        index: u32,
        /// The item: `<<item>>`.
        value: Value,
        /// How many items there are.
        total: u32,
    },
    /// Nothing is sent: this is the step's outcome (every item done, no
    /// items at all, or items that cannot be looped over).
    Settled(Box<StepResult>),
}

/// The unit after `progress`: the items template is rendered against
/// `ctx` (its steps are the stored ones, so a resumed run sees the same
/// items). A settled step that succeeded leaves its summary in `ctx`
/// under `looped.<step>`, like [`settle`].
pub fn next_unit(
    each: &ForEach,
    step: &Step,
    renderer: &Renderer,
    ctx: &mut Value,
    progress: &Progress,
) -> Unit {
    let fail = |message: String| {
        let mut result = empty_result();
        result.error = Some(StepError {
            kind: StepErrorKind::ForEach,
            message,
            retry: Retry::Fatal,
        });
        Unit::Settled(Box::new(result))
    };
    let items = match renderer.render_value(&each.items, ctx) {
        Ok(Value::Array(items)) => items,
        Ok(other) => {
            return fail(format!(
                "for_each: items rendered to {}, not an array",
                kind_of(&other)
            ));
        }
        Err(e) => return fail(format!("for_each: items: {e}")),
    };
    let total = u32::try_from(items.len()).unwrap_or(u32::MAX);
    if total > each.max_items {
        return fail(format!(
            "for_each: {total} items, over max_items ({}); nothing was sent",
            each.max_items
        ));
    }
    match items.into_iter().nth(progress.done as usize) {
        Some(value) => Unit::Item {
            index: progress.done,
            value,
            total,
        },
        None => {
            let mut result = empty_result();
            result.extracted = collect(step, &progress.results);
            ctx["looped"][step.name.as_str()] = json!({"items": progress.done});
            Unit::Settled(Box::new(result))
        }
    }
}

/// Settles the successful item `result` of the step `step`, the item
/// `progress.done` of `total`: the next item's progress when another
/// follows. Otherwise `result` becomes the step's last attempt: its fields
/// are the collected arrays and `ctx` holds the summary
/// (`{"items": n}`) under `looped.<step>`, which the decision moves into
/// the step's context entry (`steps.<step>.for_each`).
pub fn settle(
    step: &Step,
    mut progress: Progress,
    total: u32,
    result: &mut StepResult,
    ctx: &mut Value,
) -> Option<Progress> {
    // The item's row keeps its own fields; the progress keeps a copy.
    progress.results.push(result.extracted.clone());
    progress.done += 1;
    if progress.done < total {
        return Some(progress);
    }
    result.extracted = collect(step, &progress.results);
    ctx["looped"][step.name.as_str()] = json!({"items": progress.done});
    None
}

/// One array per extracted field of `step`, one entry per item.
fn collect(step: &Step, results: &[Map<String, Value>]) -> Map<String, Value> {
    step.extract
        .keys()
        .map(|name| {
            let values = results
                .iter()
                .map(|r| r.get(name).cloned().unwrap_or(Value::Null))
                .collect();
            (name.clone(), Value::Array(values))
        })
        .collect()
}

/// The outcome of a step settled without a send.
fn empty_result() -> StepResult {
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
