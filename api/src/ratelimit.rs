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
}
