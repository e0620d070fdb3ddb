//! A loopback stub answer that records when each request arrived and how
//! long it was held, so a test can tell how many requests were in flight
//! at once (a concurrency bound) or sent in any window (a rate limit).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wiremock::{Request, Respond, ResponseTemplate};

/// The answer to a request and how long to hold it.
type Answer = dyn Fn(&Request) -> (ResponseTemplate, Duration) + Send + Sync;

/// Answers with `answer(request)`: the response and how long to hold it;
/// every request's arrival and hold are recorded.
#[derive(Clone)]
pub struct Overlap {
    held: Arc<Mutex<Vec<(Instant, Duration)>>>,
    answer: Arc<Answer>,
}

impl Overlap {
    /// A recorder answering with `answer`.
    pub fn new(
        answer: impl Fn(&Request) -> (ResponseTemplate, Duration) + Send + Sync + 'static,
    ) -> Self {
        Self {
            held: Arc::default(),
            answer: Arc::new(answer),
        }
    }

    /// Requests recorded so far.
    ///
    /// # Panics
    ///
    /// When the record's lock was poisoned.
    pub fn count(&self) -> usize {
        self.held.lock().expect("lock").len()
    }

    /// The most requests in flight at once: each is in flight from its
    /// arrival until its answer is due (a client that waits for an answer
    /// before its next request cannot overlap with itself).
    ///
    /// # Panics
    ///
    /// When the record's lock was poisoned.
    pub fn peak(&self) -> usize {
        let held = self.held.lock().expect("lock").clone();
        held.iter()
            .map(|(t, _)| held.iter().filter(|(x, d)| x <= t && *t < *x + *d).count())
            .max()
            .unwrap_or(0)
    }

    /// The most requests that arrived within any `window`.
    ///
    /// # Panics
    ///
    /// When the record's lock was poisoned.
    pub fn busiest(&self, window: Duration) -> usize {
        let held = self.held.lock().expect("lock").clone();
        held.iter()
            .map(|(t, _)| {
                held.iter()
                    .filter(|(x, _)| *x >= *t && *x < *t + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

impl Respond for Overlap {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (answer, hold) = (self.answer)(request);
        self.held.lock().expect("lock").push((Instant::now(), hold));
        answer.set_delay(hold)
    }
}
