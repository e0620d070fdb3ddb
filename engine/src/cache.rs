//! A bounded, size-aware cache of prepared connector versions.
//!
//! Workers key it by connector version, which is immutable, so a cached
//! one never goes stale; the API keys it by connector, and checks what it
//! cached against the database as it enqueues. The only question here is
//! memory. Entries are weighed by the byte size of their
//! stored definition and the total is capped (`quick_cache`: CLOCK-Pro,
//! an LRU approximation that also resists one-off scans). A definition
//! heavier than the whole cache is simply not kept.

use std::hash::Hash;
use std::sync::Arc;

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};
use uuid::Uuid;

/// Default byte budget (`CONVEYOR_DEFINITION_CACHE_BYTES`).
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// A cached value and its weight in bytes.
#[derive(Debug)]
struct Weighted<V> {
    value: Arc<V>,
    bytes: u64,
}

impl<V> Clone for Weighted<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            bytes: self.bytes,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ByBytes;

impl<K, V> Weighter<K, Weighted<V>> for ByBytes {
    fn weight(&self, _: &K, v: &Weighted<V>) -> u64 {
        v.bytes.max(1)
    }
}

/// Prepared connector definitions by `K` (by default `(connector id,
/// version)`), at most `max_bytes` of definitions in all.
pub struct DefinitionCache<V, K = (Uuid, i32)> {
    cache: Cache<K, Weighted<V>, ByBytes>,
}

impl<V, K: Eq + Hash + Clone> DefinitionCache<V, K> {
    /// A cache holding at most `max_bytes` of definitions.
    pub fn new(max_bytes: u64) -> Self {
        // The item estimate only sizes the hash tables: assume 4 KiB
        // definitions. One shard, so the whole budget is one pool (a
        // sharded cache refuses items over a shard's share); it is read
        // once per claimed execution, far from contended.
        let estimated = usize::try_from(max_bytes / 4096)
            .unwrap_or(usize::MAX)
            .max(16);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(estimated)
            .weight_capacity(max_bytes.max(1))
            .shards(1)
            .build()
            .unwrap_or_else(|_| unreachable!("both required options are set"));
        Self {
            cache: Cache::with_options(
                options,
                ByBytes,
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            ),
        }
    }

    /// The cached value, if any.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.cache.get(key).map(|w| w.value)
    }

    /// Caches `value`, whose definition is `bytes` long, evicting others
    /// as needed to stay within the budget.
    pub fn insert(&self, key: K, value: Arc<V>, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.cache.insert(key, Weighted { value, bytes });
    }

    /// Forgets `key`'s value.
    pub fn remove(&self, key: &K) {
        self.cache.remove(key);
    }

    /// Bytes of definitions held now.
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_weight_never_exceeds_the_budget() {
        let cache = DefinitionCache::new(10_000);
        let id = Uuid::now_v7();
        for version in 0..1_000 {
            cache.insert((id, version), Arc::new(version), 700);
            assert!(cache.weight() <= 10_000, "weight {}", cache.weight());
        }
        assert!(cache.len() <= 14, "{} entries", cache.len());
        assert!(!cache.is_empty());
        assert_eq!(
            cache.get(&(id, 999)).as_deref(),
            Some(&999),
            "the newest stays"
        );
    }

    #[test]
    fn a_definition_larger_than_the_budget_is_not_kept() {
        let cache = DefinitionCache::new(1_000);
        let id = Uuid::now_v7();
        cache.insert((id, 1), Arc::new("small"), 100);
        cache.insert((id, 2), Arc::new("huge"), 5_000);
        assert_eq!(cache.get(&(id, 2)), None);
        assert_eq!(cache.get(&(id, 1)).as_deref(), Some(&"small"));
        assert!(cache.weight() <= 1_000);
    }

    #[test]
    fn a_removed_key_is_gone_and_others_stay() {
        let cache = DefinitionCache::new(10_000);
        cache.insert(("ws".to_owned(), 1), Arc::new("one"), 10);
        cache.insert(("ws".to_owned(), 2), Arc::new("two"), 10);
        cache.remove(&("ws".to_owned(), 1));
        assert_eq!(cache.get(&("ws".to_owned(), 1)), None);
        assert_eq!(cache.get(&("ws".to_owned(), 2)).as_deref(), Some(&"two"));
        assert_eq!(cache.len(), 1);
    }
}
