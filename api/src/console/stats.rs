//! The connector list's 24-hour statistics, cached per workspace for
//! [`STATS_TTL_SECS`]. Computing them reads every execution the workspace
//! created in the last 24 hours (one grouped query over the history
//! index, [`history::workspace_connector_stats`]), which grows with the
//! traffic; the cache makes the page's cost independent of it. Counts are
//! exact as of the time the page shows, and at most that many seconds
//! old. Concurrent misses for one workspace share one query, and the
//! cache holds at most [`STATS_CACHE_CONNECTORS`] connectors' statistics.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use conveyor_engine::store::history::{self, ConnectorStats};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use sqlx::PgPool;
use uuid::Uuid;

/// How long the connector list's statistics are reused, in seconds.
pub const STATS_TTL_SECS: i64 = 10;

/// How many connectors' statistics the cache holds, over all workspaces.
pub const STATS_CACHE_CONNECTORS: u64 = 100_000;

/// One workspace's statistics at one moment.
#[derive(Debug)]
pub struct WorkspaceStats {
    /// When they were computed.
    pub as_of: DateTime<Utc>,
    /// Per connector with executions in the window.
    pub by_connector: HashMap<Uuid, ConnectorStats>,
}

/// Weighs an entry by its connectors (and one for the entry itself).
#[derive(Debug, Clone, Copy)]
struct ByConnectors;

impl Weighter<(String, i64), Arc<WorkspaceStats>> for ByConnectors {
    fn weight(&self, _: &(String, i64), stats: &Arc<WorkspaceStats>) -> u64 {
        u64::try_from(stats.by_connector.len()).unwrap_or(u64::MAX) + 1
    }
}

/// Workspace statistics by `(workspace, time slot)`: a slot is
/// [`STATS_TTL_SECS`] long, so an entry is never read after its slot and
/// the eviction policy ages it out.
pub struct StatsCache {
    cache: Cache<(String, i64), Arc<WorkspaceStats>, ByConnectors>,
}

impl std::fmt::Debug for StatsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsCache")
            .field("entries", &self.cache.len())
            .finish()
    }
}

impl Default for StatsCache {
    fn default() -> Self {
        Self {
            cache: Cache::with_weighter(1024, STATS_CACHE_CONNECTORS, ByConnectors),
        }
    }
}

impl StatsCache {
    /// The statistics of `workspace_id`'s connectors over the 24 hours
    /// before they were computed, computed at most [`STATS_TTL_SECS`]
    /// before `now`.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn get(
        &self,
        pool: &PgPool,
        workspace_id: &str,
        now: DateTime<Utc>,
    ) -> conveyor_engine::Result<Arc<WorkspaceStats>> {
        let key = (
            workspace_id.to_owned(),
            now.timestamp().div_euclid(STATS_TTL_SECS),
        );
        self.cache
            .get_or_insert_async(&key, async {
                let as_of = Utc::now();
                let since = as_of - chrono::Duration::hours(24);
                let by_connector =
                    history::workspace_connector_stats(pool, workspace_id, since).await?;
                Ok(Arc::new(WorkspaceStats {
                    as_of,
                    by_connector,
                }))
            })
            .await
    }
}
