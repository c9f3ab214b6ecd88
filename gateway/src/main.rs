//! The `gateway` binary: parse the configuration, start telemetry, run until a signal.

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

use gateway::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = shared::telemetry::init(&cli.config.telemetry, "toolsmith-gateway");
    let shutdown = CancellationToken::new();
    tokio::spawn(shared::signals::cancel_on_signal(shutdown.clone()));
    match cli.command {
        Some(Command::Migrate) => {
            gateway::migrate(&cli.config)
                .await
                .context("migration failed")?;
            tracing::info!("migrations applied");
        }
        Some(command) => gateway::admin::run(command, &cli.config).await?,
        None => gateway::run(cli.config, shutdown)
            .await
            .context("gateway failed")?,
    }
    Ok(())
}
