//! Helpers shared by the end-to-end tests: finding the real Deno, building jobs, starting
//! servers on free ports. Every wait here has a timeout.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shared::code::prepare;
use shared::config::SandboxArgs;
use shared::model::{TenantId, ToolName, code_hash};
use shared::protocol::{Limits, PROTOCOL_VERSION, Permissions, RunJob};
use worker::Sandbox;

/// The Deno binary the tests run: `TOOLSMITH_DENO`, else the one `scripts/test` installs,
/// else `deno` on PATH. Fails loudly when there is none: these tests need a real Deno.
pub fn deno_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TOOLSMITH_DENO") {
        return PathBuf::from(path);
    }
    let installed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".toolsmith/venv/bin/deno");
    if installed.exists() {
        return installed;
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("deno"))
            .find(|candidate| candidate.exists())
    }) {
        return found;
    }
    panic!(
        "no Deno found: run ./scripts/test (it installs Deno from PyPI into .toolsmith/venv) \
         or set TOOLSMITH_DENO"
    );
}

/// Sandbox settings for tests: real Deno, a private directory per test binary, the
/// defaults for everything else.
pub fn sandbox_args() -> SandboxArgs {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        sandbox: SandboxArgs,
    }
    let dir = std::env::temp_dir().join(format!("toolsmith-test-sandbox-{}", std::process::id()));
    let flags = <Flags as clap::Parser>::parse_from([
        "test".into(),
        "--deno".into(),
        deno_path().into_os_string(),
        "--sandbox-dir".into(),
        dir.into_os_string(),
        "--concurrency".into(),
        "4".into(),
    ]);
    flags.sandbox
}

pub async fn sandbox() -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(&sandbox_args())
            .await
            .expect("the sandbox starts with the real Deno"),
    )
}

/// A job running `code` with `params`, for sandbox-level tests.
pub fn job(code: &str, params: Value) -> RunJob {
    job_with(code, params, 5_000, &[])
}

pub fn job_with(code: &str, params: Value, timeout_ms: u64, allowed_hosts: &[&str]) -> RunJob {
    RunJob {
        v: PROTOCOL_VERSION,
        job_id: uuid::Uuid::now_v7().to_string(),
        tenant: TenantId::default_tenant(),
        tool: ToolName::parse("test_tool").unwrap(),
        version: 1,
        code_hash: code_hash(code),
        code: Arc::new(prepare(code).expect("test code parses")),
        params,
        permissions: Permissions {
            allowed_hosts: allowed_hosts.iter().map(|h| (*h).to_owned()).collect(),
        },
        limits: Limits {
            timeout_ms,
            memory_mb: 256,
            output_bytes: 1 << 20,
        },
        isolation: Default::default(),
        secrets: Default::default(),
        deadline_ms: shared::time::now_ms() + i64::try_from(timeout_ms).unwrap() + 30_000,
        enqueued_ms: shared::time::now_ms(),
        trace: Default::default(),
    }
}

/// Waits for `future`, failing the test when it takes longer than `secs`.
pub async fn within<T>(secs: u64, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s"))
}

