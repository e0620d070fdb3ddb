//! Live execution updates: one `LISTEN` on
//! [`EXECUTION_EVENTS`]
//! and [`WORKSPACE_EVENTS`]
//! per API process, fanned out to Server-Sent-Events subscribers. The
//! database only NOTIFYs for executions and workspaces someone watches
//! (`execution_watchers`, `workspace_watchers`). The same connection
//! hears [`API_KEYS`] for the process's [`KeyCache`], which serves keys
//! only while that connection lives.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use conveyor_engine::store::channels::{API_KEYS, EXECUTION_EVENTS, WORKSPACE_EVENTS};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::auth::KeyCache;

/// Fans execution-change notifications out to subscribers, and API key
/// changes to the key cache.
#[derive(Clone, Debug)]
pub struct EventHub {
    tx: broadcast::Sender<Uuid>,
    workspaces: broadcast::Sender<Arc<str>>,
    keys: Arc<KeyCache>,
}

impl EventHub {
    /// A hub with no listener yet: run [`EventHub::listen`] beside it, or
    /// subscribers hear nothing and `keys` keeps nothing.
    pub fn new(keys: Arc<KeyCache>) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (workspaces, _) = broadcast::channel(1024);
        Self {
            tx,
            workspaces,
            keys,
        }
    }

    /// Listens for notifications over `pool` until `shutdown` completes,
    /// reconnecting with backoff when the connection breaks. Spawn it and
    /// join it on shutdown.
    pub async fn listen(self, pool: PgPool, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = self.relay(&pool, &mut backoff) => {}
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Relays notifications until the connection breaks.
    async fn relay(&self, pool: &PgPool, backoff: &mut Duration) {
        let mut listener = match PgListener::connect_with(pool).await {
            Ok(listener) => listener,
            Err(e) => return tracing::debug!(error = %e, "event listener cannot connect"),
        };
        let channels = [EXECUTION_EVENTS, WORKSPACE_EVENTS, API_KEYS];
        if let Err(e) = listener.listen_all(channels).await {
            // Behind a pooler that cannot LISTEN (transaction mode), every
            // retry fails the same way: say what is off meanwhile.
            return tracing::warn!(error = %e, "cannot LISTEN: live execution events and the API-key cache are off until it can");
        }
        *backoff = Duration::from_millis(100);
        self.keys.listening();
        // A broken connection ends this loop (`try_recv` says so, where
        // `recv` would reconnect unseen). The subscribers re-read state
        // when they lag or reconnect, so a gap loses nothing of theirs;
        // the key cache, which cannot know what it missed, empties.
        while let Ok(Some(n)) = listener.try_recv().await {
            match n.channel() {
                WORKSPACE_EVENTS => {
                    let _ = self.workspaces.send(Arc::from(n.payload()));
                }
                API_KEYS => self.keys.notified(n.payload()),
                _ => {
                    if let Ok(id) = n.payload().parse() {
                        let _ = self.tx.send(id);
                    }
                }
            }
        }
        self.keys.deaf();
    }

    /// A receiver of changed execution ids.
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.tx.subscribe()
    }

    /// A receiver of the ids of workspaces whose executions changed.
    pub fn subscribe_workspaces(&self) -> broadcast::Receiver<Arc<str>> {
        self.workspaces.subscribe()
    }
}
