//! Group statements: concurrent executions' step commits share one
//! statement, each row still fenced by its own token, and so do their
//! rate-limit reservations, each still getting a slot of its own, and
//! their parks.

use std::future::Future;
use std::sync::Arc;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::Result;
use crate::state::ExecutionStatus;
use crate::store::executions;
use crate::store::flow::{self, Park, Reserved, Take};

/// A request waiting for a group statement, with its reply channel.
type Request<T, R> = (T, oneshot::Sender<Result<R, String>>);

/// Most requests one group statement carries.
const GROUP_MAX: usize = 64;
/// Group-commit statements in flight at once.
const GROUPS_IN_FLIGHT: usize = 2;
/// Group-take statements in flight at once: one, so that two for-each
/// items of one execution (always in this process) are never reserving
/// on one key in two statements at once, where the second could wait on
/// the first's row lock and then use the slot the first just kept. A
/// key's takes queue on its row anyway.
const TAKES_IN_FLIGHT: usize = 1;

/// The runner's side of one kind of group statement: sends a request and
/// waits for its answer.
struct Asker<T, R>(mpsc::Sender<Request<T, R>>);

impl<T, R> Asker<T, R> {
    async fn ask(&self, request: T) -> Result<R, String> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send((request, reply))
            .await
            .map_err(|_| "the group committer stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the group committer dropped the request".to_owned())?
    }
}

/// A queue of requests and the [`Asker`] that fills it.
fn queue<T, R>() -> (Asker<T, R>, mpsc::Receiver<Request<T, R>>) {
    let (asker, queue) = mpsc::channel(GROUP_MAX * GROUPS_IN_FLIGHT * 4);
    (Asker(asker), queue)
}

/// The runner's side: step commits, rate-limit reservations and parks.
pub(super) struct Committer {
    commits: Asker<executions::Commit, Option<ExecutionStatus>>,
    takes: Asker<Take, Reserved>,
    parks: Asker<Park, bool>,
}

/// A committer and the [`GroupCommitter`] it sends to.
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
        self.commits.ask(commit).await.map_err(crate::Error::Commit)
    }

    /// Reserves a rate-limit send through the group committer (see
    /// [`flow::take_group`]).
    pub(super) async fn take(&self, take: Take) -> Result<Reserved> {
        self.takes.ask(take).await.map_err(crate::Error::Reserve)
    }

    /// Parks an execution through the group committer (see
    /// [`flow::park_group`]); false when its lease was lost.
    pub(super) async fn park(&self, park: Park) -> Result<bool> {
        self.parks.ask(park).await.map_err(crate::Error::Park)
    }
}

/// Writes the step commits, rate-limit reservations and parks of one
/// [`Runner`](super::Runner), made by [`Runner::new`](super::Runner::new).
pub struct GroupCommitter {
    pool: PgPool,
    commits: mpsc::Receiver<Request<executions::Commit, Option<ExecutionStatus>>>,
    takes: mpsc::Receiver<Request<Take, Reserved>>,
    parks: mpsc::Receiver<Request<Park, bool>>,
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
            pool,
            commits,
            takes,
            parks,
        } = self;
        let commit_pool = pool.clone();
        let park_pool = pool.clone();
        tokio::join!(
            drain(commits, GROUPS_IN_FLIGHT, move |batch| {
                let pool = commit_pool.clone();
                async move {
                    metrics::histogram!("conveyor_group_commit_size").record(batch.len() as f64);
                    crate::store::group::commit_group(&pool, batch, Utc::now()).await
                }
            }),
            drain(takes, TAKES_IN_FLIGHT, move |batch| {
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
            drain(parks, GROUPS_IN_FLIGHT, move |batch| {
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

/// Answers the requests of `queue` in batches written by `write` (one
/// answer per request, in order), at most `in_flight` at once, until
/// every sender is gone.
async fn drain<T, R, F, W>(mut queue: mpsc::Receiver<Request<T, R>>, in_flight: usize, write: F)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> W,
    W: Future<Output = Vec<Result<R, String>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let written = write(requests);
        tokio::spawn(async move {
            for (reply, result) in replies.into_iter().zip(written.await) {
                let _ = reply.send(result);
            }
            drop(slot);
        });
    }
}
