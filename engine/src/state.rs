//! The states the engine stores, as Rust enums: one place maps each to its
//! database text (`sqlx::Type`, the columns are `text` checked by the
//! schema's CHECK constraints) and its JSON form, both `snake_case`.
//!
//! Queries read them with a type override (`status AS "status: _"`) and
//! bind them with [`as_str`](ExecutionStatus::as_str).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Declares a stored state enum: its variants with their text, `as_str`,
/// `ALL`, `Display` and `FromStr`.
macro_rules! stored_state {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
        )]
        #[serde(rename_all = "snake_case")]
        #[sqlx(type_name = "text", rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// The stored (and JSON) text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownState {
                        value: s.to_owned(),
                        expected: Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    })
            }
        }
    };
}

/// A text that names no value of a state enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value `{value}`: expected one of {expected}")]
pub struct UnknownState {
    /// The text given.
    pub value: String,
    /// The accepted values, comma-separated.
    pub expected: String,
}

stored_state! {
    /// Where an execution is (see `docs/state_machine.md`).
    pub enum ExecutionStatus {
        /// Waiting for `run_at` and a worker.
        Queued = "queued",
        /// Leased by a worker.
        Running = "running",
        /// All steps done, output rendered.
        Succeeded = "succeeded",
        /// A step failed for good, or the deadline passed, or poisoned.
        Failed = "failed",
        /// Cancelled on request.
        Cancelled = "cancelled",
    }
}

impl ExecutionStatus {
    /// Whether the execution is finished: nothing will change it again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

stored_state! {
    /// How one attempt of one step ended (the step row's `outcome`).
    pub enum StepOutcome {
        /// The step succeeded.
        Succeeded = "succeeded",
        /// The step failed and so did the execution.
        Failed = "failed",
        /// The step failed; a retry is scheduled.
        RetryScheduled = "retry_scheduled",
        /// The step failed and its `on_error` moved on to the next step.
        Continued = "continued",
        /// The step's `when` condition was false: it was not sent.
        Skipped = "skipped",
    }
}

stored_state! {
    /// Where a marketplace template's newest version is in review. Other
    /// workspaces see its approved version, if any, whatever this says
    /// (until it is retired).
    pub enum ReviewStatus {
        /// Submitted by a workspace, waiting for an admin.
        Pending = "pending",
        /// Approved (or set aside for an earlier approved version).
        Approved = "approved",
        /// Refused by an admin; an earlier approved version stays listed.
        Rejected = "rejected",
        /// Withdrawn from every workspace; installed copies keep working.
        Retired = "retired",
    }
}

stored_state! {
    /// What a SaaS admin may do; each role includes the ones before it.
    pub enum AdminRole {
        /// Reads every admin view.
        Viewer = "viewer",
        /// Also cancels and re-runs any execution and manages templates.
        Operator = "operator",
        /// Also manages admins.
        Owner = "owner",
    }
}

impl AdminRole {
    /// Whether this role may do what `needed` may.
    pub fn covers(self, needed: AdminRole) -> bool {
        self.rank() >= needed.rank()
    }

    fn rank(self) -> u8 {
        match self {
            Self::Viewer => 0,
            Self::Operator => 1,
            Self::Owner => 2,
        }
    }
}

/// What started an execution, stored in `started_by` as `<kind>:<id>`
/// (the column's CHECK also admits the `schedule:` and `trigger:` kinds
/// reserved for schedules and triggers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartedBy {
    /// A user, by JWT: `user:<user id>`.
    User(String),
    /// A workspace API key: `api_key:<key id>`.
    ApiKey(uuid::Uuid),
    /// A re-run of another execution: `rerun_of:<execution id>`.
    RerunOf(uuid::Uuid),
    /// A tick of a schedule: `schedule:<schedule id>`.
    Schedule(uuid::Uuid),
    /// A delivery to an inbound webhook trigger: `trigger:<trigger id>`.
    Trigger(String),
}

impl fmt::Display for StartedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(id) => write!(f, "user:{id}"),
            Self::ApiKey(id) => write!(f, "api_key:{id}"),
            Self::RerunOf(id) => write!(f, "rerun_of:{id}"),
            Self::Schedule(id) => write!(f, "schedule:{id}"),
            Self::Trigger(id) => write!(f, "trigger:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_admin_role_covers_the_ones_before_it() {
        use AdminRole::{Operator, Owner, Viewer};
        for (role, covered) in [
            (Viewer, &[Viewer][..]),
            (Operator, &[Viewer, Operator][..]),
            (Owner, &[Viewer, Operator, Owner][..]),
        ] {
            for needed in AdminRole::ALL {
                assert_eq!(
                    role.covers(*needed),
                    covered.contains(needed),
                    "{role} {needed}"
                );
            }
        }
        assert_eq!("owner".parse(), Ok(Owner));
    }

    #[test]
    fn started_by_is_kind_colon_id() {
        let id = uuid::Uuid::nil();
        assert_eq!(StartedBy::User("u-1".into()).to_string(), "user:u-1");
        assert_eq!(StartedBy::ApiKey(id).to_string(), format!("api_key:{id}"));
        assert_eq!(StartedBy::RerunOf(id).to_string(), format!("rerun_of:{id}"));
        assert_eq!(
            StartedBy::Schedule(id).to_string(),
            format!("schedule:{id}")
        );
        assert_eq!(
            StartedBy::Trigger("a1b2".into()).to_string(),
            "trigger:a1b2"
        );
    }

    #[test]
    fn text_json_and_parsing_agree() {
        for s in ExecutionStatus::ALL {
            assert_eq!(serde_json::to_value(s).ok(), Some(s.as_str().into()));
            assert_eq!(s.as_str().parse(), Ok(*s));
        }
        for s in StepOutcome::ALL {
            assert_eq!(serde_json::to_value(s).ok(), Some(s.as_str().into()));
            assert_eq!(s.as_str().parse(), Ok(*s));
        }
        for s in ReviewStatus::ALL {
            assert_eq!(serde_json::to_value(s).ok(), Some(s.as_str().into()));
            assert_eq!(s.as_str().parse(), Ok(*s));
        }
        assert_eq!(
            "done".parse::<ExecutionStatus>().map_err(|e| e.to_string()),
            Err("invalid value `done`: expected one of queued, running, succeeded, failed, cancelled".to_owned())
        );
    }

    #[test]
    fn only_succeeded_failed_and_cancelled_are_final() {
        let finals: Vec<_> = ExecutionStatus::ALL
            .iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [
                &ExecutionStatus::Succeeded,
                &ExecutionStatus::Failed,
                &ExecutionStatus::Cancelled
            ]
        );
    }
}
