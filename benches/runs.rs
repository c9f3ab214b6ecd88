//! Toolsmith against the reference design, measured in one run on one machine.
//!
//! (a) spawn-per-run: a fresh `deno run` per call, with the sandbox's permission flags;
//! (b) Toolsmith embedded: the release gateway over HTTP MCP (warm execution);
//! (c) Toolsmith distributed: release gateway + worker + RabbitMQ (+ MariaDB registry).
//!
//! For each: p50 and p99 at concurrency 1, throughput at saturation, and the RSS of the
//! gateway and worker idle and under load; then the ratios against (a).
//!
//! Run with `./scripts/bench` (it builds the release binaries and installs Deno).
//! Knobs: BENCH_SECONDS (saturation time per scenario, default 10), BENCH_SEQUENTIAL
//! (sequential calls, default 1000), BENCH_CLIENTS (concurrent callers, default 32),
//! BENCH_PROTOCOL (`2025-11-25`, default, or `2026-07-28`), BENCH_EMBEDDED_CONCURRENCY
//! (the embedded gateway's `--concurrency`, default the number of cores).
//!
//! `cargo test --all-targets` (the test suite) runs this file without `--bench`: it then
//! does a smoke run of every scenario against the debug binaries with a handful of calls,
//! so the benchmark is known to work; its figures mean nothing and say so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

type Client = RunningService<RoleClient, ClientConfig>;

/// Runs a worker executes at once in (c): tools mostly wait on the network, so workers run
/// more of them than they have cores (the Kubernetes overlays use the same).
const WORKER_CONCURRENCY: usize = 8;
const TOOL_CODE: &str = "return { sum: context.a + context.b };";
const DENY_NET: &str =
    "0.0.0.0/8,10.0.0.0/8,100.64.0.0/10,127.0.0.0/8,169.254.0.0/16,172.16.0.0/12,192.168.0.0/16";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deno() -> PathBuf {
    std::env::var_os("TOOLSMITH_DENO")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".toolsmith/venv/bin/deno"))
}

/// `cargo bench` passes `--bench`; `cargo test` runs the same binary without it.
fn smoke() -> bool {
    !std::env::args().any(|arg| arg == "--bench")
}

/// The release binary under `cargo bench`, the debug one in a smoke run.
fn binary_path(name: &str) -> PathBuf {
    let (profile, build) = if smoke() {
        ("debug", "cargo build --workspace --bins")
    } else {
        ("release", "./scripts/bench")
    };
    let path = root().join("target").join(profile).join(name);
    assert!(path.exists(), "{} is missing: run {build}", path.display());
    path
}

