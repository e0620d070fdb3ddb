//! The API keys this process has looked up, kept so that a client sending
//! the same key again is not one more query per request
//! (`CONVEYOR_API_KEY_CACHE_SECS`).
//!
//! A key is served from here only while the process listens on
//! [`API_KEYS`](conveyor_engine::store::channels::API_KEYS), where the
//! database names every key that is revoked, expired, re-scoped or
//! deleted (migration `20261204120000`). Each notification, and every
//! revocation this process makes itself, removes the key at once; a lost
//! listening connection empties the cache and turns it off until the
//! listener is back. A key looked up across any of these is not kept (the
//! lookup's answer may predate the change), so a revoked key is refused
//! as soon as its notification arrives, not after the entry's lifetime.
//! That lifetime only bounds what a connection that dies silently could
//! hide. A key's own expiry is checked at each use.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use conveyor_engine::store::access::ApiKeyAuth;
use uuid::Uuid;

use crate::ratelimit::make_room;

/// Most keys kept (memory bound).
const MAX_KEYS: usize = 10_000;

/// The default of `CONVEYOR_API_KEY_CACHE_SECS`.
pub const DEFAULT_KEY_CACHE: Duration = Duration::from_secs(10);

/// Looked-up keys by the SHA-256 of the key.
#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Whether the invalidations are being heard.
    listening: bool,
    /// Counts the invalidations (and starts of listening): a lookup
    /// begun under another count is not kept.
    epoch: u64,
    keys: HashMap<Vec<u8>, Entry>,
}

#[derive(Debug)]
struct Entry {
    key: ApiKeyAuth,
    until: Instant,
}

