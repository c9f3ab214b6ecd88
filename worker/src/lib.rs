//! The Toolsmith worker: takes run jobs from a queue, runs each in the Deno sandbox, and
//! sends the result home before acknowledging the job. Embedded mode runs its [`pool`]
//! inside the gateway process; the `worker` binary consumes from RabbitMQ.

pub mod config;
pub mod consumer;
mod http;
pub mod metrics;
pub mod pool;
pub mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use shared::queue::amqp::Topology;

pub use config::Config;
pub use pool::Pool;
pub use sandbox::{Execution, Sandbox, SandboxError};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("metrics server: {0}")]
    Http(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Runs the worker until `shutdown`: consume, run, reply, ack; then drain within the grace
/// period.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let registry = shared::metrics::registry();
    let metrics = Arc::new(metrics::WorkerMetrics::register(
        &registry,
        config.telemetry.metrics_max_tools,
    )?);
    let sandbox = Arc::new(
        Sandbox::new(&config.sandbox)
            .await?
            .with_metrics(metrics.clone()),
    );
    let concurrency = config.sandbox.concurrency();
    tracing::info!(
        deno = %config.sandbox.deno.display(),
        version = sandbox.deno_version(),
        concurrency,
        "worker starting"
    );
    let topology = Topology::new(&config.amqp);
    let (source, consuming) = consumer::AmqpSource::new(
        config.amqp_url.clone(),
        topology,
        concurrency,
        shutdown.clone(),
    );
    let http = match config.metrics_listen {
        Some(addr) => {
            let stop = CancellationToken::new();
            let task = tokio::spawn(http::serve(addr, consuming, registry, stop.clone()));
            Some((stop, task))
        }
        None => None,
    };
    let pool = Pool::new(
        sandbox,
        concurrency,
        Duration::from_secs(config.shutdown_grace_secs),
        metrics,
    );
    pool.run(source, shutdown).await;
    if let Some((stop, task)) = http {
        stop.cancel();
        if let Ok(Err(error)) = task.await {
            return Err(WorkerError::Http(error));
        }
    }
    tracing::info!("worker stopped");
    Ok(())
}
