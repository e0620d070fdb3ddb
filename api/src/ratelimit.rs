//! Per-workspace request rate limiting: a token bucket per workspace in
//! each API process (`CONVEYOR_RATE_LIMIT_PER_SEC`, burst twice that).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Token buckets by workspace.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec` requests per second per workspace; 0 disables limiting.
    pub fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec);
        Self {
            per_sec,
            burst: per_sec * 2.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `workspace`; false when none is left.
    pub fn allow(&self, workspace: &str) -> bool {
        self.allow_at(workspace, Instant::now())
    }

    fn allow_at(&self, workspace: &str, now: Instant) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            // Bound memory: idle buckets are full anyway, so forgetting them
            // changes nothing for their workspaces.
            buckets.retain(|_, (tokens, _)| *tokens < self.burst);
        }
        let (tokens, last) = buckets
            .entry(workspace.to_owned())
            .or_insert((self.burst, now));
        let refill = now.duration_since(*last).as_secs_f64() * self.per_sec;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Bounds `map` to `max` entries before an insert: when full, drops the
/// entries `live` refuses, and all of them when it refuses none.
pub(crate) fn make_room<K, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    mut live: impl FnMut(&V) -> bool,
) {
    if map.len() >= max {
        map.retain(|_, v| live(v));
        if map.len() >= max {
            map.clear();
        }
    }
}

/// Keeps floods of invalid API keys off the database: lookups of keys not
/// seen valid recently share one token bucket per API process
/// (`CONVEYOR_RATE_LIMIT_PER_SEC` failed lookups per second, burst twice
/// that), spent by each lookup that finds no live key. While it is empty
/// such keys are refused with 429 before any query; keys that
/// authenticated in the last ten minutes are always looked up.
#[derive(Debug)]
pub struct InvalidKeyGuard {
    per_sec: f64,
    burst: f64,
    bucket: Mutex<(f64, Instant)>,
    valid: Mutex<HashMap<Vec<u8>, Instant>>,
}

/// How long a key that authenticated bypasses the guard.
const VALID_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// Most remembered valid keys (memory bound).
const MAX_VALID: usize = 10_000;

impl InvalidKeyGuard {
    /// `per_sec` failed lookups per second; 0 disables the guard.
    pub fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec);
        Self {
            per_sec,
            burst: per_sec * 2.0,
            bucket: Mutex::new((per_sec * 2.0, Instant::now())),
            valid: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the key with this digest may be looked up now.
    pub fn may_look_up(&self, digest: &[u8]) -> bool {
        self.may_look_up_at(digest, Instant::now())
    }

    /// Records a lookup that found no live key.
    pub fn failed(&self) {
        self.failed_at(Instant::now());
    }

    /// Records a key that authenticated.
    pub fn succeeded(&self, digest: &[u8]) {
        let now = Instant::now();
        let mut valid = self
            .valid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        make_room(&mut valid, MAX_VALID, |at| {
            now.duration_since(*at) < VALID_FOR
        });
        valid.insert(digest.to_vec(), now);
    }

    fn may_look_up_at(&self, digest: &[u8], now: Instant) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let recently_valid = self
            .valid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(digest)
            .is_some_and(|at| now.duration_since(*at) < VALID_FOR);
        recently_valid || self.refill(now) >= 1.0
    }

    fn failed_at(&self, now: Instant) {
        if self.per_sec <= 0.0 {
            return;
        }
        self.refill(now);
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bucket.0 = (bucket.0 - 1.0).max(0.0);
    }

    /// Refills the bucket up to `now`; the tokens left.
    fn refill(&self, now: Instant) -> f64 {
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = *bucket;
        let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_sec;
        *bucket = ((tokens + refill).min(self.burst), now.max(last));
        bucket.0
    }
}

/// Open event streams per workspace, capped so one workspace cannot hold
/// every connection of an API process (`CONVEYOR_MAX_STREAMS_PER_WORKSPACE`).
#[derive(Debug, Default)]
pub struct StreamSlots {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream; frees its slot when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    slots: std::sync::Arc<StreamSlots>,
    workspace: String,
}

impl StreamSlots {
    /// A slot for `workspace` when it holds fewer than `max` streams.
    pub fn acquire(self: &std::sync::Arc<Self>, workspace: &str, max: usize) -> Option<StreamSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(workspace.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            slots: self.clone(),
            workspace: workspace.to_owned(),
        })
    }

    /// Streams `workspace` holds now.
    pub fn open(&self, workspace: &str) -> usize {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(workspace)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.workspace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.workspace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_workspace_gets_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(5);
        let t0 = Instant::now();
        let allowed = (0..20).filter(|_| limiter.allow_at("a", t0)).count();
        assert_eq!(allowed, 10, "burst is twice the rate");
        assert!(!limiter.allow_at("a", t0));
        assert!(limiter.allow_at("b", t0), "other workspaces are unaffected");
        let later = t0 + Duration::from_millis(400);
        assert_eq!((0..5).filter(|_| limiter.allow_at("a", later)).count(), 2);
    }

    #[test]
    fn zero_disables_limiting() {
        let limiter = RateLimiter::new(0);
        assert!((0..1000).all(|_| limiter.allow("a")));
    }

    #[test]
    fn invalid_keys_are_held_off_once_the_bucket_is_empty() {
        let guard = InvalidKeyGuard::new(1);
        let t0 = Instant::now();
        let (bad, good) = (b"bad".as_slice(), b"good".as_slice());
        guard.succeeded(good);
        for _ in 0..2 {
            assert!(guard.may_look_up_at(bad, t0));
            guard.failed_at(t0);
        }
        assert!(!guard.may_look_up_at(bad, t0), "burst of 2 spent");
        assert!(guard.may_look_up_at(good, t0), "recent valid keys pass");
        let later = t0 + std::time::Duration::from_millis(1_100);
        assert!(guard.may_look_up_at(bad, later), "refilled after a second");
        let much_later = t0 + VALID_FOR + std::time::Duration::from_secs(1);
        guard.failed_at(much_later);
        guard.failed_at(much_later);
        assert!(
            !guard.may_look_up_at(good, much_later),
            "valid keys are remembered ten minutes"
        );
        assert!(InvalidKeyGuard::new(0).may_look_up(bad), "0 disables");
    }

    #[test]
    fn stream_slots_are_capped_per_workspace_and_freed_on_drop() {
        let slots = std::sync::Arc::new(StreamSlots::default());
        let a1 = slots.acquire("a", 2).expect("first");
        let a2 = slots.acquire("a", 2).expect("second");
        assert!(slots.acquire("a", 2).is_none(), "third over the cap");
        let b = slots
            .acquire("b", 2)
            .expect("another workspace is not affected");
        assert_eq!((slots.open("a"), slots.open("b")), (2, 1));
        drop(a1);
        assert_eq!(slots.open("a"), 1);
        let a3 = slots.acquire("a", 2).expect("a freed slot is reused");
        drop((a2, a3, b));
        assert_eq!((slots.open("a"), slots.open("b")), (0, 0));
    }
}
