//! The distributed shape as separate processes: gateway and worker binaries on a private
//! namespace of the machine's RabbitMQ (or a private RabbitMQ node), with helpers to kill,
//! signal and inspect them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::gateway::temp_dir;
use super::{deno_path, within, workspace_binary};

/// How long a started binary has to log that it is ready.
const READY_SECS: u64 = 60;

/// The machine's RabbitMQ; `TOOLSMITH_TEST_AMQP` overrides it.
pub fn amqp_url() -> String {
    std::env::var("TOOLSMITH_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A private exchange-and-queue namespace, deleted when dropped.
pub struct Namespace {
    pub name: String,
    pub url: String,
}

impl Namespace {
    pub async fn new(url: &str) -> Self {
        let name = format!(
            "tstest-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        // Fail loudly, up front, when the broker is missing.
        lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "RabbitMQ is needed at {url} for this test and is not reachable: {error}. \
                     Start it with: rabbitmq-server -detached"
                )
            });
        Self {
            name,
            url: url.to_owned(),
        }
    }

    /// Messages waiting in one of this namespace's queues (`jobs`, `dead`, `dead.parked`).
    pub async fn depth(&self, queue: &str) -> u32 {
        let connection =
            lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default())
                .await
                .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                format!("{}.{queue}", self.name).into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("the queue exists");
        declared.message_count()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.url.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let connection =
                    lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                        .await
                        .ok()?;
                let channel = connection.create_channel().await.ok()?;
                for queue in ["jobs", "dead", "dead.parked"] {
                    let _ = channel
                        .queue_delete(format!("{name}.{queue}").into(), Default::default())
                        .await;
                }
                for exchange in ["dlx", "changes"] {
                    let _ = channel
                        .exchange_delete(format!("{name}.{exchange}").into(), Default::default())
                        .await;
                }
                Some(())
            })
        })
        .join();
    }
}

/// A child process whose stderr (JSON logs) is kept, printed if the test fails.
pub struct Proc {
    pub name: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    pub addr: String,
    /// Private directory; the sandbox lives in `dir/sandbox`.
    pub dir: PathBuf,
}

impl Proc {
    async fn spawn(name: &str, command: Command, ready_message: &str) -> Self {
        Self::spawn_owned(name, command, ready_message, None, READY_SECS).await
    }

    /// Spawns with the private directory owned by `owner` (for a process that runs as
    /// another user), and waits up to `ready_secs` for `ready_message`.
    async fn spawn_owned(
        name: &str,
        mut command: Command,
        ready_message: &str,
        owner: Option<u32>,
        ready_secs: u64,
    ) -> Self {
        let dir = temp_dir("toolsmith-test-proc");
        if let Some(uid) = owner {
            chown(&dir, uid);
        }
        command
            .env("TOOLSMITH_DENO", deno_path())
            .env("TOOLSMITH_SANDBOX_DIR", dir.join("sandbox"))
            .env("TOOLSMITH_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if !command
            .as_std()
            .get_envs()
            .any(|(key, _)| key == "RUST_LOG")
        {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, mut addr_rx) = watch::channel(None::<String>);
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let ready_message = ready_message.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line)
                    && entry["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(&ready_message))
                    && let Some(addr) = entry["fields"]["addr"].as_str()
                {
                    addr_tx.send_replace(Some(addr.to_owned()));
                }
                let mut logs = sink.lock().unwrap();
                if logs.len() < 20_000 {
                    logs.push(line);
                }
            }
        });
        let addr = match within(ready_secs, addr_rx.wait_for(Option::is_some)).await {
            Ok(addr) => addr.clone().unwrap(),
            Err(_) => {
                // Let the reader take the last lines before showing them.
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!(
                    "{name} exited before it was ready:\n{}",
                    logs.lock().unwrap().join("\n")
                )
            }
        };
        Self {
            name: name.to_owned(),
            child,
            logs,
            addr,
            dir,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id().expect("the process is running")).unwrap()
    }

    /// `kill -9`.
    pub async fn kill9(&mut self) {
        self.child.kill().await.expect("kill -9");
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal the process");
    }

    /// Waits for the process to exit; true when it exited successfully.
    pub async fn wait_exit(&mut self, secs: u64) -> bool {
        within(secs, self.child.wait())
            .await
            .expect("wait")
            .success()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Log lines whose message contains `text`.
    pub fn logs_with(&self, text: &str) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(text))
            .cloned()
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- logs of {} ----", self.name);
            for line in self.logs.lock().unwrap().iter().rev().take(200).rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A gateway binary in distributed mode.
pub async fn gateway(database_url: &str, namespace: &Namespace, extra: &[&str]) -> Proc {
    gateway_with(database_url, namespace, extra, &[]).await
}

/// A gateway binary in distributed mode, with extra environment.
pub async fn gateway_with(
    database_url: &str,
    namespace: &Namespace,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let mut command = Command::new(workspace_binary("gateway"));
    command
        .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
        .args([
            "--amqp-url",
            &namespace.url,
            "--amqp-namespace",
            &namespace.name,
        ])
        .args(extra)
        .envs(env.iter().copied());
    Proc::spawn("gateway", command, "serving MCP at").await
}

/// A gateway binary in embedded mode (SQLite registry, in-process workers) with extra
/// environment, e.g. a canary value a tool must never see.
pub async fn embedded_gateway(env: &[(&str, &str)]) -> Proc {
    let db = temp_dir("toolsmith-test-db").join("registry.db");
    embedded_gateway_with(&format!("sqlite://{}", db.display()), &[], env).await
}

/// A gateway binary in embedded mode on `database_url`, with extra flags and environment.
pub async fn embedded_gateway_with(
    database_url: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let mut command = Command::new(workspace_binary("gateway"));
    command
        .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
        .args(extra)
        .envs(env.iter().copied());
    Proc::spawn("gateway", command, "serving MCP at").await
}

