//! Retry delays: pure. Capped exponential growth with jitter; the runner
//! turns a delay into a durable `run_at`, never an in-memory sleep.

use std::time::Duration;

use crate::connector::RetryPolicy;

/// The jitter takes up to this fraction off a delay, so retries of many
/// executions that failed together spread out, and never exceed the cap.
pub const JITTER_FRACTION: f64 = 0.2;

/// No delay is longer than a day, the longest run deadline: whatever a
/// policy, a server or a setting says, `now + delay` stays representable.
pub const MAX_DELAY: Duration = Duration::from_secs(86_400);

/// The delay after failed attempt `attempt` (1-based) before the next one:
/// `initial_delay_ms * multiplier^(attempt-1)`, capped at `max_delay_ms`,
/// then reduced by up to [`JITTER_FRACTION`] according to `jitter` in
/// `[0, 1)`. A server's `Retry-After` wins when larger, capped by
/// `max_retry_after`.
pub fn next_delay(
    policy: &RetryPolicy,
    attempt: u32,
    jitter: f64,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
) -> Duration {
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let raw = policy.initial_delay_ms as f64 * policy.multiplier.powi(exponent);
    let capped = raw.min(policy.max_delay_ms as f64);
    let jittered = capped * (1.0 - JITTER_FRACTION * jitter.clamp(0.0, 1.0));
    let backoff = Duration::from_millis(jittered.max(0.0) as u64);
    let delay = match retry_after {
        Some(server) => backoff.max(server.min(max_retry_after)),
        None => backoff,
    };
    delay.min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_delay_ms: 1_000,
            max_delay_ms: 5_000,
            multiplier: 2.0,
        }
    }

    #[test]
    fn huge_policies_and_servers_are_capped_at_a_day() {
        let huge = RetryPolicy {
            max_attempts: 100,
            initial_delay_ms: u64::MAX,
            max_delay_ms: u64::MAX,
            multiplier: 100.0,
        };
        let cases = [
            (next_delay(&huge, 100, 0.0, None, Duration::MAX), MAX_DELAY),
            (
                next_delay(&policy(), 1, 0.0, Some(Duration::MAX), Duration::MAX),
                MAX_DELAY,
            ),
            (
                next_delay(
                    &policy(),
                    1,
                    0.0,
                    Some(Duration::from_secs(7)),
                    Duration::MAX,
                ),
                Duration::from_secs(7),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
            let _ = chrono::Utc::now() + got;
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let hour = Duration::from_secs(3600);
        let cases = [(1, 1_000), (2, 2_000), (3, 4_000), (4, 5_000), (30, 5_000)];
        for (attempt, ms) in cases {
            assert_eq!(
                next_delay(&policy(), attempt, 0.0, None, hour),
                Duration::from_millis(ms),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let hour = Duration::from_secs(3600);
        let full = next_delay(&policy(), 2, 0.999_999, None, hour);
        assert!(full >= Duration::from_millis(1_600) && full < Duration::from_millis(2_000));
        assert_eq!(
            next_delay(&policy(), 2, 7.0, None, hour),
            Duration::from_millis(1_600)
        );
    }

    #[test]
    fn retry_after_wins_when_larger_and_is_capped() {
        let cap = Duration::from_secs(10);
        let d = next_delay(&policy(), 1, 0.0, Some(Duration::from_secs(3)), cap);
        assert_eq!(d, Duration::from_secs(3));
        let d = next_delay(&policy(), 1, 0.0, Some(Duration::from_millis(10)), cap);
        assert_eq!(d, Duration::from_secs(1));
        let d = next_delay(&policy(), 1, 0.0, Some(Duration::from_secs(999)), cap);
        assert_eq!(d, cap);
    }
}
