//! Flow control, the pure part: GCRA arithmetic, providers' rate-limit
//! signals, and why a queued execution waits. The SQL that enforces limits
//! for every worker lives in [`store::flow`](crate::store::flow).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// What every stored flow-control key of `workspace_id` starts with: the
/// id, with `%` and `:` percent-encoded, then `:`. The encoded id holds no
/// `:`, so where it ends is never in doubt and no workspace's keys can be
/// another's, whatever the ids and the rendered keys contain (workspace
/// `a` with key `b:c` and workspace `a:b` with key `c`). An id without
/// either character is written as it is.
pub fn key_prefix(workspace_id: &str) -> String {
    let mut prefix = String::with_capacity(workspace_id.len() + 1);
    for c in workspace_id.chars() {
        match c {
            '%' => prefix.push_str("%25"),
            ':' => prefix.push_str("%3A"),
            c => prefix.push(c),
        }
    }
    prefix.push(':');
    prefix
}

/// How often an execution parked on a full concurrency key looks again
/// when no freed slot woke it first.
pub const CONCURRENCY_RECHECK: Duration = Duration::from_secs(1);

/// The GCRA emission interval of `limit` sends per `per_ms`, in
/// microseconds (the resolution of `timestamptz`), at least 1.
pub fn emission_interval_us(limit: u32, per_ms: u64) -> i64 {
    let us = u128::from(per_ms) * 1000 / u128::from(limit.max(1));
    i64::try_from(us).unwrap_or(i64::MAX).max(1)
}

/// How long a worker waits in place for a reserved slot; a slot further
/// ahead parks the execution and frees the worker slot.
pub const HOLD: Duration = Duration::from_millis(100);

/// How long before its slot a parked execution is queued again, so the
/// claim happens in time and the worker waits out the rest in place.
pub const LEAD: Duration = Duration::from_millis(75);

/// The least tolerance of a pace, whatever its window: a send is never
/// required to leave closer than this to its slot.
pub const MIN_TOLERANCE: Duration = Duration::from_millis(20);

/// How a rate-limit key of `limit` sends per `per_ms` is paced.
///
/// Every send reserves a slot one `step_us` after the previous one (GCRA
/// with reservations, see [`reserve`]). A send may leave at most
/// `tolerance_us` after its slot (a claim, a timer or the way to the wire
/// is never exact): 1/20 of the window, at least [`MIN_TOLERANCE`]. The step is the
/// emission interval plus a guard of `tolerance / limit`, so that, with
/// that lateness, no window of `per_ms` ever holds more than `limit`
/// sends: the slots of the sends inside a window lie in an interval of
/// `per_ms + tolerance <= limit × step`, and slots are `step` apart. The
/// price is 5% of the limit for windows of 400 ms or more; shorter
/// windows pay `MIN_TOLERANCE / limit` per send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Microseconds between two slots: the emission interval plus the guard.
    pub step_us: i64,
    /// How late after its slot a send may still leave, in microseconds.
    pub tolerance_us: i64,
}

impl Pace {
    /// How late after its slot a worker may still decide to send, in
    /// microseconds: a quarter of the tolerance, which absorbs the reply
    /// to the reservation itself (a few milliseconds on a loaded
    /// machine), leaving three quarters for the way from the decision to
    /// the provider (rendering, the connection, a starved process). Half
    /// was tried: a test suite beside a release build on 2 cores then
    /// saw 11 sends in a second at a limit of 10.
    pub fn late_us(self) -> i64 {
        self.tolerance_us / 4
    }
}

/// The pace of `limit` sends per `per_ms`.
pub fn pace(limit: u32, per_ms: u64) -> Pace {
    let interval = emission_interval_us(limit, per_ms);
    let window_us = i64::try_from(per_ms)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let floor = i64::try_from(MIN_TOLERANCE.as_micros()).unwrap_or(i64::MAX);
    let tolerance = (window_us / 20).max(floor);
    let limit = i64::from(limit.max(1));
    let guard = (tolerance + limit - 1) / limit;
    Pace {
        step_us: interval.saturating_add(guard),
        tolerance_us: tolerance,
    }
}

/// One reservation, as the store's single statement makes it: the slot is
/// the key's theoretical arrival time `tat`, or `now` when that has
/// passed, and the key's TAT moves one step past the slot. Returns
/// `(slot, new_tat)`.
pub fn reserve(
    tat: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    step_us: i64,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let slot = tat.map_or(now, |tat| tat.max(now));
    (slot, slot + chrono::Duration::microseconds(step_us))
}

/// When an execution parked for a kept `slot` is queued again: [`LEAD`]
/// before it.
pub fn wake_for(slot: DateTime<Utc>) -> DateTime<Utc> {
    slot - chrono::Duration::from_std(LEAD).unwrap_or_default()
}

/// Whether a send reserved for `slot` may still leave at `now`: at most
/// [`Pace::late_us`] late.
pub fn usable(slot: DateTime<Utc>, now: DateTime<Utc>, pace: Pace) -> bool {
    now <= slot + chrono::Duration::microseconds(pace.late_us())
}

/// The most slots a worker reserves at once on one key (see [`block_len`]).
pub const BLOCK_MAX: i64 = 64;

