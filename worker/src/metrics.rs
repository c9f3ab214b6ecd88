//! The worker's Prometheus metrics: runs per tool by outcome, execution latency, queue
//! wait, runs in flight against capacity, redeliveries, Deno start time and sandbox
//! failures. In embedded mode they live in the gateway's registry.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use shared::metrics::{LATENCY_BUCKETS, ToolLabels};

/// Handles to every worker metric.
#[derive(Debug)]
pub struct WorkerMetrics {
    runs: IntCounterVec,
    execution: HistogramVec,
    queue_wait: Histogram,
    pub in_flight: IntGauge,
    pub capacity: IntGauge,
    redeliveries: IntCounter,
    deno_start: Histogram,
    sandbox_failures: IntCounter,
    paths: IntCounterVec,
    labels: ToolLabels,
}

impl WorkerMetrics {
    /// Creates the metrics in `registry`. `max_tools` bounds the (tenant, tool) label pairs.
    pub fn register(registry: &Registry, max_tools: usize) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            runs: IntCounterVec::new(
                Opts::new(
                    "toolsmith_worker_runs_total",
                    "Runs executed by this worker, by tenant, tool and outcome (ok or an error kind).",
                ),
                &["tenant", "tool", "outcome"],
            )?,
            execution: HistogramVec::new(
                HistogramOpts::new(
                    "toolsmith_worker_execution_seconds",
                    "Time a run spent in the sandbox, Deno start included, by tenant and tool.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["tenant", "tool"],
            )?,
            queue_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "toolsmith_worker_queue_wait_seconds",
                    "Time from a job's publication to the start of its run.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            in_flight: IntGauge::new(
                "toolsmith_worker_runs_in_flight",
                "Runs executing in this worker now.",
            )?,
            capacity: IntGauge::new(
                "toolsmith_worker_concurrency",
                "Runs this worker executes at once at most (saturation = in flight / this).",
            )?,
            redeliveries: IntCounter::new(
                "toolsmith_worker_redeliveries_total",
                "Jobs received again after an earlier delivery ended without an ack (a worker died).",
            )?,
            deno_start: Histogram::with_opts(
                HistogramOpts::new(
                    "toolsmith_worker_deno_start_seconds",
                    "Time from spawning Deno to the tool being loaded and ready.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            sandbox_failures: IntCounter::new(
                "toolsmith_worker_sandbox_failures_total",
                "Jobs the sandbox could not run at all (Deno missing or failing to start).",
            )?,
            paths: IntCounterVec::new(
                Opts::new(
                    "toolsmith_worker_run_paths_total",
                    "How runs got their process: warm (reused for the same tool version), blank (pre-started), cold (started for the run).",
                ),
                &["path"],
            )?,
            labels: ToolLabels::new(max_tools),
        };
        registry.register(Box::new(metrics.runs.clone()))?;
        registry.register(Box::new(metrics.execution.clone()))?;
        registry.register(Box::new(metrics.queue_wait.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.capacity.clone()))?;
        registry.register(Box::new(metrics.redeliveries.clone()))?;
        registry.register(Box::new(metrics.deno_start.clone()))?;
        registry.register(Box::new(metrics.sandbox_failures.clone()))?;
        registry.register(Box::new(metrics.paths.clone()))?;
        Ok(metrics)
    }

    /// Records a finished run.
    pub fn run(&self, tenant: &str, tool: &str, outcome: &str, duration: Duration) {
        let (tenant, tool) = self.labels.labels(tenant, tool);
        self.runs
            .with_label_values(&[&tenant, &tool, outcome])
            .inc();
        self.execution
            .with_label_values(&[&tenant, &tool])
            .observe(duration.as_secs_f64());
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    pub fn redelivered(&self) {
        self.redeliveries.inc();
    }

    pub fn deno_started(&self, took: Duration) {
        self.deno_start.observe(took.as_secs_f64());
    }

    pub fn run_path(&self, path: &str) {
        self.paths.with_label_values(&[path]).inc();
    }

    pub fn sandbox_failed(&self) {
        self.sandbox_failures.inc();
    }
}
