//! Group statements: concurrent executions' step commits share one
//! statement, each row still fenced by its own token, and so do their
//! rate-limit reservations, each still getting a slot of its own, and
//! their parks.

use chrono::Utc;
use sqlx::PgPool;

use crate::Result;
use crate::batch::{self, Asker, Queue};
use crate::state::ExecutionStatus;
use crate::store::flow::{self, Park, Reserved, Take};
use crate::store::{self, Held, executions};

/// A request's answer: a failed statement's error as text (one
/// statement answers many requests, and errors are not `Clone`).
type Answer<R> = std::result::Result<R, String>;

/// Most requests one group statement carries.
const GROUP_MAX: usize = 64;
/// Group-commit (and group-park) statements in flight at once: one.
/// With two, each carried half the rows and both wrote the same hot
/// index pages and waited for a WAL flush each; with one, the rows that
/// arrive meanwhile wait for the next statement, PostgreSQL's CPU per
/// 1-step execution fell by a quarter and the rates rose
/// (docs/performance.md, "One step-commit statement in flight").
const GROUPS_IN_FLIGHT: usize = 1;
/// Group-take statements in flight at once: one, so that two for-each
/// items of one execution (always in this process) are never reserving
/// on one key in two statements at once, where the second could wait on
/// the first's row lock and then use the slot the first just kept. A
/// key's takes queue on its row anyway.
const TAKES_IN_FLIGHT: usize = 1;

/// A queue of requests and the [`Asker`] that fills it.
fn queue<T, R>() -> (Asker<T, Answer<R>>, Queue<T, Answer<R>>) {
    batch::queue(GROUP_MAX * GROUPS_IN_FLIGHT * 4)
}

/// Sends `request` through `asker`; a stopped group committer is an
/// error like a failed statement.
async fn ask<T, R>(asker: &Asker<T, Answer<R>>, request: T) -> Answer<R> {
    asker.ask(request).await.map_err(|e| e.to_string())?
}

/// The runner's side: step commits, rate-limit reservations and parks.
pub(super) struct Committer {
    commits: Asker<executions::Commit, Answer<Option<ExecutionStatus>>>,
    takes: Asker<Take, Answer<Reserved>>,
    parks: Asker<Park, Answer<bool>>,
}

/// A committer and the [`GroupCommitter`] it sends to, which writes step
/// commits on a connection of its own to `pool`'s database, kept between
/// statements ([`Held`]), and reservations and parks through `pool`.
pub(super) fn channel(pool: PgPool) -> (Committer, GroupCommitter) {
    let (commits, commit_queue) = queue();
    let (takes, take_queue) = queue();
    let (parks, park_queue) = queue();
    (
        Committer {
            commits,
            takes,
            parks,
        },
        GroupCommitter {
            commit_connection: Held::new(store::own_connection(&pool, "commits")),
            pool,
            commits: commit_queue,
            takes: take_queue,
            parks: park_queue,
        },
    )
}

impl Committer {
    /// Commits a step through the group committer; the execution's new
    /// status, or `None` when the lease was lost.
    pub(super) async fn commit(
        &self,
        commit: executions::Commit,
    ) -> Result<Option<ExecutionStatus>> {
        ask(&self.commits, commit)
            .await
            .map_err(crate::Error::Commit)
    }

    /// Reserves a rate-limit send through the group committer (see
    /// [`flow::take_group`]).
    pub(super) async fn take(&self, take: Take) -> Result<Reserved> {
        ask(&self.takes, take).await.map_err(crate::Error::Reserve)
    }

    /// Parks an execution through the group committer (see
    /// [`flow::park_group`]); false when its lease was lost.
    pub(super) async fn park(&self, park: Park) -> Result<bool> {
        ask(&self.parks, park).await.map_err(crate::Error::Park)
    }
}

/// Writes the step commits, rate-limit reservations and parks of one
/// [`Runner`](super::Runner), made by [`Runner::new`](super::Runner::new).
pub struct GroupCommitter {
    commit_connection: Held,
    pool: PgPool,
    commits: Queue<executions::Commit, Answer<Option<ExecutionStatus>>>,
    takes: Queue<Take, Answer<Reserved>>,
    parks: Queue<Park, Answer<bool>>,
}

impl GroupCommitter {
    /// Takes whatever commits are waiting (up to `GROUP_MAX`) and writes
    /// them in one statement, with up to `GROUPS_IN_FLIGHT` statements at
    /// once; parks likewise, beside them; and rate-limit reservations, one
    /// statement at a time (`TAKES_IN_FLIGHT`). No window is
    /// waited for: at low load a batch is one request, under load requests
    /// queue up while statements run, so batches grow exactly when it pays.
    ///
    /// Its shutdown signal is its runner being dropped: it returns once the
    /// runner is gone and every request sent has been answered, so a worker
    /// that joins it after its executions stop loses no commit.
    pub async fn run(self) {
        let Self {
            commit_connection,
            pool,
            commits,
            takes,
            parks,
        } = self;
        let park_pool = pool.clone();
        tokio::join!(
            batch::drain(commits, GROUP_MAX, GROUPS_IN_FLIGHT, move |batch| {
                let held = commit_connection.clone();
                async move {
                    metrics::histogram!("conveyor_group_commit_size").record(batch.len() as f64);
                    store::group::commit_group(&held, batch, Utc::now()).await
                }
            }),
            batch::drain(takes, GROUP_MAX, TAKES_IN_FLIGHT, move |batch| {
                let pool = pool.clone();
                async move {
                    metrics::histogram!("conveyor_group_take_size").record(batch.len() as f64);
                    let n = batch.len();
                    match flow::take_group(&pool, &batch, Utc::now()).await {
                        Ok(slots) => slots.into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(e.to_string()); n],
                    }
                }
            }),
            batch::drain(parks, GROUP_MAX, GROUPS_IN_FLIGHT, move |batch| {
                let pool = park_pool.clone();
                async move {
                    metrics::histogram!("conveyor_group_park_size").record(batch.len() as f64);
                    match flow::park_group(&pool, &batch, Utc::now()).await {
                        Ok(parked) => parked.into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(e.to_string()); batch.len()],
                    }
                }
            }),
        );
    }
}