/// How many consecutive slots a worker reserves at once on a key it last
/// found idle (the key's TAT behind now), to hand to its next sends of
/// that key without a statement each: as many as fit in a quarter of the
/// late allowance, at most [`BLOCK_MAX`], at least 1.
///
/// Every slot of a block is still used by one send at most, and only
/// while [`usable`], as a slot reserved alone, so the limit holds as
/// before. What a block can cost is the slots it leaves unused when the
/// key fills up or the worker's sends stop: less than a quarter of the
/// late allowance's worth (a sixteenth of the tolerance) per block. A key
/// whose step is more than an eighth of its late allowance is reserved
/// slot by slot: for windows of 400 ms or more, any key of 672 sends per
/// window or fewer, so a key a provider's limit binds loses nothing.
pub fn block_len(pace: Pace) -> i64 {
    (pace.late_us() / 4 / pace.step_us.max(1)).clamp(1, BLOCK_MAX)
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

    #[test]
    fn no_workspace_shares_a_key_prefix_with_another() {
        assert_eq!(key_prefix("ws_demo"), "ws_demo:");
        assert_eq!(key_prefix("acme:eu"), "acme%3Aeu:");
        assert_eq!(key_prefix("100%"), "100%25:");
        // The ids that the plain `{id}:{key}` confused.
        assert_ne!(
            key_prefix("acme") + "eu:hubspot",
            key_prefix("acme:eu") + "hubspot"
        );
        // And an id that spells another's encoding.
        assert_ne!(key_prefix("a%3Ab"), key_prefix("a:b"));
        assert_eq!(key_prefix("a%3Ab"), "a%253Ab:");
    }

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
    fn paces_add_a_guard_that_covers_the_tolerance() {
        let cases = [
            (10, 1_000, 105_000, 50_000),
            (50, 1_000, 21_000, 50_000),
            (100, 10_000, 105_000, 500_000),
            (1, 1_000, 1_050_000, 50_000),
            (3, 1, 7_000, 20_000),
            (1_000_000, 1, 2, 20_000),
        ];
        for (limit, per_ms, step_us, tolerance_us) in cases {
            assert_eq!(
                pace(limit, per_ms),
                Pace {
                    step_us,
                    tolerance_us
                },
                "{limit}/{per_ms}"
            );
        }
    }

    #[test]
    fn reservations_follow_the_key_or_now() {
        let now = at("2026-01-01T00:00:00Z");
        let ms = |n| now + chrono::Duration::milliseconds(n);
        let cases = [
            (None, (now, ms(100))),
            (Some(ms(-50)), (now, ms(100))),
            (Some(now), (now, ms(100))),
            (Some(ms(30)), (ms(30), ms(130))),
        ];
        for (tat, want) in cases {
            assert_eq!(reserve(tat, now, 100_000), want, "{tat:?}");
        }
    }

    #[test]
    fn kept_slots_wake_ahead_and_late_sends_are_refused() {
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(wake_for(now), now - chrono::Duration::milliseconds(75));
        let p = pace(10, 1_000);
        let us = |n| now + chrono::Duration::microseconds(n);
        assert!(usable(now, us(12_500), p));
        assert!(!usable(now, us(12_501), p));
        assert!(usable(us(5), now, p));
    }

    #[test]
    fn only_keys_far_faster_than_their_tolerance_are_reserved_in_blocks() {
        let cases = [
            // The bench's key never reached: 2 µs steps, capped.
            (1_000_000, 1_000, 64),
            // 3,125 µs of a quarter allowance over a 1,050 µs step.
            (1_000, 1_000, 2),
            (3_000, 1_000, 8),
            (672, 1_000, 1),
            (673, 1_000, 2),
            (10, 1_000, 1),
            (50, 1_000, 1),
            (100, 10_000, 1),
            // A window of 1 ms still has a tolerance of 20 ms.
            (1_000_000, 1, 64),
        ];
        for (limit, per_ms, want) in cases {
            assert_eq!(block_len(pace(limit, per_ms)), want, "{limit}/{per_ms}");
        }
    }

    /// Callers arrive in bursts, each reserves a slot and leaves up to the
    /// whole tolerance late: no window of `per_ms` holds more than
    /// `limit`, and a backlog drains at the limit less the guard.
    #[test]
    fn late_sends_within_the_tolerance_never_exceed_the_limit() {
        let start = at("2026-01-01T00:00:00Z");
        let mut seed = 0x2545_f491_u64;
        let mut random = |n: i64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            i64::try_from(seed % u64::try_from(n.max(1)).expect("positive")).expect("small")
        };
        for (limit, per_ms) in [(10, 1_000), (50, 1_000), (7, 500), (100, 10_000), (20, 5)] {
            let p = pace(limit, per_ms);
            let window = chrono::Duration::milliseconds(i64::try_from(per_ms).expect("small"));
            let (mut tat, mut sends, mut now) = (None, Vec::new(), start);
            for _ in 0..(limit as usize * 6) {
                now += chrono::Duration::microseconds(random(p.step_us / 2));
                let (slot, next) = reserve(tat, now, p.step_us);
                tat = Some(next);
                sends.push(slot + chrono::Duration::microseconds(random(p.tolerance_us + 1)));
            }
            sends.sort();
            for s in &sends {
                let in_window = sends
                    .iter()
                    .filter(|x| **x >= *s && **x < *s + window)
                    .count();
                assert!(
                    in_window <= limit as usize,
                    "{limit}/{per_ms}: {in_window} sends in the window from {s}"
                );
            }
            let span = (sends[sends.len() - 1] - sends[0])
                .num_microseconds()
                .expect("span");
            let per_window = (sends.len() - 1) as f64 * per_ms as f64 * 1_000.0 / span as f64;
            // The guard's price: 5% for windows of 400 ms or more.
            let floor = if per_ms >= 400 { 0.94 } else { 0.0 };
            assert!(
                per_window > f64::from(limit) * floor && per_window <= f64::from(limit),
                "{limit}/{per_ms}: drained at {per_window:.2} per window"
            );
        }
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
