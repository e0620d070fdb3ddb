//! A response status the step does not accept, as a step error: whether
//! it may be retried, and after how long (`Retry-After`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;

use super::{Retry, StepError, StepErrorKind};
use crate::connector::Step;

/// The error of a response whose status `step` does not accept.
pub(super) fn status_error(step: &Step, status: u16, headers: &HeaderMap) -> StepError {
    let expected = if step.expect.is_empty() {
        "2xx".to_owned()
    } else {
        step.expect
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let message = format!("HTTP {status} (expected {expected})");
    let retryable = status == 408 || status == 429 || (500..600).contains(&status);
    if !retryable {
        return StepError::fatal(StepErrorKind::HttpStatus, message);
    }
    let retry = match retry_after(headers, Utc::now()) {
        Some(delay) => Retry::RetryAfter(delay),
        None => Retry::Retryable,
    };
    StepError {
        kind: StepErrorKind::HttpStatus,
        message,
        retry,
    }
}

/// Parses `Retry-After` as delay-seconds or an HTTP date (relative to
/// `now`; a date in the past means no wait).
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((date - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .expect("date")
            .with_timezone(&Utc);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:30 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:00:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }
}
