//! Conveyor's worker: claims executions in batches, runs them with the
//! engine's [`Runner`], and shuts down gracefully.
//!
//! Any number of workers, in any number of processes and machines, share
//! one database; nothing in a worker needs to be unique. Idle workers wait
//! on `LISTEN` (enqueue NOTIFYs), wake when an execution they parked for
//! flow control is due, and poll on a slow interval so a lost
//! notification delays nothing for long.

pub mod callbacks;
pub mod scheduler;
pub mod settings;
pub mod telemetry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use conveyor_engine::runner::{RunOutcome, Runner};
use conveyor_engine::store::channels::EXECUTIONS_ENQUEUED;
use conveyor_engine::store::{executions, history};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

/// Settings of a worker loop.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Recorded as lease owner and on step rows (`CONVEYOR_WORKER_ID`).
    pub worker_id: String,
    /// Executions in flight at once (`CONVEYOR_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Lease length (`CONVEYOR_LEASE_SECS`).
    pub lease: Duration,
    /// Slow poll when no notification arrives (`CONVEYOR_POLL_INTERVAL_MS`).
    pub poll_interval: Duration,
    /// How long in-flight steps may take to finish at shutdown
    /// (`CONVEYOR_SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
    /// Expired-lease takeovers before an execution is failed as poisoned
    /// (`CONVEYOR_MAX_RECLAIMS`).
    pub max_reclaims: i32,
    /// Most rows one claim takes (`CONVEYOR_CLAIM_BATCH`).
    pub claim_batch: usize,
    /// While executions are in flight, the least time between two claims
    /// that refill free slots (`CONVEYOR_CLAIM_COOLDOWN_MS`; zero claims
    /// whenever slots free up). Under a steady stream this trades a few
    /// milliseconds of start latency for fewer, larger claims; an idle
    /// worker, and one draining a backlog, claims at once.
    pub claim_cooldown: Duration,
    /// Finished executions older than this are pruned, with their steps and
    /// events (`CONVEYOR_RETENTION_DAYS`; `None` keeps everything).
    pub retention: Option<Duration>,
    /// Delivery logs older than this are pruned: finished callback and
    /// event deliveries, webhook trigger deliveries, schedule ticks
    /// (`CONVEYOR_DELIVERY_RETENTION_DAYS`; `None` keeps them).
    pub delivery_retention: Option<Duration>,
    /// Refresh the queue depth gauges (when metrics are served).
    pub observe_queue: bool,
    /// Run the scheduler pass loop that fires due schedule ticks
    /// (`CONVEYOR_SCHEDULER`).
    pub scheduler: bool,
    /// Executions of one workspace running at once across every worker
    /// (`CONVEYOR_WORKSPACE_MAX_RUNNING`); claims skip a workspace at it.
    pub workspace_max_running: i64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            worker_id: default_worker_id(),
            concurrency: 32,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(1000),
            shutdown_grace: Duration::from_secs(30),
            max_reclaims: 5,
            claim_batch: 64,
            claim_cooldown: Duration::from_millis(5),
            retention: Some(Duration::from_secs(30 * 86_400)),
            delivery_retention: Some(Duration::from_secs(30 * 86_400)),
            observe_queue: false,
            scheduler: true,
            workspace_max_running: executions::DEFAULT_WORKSPACE_MAX_RUNNING,
        }
    }
}

/// `<host>-<pid>-<random>`: readable in the execution record, and unique
/// even when a restarted process reuses a pid (fencing does not rely on
/// it anyway).
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    // The tail of a v7 UUID is random.
    let random = Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &random[random.len() - 8..]
    )
}

/// A worker loop over one pool.
pub struct Worker {
    pool: PgPool,
    claims: executions::ClaimPool,
    runner: Arc<Runner>,
    config: WorkerConfig,
}

impl Worker {
    /// A worker running claimed executions with `runner`.
    pub fn new(pool: PgPool, runner: Arc<Runner>, config: WorkerConfig) -> Self {
        Self {
            claims: executions::ClaimPool::new(&pool),
            pool,
            runner,
            config,
        }
    }