pub mod gateway {
    //! A real gateway on 127.0.0.1:0 with its own registry, and MCP clients for it.

    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use rmcp::model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
        ProtocolVersion,
    };
    use rmcp::service::{NotificationContext, RunningService};
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
    use serde_json::Value;
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::{sandbox_args, within};

    /// A gateway serving in this process until dropped.
    pub struct TestGateway {
        pub url: String,
        pub base: String,
        pub app: Arc<gateway::App>,
        shutdown: CancellationToken,
        dir: PathBuf,
    }

    impl Drop for TestGateway {
        fn drop(&mut self) {
            self.shutdown.cancel();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A fresh private directory under the system temp dir.
    pub fn temp_dir(prefix: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Starts a gateway in embedded mode. `database_url` defaults to a new SQLite file;
    /// `extra` are more command-line flags.
    pub async fn start(database_url: Option<String>, extra: &[&str]) -> TestGateway {
        let dir = temp_dir("toolsmith-test-gw");
        let database_url = database_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.join("registry.db").display()));
        let mut args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--database-url".to_owned(),
            database_url,
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut config = gateway::Config::from_args(args).expect("test flags parse");
        // The test's Deno and sandbox directory; other sandbox flags come from `extra`.
        let defaults = sandbox_args();
        config.sandbox.deno = defaults.deno;
        config.sandbox.sandbox_dir = defaults.sandbox_dir;
        if config.sandbox.concurrency.is_none() {
            config.sandbox.concurrency = defaults.concurrency;
        }
        let shutdown = CancellationToken::new();
        let started = within(60, gateway::Gateway::start(config, shutdown.clone()))
            .await
            .expect("the gateway starts");
        let app = started.app().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if let Err(error) = started.serve_http(listener).await {
                panic!("gateway stopped with an error: {error}");
            }
        });
        TestGateway {
            url: format!("http://{addr}/mcp"),
            base: format!("http://{addr}"),
            app,
            shutdown,
            dir,
        }
    }

    /// Counts `notifications/tools/list_changed` for a 2025-11-25 session.
    #[derive(Clone, Default)]
    pub struct Watcher {
        changes: Arc<AtomicUsize>,
        wake: Arc<Notify>,
    }

    impl Watcher {
        pub fn changes(&self) -> usize {
            self.changes.load(Ordering::SeqCst)
        }

        /// Waits until more than `seen` changes were announced.
        pub async fn wait_past(&self, seen: usize) {
            within(10, async {
                loop {
                    let woken = self.wake.notified();
                    if self.changes() > seen {
                        return;
                    }
                    woken.await;
                }
            })
            .await;
        }
    }

    impl ClientHandler for Watcher {
        async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
            self.changes.fetch_add(1, Ordering::SeqCst);
            self.wake.notify_waiters();
        }

        fn get_info(&self) -> ClientConfig {
            ClientConfig::new(
                ClientCapabilities::default(),
                Implementation::new("toolsmith-tests", "0"),
            )
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
        }
    }

    pub type LegacyClient = RunningService<RoleClient, Watcher>;
    pub type ModernClient = RunningService<RoleClient, ClientConfig>;

    /// A 2025-11-25 client (initialize handshake, session) over streamable HTTP.
    pub async fn connect_legacy(url: &str) -> (LegacyClient, Watcher) {
        let watcher = Watcher::default();
        let transport = StreamableHttpClientTransport::from_uri(url.to_owned());
        let client = within(10, watcher.clone().serve(transport))
            .await
            .expect("the client initializes");
        (client, watcher)
    }

    /// A 2025-11-25 client that authenticates with an API key.
    pub async fn connect_with_key(url: &str, key: &str) -> (LegacyClient, Watcher) {
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        let watcher = Watcher::default();
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.to_owned())
                .auth_header(key.to_owned()),
        );
        let client = within(10, watcher.clone().serve(transport))
            .await
            .expect("the client initializes with its key");
        (client, watcher)
    }

    /// A 2026-07-28 client (stateless, no handshake) over streamable HTTP.
    pub async fn connect_modern(url: &str) -> ModernClient {
        let transport = StreamableHttpClientTransport::from_uri(url.to_owned());
        within(
            10,
            ClientConfig::default().serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            ),
        )
        .await
        .expect("the client discovers the server")
    }

    /// Calls a tool and returns its result (tool errors included).
    pub async fn call(peer: &rmcp::Peer<RoleClient>, name: &str, args: Value) -> CallToolResult {
        let Value::Object(arguments) = args else {
            panic!("tool arguments must be an object");
        };
        within(
            60,
            peer.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(arguments)),
        )
        .await
        .unwrap_or_else(|error| panic!("tools/call {name} failed at the protocol level: {error}"))
    }

    /// The first text block of a result.
    pub fn text(result: &CallToolResult) -> &str {
        result
            .content
            .first()
            .and_then(|c| c.as_text())
            .map(|t| t.text.as_str())
            .unwrap_or_else(|| panic!("no text content in {result:?}"))
    }

    /// Asserts a successful result and returns its structured content.
    pub fn ok(result: &CallToolResult) -> &Value {
        assert_ne!(
            result.is_error,
            Some(true),
            "expected success, got {result:?}"
        );
        result
            .structured_content
            .as_ref()
            .unwrap_or_else(|| panic!("no structured content in {result:?}"))
    }

    /// Asserts an error result of `kind` and returns its structured content.
    pub fn error<'a>(result: &'a CallToolResult, kind: &str) -> &'a Value {
        assert_eq!(
            result.is_error,
            Some(true),
            "expected {kind}, got {result:?}"
        );
        let body = result
            .structured_content
            .as_ref()
            .unwrap_or_else(|| panic!("no structured content in {result:?}"));
        assert_eq!(body["kind"], kind, "{result:?}");
        assert!(text(result).contains(body["message"].as_str().unwrap()));
        body
    }

    pub const NOTIFICATION_WAIT: Duration = Duration::from_secs(10);
}

pub mod cluster;
pub mod public_host;

pub mod mysql {
    //! A private database on the machine's MariaDB for one test.

