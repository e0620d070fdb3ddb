//! Flow control, the pure part: GCRA arithmetic, providers' rate-limit
//! signals, and why a queued execution waits. The SQL that enforces limits
//! for every worker lives in [`store::flow`](crate::store::flow).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// How often an execution parked on a full concurrency key looks again
/// when no freed slot woke it first.
pub const CONCURRENCY_RECHECK: Duration = Duration::from_secs(1);

/// The GCRA emission interval of `limit` sends per `per_ms`, in
/// microseconds (the resolution of `timestamptz`), at least 1.
pub fn emission_interval_us(limit: u32, per_ms: u64) -> i64 {
    let us = u128::from(per_ms) * 1000 / u128::from(limit.max(1));
    i64::try_from(us).unwrap_or(i64::MAX).max(1)
}

/// One GCRA decision, as the store's single UPSERT makes it: a send at
/// `now` conforms when the key's theoretical arrival time `tat` is not in
/// the future (no burst tolerance: sends are spaced by the interval, so no
/// window of `per_ms` ever holds more than `limit`). `Ok(new_tat)` when it
/// conforms, `Err(allowed_at)` when not.
pub fn gcra(
    tat: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    interval_us: i64,
) -> Result<DateTime<Utc>, DateTime<Utc>> {
    match tat {
        Some(tat) if tat > now => Err(tat),
        _ => Ok(now + chrono::Duration::microseconds(interval_us)),
    }
}

/// How long a provider asks to wait, from a refused (429 or 503)
/// response's headers: `Retry-After` (seconds or HTTP date), then
/// `X-RateLimit-Reset` / `RateLimit-Reset` (seconds, or a Unix time when
/// larger than 10^9) when the matching `*-Remaining` is 0, then the IETF
/// `RateLimit` field's `t=` / `reset=` parameter. Header names are
/// lower-case, as stored. `None`: the response carries no signal.
pub fn provider_wait(headers: &Map<String, Value>, now: DateTime<Utc>) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(Value::as_str).map(str::trim);
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(date) = DateTime::parse_from_rfc2822(v) {
            return Some(
                (date.with_timezone(&Utc) - now)
                    .to_std()
                    .unwrap_or_default(),
            );
        }
    }
    for prefix in ["x-ratelimit", "ratelimit"] {
        let remaining = get(&format!("{prefix}-remaining")).and_then(|v| v.parse::<u64>().ok());
        let reset = get(&format!("{prefix}-reset")).and_then(|v| v.parse::<u64>().ok());
        if let (Some(0) | None, Some(reset)) = (remaining, reset) {
            return Some(reset_delay(reset, now));
        }
    }
    let field = get("ratelimit")?;
    field
        .split([';', ','])
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| matches!(k.trim(), "t" | "reset"))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(|reset| reset_delay(reset, now))
}

/// A reset value: seconds to wait, or a Unix time when past 10^9.
fn reset_delay(reset: u64, now: DateTime<Utc>) -> Duration {
    if reset > 1_000_000_000 {
        let now = u64::try_from(now.timestamp()).unwrap_or(0);
        Duration::from_secs(reset.saturating_sub(now))
    } else {
        Duration::from_secs(reset)
    }
}

/// Why a queued execution is not running yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// Its step's rate-limit key has no send left until `until`.
    RateLimit,
    /// Its step's concurrency key is full.
    Concurrency,
    /// A failed attempt's retry is due at `until`.
    RetryBackoff,
    /// It was enqueued to run at `until`.
    Scheduled,
    /// It is due; every worker (or its workspace's share) is busy.
    WorkersBusy,
}

/// `waiting_for` of a queued execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct WaitingFor {
    /// Why it waits.
    pub reason: WaitReason,
    /// The flow-control key (without the workspace prefix), for
    /// `rate_limit` and `concurrency`.
    pub key: Option<String>,
    /// When it may run at the earliest; `null` when only a free worker is
    /// missing.
    pub until: Option<DateTime<Utc>>,
}

