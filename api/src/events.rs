//! Live execution updates: one `LISTEN conveyor_execution_events` per API
//! process, fanned out to Server-Sent-Events subscribers. The database only
//! NOTIFYs for executions someone watches (`execution_watchers`).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use uuid::Uuid;

/// The channel the database notifies (see the migration's trigger).
pub const CHANNEL: &str = "conveyor_execution_events";

/// Fans execution-change notifications out to subscribers.
#[derive(Clone, Debug)]
pub struct EventHub {
    tx: broadcast::Sender<Uuid>,
}

impl EventHub {
    /// Starts the listener task (it reconnects on its own).
    pub fn start(pool: PgPool) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let hub = Self { tx };
        let sender = hub.tx.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match PgListener::connect_with(&pool).await {
                    Ok(mut listener) => {
                        if listener.listen(CHANNEL).await.is_ok() {
                            backoff = Duration::from_millis(100);
                            // A broken connection ends this loop; the
                            // subscribers re-read state when they lag or
                            // reconnect, so a gap loses nothing.
                            while let Ok(n) = listener.recv().await {
                                if let Ok(id) = n.payload().parse() {
                                    let _ = sender.send(id);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "event listener cannot connect"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        hub
    }

    /// A receiver of changed execution ids.
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.tx.subscribe()
    }
}
