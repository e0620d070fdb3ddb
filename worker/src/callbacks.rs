//! The completion-callback sender: drains `callback_deliveries` (leased,
//! `SKIP LOCKED`, any number of processes): completion callbacks and the
//! events of subscriptions alike. It POSTs each event (an execution
//! summary, or a credential's status) signed per Standard Webhooks with the workspace's secret (and the
//! previous one during a rotation), records every attempt, and retries
//! failures with exponential backoff for up to 24 hours. Up to `SLOTS`
//! attempts are in flight at once, and each slot is claimed again as soon
//! as its attempt ends, so a slow receiver holds back nothing but its own
//! slots. The outbound
//! address policy of steps applies: no private, loopback or metadata
//! addresses unless `CONVEYOR_ALLOW_PRIVATE_NETWORKS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use conveyor_engine::callback;
use conveyor_engine::crypto::Keyring;
use conveyor_engine::net::{self, GuardedResolver};
use conveyor_engine::store::callbacks::{self, Due, Next};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Attempts one process has in flight at once (and the most one claim
/// takes).
const SLOTS: usize = 32;
/// While fewer than half the slots are free, claims are at least this far
/// apart, so a stream of quick sends is claimed a few rows at a time
/// rather than one claim per finished send.
const CLAIM_GAP: Duration = Duration::from_millis(50);
/// How long a claimed callback stays leased (longer than a request).
const LEASE: chrono::Duration = chrono::Duration::seconds(60);
/// One attempt's timeout.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The pause when nothing is due.
const IDLE: Duration = Duration::from_millis(500);

/// Sends completion callbacks.
#[derive(Clone)]
pub struct CallbackSender {
    pool: PgPool,
    keyring: Arc<Keyring>,
    client: reqwest::Client,
    allow_private: bool,
}

impl CallbackSender {
    /// A sender over `pool`; `allow_private` lifts the address policy (for
    /// development and tests).
    ///
    /// # Errors
    ///
    /// The HTTP client could not be built.
    pub fn new(
        pool: PgPool,
        keyring: Arc<Keyring>,
        allow_private: bool,
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .user_agent(concat!("conveyor-callbacks/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self {
            pool,
            keyring,
            client: builder.build()?,
            allow_private,
        })
    }

    /// Sends what is due once, waiting for every attempt; how many were
    /// made.
    ///
    /// # Errors
    ///
    /// Database errors while claiming.
    pub async fn run_once(&self) -> conveyor_engine::Result<usize> {
        let mut sends = JoinSet::new();
        let n = self.claim_into(&mut sends, SLOTS).await?;
        while sends.join_next().await.is_some() {}
        Ok(n)
    }

    /// Sends until `shutdown`, with up to [`SLOTS`] attempts in flight:
    /// whenever one ends, its slot is claimed again, so a receiver that
    /// takes the whole timeout holds one slot, not the next claim. On
    /// shutdown it stops claiming and lets the attempts in flight end
    /// (each within the timeout).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut sends = JoinSet::new();
        let mut last_claim: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            while sends.try_join_next().is_some() {}
            let free = SLOTS.saturating_sub(sends.len());
            if free == 0 {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = sends.join_next() => {}
                }
                continue;
            }
            if free < SLOTS / 2
                && let Some(next) = last_claim.map(|t| t + CLAIM_GAP)
                && next > Instant::now()
            {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep_until(next.into()) => {}
                }
                continue;
            }
            last_claim = Some(Instant::now());
            let all_taken = match self.claim_into(&mut sends, free).await {
                Ok(n) => n == free,
                Err(e) => {
                    warn!(error = %e, "claiming callbacks failed; retrying");
                    false
                }
            };
            // Every slot filled: more may be due, so claim again as soon
            // as one frees. Otherwise nothing more is due now: look again
            // after `IDLE`.
            if !all_taken {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(IDLE) => {}
                }
            }
        }
        while sends.join_next().await.is_some() {}
    }

    /// Claims up to `free` due callbacks and starts an attempt for each in
    /// `sends`; how many it claimed.
    async fn claim_into(
        &self,
        sends: &mut JoinSet<()>,
        free: usize,
    ) -> conveyor_engine::Result<usize> {
        let limit = i64::try_from(free).unwrap_or(i64::MAX);
        let due = callbacks::claim(&self.pool, limit, LEASE).await?;
        let claimed = Instant::now();
        let n = due.len();
        for d in due {
            let me = self.clone();
            sends.spawn(async move { me.attempt(d, claimed).await });
        }
        Ok(n)
    }

    /// Sends `d`, claimed at `claimed` on this process's monotonic clock,
    /// and records the attempt. Its time is the database's clock at the
    /// claim plus the time since: the retry and the 24-hour limit are
    /// reckoned on the clock that made the delivery, not this process's.
    async fn attempt(&self, d: Due, claimed: Instant) {
        let at = d.claimed_at + chrono::Duration::from_std(claimed.elapsed()).unwrap_or_default();
        let started = Instant::now();
        let result = self.send(&d).await;
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let (status, error) = match &result {
            Ok(status) if (200..300).contains(status) => (Some(*status), None),
            Ok(status) => (
                Some(*status),
                Some(format!("the receiver answered {status}")),
            ),
            Err(e) => (None, Some(e.clone())),
        };
        let next = if error.is_none() {
            Next::Delivered
        } else {
            callback::next_attempt(d.attempts, d.created_at, at).map_or(Next::GiveUp, Next::RetryAt)
        };
        metrics::counter!("conveyor_callback_attempts_total",
            "result" => if error.is_none() { "delivered" } else { "failed" })
        .increment(1);
        match callbacks::finish_attempt(
            &self.pool,
            d.id,
            (d.attempts, at),
            (status, error.as_deref(), duration_ms),
            next,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                warn!(callback.id = %d.id, attempt = d.attempts, "a callback attempt outlived its lease; the attempt that took over decides");
            }
            Err(e) => {
                warn!(callback.id = %d.id, error = %e, "could not record a callback attempt; its lease will expire and it is sent again");
            }
        }
    }

    /// One POST; the receiver's status, or why there was none.
    async fn send(&self, d: &Due) -> Result<u16, String> {
        let url = url::Url::parse(&d.url).map_err(|e| format!("invalid URL: {e}"))?;
        if !self.allow_private
            && let Some(host) = url.host()
        {
            net::check_host(&host).map_err(|e| e.to_string())?;
        }
        let now = Utc::now();
        let payload = callback::payload(
            &d.event,
            now,
            d.data.clone().unwrap_or(serde_json::Value::Null),
        );
        let body = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
        let keys = callbacks::signing_keys(&self.pool, &self.keyring, &d.workspace_id)
            .await
            .map_err(|e| format!("signing secret unavailable: {e}"))?;
        let id = format!("msg_{}", d.id.simple());
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json");
        for (name, value) in callback::signature_headers(&id, now.timestamp(), &body, &keys) {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.map_err(|e| {
            // reqwest's message names the URL, never a secret.
            format!("request failed: {e}")
        })?;
        Ok(response.status().as_u16())
    }
}
