//! Flow-control fields of a step (`rate_limit`, `concurrency`) and their
//! save-time checks.
//!
//! A key is a template over `settings.*`, `input.*`, `connector.id` and
//! `workspace.id` (or a literal such as `workspace`); credentials, earlier
//! steps and the execution are refused, so a key never holds a secret and
//! is known before the step is sent. At run time the rendered key is
//! prefixed with the workspace id: one tenant never spends another's budget.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Step;
use super::validate::ValidationError;
use crate::template::Renderer;

/// Longest rendered or literal key, in bytes.
pub const MAX_KEY_BYTES: usize = 200;
/// Largest `limit` of a rate limit or concurrency key.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Shortest rate-limit window: 1 ms.
pub const MIN_PER_MS: u64 = 1;
/// Longest rate-limit window: one day.
pub const MAX_PER_MS: u64 = 86_400_000;

/// At most `limit` sends of the step's key per `per_ms` milliseconds,
/// across every worker, spaced evenly (GCRA without burst).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Key template (`hubspot:<<settings.portal>>`, `workspace`).
    #[schema(
        min_length = 1,
        max_length = 200,
        example = "hubspot:<<settings.portal_id>>"
    )]
    pub key: String,
    /// Sends allowed per window (1 to 1,000,000).
    #[schema(minimum = 1, maximum = 1_000_000, example = 100)]
    pub limit: u32,
    /// The window in milliseconds (1 to 86,400,000).
    #[schema(minimum = 1, maximum = 86_400_000, example = 10_000)]
    pub per_ms: u64,
}

/// At most `limit` requests of the step's key in flight at once, across
/// every worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Key template (`slack:<<input.channel>>`, `workspace`).
    #[schema(min_length = 1, max_length = 200, example = "slack:<<input.channel>>")]
    pub key: String,
    /// Requests in flight at once (1 to 1,000,000).
    #[schema(minimum = 1, maximum = 1_000_000, example = 5)]
    pub limit: u32,
}

/// Every problem of the step's flow-control fields, with field paths.
pub(super) fn problems(renderer: &Renderer, path: &str, step: &Step) -> Vec<ValidationError> {
    let mut out = Vec::new();
    let mut err = |field: String, message: String| {
        out.push(ValidationError {
            path: field,
            message,
        });
    };
    if let Some(r) = &step.rate_limit {
        let at = format!("{path}.rate_limit");
        if let Err(m) = check_key(renderer, &r.key) {
            err(format!("{at}.key"), m);
        }
        if r.limit == 0 || r.limit > MAX_LIMIT {
            err(
                format!("{at}.limit"),
                format!("must be between 1 and {MAX_LIMIT}"),
            );
        }
        if !(MIN_PER_MS..=MAX_PER_MS).contains(&r.per_ms) {
            err(
                format!("{at}.per_ms"),
                format!("must be between {MIN_PER_MS} and {MAX_PER_MS}"),
            );
        }
    }
    if let Some(c) = &step.concurrency {
        let at = format!("{path}.concurrency");
        if let Err(m) = check_key(renderer, &c.key) {
            err(format!("{at}.key"), m);
        }
        if c.limit == 0 || c.limit > MAX_LIMIT {
            err(
                format!("{at}.limit"),
                format!("must be between 1 and {MAX_LIMIT}"),
            );
        }
    }
    out
}

fn check_key(renderer: &Renderer, key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("must be at most {MAX_KEY_BYTES} bytes"));
    }
    let refs = renderer
        .references(key)
        .map_err(|e| format!("template error: {e}"))?;
    for r in refs {
        let mut parts = r.split('.');
        let allowed = matches!(
            (parts.next(), parts.next()),
            (Some("settings" | "input"), _) | (Some("connector" | "workspace"), None | Some("id"))
        );
        if !allowed {
            return Err(format!(
                "may only use settings, input, connector.id and workspace.id, not `{r}`: a key is known before the step is sent and never holds a secret"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::connector::parse_and_validate;

    fn with_step(extra: serde_json::Value) -> Result<(), Vec<(String, String)>> {
        let mut step = json!({"name": "s", "method": "GET", "url": "https://api.example.com/x"});
        for (k, v) in extra.as_object().expect("object") {
            step[k] = v.clone();
        }
        parse_and_validate(&json!({"name": "c", "steps": [step]}))
            .map(|_| ())
            .map_err(|e| e.0.into_iter().map(|e| (e.path, e.message)).collect())
    }

    #[test]
    fn flow_fields_are_checked_with_field_paths() {
        let ok = [
            json!({"rate_limit": {"key": "workspace", "limit": 10, "per_ms": 1000}}),
            json!({"rate_limit": {"key": "hub:<<settings.portal>>:<<input.a>>", "limit": 1, "per_ms": 86_400_000}}),
            json!({"concurrency": {"key": "<<workspace.id>>-<<connector.id>>", "limit": 2}}),
        ];
        for extra in ok {
            assert_eq!(with_step(extra.clone()), Ok(()), "{extra}");
        }
        let bad = [
            (
                json!({"rate_limit": {"key": "k", "limit": 0, "per_ms": 1000}}),
                "steps[0].rate_limit.limit",
            ),
            (
                json!({"rate_limit": {"key": "k", "limit": 5, "per_ms": 0}}),
                "steps[0].rate_limit.per_ms",
            ),
            (
                json!({"rate_limit": {"key": "k", "limit": 5, "per_ms": 86_400_001u64}}),
                "steps[0].rate_limit.per_ms",
            ),
            (
                json!({"rate_limit": {"key": "<<credentials.hub.token>>", "limit": 5, "per_ms": 10}}),
                "steps[0].rate_limit.key",
            ),
            (
                json!({"concurrency": {"key": " ", "limit": 1}}),
                "steps[0].concurrency.key",
            ),
            (
                json!({"concurrency": {"key": "<<execution.id>>", "limit": 1}}),
                "steps[0].concurrency.key",
            ),
            (
                json!({"concurrency": {"key": "<<input.a", "limit": 1}}),
                "steps[0].concurrency.key",
            ),
            (
                json!({"concurrency": {"key": "k", "limit": 1_000_001}}),
                "steps[0].concurrency.limit",
            ),
            (
                json!({"concurrency": {"key": "x".repeat(201), "limit": 1}}),
                "steps[0].concurrency.key",
            ),
        ];
        for (extra, path) in bad {
            let errors = with_step(extra.clone()).expect_err("must be refused");
            assert!(
                errors.iter().any(|(p, _)| p == path),
                "{extra}: {errors:?} should name {path}"
            );
        }
    }
}