/// A gateway binary in embedded mode listening on `listen` (to restart one on the same
/// address).
pub async fn embedded_gateway_at(database_url: &str, listen: &str, extra: &[&str]) -> Proc {
    let mut command = Command::new(workspace_binary("gateway"));
    command
        .args(["--listen", listen, "--database-url", database_url])
        .args(extra);
    Proc::spawn("gateway", command, "serving MCP at").await
}

/// The README's first command, `./scripts/serve`, run in `cwd` the way a newcomer runs it:
/// it installs Deno if missing, builds the release gateway and starts it with defaults
/// (only the port is chosen here, so tests do not collide on 8080).
pub async fn quickstart(cwd: &std::path::Path) -> Proc {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/serve");
    let mut command = Command::new(script);
    command.current_dir(cwd).args(["--listen", "127.0.0.1:0"]);
    // What `cargo test` adds to this process's environment would make the script's cargo
    // rebuild everything (build scripts watch LD_LIBRARY_PATH and the CARGO_* variables);
    // a newcomer's shell has none of it.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key == "LD_LIBRARY_PATH"
            || key.starts_with("RUST_RECURSION")
        {
            command.env_remove(key.as_ref());
        }
    }
    // A release build from scratch takes minutes (./scripts/test builds it beforehand).
    Proc::spawn_owned("scripts/serve", command, "serving MCP at", None, 1200).await
}

/// A gateway binary in embedded mode running as the unprivileged user `uid`, the way the
/// container images run (no root, so no privilege drop and no cgroups of its own).
pub async fn embedded_gateway_as(uid: u32, env: &[(&str, &str)]) -> Proc {
    let dir = temp_dir("toolsmith-test-db");
    chown(&dir, uid);
    let db = dir.join("registry.db");
    let mut command = Command::new("setpriv");
    command
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
            "--".to_owned(),
        ])
        .arg(workspace_binary("gateway"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .envs(env.iter().copied());
    Proc::spawn_owned("gateway", command, "serving MCP at", Some(uid), READY_SECS).await
}

fn chown(path: &std::path::Path, uid: u32) {
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .expect("chown (the tests run as root)");
}

/// Runs `gateway ARGS…` (an admin command) to completion: exit success, stdout, stderr.
pub async fn admin(
    database_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut command = Command::new(workspace_binary("gateway"));
    command
        .args(args)
        .args(["--database-url", database_url])
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run the gateway CLI");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let output = within(60, child.wait_with_output()).await.unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Creates a tenant with the CLI and returns its first API key: the last token of the last
/// line it prints.
pub async fn create_tenant(database_url: &str, name: &str) -> String {
    let (ok, stdout, stderr) = admin(database_url, &["tenant", "create", name], &[], None).await;
    assert!(ok, "tenant create failed: {stdout}{stderr}");
    stdout
        .lines()
        .last()
        .and_then(|line| line.split_whitespace().last())
        .expect("the key is the last token of the last line")
        .to_owned()
}

/// A worker binary.
pub async fn worker(namespace: &Namespace, extra: &[&str]) -> Proc {
    worker_with(namespace, extra, &[]).await
}

/// A worker binary with extra environment.
pub async fn worker_with(namespace: &Namespace, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut command = Command::new(workspace_binary("worker"));
    command
        .args([
            "--amqp-url",
            &namespace.url,
            "--amqp-namespace",
            &namespace.name,
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .envs(env.iter().copied());
    let proc = Proc::spawn("worker", command, "serving /metrics").await;
    wait_ready(&proc.addr, "consuming").await;
    proc
}

/// Waits until `http://addr/readyz` answers 200 with a body containing `expect`.
pub async fn wait_ready(addr: &str, expect: &str) {
    let url = format!("http://{addr}/readyz");
    within(30, async {
        loop {
            if let Ok(response) = reqwest::get(&url).await
                && response.status().is_success()
                && response.text().await.unwrap_or_default().contains(expect)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// Process ids of `deno` processes whose parent is `parent`.
pub fn deno_children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // comm may hold spaces; the fields after its closing parenthesis are fixed.
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm_is_deno = head.ends_with("(deno");
            let ppid = tail
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok());
            comm_is_deno && ppid == Some(parent)
        })
        .collect()
}

/// A RabbitMQ node of this test's own, so it can be restarted without touching the
/// machine's broker. Needs root (rabbitmq-server switches to the rabbitmq user).
pub struct PrivateBroker {
    pub node: String,
    pub url: String,
    dir: PathBuf,
}

impl PrivateBroker {
    pub async fn start() -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let node = format!("tstest{id}@localhost");
        let port = free_port();
        let dist_port = free_port();
        let dir = std::env::temp_dir().join(format!("toolsmith-test-rabbit-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("chown")
            .args(["rabbitmq:rabbitmq", dir.to_str().unwrap()])
            .status()
            .expect("chown");
        assert!(
            status.success(),
            "cannot hand {} to the rabbitmq user",
            dir.display()
        );
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("none"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
            .status()
            .await
            .expect("rabbitmq-server is installed");
        assert!(started.success(), "rabbitmq-server -detached failed");
        let broker = Self {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            node,
            dir,
        };
        let pid_file = broker.dir.join("pid");
        broker
            .ctl(&["wait", "--timeout", "90", pid_file.to_str().unwrap()])
            .await;
        broker
    }

    pub async fn ctl(&self, args: &[&str]) {
        let output = within(
            120,
            Command::new("rabbitmqctl")
                .arg("-n")
                .arg(&self.node)
                .args(args)
                .output(),
        )
        .await
        .expect("rabbitmqctl runs");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-n", &self.node, "shutdown"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