    /// Claims one ready execution and runs it to its next resting point;
    /// `None` when nothing was ready. Deterministic stepping for tests.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn run_next(&self) -> conveyor_engine::Result<Option<RunOutcome>> {
        let claimed = executions::claim_capped(
            &self.claims,
            &self.config.worker_id,
            (1, &[]),
            self.config.lease,
            self.config.workspace_max_running,
            Utc::now(),
        )
        .await?;
        match claimed.into_iter().next() {
            None => Ok(None),
            Some(c) => Ok(Some(self.runner.run(c, &CancellationToken::new()).await?)),
        }
    }

    /// Takes back executions whose lease expired. `up_since`: since when
    /// this worker has reached the database without a break (its start, or
    /// the end of the last outage it saw). A lease counts toward the poison
    /// cap only if it ran out at least half a lease after that: the
    /// holder's renewals were then due while this worker and the database
    /// both worked, so the holder failed alone. Leases that ran out while
    /// the database or every worker was down are requeued uncounted.
    ///
    /// Expiry is the database's clock's business (see
    /// [`executions::rescue_expired`]); this worker only says, on its own
    /// monotonic clock, for how long it can vouch.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn rescue(&self, up_since: Instant) -> conveyor_engine::Result<executions::Rescued> {
        let counted_for = up_since.elapsed().saturating_sub(self.config.lease / 2);
        let rescued = executions::rescue_expired(
            &self.pool,
            self.config.max_reclaims,
            counted_for,
            Utc::now(),
        )
        .await?;
        if !rescued.requeued.is_empty() {
            info!(
                count = rescued.requeued.len(),
                uncounted = rescued.uncounted.len(),
                "requeued executions whose lease expired"
            );
        }
        for id in &rescued.poisoned {
            warn!(execution.id = %id, "execution failed as poisoned: its lease expired too often");
        }
        let reclaims = rescued.requeued.len() + rescued.poisoned.len() + rescued.cancelled.len();
        if reclaims > 0 {
            metrics::counter!("conveyor_lease_reclaims_total").increment(reclaims as u64);
        }
        if !rescued.uncounted.is_empty() {
            metrics::counter!("conveyor_lease_reclaims_uncounted_total")
                .increment(rescued.uncounted.len() as u64);
        }
        if !rescued.poisoned.is_empty() {
            metrics::counter!("conveyor_executions_poisoned_total")
                .increment(rescued.poisoned.len() as u64);
            metrics::counter!("conveyor_executions_finished_total", "status" => "failed")
                .increment(rescued.poisoned.len() as u64);
        }
        Ok(rescued)
    }

    /// Runs until `shutdown` fires, then stops claiming, lets in-flight
    /// executions reach a step boundary within the grace period, and
    /// releases whatever is still leased so other workers resume it at once.
    ///
    /// Database outages are survived: one log line, backoff, reconnect.
    pub async fn run(self, shutdown: CancellationToken) {
        let cfg = self.config.clone();
        info!(worker.id = %cfg.worker_id, concurrency = cfg.concurrency, "worker started");
        let stop_steps = CancellationToken::new();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut leased: HashMap<tokio::task::Id, (Uuid, i64)> = HashMap::new();
        let mut listener: Option<PgListener> = None;
        let mut db_down_since: Option<Instant> = None;
        // Since when this worker has reached the database without a break:
        // what the rescue vouches for (see `rescue`).
        let mut up_since = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut last_rescue: Option<Instant> = None;
        let rescue_every = (cfg.lease / 3).max(Duration::from_secs(1));
        let low_water = (cfg.concurrency / 2).clamp(1, cfg.claim_batch.max(1));
        // When the last refill claim ran, unless it took every row it asked
        // for (a backlog: the next one goes out at once).
        let mut cooling_since: Option<Instant> = None;
        let mut background = JoinSet::new();
        if cfg.retention.is_some() || cfg.delivery_retention.is_some() {
            background.spawn(prune(
                self.pool.clone(),
                (cfg.retention, cfg.delivery_retention),
                shutdown.clone(),
            ));
        }
        if cfg.observe_queue {
            background.spawn(observe_queue(self.pool.clone(), shutdown.clone()));
        }
        if cfg.scheduler {
            background.spawn(scheduler::run(self.pool.clone(), shutdown.clone()));
        }

        while !shutdown.is_cancelled() {
            if listener.is_none() {
                listener = listen(&self.pool).await;
            }
            // While the database is down the claim below reports it once
            // and backs off; the rescue waits until it is back.
            if db_down_since.is_none() && last_rescue.is_none_or(|t| t.elapsed() >= rescue_every) {
                last_rescue = Some(Instant::now());
                if let Err(e) = self.rescue(up_since).await {
                    warn!(error = %e, "rescuing expired leases failed");
                    // The database may have been away: vouch only from now.
                    up_since = Instant::now();
                }
            }
            // Claims are batched: refill only once at least `low_water`
            // slots are free, instead of one claim per finished execution;
            // but executions this worker parked are claimed as soon as
            // they are due and a slot is free, since each holds a
            // rate-limit slot that passes if it waits.
            let free = cfg.concurrency.saturating_sub(tasks.len());
            let mut more_ready = false;
            let now = Utc::now();
            let woken = self.runner.woken(now, free.min(cfg.claim_batch));
            let cool_until = cooling_since
                .map(|t| t + cfg.claim_cooldown)
                .filter(|until| !tasks.is_empty() && *until > Instant::now());
            let refill = free >= low_water && cool_until.is_none();
            if refill || !woken.is_empty() {
                let want = if refill {
                    free.min(cfg.claim_batch)
                } else {
                    woken.len()
                };
                let limit = i64::try_from(want).unwrap_or(i64::MAX);
                let cap = cfg.workspace_max_running;
                let claimed = executions::claim_capped(
                    &self.claims,
                    &cfg.worker_id,
                    (limit, &woken),
                    cfg.lease,
                    cap,
                    now,
                );
                match claimed.await {
                    Ok(rows) => {
                        if !rows.is_empty() {
                            metrics::histogram!("conveyor_claim_batch_size")
                                .record(rows.len() as f64);
                            metrics::counter!("conveyor_executions_started_total")
                                .increment(rows.len() as u64);
                        }
                        if let Some(since) = db_down_since.take() {
                            info!(down_for = ?since.elapsed(), "database reachable again; resuming");
                            up_since = Instant::now();
                        }
                        backoff = Duration::from_millis(100);
                        more_ready = rows.len() == want;
                        if refill {
                            cooling_since = (!more_ready).then(Instant::now);
                        }
                        for claimed in rows {
                            let lease = (claimed.id, claimed.fencing_token);
                            let runner = self.runner.clone();
                            let stop = stop_steps.clone();
                            let handle = tasks.spawn(async move {
                                let id = claimed.id;
                                if let Err(e) = runner.run(claimed, &stop).await {
                                    warn!(execution.id = %id, error = %e, "run interrupted by a database error; the lease will expire and another worker resumes it");
                                }
                            });
                            leased.insert(handle.id(), lease);
                        }
                    }
                    Err(e) => {
                        if db_down_since.is_none() {
                            error!(error = %e, "database unreachable; backing off and retrying");
                            db_down_since = Some(Instant::now());
                        }
                        listener = None;
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            if more_ready && cfg.concurrency.saturating_sub(tasks.len()) >= low_water {
                continue;
            }
            let idle = cfg.concurrency.saturating_sub(tasks.len()) >= low_water;
            let wake = self.runner.next_wake();
            let room = tasks.len() < cfg.concurrency;
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    finished(&mut leased, done);
                    while let Some(done) = tasks.try_join_next_with_id() {
                        finished(&mut leased, done);
                    }
                }
                notified = wait_notification(&mut listener), if idle => {
                    if !notified {
                        listener = None;
                    }
                }
                () = sleep_until(wake), if room => {}
                () = pause_until(cool_until), if idle => {}
                () = tokio::time::sleep(cfg.poll_interval) => {}
            }
        }

        info!(
            in_flight = tasks.len(),
            "shutting down: no new claims; letting in-flight steps finish"
        );
        stop_steps.cancel();
        let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await {
                Ok(Some(done)) => finished(&mut leased, done),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        in_flight = tasks.len(),
                        "grace period over; abandoning in-flight steps"
                    );
                    tasks.abort_all();
                    while let Some(done) = tasks.join_next_with_id().await {
                        finished(&mut leased, done);
                    }
                }
            }
        }
        for (id, token) in leased.into_values() {
            match executions::release(&self.pool, id, token, Utc::now()).await {
                Ok(true) => info!(execution.id = %id, "released for another worker"),
                Ok(false) => {}
                Err(e) => {
                    warn!(execution.id = %id, error = %e, "could not release; its lease will expire")
                }
            }
        }
        background.shutdown().await;
        info!("worker stopped");
    }
}

