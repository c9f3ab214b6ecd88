//! The worker pool: takes deliveries from a job source, runs at most `concurrency` at once
//! in the sandbox, and settles each delivery according to how its run ended.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use shared::protocol::{ErrorKind, RunError, RunResult};
use shared::queue::{Delivery, JobSource};
use shared::telemetry;
use shared::time::until;
use tracing::Instrument as _;

use crate::metrics::WorkerMetrics;
use crate::sandbox::{Execution, Sandbox};

/// Runs jobs from a source with bounded concurrency.
#[derive(Debug, Clone)]
pub struct Pool {
    sandbox: Arc<Sandbox>,
    concurrency: usize,
    grace: Duration,
    metrics: Arc<WorkerMetrics>,
}

impl Pool {
    pub fn new(
        sandbox: Arc<Sandbox>,
        concurrency: usize,
        grace: Duration,
        metrics: Arc<WorkerMetrics>,
    ) -> Self {
        let concurrency = concurrency.max(1);
        metrics
            .capacity
            .set(i64::try_from(concurrency).unwrap_or(i64::MAX));
        Self {
            sandbox,
            concurrency,
            grace,
            metrics,
        }
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Consumes `source` until it closes or `shutdown` fires, then lets runs in flight finish
    /// within the grace period before killing them.
    pub async fn run<S: JobSource>(self, mut source: S, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut running = JoinSet::new();
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            let delivery = tokio::select! {
                delivery = source.next() => delivery,
                () = shutdown.cancelled() => break,
            };
            let Some(delivery) = delivery else { break };
            let sandbox = self.sandbox.clone();
            let metrics = self.metrics.clone();
            running.spawn(async move {
                metrics.in_flight.inc();
                handle(&sandbox, &metrics, delivery).await;
                metrics.in_flight.dec();
                drop(permit);
            });
            while running.try_join_next().is_some() {}
        }
        drop(source);
        if !running.is_empty() {
            tracing::info!(in_flight = running.len(), grace = ?self.grace, "waiting for runs in flight");
            let drained = tokio::time::timeout(self.grace, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    killed = running.len(),
                    "grace period over; stopping the runs still in flight"
                );
                running.shutdown().await;
            }
        }
    }
}

/// Runs one delivery and settles it: the result goes home before the job is acknowledged.
async fn handle(sandbox: &Sandbox, metrics: &WorkerMetrics, delivery: Delivery) {
    let Delivery {
        job,
        settle,
        attempt,
    } = delivery;
    let span = tracing::info_span!(
        "job",
        tenant = %job.tenant,
        tool = %job.tool,
        job_id = %job.job_id,
        attempt,
        trace_id = tracing::field::Empty,
    );
    telemetry::adopt(&span, &job.trace);
    span.record("trace_id", telemetry::trace_id(&span));
    async {
        if attempt > 0 {
            metrics.redelivered();
        }
        if job.enqueued_ms > 0 {
            let waited = shared::time::now_ms().saturating_sub(job.enqueued_ms);
            metrics.queue_wait(Duration::from_millis(u64::try_from(waited).unwrap_or(0)));
        }
        if until(job.deadline_ms).is_zero() {
            tracing::info!("skipped a job whose caller had given up");
            let result = RunResult::error(
                &job.job_id,
                RunError::new(
                    ErrorKind::Timeout,
                    "the run was not started: its caller's deadline had passed",
                ),
            );
            if let Err(error) = settle.complete(&result).await {
                tracing::warn!(error = %error, "could not settle a skipped job");
            }
            return;
        }
        let started = std::time::Instant::now();
        let execution = sandbox.run(&job).await;
        let result = match execution {
            Execution::Ok(result)
            | Execution::ToolError(result)
            | Execution::Timeout(result)
            | Execution::MemoryLimit(result) => result,
            Execution::Infrastructure(error) => {
                metrics.sandbox_failed();
                tracing::error!(error = %error, "the sandbox could not run the job");
                RunResult::error(
                    &job.job_id,
                    RunError::new(
                        ErrorKind::Unavailable,
                        format!("the worker could not run the tool: {error}"),
                    ),
                )
            }
        };
        let outcome = result.error_kind().map_or("ok", |kind| kind.as_str());
        metrics.run(
            job.tenant.as_str(),
            job.tool.as_str(),
            outcome,
            started.elapsed(),
        );
        tracing::info!(
            version = job.version,
            outcome,
            duration_ms = result.duration_ms,
            "run finished"
        );
        let published = settle
            .complete(&result)
            .instrument(tracing::info_span!("result.publish"))
            .await;
        if let Err(error) = published {
            tracing::error!(error = %error, "could not send the result home");
        }
    }
    .instrument(span.clone())
    .await;
}
