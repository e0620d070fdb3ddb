//! Natural batching: concurrent requests for the same kind of statement
//! share one.
//!
//! Callers send requests through an [`Asker`]; one task ([`drain`]) takes
//! whatever is waiting (up to a maximum) and writes it with one
//! statement, a few statements in flight at once. No window is waited
//! for: at low load a batch is one request, and under load requests queue
//! up while statements run, so batches grow exactly when it pays. The
//! worker's step commits, rate-limit reservations and parks go through it,
//! and so do the API's single executes.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// A request waiting for a statement, with its reply channel.
pub type Request<T, R> = (T, oneshot::Sender<R>);

/// The receiving end of an [`Asker`], for [`drain`].
pub type Queue<T, R> = mpsc::Receiver<Request<T, R>>;

/// The task answering an [`Asker`] is gone, or dropped the request
/// unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batching task stopped before answering")]
pub struct Stopped;

/// The callers' side of one kind of batched statement: sends a request
/// and waits for its answer. Cloning shares the queue.
#[derive(Debug)]
pub struct Asker<T, R>(mpsc::Sender<Request<T, R>>);

impl<T, R> Clone for Asker<T, R> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T, R> Asker<T, R> {
    /// Sends `request` and waits for its answer.
    ///
    /// # Errors
    ///
    /// [`Stopped`] when the task answering the queue has ended.
    pub async fn ask(&self, request: T) -> Result<R, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.0.send((request, reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

/// A queue holding up to `capacity` waiting requests (senders wait
/// beyond it), and the [`Asker`] that fills it.
pub fn queue<T, R>(capacity: usize) -> (Asker<T, R>, Queue<T, R>) {
    let (asker, queue) = mpsc::channel(capacity.max(1));
    (Asker(asker), queue)
}

/// Answers the requests of `queue` in batches of at most `max` written by
/// `write` (one answer per request, in order), at most `in_flight` batches
/// at once, until every [`Asker`] is gone and every request is answered.
pub async fn drain<T, R, F, W>(mut queue: Queue<T, R>, max: usize, in_flight: usize, write: F)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> W,
    W: Future<Output = Vec<R>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut running = tokio::task::JoinSet::new();
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let written = write(requests);
        running.spawn(async move {
            for (reply, answer) in replies.into_iter().zip(written.await) {
                let _ = reply.send(answer);
            }
            drop(slot);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Requests that wait while a statement runs share the next one (at
    /// most `max` of them), each caller gets its own answer, and the drain
    /// ends once every asker is gone.
    #[tokio::test]
    async fn waiting_requests_share_a_batch_and_each_gets_its_answer() {
        const CAPACITY: usize = 64;
        let (asker, queue) = queue::<u32, (u32, usize)>(CAPACITY);
        let (gate_open, gate) = tokio::sync::watch::channel(false);
        let (wrote, mut writes) = mpsc::unbounded_channel();
        let drained = tokio::spawn(drain(queue, 3, 1, move |batch: Vec<u32>| {
            let mut gate = gate.clone();
            let _ = wrote.send(batch.clone());
            async move {
                let _ = gate.wait_for(|open| *open).await;
                let n = batch.len();
                batch.into_iter().map(|x| (x * 10, n)).collect()
            }
        }));
        let ask = |x: u32| {
            let asker = asker.clone();
            tokio::spawn(async move { (x, asker.ask(x).await) })
        };
        let mut asks = vec![ask(1)];
        assert_eq!(
            writes.recv().await,
            Some(vec![1]),
            "a lone request goes alone"
        );
        asks.extend((2..=5).map(ask));
        // The drain holds request 2 while the only statement slot is busy,
        // and 3 to 5 wait in the queue.
        tokio::time::timeout(Duration::from_secs(10), async {
            while asker.0.capacity() != CAPACITY - 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("requests 2 to 5 reach the drain");
        gate_open.send_replace(true);
        let mut sizes = Vec::new();
        for done in asks {
            let (x, answer) = done.await.expect("the ask ran");
            let (y, n) = answer.expect("answered");
            assert_eq!(y, x * 10, "each caller gets its own answer");
            sizes.push(n);
        }
        assert_eq!(sizes, [1, 3, 3, 3, 1]);
        assert_eq!(writes.recv().await, Some(vec![2, 3, 4]));
        assert_eq!(writes.recv().await, Some(vec![5]));
        drop(asker);
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .expect("the drain ends once every asker is gone")
            .expect("the drain did not panic");
    }

    /// An asker whose drain is gone gets [`Stopped`], not a hang.
    #[tokio::test]
    async fn asking_a_stopped_drain_fails() {
        let (asker, queue) = queue::<u32, u32>(4);
        drop(queue);
        assert_eq!(asker.ask(1).await, Err(Stopped));
    }
}