/// How often the queue gauges are refreshed.
const QUEUE_GAUGE_EVERY: Duration = Duration::from_secs(5);
/// How often retention runs, and how many rows one delete takes.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const PRUNE_BATCH: i64 = 500;

/// Keeps `conveyor_queue_depth` and `conveyor_oldest_ready_age_seconds`
/// current: every few seconds, never per scrape, from the measurement the
/// whole fleet shares (one process counts per interval, see
/// [`history::queue_depth`]).
pub async fn observe_queue(pool: PgPool, shutdown: CancellationToken) {
    loop {
        match history::queue_depth(&pool, Utc::now(), QUEUE_GAUGE_EVERY).await {
            Ok((depth, oldest)) => {
                metrics::gauge!("conveyor_queue_depth").set(depth as f64);
                metrics::gauge!("conveyor_oldest_ready_age_seconds").set(oldest);
            }
            Err(e) => tracing::debug!(error = %e, "queue gauges not refreshed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(QUEUE_GAUGE_EVERY) => {}
        }
    }
}

/// Deletes finished executions past their workspace's retention (its plan
/// or custom days, else `executions`) with their steps and events, and
/// delivery logs older than `deliveries`, in small batches, so it never
/// holds long locks. `None` keeps that kind.
pub async fn prune(
    pool: PgPool,
    (executions, deliveries): (Option<Duration>, Option<Duration>),
    shutdown: CancellationToken,
) {
    loop {
        let now = Utc::now();
        if let Some(retention) = executions {
            let total = prune_batches(&shutdown, |batch| {
                history::prune_finished(&pool, now, now - retention, batch)
            })
            .await;
            if total > 0 {
                info!(pruned = total, "pruned finished executions past retention");
            }
        }
        if let Some(retention) = deliveries {
            let total = prune_batches(&shutdown, |batch| {
                history::prune_deliveries(&pool, now - retention, batch)
            })
            .await;
            if total > 0 {
                info!(pruned = total, "pruned delivery logs past retention");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// Runs `delete` with [`PRUNE_BATCH`] until a pass deletes fewer (or an
/// error, or shutdown); how many rows in all.
async fn prune_batches<F, Fut>(shutdown: &CancellationToken, mut delete: F) -> u64
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = conveyor_engine::Result<u64>>,
{
    let mut total = 0;
    loop {
        match delete(PRUNE_BATCH).await {
            Ok(n) => {
                total += n;
                if n < PRUNE_BATCH as u64 || shutdown.is_cancelled() {
                    return total;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "retention pass interrupted");
                return total;
            }
        }
    }
}

/// Forgets a finished task's lease; an aborted task keeps it so shutdown
/// can release it.
fn finished(
    leased: &mut HashMap<tokio::task::Id, (Uuid, i64)>,
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    match done {
        Ok((id, ())) => {
            leased.remove(&id);
        }
        Err(e) if e.is_cancelled() => {}
        Err(e) => {
            error!(error = %e, "execution task panicked; its lease will expire and another worker resumes it");
            leased.remove(&e.id());
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(EXECUTIONS_ENQUEUED).await.ok()?;
    Some(listener)
}

/// Waits for a wake-up notification; false when the connection broke (the
/// caller reconnects; polling covers the gap).
async fn wait_notification(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(l) => matches!(l.try_recv().await, Ok(Some(_))),
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever when there is nothing to wake for.
async fn sleep_until(at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever when `None`.
async fn pause_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Fires `token` on SIGTERM or SIGINT.
pub async fn shutdown_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the worker");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutdown signal received");
    token.cancel();
}
