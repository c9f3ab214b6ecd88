//! Observability end to end: Prometheus metrics scraped from a real gateway and worker,
//! and one OpenTelemetry trace across the queue, received by an OTLP endpoint in the test.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::json;
use support::cluster::{Namespace, amqp_url, gateway, gateway_with, worker, worker_with};
use support::gateway::{call, connect_legacy, error, ok};
use support::mysql::TestDatabase;
use support::within;

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (key, value) = pair.split_once("=\"")?;
                    Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The value of the one series of `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one series {name}{labels:?}, found {found:?}"
    );
    found[0].value
}

async fn scrape(url: String) -> Vec<Sample> {
    let response = reqwest::get(&url).await.expect("scrape");
    assert!(response.status().is_success());
    parse(&response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_show_each_tools_latency_and_failures_by_kind() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let gw = gateway(&database.url, &namespace, &[]).await;
    let wk = worker(&namespace, &["--concurrency", "2"]).await;
    let (client, _) = connect_legacy(&format!("http://{}/mcp", gw.addr)).await;
    for (name, code, timeout) in [
        ("good", "return { fine: true };", 5_000),
        ("bad", "throw new Error('nope');", 5_000),
        ("slow", "while (true) {}", 300),
    ] {
        ok(&call(&client, "create_tool", json!({"name": name, "description": "metrics case", "code": code, "timeout_ms": timeout})).await);
    }
    ok(&call(&client, "good", json!({})).await);
    ok(&call(&client, "good", json!({})).await);
    error(&call(&client, "bad", json!({})).await, "runtime_error");
    error(&call(&client, "slow", json!({})).await, "timeout");
    error(&call(&client, "missing", json!({})).await, "not_found");

    let g = scrape(format!("http://{}/metrics", gw.addr)).await;
    let good = [("tenant", "default"), ("tool", "good")];
    assert_eq!(
        value(&g, "toolsmith_run_duration_seconds_count", &good),
        2.0
    );
    assert_eq!(
        value(
            &g,
            "toolsmith_run_duration_seconds_bucket",
            &[("tool", "good"), ("le", "+Inf")]
        ),
        2.0
    );
    assert!(value(&g, "toolsmith_run_duration_seconds_sum", &good) > 0.0);
    assert_eq!(
        value(
            &g,
            "toolsmith_runs_total",
            &[("tool", "good"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &g,
            "toolsmith_runs_total",
            &[("tool", "bad"), ("outcome", "runtime_error")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &g,
            "toolsmith_runs_total",
            &[("tool", "slow"), ("outcome", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &g,
            "toolsmith_runs_total",
            &[("tool", "missing"), ("outcome", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &g,
            "toolsmith_mcp_requests_total",
            &[("method", "tools/call"), ("status", "tool_error")]
        ),
        3.0
    );
    assert!(
        value(
            &g,
            "toolsmith_registry_cache_requests_total",
            &[("result", "hit")]
        ) >= 1.0
    );
    assert!(
        value(
            &g,
            "toolsmith_registry_cache_requests_total",
            &[("result", "miss")]
        ) >= 3.0
    );
    assert_eq!(value(&g, "toolsmith_runs_in_flight", &[]), 0.0);
    assert!(
        value(
            &g,
            "toolsmith_http_requests_total",
            &[("route", "/mcp"), ("method", "POST"), ("status", "200")]
        ) >= 5.0
    );
    assert!(value(&g, "process_resident_memory_bytes", &[]) > 0.0);

    let w = scrape(format!("http://{}/metrics", wk.addr)).await;
    assert_eq!(
        value(&w, "toolsmith_worker_execution_seconds_count", &good),
        2.0
    );
    assert_eq!(
        value(
            &w,
            "toolsmith_worker_execution_seconds_bucket",
            &[("tool", "good"), ("le", "+Inf")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &w,
            "toolsmith_worker_runs_total",
            &[("tool", "bad"), ("outcome", "runtime_error")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &w,
            "toolsmith_worker_runs_total",
            &[("tool", "slow"), ("outcome", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        value(&w, "toolsmith_worker_queue_wait_seconds_count", &[]),
        4.0
    );
    // The second run of "good" reused its warm process; the others got a pre-started or a
    // freshly started one.
    assert_eq!(
        value(&w, "toolsmith_worker_run_paths_total", &[("path", "warm")]),
        1.0
    );
    let fresh: f64 = w
        .iter()
        .filter(|s| s.name == "toolsmith_worker_run_paths_total" && s.labels["path"] != "warm")
        .map(|s| s.value)
        .sum();
    assert_eq!(fresh, 3.0);
    assert_eq!(value(&w, "toolsmith_worker_concurrency", &[]), 2.0);
    assert_eq!(value(&w, "toolsmith_worker_runs_in_flight", &[]), 0.0);
    assert_eq!(value(&w, "toolsmith_worker_redeliveries_total", &[]), 0.0);

    // Every metric the dashboard and the alert rules use is one these processes export
    // (dead letters appear once there is one, so that family is named here).
    let mut exported: std::collections::HashSet<String> =
        g.iter().chain(w.iter()).map(|s| s.name.clone()).collect();
    exported.insert("toolsmith_dead_letters_total".into());
    for file in [
        "deploy/grafana/toolsmith.json",
        "deploy/prometheus/toolsmith-rules.yml",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for (at, _) in text.match_indices("toolsmith_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which nothing exports"
            );
        }
    }

    // Queue depth and consumers are sampled every 5 s by the gateway.
    within(15, async {
        loop {
            let g = scrape(format!("http://{}/metrics", gw.addr)).await;
            if value(&g, "toolsmith_queue_consumers", &[]) == 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
}

/// Spans received by the test's OTLP endpoint: (service, trace id, span name).
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

async fn otlp_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for resource_spans in request.resource_spans {
                    let service = resource_spans
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource_spans.scope_spans {
                        for span in scope.spans {
                            let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                            sink.lock().unwrap().push((service.clone(), trace, span.name));
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

#[tokio::test]
async fn one_run_is_one_trace_across_gateway_queue_and_worker() {
    let (endpoint, received) = otlp_receiver().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let gw = gateway_with(&database.url, &namespace, &[], &otel).await;
    let wk = worker_with(&namespace, &[], &otel).await;
    let (client, _) = connect_legacy(&format!("http://{}/mcp", gw.addr)).await;
    ok(&call(
        &client,
        "create_tool",
        json!({"name": "traced", "description": "Traced.", "code": "return { traced: true };"}),
    )
    .await);
    ok(&call(&client, "traced", json!({})).await);

    let trace = within(30, async {
        loop {
            let spans = received.lock().unwrap().clone();
            let worker_traces: Vec<&String> = spans
                .iter()
                .filter(|(service, _, name)| service == "toolsmith-worker" && name == "job")
                .map(|(_, trace, _)| trace)
                .collect();
            for trace in worker_traces {
                let names: Vec<(&str, &str)> = spans
                    .iter()
                    .filter(|(_, t, _)| t == trace)
                    .map(|(s, _, n)| (s.as_str(), n.as_str()))
                    .collect();
                let wanted = [
                    ("toolsmith-gateway", "mcp.tools/call"),
                    ("toolsmith-gateway", "run"),
                    ("toolsmith-gateway", "registry.lookup"),
                    ("toolsmith-gateway", "queue.run"),
                    ("toolsmith-worker", "job"),
                    ("toolsmith-worker", "sandbox.run"),
                    ("toolsmith-worker", "result.publish"),
                ];
                if wanted.iter().all(|w| names.contains(w)) {
                    return trace.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    // Log lines about the run carry the same trace id on both sides.
    let worker_line = wk
        .logs_with("run finished")
        .pop()
        .expect("the worker logged the run");
    assert!(worker_line.contains(&trace), "{worker_line}");
    assert!(worker_line.contains("\"job_id\""), "{worker_line}");
    assert!(
        worker_line.contains("\"tenant\":\"default\""),
        "{worker_line}"
    );
    assert!(worker_line.contains("\"tool\":\"traced\""), "{worker_line}");
}

/// In a hosted deployment tenants reach the main address; `--metrics-listen` moves
/// `/metrics` (which names tenants and tools) to an address only operators reach.
#[tokio::test]
async fn metrics_move_to_their_own_address_when_asked() {
    let gateway = support::cluster::embedded_gateway_with(
        &format!(
            "sqlite://{}",
            support::gateway::temp_dir("toolsmith-test-db")
                .join("registry.db")
                .display()
        ),
        &["--metrics-listen", "127.0.0.1:0"],
        &[],
    )
    .await;
    let line = gateway
        .logs_with("serving /metrics at")
        .pop()
        .expect("the gateway names its metrics address");
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    let admin = entry["fields"]["addr"].as_str().unwrap().to_owned();

    let main = reqwest::get(format!("http://{}/metrics", gateway.addr))
        .await
        .unwrap();
    assert_eq!(
        main.status(),
        404,
        "the main address must not serve /metrics"
    );
    let scraped = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("toolsmith_"));
    for probe in ["healthz", "readyz"] {
        for addr in [&gateway.addr, &admin] {
            let response = reqwest::get(format!("http://{addr}/{probe}"))
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "/{probe} on {addr}");
        }
    }
}
