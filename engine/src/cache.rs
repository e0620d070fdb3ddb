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

    /// The cached value of `key`, or the one `load` makes: the value and
    /// its definition's length in bytes, or why there is none (the inner
    /// error, not cached), or a failure to load (the outer one). Callers
    /// asking for a missing key while it loads wait for that load rather
    /// than each making their own (a worker's claim of executions of a new
    /// version would otherwise read and parse its definition once per
    /// execution); if it fails or finds nothing, the next of them loads.
    ///
    /// # Errors
    ///
    /// `load`'s outer error.
    pub async fn get_or_load<X, E, F>(&self, key: &K, load: F) -> Result<Result<Arc<V>, X>, E>
    where
        F: Future<Output = Result<Result<(Arc<V>, usize), X>, E>>,
    {
        let guard = match self.cache.get_value_or_guard_async(key).await {
            Ok(cached) => return Ok(Ok(cached.value)),
            Err(guard) => guard,
        };
        let (value, bytes) = match load.await? {
            Ok(loaded) => loaded,
            Err(none) => return Ok(Err(none)),
        };
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        // Refused only when the key was removed meanwhile: the value is
        // still this caller's answer.
        let _ = guard.insert(Weighted {
            value: value.clone(),
            bytes,
        });
        Ok(Ok(value))
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_of_a_missing_key_wait_for_one_load() {
        let cache = Arc::new(DefinitionCache::new(10_000));
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (cache, loads) = (cache.clone(), loads.clone());
            callers.spawn(async move {
                cache
                    .get_or_load(&("ws".to_owned(), 1), async {
                        loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok::<_, ()>(Ok::<_, ()>((Arc::new("one"), 10)))
                    })
                    .await
            });
        }
        while let Some(answer) = callers.join_next().await {
            assert_eq!(answer.expect("caller"), Ok(Ok(Arc::new("one"))));
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(cache.get(&("ws".to_owned(), 1)).as_deref(), Some(&"one"));
    }

    #[tokio::test]
    async fn a_load_that_finds_nothing_or_fails_caches_nothing() {
        let cache: DefinitionCache<&str, (String, i32)> = DefinitionCache::new(10_000);
        let key = ("ws".to_owned(), 1);
        let none = cache
            .get_or_load(&key, async {
                Ok::<_, ()>(Err::<(Arc<&str>, usize), _>("gone"))
            })
            .await;
        assert_eq!(none, Ok(Err("gone")));
        let failed = cache
            .get_or_load(&key, async {
                Err::<Result<(Arc<&str>, usize), ()>, _>("down")
            })
            .await;
        assert_eq!(failed, Err("down"));
        assert!(cache.is_empty());
        let loaded = cache
            .get_or_load(&key, async {
                Ok::<_, ()>(Ok::<_, ()>((Arc::new("one"), 10)))
            })
            .await;
        assert_eq!(loaded, Ok(Ok(Arc::new("one"))));
        assert_eq!(cache.len(), 1);
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
