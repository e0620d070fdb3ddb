//! Group commits that one bad row cannot break for everyone.
//!
//! Step commits of executions from any workspace share one statement
//! ([`executions::commit_steps`]). PostgreSQL refuses U+0000 in `text` and
//! `jsonb`, so a provider answering with a NUL would fail the whole batch:
//! every execution in it would lose its commit. Values are therefore made
//! storable first ([`storable`]: each U+0000 becomes U+FFFD), and a batch
//! that still fails is committed again one execution at a time, so a row
//! PostgreSQL refuses only fails its own execution.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::warn;

use crate::state::ExecutionStatus;
use crate::store::executions::{self, Commit, Transition};
use crate::store::{Held, session_survives};

/// What U+0000 is stored as: U+FFFD REPLACEMENT CHARACTER.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// Replaces every U+0000 in `text` with [`NUL_REPLACEMENT`]; true when
/// one was found.
pub fn storable_text(text: &mut String) -> bool {
    if !text.contains('\0') {
        return false;
    }
    *text = text.replace('\0', &NUL_REPLACEMENT.to_string());
    true
}

/// Replaces every U+0000 in the strings and keys of `value` with
/// [`NUL_REPLACEMENT`], which PostgreSQL can store; true when one was
/// found.
pub fn storable(value: &mut Value) -> bool {
    match value {
        Value::String(s) => storable_text(s),
        Value::Array(items) => items.iter_mut().fold(false, |found, v| storable(v) | found),
        Value::Object(map) => {
            let mut found = false;
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (mut k, v) in old {
                    storable_text(&mut k);
                    map.insert(k, v);
                }
                found = true;
            }
            map.values_mut().fold(found, |found, v| storable(v) | found)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Makes every text and JSON value of a commit storable (see [`storable`]).
pub fn make_storable(commit: &mut Commit) {
    let s = &mut commit.step;
    storable_text(&mut s.step_name);
    storable_text(&mut s.worker_id);
    storable(&mut s.request);
    for v in [
        &mut s.response_headers,
        &mut s.response_body,
        &mut s.extracted,
        &mut s.error,
    ]
    .into_iter()
    .flatten()
    {
        storable(v);
    }
    match &mut commit.transition {
        Transition::Continue { context, .. } => {
            storable(context);
        }
        Transition::Succeed { context, output } => {
            storable(context);
            storable(output);
        }
        Transition::Retry { context, .. } => {
            if let Some(context) = context {
                storable(context);
            }
        }
        Transition::Fail { error } => {
            storable(error);
        }
    }
}

/// Commits `commits` in one statement on `held`'s connection; if that
/// statement fails, commits each one alone, so a row PostgreSQL refuses
/// fails only its own execution. Returns, in order, each execution's new
/// status (`None`: the lease was lost) or the database error of its own
/// commit.
pub async fn commit_group(
    held: &Held,
    mut commits: Vec<Commit>,
    now: DateTime<Utc>,
) -> Vec<Result<Option<ExecutionStatus>, String>> {
    commits.iter_mut().for_each(make_storable);
    let mut conn = match held.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            let message = e.to_string();
            return commits.iter().map(|_| Err(message.clone())).collect();
        }
    };
    let group_error = match executions::commit_steps(&mut conn, &mut commits, now).await {
        Ok(statuses) => {
            conn.finish(None);
            return statuses.into_iter().map(Ok).collect();
        }
        Err(e) => e,
    };
    // Only PostgreSQL refusing the statement can be one row's fault; an
    // unreachable database fails every commit alike.
    if commits.len() == 1 || !session_survives(&group_error) {
        let message = group_error.to_string();
        conn.finish(Some(&group_error));
        return commits.iter().map(|_| Err(message.clone())).collect();
    }
    warn!(error = %group_error, size = commits.len(), "group commit failed; committing one by one");
    metrics::counter!("conveyor_group_commit_fallbacks_total").increment(1);
    let mut out = Vec::with_capacity(commits.len());
    // Once a commit breaks the session, the ones after it are not sent.
    let mut broken: Option<crate::Error> = None;
    for commit in commits.chunks_mut(1) {
        if let Some(e) = &broken {
            out.push(Err(e.to_string()));
            continue;
        }
        match executions::commit_steps(&mut conn, commit, now).await {
            Ok(mut statuses) => out.push(Ok(statuses.pop().flatten())),
            Err(e) => {
                out.push(Err(e.to_string()));
                if !session_survives(&e) {
                    broken = Some(e);
                }
            }
        }
    }
    conn.finish(broken.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_is_replaced_in_strings_and_keys_at_any_depth() {
        let cases = [
            (json!("a\u{0}b"), json!("a\u{FFFD}b"), true),
            (
                json!({"k\u{0}": ["x", {"y": "\u{0}\u{0}"}]}),
                json!({"k\u{FFFD}": ["x", {"y": "\u{FFFD}\u{FFFD}"}]}),
                true,
            ),
            (
                json!({"a": [1, true, null, "ok"]}),
                json!({"a": [1, true, null, "ok"]}),
                false,
            ),
        ];
        for (mut input, want, found) in cases {
            assert_eq!(storable(&mut input), found, "{want}");
            assert_eq!(input, want);
        }
    }

    #[test]
    fn text_without_nul_is_untouched() {
        let mut s = "plain".to_owned();
        assert!(!storable_text(&mut s));
        assert_eq!(s, "plain");
        let mut s = "\u{0}".to_owned();
        assert!(storable_text(&mut s));
        assert_eq!(s, "\u{FFFD}");
    }
}
