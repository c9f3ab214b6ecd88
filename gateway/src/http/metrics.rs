//! The gateway's Prometheus metrics and the `/metrics` route: runs per tool by outcome and
//! end-to-end latency, runs in flight, registry cache hits and misses, MCP requests by
//! method and status, HTTP requests by route and status. Broker-side numbers (dead
//! letters, queue depth, consumers) come from the AMQP client; in embedded mode the
//! in-process workers' metrics share this registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use shared::metrics::{LATENCY_BUCKETS, ToolLabels, encode};

use crate::app::App;

/// Handles to every gateway metric.
#[derive(Debug)]
pub struct GatewayMetrics {
    pub registry: Registry,
    runs: IntCounterVec,
    duration: HistogramVec,
    pub in_flight: IntGauge,
    cache: IntCounterVec,
    mcp: IntCounterVec,
    http: IntCounterVec,
    labels: ToolLabels,
}

impl GatewayMetrics {
    /// Creates the metrics in `registry`. `max_tools` bounds the (tenant, tool) label pairs.
    pub fn register(registry: Registry, max_tools: usize) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            runs: IntCounterVec::new(
                Opts::new(
                    "toolsmith_runs_total",
                    "Tool runs answered by this gateway, by tenant, tool and outcome (ok or an error kind).",
                ),
                &["tenant", "tool", "outcome"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "toolsmith_run_duration_seconds",
                    "End-to-end time of a tool run at the gateway: lookup, validation, queue, execution and result.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["tenant", "tool"],
            )?,
            in_flight: IntGauge::new(
                "toolsmith_runs_in_flight",
                "Tool runs this gateway is waiting on now.",
            )?,
            cache: IntCounterVec::new(
                Opts::new(
                    "toolsmith_registry_cache_requests_total",
                    "Lookups of runnable tools, by result (hit or miss).",
                ),
                &["result"],
            )?,
            mcp: IntCounterVec::new(
                Opts::new(
                    "toolsmith_mcp_requests_total",
                    "MCP requests by method and status (ok, tool_error, error).",
                ),
                &["method", "status"],
            )?,
            http: IntCounterVec::new(
                Opts::new(
                    "toolsmith_http_requests_total",
                    "HTTP requests by route, method and status code.",
                ),
                &["route", "method", "status"],
            )?,
            labels: ToolLabels::new(max_tools),
            registry,
        };
        for collector in [
            Box::new(metrics.runs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.duration.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.cache.clone()),
            Box::new(metrics.mcp.clone()),
            Box::new(metrics.http.clone()),
        ] {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// Records one tool run's outcome and latency.
    pub fn run(&self, tenant: &str, tool: &str, outcome: &str, took: Duration) {
        let (tenant, tool) = self.labels.labels(tenant, tool);
        self.runs
            .with_label_values(&[&tenant, &tool, outcome])
            .inc();
        self.duration
            .with_label_values(&[&tenant, &tool])
            .observe(took.as_secs_f64());
    }

    pub fn cache(&self, hit: bool) {
        self.cache
            .with_label_values(&[if hit { "hit" } else { "miss" }])
            .inc();
    }

    pub fn mcp(&self, method: &str, status: &str) {
        self.mcp.with_label_values(&[method, status]).inc();
    }
}

/// `GET /metrics`.
pub async fn scrape(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        encode(&app.metrics.registry),
    )
}

/// Counts every HTTP request by route, method and status.
pub async fn count(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| {
            // Nested services (MCP) have no matched path of their own.
            if request.uri().path().starts_with("/mcp") {
                "/mcp".to_owned()
            } else {
                "other".to_owned()
            }
        });
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    app.metrics
        .http
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    tracing::trace!(route = %route, took = ?started.elapsed(), "http request");
    response
}