    /// Server URL; `TOOLSMITH_TEST_MYSQL` overrides the machine's default.
    pub fn server_url() -> String {
        std::env::var("TOOLSMITH_TEST_MYSQL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
    }

    /// A uniquely named database, dropped when this guard is.
    pub struct TestDatabase {
        pub url: String,
        name: String,
    }

    impl TestDatabase {
        pub async fn create() -> Self {
            let name = format!("toolsmith_test_{}", uuid::Uuid::new_v4().simple());
            let url = format!("{}/{name}", server_url());
            sqlx::any::install_default_drivers();
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&format!("{}/test", server_url()))
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "MariaDB is needed at {} for this test and is not reachable: {error}. \
                         Start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
                        server_url()
                    )
                });
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
                .execute(&mut conn)
                .await
                .expect("create the test database");
            Self { url, name }
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let name = self.name.clone();
            let admin = format!("{}/test", server_url());
            // Drop needs its own runtime: the test's may be shutting down.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
                        .await
                        .map_err(std::io::Error::other)?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS `{name}`"
                    )))
                    .execute(&mut conn)
                    .await
                    .map_err(std::io::Error::other)?;
                    Ok::<_, std::io::Error>(())
                })
            })
            .join();
        }
    }
}

pub mod scenarios {
    //! Whole user journeys, run against more than one setup.

    use serde_json::json;

    use super::gateway::{call, connect_legacy, error, ok, text};
    use super::within;

    /// The self-extension loop an agent goes through, asserted as the agent sees it.
    pub async fn self_extension_loop(url: &str) {
        let (client, watcher) = connect_legacy(url).await;
        let tools = within(10, client.list_all_tools()).await.unwrap();
        let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "list_tools",
                "get_tool",
                "create_tool",
                "update_tool",
                "delete_tool",
                "run_tool"
            ]
        );

        let seen = watcher.changes();
        let created = call(
            &client,
            "create_tool",
            json!({
                "name": "add",
                "description": "Adds two numbers.",
                "code": "return { sum: context.a + context.b };",
                "input_schema": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"]
                }
            }),
        )
        .await;
        assert_eq!(ok(&created)["version"], 1);
        watcher.wait_past(seen).await;

        let tools = within(10, client.list_all_tools()).await.unwrap();
        let add = tools
            .iter()
            .find(|t| t.name == "add")
            .expect("add is listed");
        assert_eq!(add.description.as_deref(), Some("Adds two numbers."));
        assert_eq!(add.input_schema["required"], json!(["a", "b"]));

        let by_run_tool = call(
            &client,
            "run_tool",
            json!({"name": "add", "params": {"a": 2, "b": 3}}),
        )
        .await;
        assert_eq!(ok(&by_run_tool), &json!({"sum": 5}));
        let by_name = call(&client, "add", json!({"a": 2, "b": 3})).await;
        assert_eq!(ok(&by_name), &json!({"sum": 5}));
        assert_eq!(text(&by_name), r#"{"sum":5}"#);

        let ts = "const a: number = context.a;\nconst b: number = context.b;\nreturn { sum: a + b, version: 2 } as const;";
        let updated = call(&client, "update_tool", json!({"name": "add", "code": ts})).await;
        assert_eq!(ok(&updated)["version"], 2);
        let after = call(&client, "add", json!({"a": 10, "b": -4})).await;
        assert_eq!(ok(&after), &json!({"sum": 6, "version": 2}));

        let listed = call(&client, "list_tools", json!({})).await;
        let entry = ok(&listed)["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "add")
            .cloned()
            .expect("list_tools shows add");
        assert_eq!(entry["version"], 2);
        assert_eq!(entry["description"], "Adds two numbers.");
        assert!(entry["updated_at"].as_str().unwrap().ends_with('Z'));

        let got = call(&client, "get_tool", json!({"name": "add"})).await;
        let got = ok(&got);
        assert_eq!(got["code"], ts);
        assert_eq!(got["version"], 2);
        assert_eq!(got["input_schema"]["required"], json!(["a", "b"]));
        assert_eq!(got["timeout_ms"], 10_000);

        let deleted = call(&client, "delete_tool", json!({"name": "add"})).await;
        assert_eq!(ok(&deleted)["deleted"], true);
        error(
            &call(&client, "add", json!({"a": 1, "b": 2})).await,
            "not_found",
        );
        error(
            &call(&client, "run_tool", json!({"name": "add", "params": {}})).await,
            "not_found",
        );
        error(
            &call(&client, "get_tool", json!({"name": "add"})).await,
            "not_found",
        );
        let tools = within(10, client.list_all_tools()).await.unwrap();
        assert!(tools.iter().all(|t| t.name != "add"));
        client.cancel().await.unwrap();
    }
}

