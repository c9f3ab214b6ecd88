//! Logging and tracing, set up once per binary: an `EnvFilter` from `RUST_LOG`, JSON lines
//! in clusters or readable lines locally, always on stderr (stdout may carry MCP); spans
//! go to OpenTelemetry, exported over OTLP when the standard `OTEL_*` variables name a
//! collector. Trace ids exist either way, so log lines about one run share one trace id
//! across the gateway and the worker, and W3C trace context travels with each job.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, OtlpProtocol, TelemetryArgs};

/// Keeps telemetry running; flushes pending spans when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    _logs: tracing_appender::non_blocking::WorkerGuard,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("could not flush traces: {error}");
        }
    }
}

/// Installs the global subscriber and tracer provider. Call once, early in `main`, inside
/// the Tokio runtime (the gRPC exporter needs it).
pub fn init(args: &TelemetryArgs, default_service: &str) -> TelemetryGuard {
    let service = args
        .service_name
        .clone()
        .unwrap_or_else(|| default_service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let mut export_problem = None;
    if args.otlp_endpoint.is_some() || args.otlp_traces_endpoint.is_some() {
        // The exporter reads the endpoint, headers and timeout from the OTEL_* variables.
        let exporter = match args.otlp_protocol {
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build(),
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
        };
        match exporter {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(error) => export_problem = Some(error.to_string()),
        }
    }
    let provider = builder.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));

    // By default the MCP library's per-request spans and chatter stay off: entered on every
    // poll, they would cost the hot path more than they tell. RUST_LOG overrides this.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    // Lines are written by a background thread, in batches: a request never waits on a
    // write to stderr. Nothing is dropped (a full queue makes loggers wait); what is queued
    // is flushed when the guard drops at exit.
    let (stderr, logs) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("toolsmith-logs")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match args.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_writer(stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(stderr))
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("telemetry already initialised: {error}");
    }
    if let Some(problem) = export_problem {
        tracing::error!(error = %problem, "cannot export traces over OTLP");
    }
    TelemetryGuard {
        provider,
        _logs: logs,
    }
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// W3C trace context (`traceparent`, `tracestate`) of `span`, for a job to carry.
pub fn inject(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut carrier = BTreeMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut MapInjector(&mut carrier));
    carrier
}

/// Makes `span` a child of the trace context a job carried.
pub fn adopt(span: &tracing::Span, carrier: &BTreeMap<String, String>) {
    let parent = TraceContextPropagator::new().extract(&MapExtractor(carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` as 32 hex digits (all zeros when tracing is off).
pub fn trace_id(span: &tracing::Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_round_trips_through_a_map() {
        let mut carrier = BTreeMap::new();
        carrier.insert(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        );
        let context = TraceContextPropagator::new().extract(&MapExtractor(&carrier));
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let mut out = BTreeMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut MapInjector(&mut out));
        assert_eq!(out["traceparent"], carrier["traceparent"]);
    }
}
