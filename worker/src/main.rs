//! `conveyor-worker`: claims and runs executions until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use conveyor_engine::http::StepClient;
use conveyor_engine::runner::Runner;
use conveyor_worker::Worker;
use conveyor_worker::settings::{self, Settings};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    settings::init_tracing(settings::log_format()?);
    let settings = Settings::from_env()?;
    let pool = settings.pool()?;
    if settings.auto_migrate {
        settings::migrate(&pool).await?;
    }
    let client = StepClient::new(settings.http.clone()).context("building the HTTP client")?;
    let runner = Arc::new(Runner::new(
        pool.clone(),
        client,
        Arc::new(settings.keyring.clone()),
        settings.runner.clone(),
    ));
    let shutdown = CancellationToken::new();
    tokio::spawn(conveyor_worker::shutdown_on_signal(shutdown.clone()));
    Worker::new(pool, runner, settings.worker.clone())
        .run(shutdown)
        .await;
    Ok(())
}