/// Latency and throughput of one scenario.
#[derive(Debug, Default, Clone)]
struct Report {
    name: &'static str,
    p50: Duration,
    p99: Duration,
    throughput: f64,
    gateway_rss: Option<(u64, u64)>,
    worker_rss: Option<(u64, u64)>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Samples the RSS of `pids` until `stop`, returning the maximum of each.
fn sample_rss(pids: Vec<u32>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut max = vec![0; pids.len()];
        while !stop.load(Ordering::Relaxed) {
            for (i, pid) in pids.iter().enumerate() {
                max[i] = max[i].max(rss(*pid));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        max
    })
}

// ---- (a) spawn-per-run ------------------------------------------------------------------

async fn spawn_once(deno: &Path, script: &Path) -> Duration {
    let started = Instant::now();
    let output = Command::new(deno)
        .args([
            "run",
            "--quiet",
            "--no-prompt",
            "--no-config",
            "--no-lock",
            "--deny-read",
            "--deny-write",
            "--deny-run",
            "--deny-ffi",
            "--deny-env",
            "--deny-sys",
            "--allow-net",
        ])
        .arg(format!("--deny-net={DENY_NET}"))
        .arg(format!(
            "--location=https://run-{}.bench.invalid/",
            uuid::Uuid::new_v4().simple()
        ))
        .arg("--v8-flags=--max-old-space-size=192")
        .arg(script)
        .arg(r#"{"a":2,"b":3}"#)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("deno runs");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#"{"sum":5}"#
    );
    started.elapsed()
}

async fn spawn_per_run(sequential: usize, seconds: u64, clients: usize) -> Report {
    let dir = std::env::temp_dir().join(format!("toolsmith-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("tool.js");
    std::fs::write(
        &script,
        "const context = JSON.parse(Deno.args[0]);\nconst run = async (context) => ({ sum: context.a + context.b });\nconsole.log(JSON.stringify(await run(context)));\n",
    )
    .unwrap();
    let deno = deno();
    for _ in 0..5 {
        spawn_once(&deno, &script).await;
    }
    let mut samples = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        samples.push(spawn_once(&deno, &script).await);
    }
    samples.sort();
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (deno, script, done) = (deno.clone(), script.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    spawn_once(&deno, &script).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    for worker in workers {
        worker.await.unwrap();
    }
    let throughput = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(dir);
    Report {
        name: "(a) spawn per run",
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        throughput,
        ..Report::default()
    }
}

// ---- Toolsmith ---------------------------------------------------------------------------

struct Process {
    child: Child,
    addr: String,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// Starts a gateway or worker binary and waits for the log line that names its address.
async fn start(binary: &str, args: &[String], ready: &str) -> Process {
    let mut child = Command::new(binary_path(binary))
        .args(args)
        .env("TOOLSMITH_DENO", deno())
        .env("TOOLSMITH_LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info,rmcp=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(entry) = serde_json::from_str::<Value>(&line)
                && entry["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(ready))
            {
                return entry["fields"]["addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("{binary} exited before it was ready");
    })
    .await
    .expect("the binary starts");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Process { child, addr }
}

/// The MCP revision the bench client speaks: `2025-11-25` sessions (what most clients use
/// today, the default) or `2026-07-28` stateless requests (BENCH_PROTOCOL).
fn protocol() -> String {
    std::env::var("BENCH_PROTOCOL").unwrap_or_else(|_| "2025-11-25".into())
}

async fn connect(url: &str) -> Client {
    let transport = StreamableHttpClientTransport::from_uri(url.to_owned());
    let config = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("toolsmith-bench", "1"),
    );
    if protocol() == "2025-11-25" {
        config
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
            .serve(transport)
            .await
            .expect("the MCP client connects")
    } else {
        config
            .serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            )
            .await
            .expect("the MCP client discovers the server")
    }
}

async fn call(client: &Client, name: &str, args: Value) -> rmcp::model::CallToolResult {
    let Value::Object(arguments) = args else {
        unreachable!()
    };
    client
        .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(arguments))
        .await
        .expect("tools/call")
}

async fn add(client: &Client) -> Duration {
    let started = Instant::now();
    let result = call(client, "add", json!({"a": 2, "b": 3})).await;
    assert_eq!(
        result.structured_content,
        Some(json!({"sum": 5})),
        "{result:?}"
    );
    started.elapsed()
}

async fn measure_toolsmith(
    name: &'static str,
    url: &str,
    gateway_pid: u32,
    worker_pid: Option<u32>,
    sequential: usize,
    seconds: u64,
    clients: usize,
) -> Report {
    let client = Arc::new(connect(url).await);
    let created = call(&client, "create_tool", json!({
        "name": "add", "description": "Adds a and b.", "code": TOOL_CODE,
        "input_schema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}
    }))
    .await;
    assert_ne!(created.is_error, Some(true), "{created:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_gateway = rss(gateway_pid);
    let idle_worker = worker_pid.map(rss);
    let warmup = if smoke() { 5 } else { 200 };
    for _ in 0..warmup {
        add(&client).await;
    }
    let mut samples = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        samples.push(add(&client).await);
    }
    samples.sort();

    let stop = Arc::new(AtomicBool::new(false));
    let mut pids = vec![gateway_pid];
    pids.extend(worker_pid);
    let sampler = sample_rss(pids, stop.clone());
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let callers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    add(&client).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    for caller in callers {
        caller.await.unwrap();
    }
    let throughput = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let loaded = sampler.await.unwrap();
    Report {
        name,
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        throughput,
        gateway_rss: Some((idle_gateway, loaded[0])),
        worker_rss: idle_worker.map(|idle| (idle, loaded[1])),
    }
}

fn unlimited_quotas() -> Vec<String> {
    [
        "--default-runs-per-minute",
        "1000000000",
        "--default-concurrent-runs",
        "100000",
    ]
    .map(String::from)
    .to_vec()
}

async fn embedded(sequential: usize, seconds: u64, clients: usize) -> Report {
    let db = std::env::temp_dir().join(format!(
        "toolsmith-bench-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let mut args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--database-url".to_owned(),
        format!("sqlite://{}", db.display()),
    ];
    args.extend(unlimited_quotas());
    if let Ok(c) = std::env::var("BENCH_EMBEDDED_CONCURRENCY") {
        args.extend(["--concurrency".to_owned(), c]);
    }
    let gateway = start("gateway", &args, "serving MCP at").await;
    let url = format!("http://{}/mcp", gateway.addr);
    let report = measure_toolsmith(
        "(b) Toolsmith embedded",
        &url,
        gateway.pid(),
        None,
        sequential,
        seconds,
        clients,
    )
    .await;
    drop(gateway);
    let _ = std::fs::remove_file(db);
    report
}

async fn distributed(sequential: usize, seconds: u64, clients: usize) -> Report {
    let namespace = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let amqp = std::env::var("TOOLSMITH_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let mysql = std::env::var("TOOLSMITH_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let database = format!("{mysql}/toolsmith_{namespace}").replace('-', "_");
    let mut args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--database-url".to_owned(),
        database.clone(),
        "--amqp-url".to_owned(),
        amqp.clone(),
        "--amqp-namespace".to_owned(),
        namespace.clone(),
    ];
    args.extend(unlimited_quotas());
    let gateway = start("gateway", &args, "serving MCP at").await;
    let worker_args = [
        "--amqp-url",
        &amqp,
        "--amqp-namespace",
        &namespace,
        "--metrics-listen",
        "127.0.0.1:0",
        "--concurrency",
        &WORKER_CONCURRENCY.to_string(),
    ]
    .map(String::from);
    let worker = start("worker", &worker_args, "serving /metrics").await;
    // Wait for the worker to consume.
    let ready = format!("http://{}/readyz", worker.addr);
    for _ in 0..100 {
        if reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("http://{}/mcp", gateway.addr);
    let report = measure_toolsmith(
        "(c) Toolsmith distributed",
        &url,
        gateway.pid(),
        Some(worker.pid()),
        sequential,
        seconds,
        clients,
    )
    .await;
    drop(worker);
    drop(gateway);
    cleanup_distributed(&amqp, &namespace, &database).await;
    report
}

async fn cleanup_distributed(amqp: &str, namespace: &str, database: &str) {
    if let Ok(connection) =
        lapin::Connection::connect(amqp, lapin::ConnectionProperties::default()).await
        && let Ok(channel) = connection.create_channel().await
    {
        for queue in ["jobs", "dead", "dead.parked"] {
            let _ = channel
                .queue_delete(format!("{namespace}.{queue}").into(), Default::default())
                .await;
        }
        for exchange in ["dlx", "changes"] {
            let _ = channel
                .exchange_delete(format!("{namespace}.{exchange}").into(), Default::default())
                .await;
        }
    }
    sqlx::any::install_default_drivers();
    let (server, name) = database.rsplit_once('/').unwrap();
    if let Ok(mut conn) =
        <sqlx::AnyConnection as sqlx::Connection>::connect(&format!("{server}/test")).await
    {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{name}`"
        )))
        .execute(&mut conn)
        .await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print(reports: &[Report], cores: usize, clients: usize) {
    if smoke() {
        println!("SMOKE RUN (cargo test, debug binaries, a few calls): not a measurement");
    }
    println!();
    println!(
        "Toolsmith run benchmark — {cores} cores, tool `return {{ sum: context.a + context.b }}`"
    );
    println!(
        "MCP {} over HTTP; concurrency 1 for p50/p99; {clients} concurrent callers for throughput; \
         embedded pool = cores, distributed worker --concurrency {WORKER_CONCURRENCY}",
        protocol()
    );
    println!();
    println!(
        "{:<28} {:>11} {:>11} {:>12}   {:<22} {:<22}",
        "scenario", "p50", "p99", "runs/s", "gateway RSS idle/load", "worker RSS idle/load"
    );
    for r in reports {
        let rss = |v: Option<(u64, u64)>| {
            v.map_or_else(
                || "-".to_owned(),
                |(i, l)| format!("{} / {}", mib(i), mib(l)),
            )
        };
        println!(
            "{:<28} {:>11} {:>11} {:>12.0}   {:<22} {:<22}",
            r.name,
            ms(r.p50),
            ms(r.p99),
            r.throughput,
            rss(r.gateway_rss),
            rss(r.worker_rss)
        );
    }
    let baseline = &reports[0];
    println!();
    println!("ratios against {}:", baseline.name);
    for r in &reports[1..] {
        println!(
            "  {:<26} p50 {:>6.1}x better   p99 {:>6.1}x better   throughput {:>6.1}x higher",
            r.name,
            baseline.p50.as_secs_f64() / r.p50.as_secs_f64(),
            baseline.p99.as_secs_f64() / r.p99.as_secs_f64(),
            r.throughput / baseline.throughput
        );
    }
}

fn main() {
    let (sequential, seconds, clients) = if smoke() {
        eprintln!("smoke run (no --bench): debug binaries, a few calls; figures mean nothing");
        (10, 1, 4)
    } else {
        (
            env_number("BENCH_SEQUENTIAL", 1000) as usize,
            env_number("BENCH_SECONDS", 10),
            env_number("BENCH_CLIENTS", 32) as usize,
        )
    };
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        eprintln!("(a) spawn per run…");
        let a = spawn_per_run(sequential.min(200), seconds, cores * 2).await;
        eprintln!("(b) embedded…");
        let b = embedded(sequential, seconds, clients).await;
        eprintln!("(c) distributed…");
        let c = distributed(sequential, seconds, clients).await;
        print(&[a, b, c], cores, clients);
    });
}
