//! The executions list's live signal, `GET /console/events`: a
//! Server-Sent-Events stream that sends `changed` whenever an execution
//! of the session's workspace is enqueued or changes state, so the page's
//! script re-reads the list instead of polling. It rides the same
//! `LISTEN` as the execution streams ([`crate::events::EventHub`]); the
//! database notifies only while the workspace is watched
//! (`workspace_watchers`), once per statement.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use conveyor_engine::store::history;
use futures_util::stream::{self, Stream};
use sqlx::PgPool;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;
use uuid::Uuid;

use super::PageError;
use super::session::Session;
use crate::AppState;
use crate::ratelimit::StreamSlot;
use crate::routes::executions::stream_slot;

/// How long a workspace watcher row lives without renewal (renewed while
/// streaming).
const WATCH_TTL: Duration = Duration::from_secs(120);

/// The shortest gap between two `changed` events of one stream: a busy
/// workspace changes many times a second, and one re-read covers them all.
const QUIET: Duration = Duration::from_millis(250);

/// `GET /console/events`.
pub(super) async fn workspace_events(
    State(state): State<AppState>,
    session: Session,
) -> Result<Response, PageError> {
    let ws: Arc<str> = Arc::from(session.caller.workspace_id.as_str());
    let slot = stream_slot(&state, &ws)?;
    let watcher = Uuid::now_v7();
    // Subscribe before watching, so no notification of the watch is missed.
    let rx = state.events.subscribe_workspaces();
    history::watch_workspace(&state.pool, &ws, watcher, Utc::now() + WATCH_TTL).await?;
    let guard = Unwatch {
        pool: state.pool.clone(),
        workspace: Arc::clone(&ws),
        watcher,
        _slot: slot,
    };
    Ok(Sse::new(changes(guard, rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Removes the watcher row and frees the stream slot when the stream ends
/// or the browser goes away.
struct Unwatch {
    pool: PgPool,
    workspace: Arc<str>,
    watcher: Uuid,
    _slot: StreamSlot,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        let (pool, ws, watcher) = (self.pool.clone(), Arc::clone(&self.workspace), self.watcher);
        tokio::spawn(async move {
            if let Err(e) = history::unwatch_workspace(&pool, &ws, watcher).await {
                tracing::debug!(error = %e, "could not remove a workspace watcher; it expires on its own");
            }
        });
    }
}

/// Where a stream stands between two events.
struct Watch {
    guard: Unwatch,
    rx: broadcast::Receiver<Arc<str>>,
    renew_at: Instant,
    quiet_until: Instant,
}

/// One `changed` event per burst of the workspace's notifications.
fn changes(
    guard: Unwatch,
    rx: broadcast::Receiver<Arc<str>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let now = Instant::now();
    let watch = Watch {
        guard,
        rx,
        renew_at: now + WATCH_TTL / 3,
        quiet_until: now,
    };
    stream::unfold(watch, |mut w| async move {
        loop {
            tokio::select! {
                changed = w.rx.recv() => match changed {
                    Ok(ws) if ws == w.guard.workspace => break,
                    // A lag may have dropped ours: say changed to be safe.
                    Err(RecvError::Lagged(_)) => break,
                    Ok(_) => {}
                    Err(RecvError::Closed) => return None,
                },
                () = tokio::time::sleep_until(w.renew_at) => {
                    w.renew_at = Instant::now() + WATCH_TTL / 3;
                    let until = Utc::now() + WATCH_TTL;
                    let g = &w.guard;
                    if let Err(e) = history::watch_workspace(&g.pool, &g.workspace, g.watcher, until).await {
                        tracing::debug!(error = %e, "could not renew a workspace watcher");
                    }
                }
            }
        }
        // Within the quiet gap, wait it out and fold what arrived meanwhile
        // into this one event.
        if Instant::now() < w.quiet_until {
            tokio::time::sleep_until(w.quiet_until).await;
            while let Ok(_) | Err(TryRecvError::Lagged(_)) = w.rx.try_recv() {}
        }
        w.quiet_until = Instant::now() + QUIET;
        Some((Ok(Event::default().event("changed").data("{}")), w))
    })
}
