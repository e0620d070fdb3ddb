//! What a run tells the metrics and its spans.

use crate::http::StepResult;
use crate::runner::RunOutcome;
use crate::state::StepOutcome;
use crate::store::executions::Claimed;

/// Metric labels of an execution: its connector, and its workspace only
/// when `workspace_labels` (workspace ids are unbounded).
pub(super) fn labels(claimed: &Claimed, workspace_labels: bool) -> Vec<(&'static str, String)> {
    let mut labels = vec![("connector", claimed.connector_id.to_string())];
    if workspace_labels {
        labels.push(("workspace", claimed.workspace_id.clone()));
    }
    labels
}

/// Counts an execution that finished in this run.
pub(super) fn observe_run(mut labels: Vec<(&'static str, String)>, outcome: RunOutcome) {
    let status = match outcome {
        RunOutcome::Succeeded => "succeeded",
        RunOutcome::Failed => "failed",
        RunOutcome::Cancelled => "cancelled",
        RunOutcome::RetryScheduled
        | RunOutcome::Released
        | RunOutcome::LeaseLost
        | RunOutcome::Parked => return,
    };
    labels.push(("status", status.to_owned()));
    metrics::counter!("conveyor_executions_finished_total", &labels).increment(1);
}

/// Records a step attempt on its span and in the metrics.
pub(super) fn observe_step(
    span: &tracing::Span,
    labels: &[(&'static str, String)],
    step: &crate::connector::Step,
    result: &StepResult,
    outcome: StepOutcome,
) {
    let status = result.response.as_ref().map(|r| r.status);
    if let Some(url) = result.request["url"].as_str() {
        span.record("url.full", redact_query(url));
    }
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    let retry = match outcome {
        StepOutcome::RetryScheduled => "scheduled",
        StepOutcome::Failed | StepOutcome::Continued if result.error.is_some() => "not_retried",
        _ => "none",
    };
    span.record("conveyor.retry", retry);
    let mut step_labels = labels.to_vec();
    step_labels.push(("step", step.name.clone()));
    let mut outcome_labels = step_labels.clone();
    outcome_labels.push(("outcome", outcome.as_str().to_owned()));
    metrics::counter!("conveyor_steps_total", &outcome_labels).increment(1);
    metrics::histogram!("conveyor_step_duration_seconds", &step_labels)
        .record(result.duration_ms as f64 / 1000.0);
    if outcome == StepOutcome::RetryScheduled {
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