/// What [`KeyCache::before_lookup`] hands a lookup: the moment it began,
/// so that [`KeyCache::keep`] can tell whether anything changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl KeyCache {
    /// A cache keeping keys `ttl` at most; `Duration::ZERO` keeps none.
    /// It serves nothing until [`KeyCache::listening`].
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live key with this digest, when kept and neither its entry nor
    /// the key has expired.
    pub fn get(&self, digest: &[u8]) -> Option<ApiKeyAuth> {
        self.get_at(digest, Instant::now(), Utc::now())
    }

    fn get_at(&self, digest: &[u8], now: Instant, wall: DateTime<Utc>) -> Option<ApiKeyAuth> {
        let mut state = self.state();
        if !state.listening {
            return None;
        }
        let entry = state.keys.get(digest)?;
        if now < entry.until && entry.key.expires_at.is_none_or(|at| wall < at) {
            return Some(entry.key.clone());
        }
        state.keys.remove(digest);
        None
    }

    /// Call before looking a key up; `None` when the answer may not be
    /// kept (not listening, or the cache is off).
    pub fn before_lookup(&self) -> Option<Ticket> {
        let state = self.state();
        (state.listening && !self.ttl.is_zero()).then_some(Ticket(state.epoch))
    }

    /// Keeps `key`, looked up under `ticket`, unless anything was
    /// invalidated since.
    pub fn keep(&self, ticket: Option<Ticket>, digest: &[u8], key: &ApiKeyAuth) {
        self.keep_at(ticket, digest, key, Instant::now());
    }

    fn keep_at(&self, ticket: Option<Ticket>, digest: &[u8], key: &ApiKeyAuth, now: Instant) {
        let mut state = self.state();
        if !state.listening || ticket != Some(Ticket(state.epoch)) {
            return;
        }
        make_room(&mut state.keys, MAX_KEYS, |entry| now < entry.until);
        let entry = Entry {
            key: key.clone(),
            until: now + self.ttl,
        };
        state.keys.insert(digest.to_vec(), entry);
    }

    /// Drops the key with this id (revoked, changed or deleted).
    pub fn forget(&self, id: Uuid) {
        let mut state = self.state();
        state.epoch += 1;
        state.keys.retain(|_, entry| entry.key.id != id);
    }

    /// What a notification on the keys' channel says: drops the key it
    /// names, or every key when it names none.
    pub fn notified(&self, payload: &str) {
        match payload.parse() {
            Ok(id) => self.forget(id),
            Err(_) => self.forget_all(),
        }
    }

    /// Drops every key.
    pub fn forget_all(&self) {
        let mut state = self.state();
        state.epoch += 1;
        state.keys.clear();
    }

    /// The invalidations are heard from now on: keys may be kept.
    pub fn listening(&self) {
        let mut state = self.state();
        state.epoch += 1;
        state.listening = true;
    }

    /// The listening connection is gone: whatever was invalidated
    /// meanwhile is unknown, so nothing is kept or served until
    /// [`KeyCache::listening`] again.
    pub fn deaf(&self) {
        let mut state = self.state();
        state.listening = false;
        state.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u128, expires_at: Option<DateTime<Utc>>) -> ApiKeyAuth {
        ApiKeyAuth {
            id: Uuid::from_u128(id),
            workspace_id: "ws".into(),
            scopes: vec!["execute".into()],
            expires_at,
        }
    }

    fn listening(ttl: u64) -> KeyCache {
        let cache = KeyCache::new(Duration::from_secs(ttl));
        cache.listening();
        cache
    }

    /// Looks `k` up under a fresh ticket and keeps it at `now`.
    fn looked_up(cache: &KeyCache, digest: &[u8], k: &ApiKeyAuth, now: Instant) {
        let ticket = cache.before_lookup();
        assert!(ticket.is_some());
        cache.keep_at(ticket, digest, k, now);
    }

    #[test]
    fn a_kept_key_is_served_until_its_entry_expires() {
        let cache = listening(10);
        let (now, wall) = (Instant::now(), Utc::now());
        looked_up(&cache, b"a", &key(1, None), now);
        assert_eq!(cache.get_at(b"a", now, wall), Some(key(1, None)));
        assert_eq!(cache.get(b"a"), Some(key(1, None)));
        assert_eq!(cache.get_at(b"b", now, wall), None);
        let almost = now + Duration::from_millis(9_999);
        assert_eq!(cache.get_at(b"a", almost, wall), Some(key(1, None)));
        assert_eq!(
            cache.get_at(b"a", now + Duration::from_secs(10), wall),
            None
        );
        // Expired entries are dropped, not served again.
        assert_eq!(cache.get_at(b"a", now, wall), None);
    }

    #[test]
    fn an_expired_key_is_refused_though_its_entry_is_young() {
        let cache = listening(3600);
        let (now, wall) = (Instant::now(), Utc::now());
        let expires = wall + chrono::Duration::seconds(5);
        looked_up(&cache, b"a", &key(1, Some(expires)), now);
        let before = expires - chrono::Duration::milliseconds(1);
        assert_eq!(cache.get_at(b"a", now, before), Some(key(1, Some(expires))));
        assert_eq!(cache.get_at(b"a", now, expires), None);
        assert_eq!(cache.get_at(b"a", now, before), None);
    }

    #[test]
    fn nothing_is_kept_or_served_while_not_listening() {
        let cache = KeyCache::new(Duration::from_secs(10));
        assert_eq!(cache.before_lookup(), None);
        cache.keep(Some(Ticket(0)), b"a", &key(1, None));
        cache.listening();
        assert_eq!(cache.get(b"a"), None);
        cache.keep(cache.before_lookup(), b"a", &key(1, None));
        assert_eq!(cache.get(b"a"), Some(key(1, None)));
        // A lost connection forgets everything and keeps nothing more.
        let ticket = cache.before_lookup();
        cache.deaf();
        assert_eq!(cache.get(b"a"), None);
        assert_eq!(cache.before_lookup(), None);
        cache.keep(ticket, b"b", &key(2, None));
        cache.listening();
        assert_eq!(cache.get(b"b"), None);
        assert_eq!(cache.get(b"a"), None);
    }

    #[test]
    fn a_zero_lifetime_keeps_nothing() {
        let cache = listening(0);
        assert_eq!(cache.before_lookup(), None);
        cache.keep(cache.before_lookup(), b"a", &key(1, None));
        assert_eq!(cache.get(b"a"), None);
    }

    #[test]
    fn a_lookup_across_invalidations_is_not_kept() {
        let invalidations: [fn(&KeyCache); 4] = [
            |c| c.forget(Uuid::from_u128(9)),
            |c| c.notified("*"),
            KeyCache::forget_all,
            KeyCache::listening,
        ];
        // Each alone, and each after another: every one moves the epoch
        // on, never back to a lookup's ticket.
        for invalidate in invalidations {
            for before in [None, Some(KeyCache::listening as fn(&KeyCache))] {
                let cache = listening(10);
                let ticket = cache.before_lookup();
                if let Some(first) = before {
                    first(&cache);
                }
                invalidate(&cache);
                cache.keep(ticket, b"a", &key(1, None));
                assert_eq!(cache.get(b"a"), None);
                // The next lookup is kept.
                cache.keep(cache.before_lookup(), b"a", &key(1, None));
                assert_eq!(cache.get(b"a"), Some(key(1, None)));
            }
        }
    }

    #[test]
    fn a_notification_drops_the_key_it_names_or_all() {
        let cache = listening(10);
        let now = Instant::now();
        looked_up(&cache, b"a", &key(1, None), now);
        looked_up(&cache, b"b", &key(2, None), now);
        looked_up(&cache, b"c", &key(1, None), now);
        cache.notified(&Uuid::from_u128(1).to_string());
        assert_eq!(cache.get(b"a"), None);
        assert_eq!(cache.get(b"c"), None);
        assert_eq!(cache.get(b"b"), Some(key(2, None)));
        cache.notified("");
        assert_eq!(cache.get(b"b"), None);
    }

    #[test]
    fn a_full_cache_makes_room_by_dropping_expired_entries_first() {
        let cache = listening(10);
        let now = Instant::now();
        looked_up(&cache, b"old", &key(1, None), now);
        let later = now + Duration::from_secs(5);
        for i in 1..MAX_KEYS {
            looked_up(&cache, &i.to_be_bytes(), &key(2, None), later);
        }
        assert_eq!(cache.state().keys.len(), MAX_KEYS);
        // At now + 10 s the first entry has expired and makes the room.
        let full = now + Duration::from_secs(10);
        looked_up(&cache, b"new", &key(3, None), full);
        assert_eq!(cache.state().keys.len(), MAX_KEYS);
        assert!(!cache.state().keys.contains_key(b"old".as_slice()));
        let wall = Utc::now();
        assert_eq!(cache.get_at(b"new", full, wall), Some(key(3, None)));
        assert!(cache.get_at(&1usize.to_be_bytes(), full, wall).is_some());
        // With none expired, it starts over.
        looked_up(&cache, b"newer", &key(4, None), full);
        assert_eq!(cache.state().keys.len(), 1);
        assert_eq!(cache.get_at(b"newer", full, wall), Some(key(4, None)));
    }
}
