//! Group commit: concurrent executions' step commits share one statement,
//! each row still fenced by its own token.

use std::sync::Arc;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::Result;
use crate::state::ExecutionStatus;
use crate::store::executions;

/// Commits waiting for the group committer, with their reply channels.
type CommitRequest = (
    executions::Commit,
    oneshot::Sender<Result<Option<ExecutionStatus>, String>>,
);

/// Most step commits one group-commit statement carries.
const GROUP_COMMIT_MAX: usize = 64;
/// Group-commit statements in flight at once.
const GROUP_COMMITS_IN_FLIGHT: usize = 2;

/// The runner's side: sends a step commit and waits for its answer.
pub(super) struct Committer {
    commits: mpsc::Sender<CommitRequest>,
}

/// A committer and the [`GroupCommitter`] it sends to.
pub(super) fn channel(pool: PgPool) -> (Committer, GroupCommitter) {
    let (commits, queue) = mpsc::channel(GROUP_COMMIT_MAX * GROUP_COMMITS_IN_FLIGHT * 4);
    (Committer { commits }, GroupCommitter { pool, queue })
}

impl Committer {
    /// Commits a step through the group committer; the execution's new
    /// status, or `None` when the lease was lost.
    pub(super) async fn commit(
        &self,
        commit: executions::Commit,
    ) -> Result<Option<ExecutionStatus>> {
        let (reply, answer) = oneshot::channel();
        self.commits
            .send((commit, reply))
            .await
            .map_err(|_| crate::Error::Commit("the group committer stopped".into()))?;
        answer
            .await
            .map_err(|_| crate::Error::Commit("the group committer dropped the commit".into()))?
            .map_err(crate::Error::Commit)
    }
}

/// Writes the step commits of one [`Runner`](super::Runner), made by
/// [`Runner::new`](super::Runner::new).
pub struct GroupCommitter {
    pool: PgPool,
    queue: mpsc::Receiver<CommitRequest>,
}

impl GroupCommitter {
    /// Takes whatever commits are waiting (up to [`GROUP_COMMIT_MAX`]) and
    /// writes them in one statement, with up to [`GROUP_COMMITS_IN_FLIGHT`]
    /// statements at once. No window is waited for: at low load a batch is
    /// one commit, under load commits queue up while statements run, so
    /// batches grow exactly when it pays.
    ///
    /// Its shutdown signal is its runner being dropped: it returns once the
    /// runner is gone and every commit sent has been answered, so a worker
    /// that joins it after its executions stop loses no commit.
    pub async fn run(mut self) {
        let slots = Arc::new(tokio::sync::Semaphore::new(GROUP_COMMITS_IN_FLIGHT));
        while let Some(first) = self.queue.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < GROUP_COMMIT_MAX {
                match self.queue.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let pool = self.pool.clone();
            tokio::spawn(async move {
                let (commits, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                metrics::histogram!("conveyor_group_commit_size").record(commits.len() as f64);
                let results = crate::store::group::commit_group(&pool, commits, Utc::now()).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                drop(slot);
            });
        }
    }
}