/// What a queued execution waits for, from its row: the stored park
/// reason while its `run_at` is ahead, else a retry backoff (its step is
/// past the first attempt), a schedule, or a free worker.
pub fn waiting_for(
    parked: Option<(WaitReason, String)>,
    run_at: DateTime<Utc>,
    step_attempt: i32,
    now: DateTime<Utc>,
) -> WaitingFor {
    let (reason, key) = match parked {
        Some((reason, key)) if run_at > now => (reason, Some(key)),
        _ if run_at <= now => (WaitReason::WorkersBusy, None),
        _ if step_attempt > 1 => (WaitReason::RetryBackoff, None),
        _ => (WaitReason::Scheduled, None),
    };
    let until = (reason != WaitReason::WorkersBusy).then_some(run_at);
    WaitingFor { reason, key, until }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("date")
            .with_timezone(&Utc)
    }

    #[test]
    fn emission_intervals_spread_the_window() {
        let cases = [
            (10, 1_000, 100_000),
            (100, 10_000, 100_000),
            (3, 1, 333),
            (1_000_000, 1, 1),
            (1, 86_400_000, 86_400_000_000),
        ];
        for (limit, per_ms, want) in cases {
            assert_eq!(
                emission_interval_us(limit, per_ms),
                want,
                "{limit}/{per_ms}"
            );
        }
    }

    #[test]
    fn gcra_allows_one_send_per_interval() {
        let now = at("2026-01-01T00:00:00Z");
        let ms = |n| now + chrono::Duration::milliseconds(n);
        let cases = [
            (None, now, Ok(ms(100))),
            (Some(ms(-50)), now, Ok(ms(100))),
            (Some(now), now, Ok(ms(100))),
            (Some(ms(1)), now, Err(ms(1))),
            (Some(ms(100)), ms(99), Err(ms(100))),
            (Some(ms(100)), ms(100), Ok(ms(200))),
        ];
        for (tat, t, want) in cases {
            assert_eq!(gcra(tat, t, 100_000), want, "{tat:?} at {t}");
        }
        // Ten sends per second, as fast as allowed: never 11 in a second.
        let (mut tat, mut sends, mut t) = (None, Vec::new(), now);
        while t < ms(3_000) {
            match gcra(tat, t, 100_000) {
                Ok(next) => {
                    sends.push(t);
                    tat = Some(next);
                }
                Err(allowed) => t = allowed,
            }
        }
        for s in &sends {
            let in_window = sends
                .iter()
                .filter(|x| **x >= *s && **x < *s + chrono::Duration::seconds(1))
                .count();
            assert!(in_window <= 10, "{in_window} sends in the second from {s}");
        }
        assert_eq!(sends.len(), 30);
    }

    #[test]
    fn provider_waits_come_from_the_common_headers() {
        let now = at("2015-10-21T07:28:00Z");
        let unix = now.timestamp() + 42;
        let cases = [
            (json!({"retry-after": "120"}), Some(120)),
            (
                json!({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}),
                Some(30),
            ),
            (
                json!({"retry-after": "Wed, 21 Oct 2015 07:00:00 GMT"}),
                Some(0),
            ),
            (
                json!({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "7"}),
                Some(7),
            ),
            (
                json!({"x-ratelimit-remaining": "0", "x-ratelimit-reset": unix.to_string()}),
                Some(42),
            ),
            (
                json!({"x-ratelimit-remaining": "5", "x-ratelimit-reset": "7"}),
                None,
            ),
            (
                json!({"ratelimit-remaining": "0", "ratelimit-reset": "9"}),
                Some(9),
            ),
            (json!({"ratelimit-reset": "4"}), Some(4)),
            (json!({"ratelimit": "\"default\";r=0;t=11"}), Some(11)),
            (
                json!({"ratelimit": "limit=100, remaining=0, reset=13"}),
                Some(13),
            ),
            (json!({"retry-after": "soon"}), None),
            (json!({}), None),
        ];
        for (headers, want) in cases {
            let map = headers.as_object().expect("object").clone();
            assert_eq!(
                provider_wait(&map, now),
                want.map(Duration::from_secs),
                "{headers}"
            );
        }
    }

    #[test]
    fn waiting_for_explains_each_kind_of_wait() {
        let now = at("2026-01-01T00:00:00Z");
        let later = now + chrono::Duration::seconds(5);
        let key = || Some((WaitReason::RateLimit, "hub".to_owned()));
        let cases = [
            (
                key(),
                later,
                1,
                WaitReason::RateLimit,
                Some("hub"),
                Some(later),
            ),
            (key(), now, 1, WaitReason::WorkersBusy, None, None),
            (
                Some((WaitReason::Concurrency, "c".to_owned())),
                later,
                3,
                WaitReason::Concurrency,
                Some("c"),
                Some(later),
            ),
            (None, later, 2, WaitReason::RetryBackoff, None, Some(later)),
            (None, later, 1, WaitReason::Scheduled, None, Some(later)),
            (None, now, 2, WaitReason::WorkersBusy, None, None),
        ];
        for (parked, run_at, attempt, reason, key, until) in cases {
            let got = waiting_for(parked, run_at, attempt, now);
            assert_eq!(
                got,
                WaitingFor {
                    reason,
                    key: key.map(str::to_owned),
                    until
                }
            );
        }
    }
}
