//! The `worker` binary: parse the configuration, start telemetry, run until a signal.

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = worker::Config::parse();
    let _telemetry = shared::telemetry::init(&config.telemetry, "toolsmith-worker");
    let shutdown = CancellationToken::new();
    tokio::spawn(shared::signals::cancel_on_signal(shutdown.clone()));
    worker::run(config, shutdown).await.context("worker failed")
}
