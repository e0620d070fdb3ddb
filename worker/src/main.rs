//! `conveyor-worker`: claims and runs executions until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use conveyor_engine::http::StepClient;
use conveyor_engine::runner::Runner;
use conveyor_worker::Worker;
use conveyor_worker::settings::{self, Settings};
use conveyor_worker::telemetry;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    // The OTLP exporter must be built before the runtime starts.
    let _telemetry = telemetry::init("conveyor-worker", settings::log_format()?)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let pool = settings.pool("conveyor-worker")?;
    if settings.auto_migrate {
        settings::migrate(&pool).await?;
    }
    let client = StepClient::new(settings.http.clone()).context("building the HTTP client")?;
    let (runner, committer) = Runner::new(
        pool.clone(),
        client,
        Arc::new(settings.keyring.clone()),
        settings.runner.clone(),
    );
    let committing = tokio::spawn(committer.run());
    let shutdown = CancellationToken::new();
    tokio::spawn(conveyor_worker::shutdown_on_signal(shutdown.clone()));
    let mut background = tokio::task::JoinSet::new();
    if let Some(addr) = settings.metrics_listen {
        let handle = telemetry::metrics_handle()?;
        let listener = telemetry::serve_metrics(addr, handle, shutdown.clone());
        background.spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!(error = %format!("{e:#}"), "metrics endpoint stopped");
            }
        });
    }
    let sender = conveyor_worker::callbacks::CallbackSender::new(
        pool.clone(),
        Arc::new(settings.keyring.clone()),
        settings.http.allow_private_networks,
    )
    .context("building the callback HTTP client")?;
    background.spawn(sender.run(shutdown.clone()));
    Worker::new(pool, Arc::new(runner), settings.worker.clone())
        .run(shutdown)
        .await;
    // The worker and its runner are gone: the committer ends once every
    // commit they sent is written.
    committing.await.context("the group committer panicked")?;
    background.join_all().await;
    Ok(())
}
