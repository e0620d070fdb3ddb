//! The states the engine stores, as Rust enums: one place maps each to
//! its database text (checked by the schema's CHECK constraints) and its
//! JSON form, both `snake_case`.

use serde::{Deserialize, Serialize};

/// How one attempt of one step ended (the step row's `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// The step succeeded.
    Succeeded,
    /// The step failed and so did the execution.
    Failed,
    /// The step failed; a retry is scheduled.
    RetryScheduled,
    /// The step failed and its `on_error` moved on to the next step.
    Continued,
}

impl StepOutcome {
    /// The stored (and metric label) form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RetryScheduled => "retry_scheduled",
            Self::Continued => "continued",
        }
    }
}
