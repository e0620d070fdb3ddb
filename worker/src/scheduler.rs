//! The scheduler pass loop: fires due schedule ticks. Every worker process
//! may run it; the store guarantees one execution per tick however many
//! do (see `conveyor_engine::store::schedules`).

use std::time::Duration;

use conveyor_engine::start::Starter;
use conveyor_engine::store::schedules;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Schedules one pass handles at most (the rest wait for the next pass,
/// which follows at once).
const PASS_BATCH: i64 = 100;
/// The longest sleep between passes: a schedule created or resumed
/// elsewhere is seen within this.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Runs scheduler passes until `shutdown`: each fires what is due by the
/// database's clock, then sleeps until the earliest next tick (at most
/// `MAX_SLEEP`).
pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    let starter = Starter::new();
    loop {
        let mut sleep = MAX_SLEEP;
        match pass(&pool, &starter).await {
            Ok(started) => {
                if started > 0 {
                    metrics::counter!("conveyor_executions_enqueued_total")
                        .increment(started as u64);
                    metrics::counter!("conveyor_schedule_ticks_started_total")
                        .increment(started as u64);
                }
                match schedules::until_next_tick(&pool).await {
                    Ok(Some(until)) => sleep = until.min(MAX_SLEEP),
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "reading the next schedule tick failed"),
                }
            }
            Err(e) => warn!(error = %e, "scheduler pass failed; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// One pass at the database's time: this process's clock may disagree
/// with the other processes' (see `schedules::database_now`).
async fn pass(pool: &PgPool, starter: &Starter) -> conveyor_engine::Result<usize> {
    let now = schedules::database_now(pool).await?;
    schedules::fire_due(pool, starter, now, PASS_BATCH).await
}
