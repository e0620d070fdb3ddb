//! A connection kept out of its pool by the one task that uses it.
//!
//! sqlx's pool tests a connection with a round trip (an empty `Sync`,
//! answered by `ReadyForQuery`) when it hands it out and again when it
//! takes it back, so a statement sent through the pool costs PostgreSQL
//! three round trips, not one. The tasks that send one statement after
//! another all day (the API's grouped single executes, a worker's claims
//! and its step commits) keep their connection instead ([`Held`]), and
//! test it only when it has been idle ([`IDLE_TEST`]).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::{Mutex, MutexGuard};

use crate::{Error, Result};

/// How long a kept connection may sit unused before it is tested again
/// before its next statement, as the pool tests every connection it hands
/// out: one that was used within this time answered then.
pub const IDLE_TEST: Duration = Duration::from_secs(1);

/// One connection of `pool`, kept between statements by the task that
/// sends them one at a time. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Held(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    slot: Mutex<Option<Kept>>,
}

#[derive(Debug)]
struct Kept {
    conn: PoolConnection<Postgres>,
    used: Instant,
}

impl Held {
    /// Keeps connections of `pool`, taking one at the first statement.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self(Arc::new(Inner {
            pool,
            slot: Mutex::new(None),
        }))
    }

    /// The pool the connection comes from.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    /// The kept connection, for one statement; waits while another caller
    /// has it. One unused for [`IDLE_TEST`] or longer is tested first,
    /// and one that does not answer is given back (its pool closes it)
    /// for a fresh one of the pool's.
    ///
    /// # Errors
    ///
    /// The pool cannot give a connection (database unreachable, acquire
    /// timeout).
    pub async fn acquire(&self) -> Result<HeldConnection<'_>> {
        let mut slot = self.0.slot.lock().await;
        let kept = match slot.take() {
            Some(kept) if kept.used.elapsed() < IDLE_TEST => Some(kept),
            Some(mut kept) => kept.conn.ping().await.is_ok().then_some(kept),
            None => None,
        };
        let kept = match kept {
            Some(kept) => kept,
            None => Kept {
                conn: self.0.pool.acquire().await?,
                used: Instant::now(),
            },
        };
        Ok(HeldConnection { slot, kept })
    }
}

/// Whether the session a statement ran on is sound after it failed with
/// `e`: PostgreSQL refused the statement (a constraint, a bad value) and
/// went on. A lost connection, a protocol error, or PostgreSQL ending the
/// session (`57P01` when an administrator terminates it, `57P05` idle
/// timeout, class `08`) is not.
#[must_use]
pub fn session_survives(e: &Error) -> bool {
    matches!(e, Error::Database(sqlx::Error::Database(_))) && !e.is_connection()
}

/// The kept connection while one caller uses it. [`finish`] keeps it for
/// the next statement; dropped without that (an error returned early, the
/// caller cancelled mid-statement), it goes back to its pool, which tests
/// it and closes it if broken.
///
/// [`finish`]: HeldConnection::finish
#[derive(Debug)]
pub struct HeldConnection<'a> {
    slot: MutexGuard<'a, Option<Kept>>,
    kept: Kept,
}

impl HeldConnection<'_> {
    /// Keeps the connection for the next statement, unless the
    /// statement's `failure` may have broken it ([`session_survives`]:
    /// then it goes back to its pool).
    pub fn finish(self, failure: Option<&Error>) {
        let sound = failure.is_none_or(session_survives);
        let Self { mut slot, mut kept } = self;
        if sound {
            kept.used = Instant::now();
            *slot = Some(kept);
        }
    }
}

impl Deref for HeldConnection<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.kept.conn
    }
}

impl DerefMut for HeldConnection<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.kept.conn
    }
}