/// A binary of this workspace (`cargo build --workspace --bins`, which `./scripts/test` runs
/// first), from the target directory the test binary lives in.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --workspace --bins` (./scripts/test does)",
        path.display()
    );
    path
}

/// The Python with the official MCP SDK: `TOOLSMITH_TEST_PYTHON`, else the venv that
/// `scripts/test` prepares. Fails loudly when neither exists.
pub fn sdk_python() -> PathBuf {
    if let Some(path) = std::env::var_os("TOOLSMITH_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".toolsmith/venv/bin/python");
    assert!(
        venv.exists(),
        "the MCP Python SDK is needed: run ./scripts/test (it installs it into .toolsmith/venv) \
         or set TOOLSMITH_TEST_PYTHON"
    );
    venv
}

pub mod proxy {
    //! A TCP forwarder the test can cut, to take a service away from a running server and
    //! bring it back.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    pub struct Cuttable {
        pub port: u16,
        open: Arc<AtomicBool>,
        connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
        accept: JoinHandle<()>,
    }

    impl Cuttable {
        pub async fn start(target: &str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let open = Arc::new(AtomicBool::new(true));
            let connections = Arc::new(Mutex::new(Vec::new()));
            let target = target.to_owned();
            let accept = tokio::spawn({
                let open = open.clone();
                let connections = connections.clone();
                async move {
                    while let Ok((mut inbound, _)) = listener.accept().await {
                        if !open.load(Ordering::SeqCst) {
                            continue;
                        }
                        let target = target.clone();
                        let task = tokio::spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                        });
                        connections.lock().unwrap().push(task);
                    }
                }
            });
            Self {
                port,
                open,
                connections,
                accept,
            }
        }

        /// Drops every forwarded connection and refuses new ones.
        pub fn cut(&self) {
            self.open.store(false, Ordering::SeqCst);
            for task in self.connections.lock().unwrap().drain(..) {
                task.abort();
            }
        }

        pub fn restore(&self) {
            self.open.store(true, Ordering::SeqCst);
        }
    }

    impl Drop for Cuttable {
        fn drop(&mut self) {
            self.accept.abort();
            self.cut();
        }
    }
}

pub mod balancer {
    //! An HTTP load balancer that sends each request to the next backend in turn (no
    //! affinity of any kind), streaming bodies both ways, so MCP sessions and their SSE
    //! streams land on whichever replica comes next.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::response::Response;
    use futures::TryStreamExt as _;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    struct Backends {
        addrs: Vec<String>,
        next: AtomicUsize,
        served: Vec<AtomicUsize>,
        client: reqwest::Client,
    }

    pub struct RoundRobin {
        pub addr: String,
        backends: Arc<Backends>,
        task: JoinHandle<()>,
    }

    impl RoundRobin {
        pub async fn start(addrs: &[&str]) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let backends = Arc::new(Backends {
                addrs: addrs.iter().map(|a| (*a).to_owned()).collect(),
                next: AtomicUsize::new(0),
                served: addrs.iter().map(|_| AtomicUsize::new(0)).collect(),
                client: reqwest::Client::new(),
            });
            let router = axum::Router::new()
                .fallback(forward)
                .with_state(backends.clone());
            let task = tokio::spawn(async move {
                axum::serve(listener, router).await.unwrap();
            });
            Self {
                addr,
                backends,
                task,
            }
        }

        /// Requests each backend has been sent, in the order given to `start`.
        pub fn served(&self) -> Vec<usize> {
            self.backends
                .served
                .iter()
                .map(|n| n.load(Ordering::SeqCst))
                .collect()
        }
    }

    impl Drop for RoundRobin {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn forward(State(backends): State<Arc<Backends>>, request: Request) -> Response {
        let index = backends.next.fetch_add(1, Ordering::SeqCst) % backends.addrs.len();
        backends.served[index].fetch_add(1, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut outbound = backends.client.request(
            parts.method.clone(),
            format!("http://{}{path}", backends.addrs[index]),
        );
        for (name, value) in &parts.headers {
            if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
                outbound = outbound.header(name, value);
            }
        }
        let body = axum::body::to_bytes(body, 16 << 20).await.unwrap();
        let upstream = match outbound.body(body).send().await {
            Ok(upstream) => upstream,
            Err(error) => {
                return Response::builder()
                    .status(502)
                    .body(Body::from(error.to_string()))
                    .unwrap();
            }
        };
        let mut response = Response::builder().status(upstream.status());
        for (name, value) in upstream.headers() {
            if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
                response = response.header(name, value);
            }
        }
        let stream = upstream.bytes_stream().map_err(std::io::Error::other);
        response.body(Body::from_stream(stream)).unwrap()
    }
}
