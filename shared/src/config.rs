//! Configuration pieces both binaries share, as clap argument groups with `TOOLSMITH_*`
//! environment twins. Each binary flattens the groups it needs into its one `Config`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::protocol::Limits;

/// Where and how tool code runs.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Path of the deno binary.
    #[arg(long, env = "TOOLSMITH_DENO", default_value = "deno")]
    pub deno: PathBuf,

    /// Private directory for the sandbox's runner and Deno's module cache (a fresh temporary
    /// directory when unset).
    #[arg(long, env = "TOOLSMITH_SANDBOX_DIR")]
    pub sandbox_dir: Option<PathBuf>,

    /// Runs at once in this process (the number of cores when unset).
    #[arg(long, env = "TOOLSMITH_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Memory one run may use, in MiB.
    #[arg(long, env = "TOOLSMITH_MEMORY_MB", default_value_t = 256)]
    pub memory_mb: u64,

    /// Bytes one run may return (value plus console output).
    #[arg(long, env = "TOOLSMITH_OUTPUT_BYTES", default_value_t = 1 << 20)]
    pub output_bytes: u64,

    /// Processes and threads one run may have (enforced with a pids cgroup).
    #[arg(long, env = "TOOLSMITH_MAX_TASKS", default_value_t = 128)]
    pub max_tasks: u64,

    /// Where no pids cgroup is available: the cap on processes and threads of the user id
    /// Deno runs as (RLIMIT_NPROC). The kernel counts every process of that uid on the host
    /// (in containers without a user namespace, across the node), so size it for all the
    /// sandboxes sharing the uid; 0 leaves it unset.
    #[arg(long, env = "TOOLSMITH_MAX_USER_TASKS", default_value_t = 512)]
    pub max_user_tasks: u64,

    /// Per-run cgroups for memory and process limits: `auto` uses them where this process
    /// may create them, `off` relies on the memory watchdog and rlimits alone.
    #[arg(long, env = "TOOLSMITH_CGROUPS", value_enum, default_value_t = CgroupMode::Auto)]
    pub cgroups: CgroupMode,

    /// Runs one warm process serves before it is recycled; 0 turns warm execution off
    /// (a fresh process for every run).
    #[arg(long, env = "TOOLSMITH_WARM_RUNS", default_value_t = 10_000)]
    pub warm_runs: u32,

    /// Seconds an unused warm process is kept.
    #[arg(long, env = "TOOLSMITH_WARM_IDLE_SECS", default_value_t = 60)]
    pub warm_idle_secs: u64,

    /// Most unused warm processes kept at once (default: twice the concurrency).
    #[arg(long, env = "TOOLSMITH_WARM_PROCESSES")]
    pub warm_processes: Option<usize>,

    /// Blank Deno processes kept started to hide start-up time (default: the concurrency).
    #[arg(long, env = "TOOLSMITH_PRESTART")]
    pub prestart: Option<usize>,

    /// User (and group) id Deno runs as when the worker runs as root.
    #[arg(long, env = "TOOLSMITH_SANDBOX_UID", default_value_t = 65534)]
    pub sandbox_uid: u32,

    /// More IPv4 addresses or CIDR ranges no tool may reach, besides the built-in private,
    /// loopback, link-local and metadata ranges and this host's own addresses.
    #[arg(long, env = "TOOLSMITH_DENY_NET", value_delimiter = ',')]
    pub deny_net: Vec<String>,
}

/// Whether to use cgroups for run limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupMode {
    Auto,
    Off,
}

impl SandboxArgs {
    /// Concurrency, defaulting to the number of cores.
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2)
        })
    }
}

/// Run time limits a tool may ask for.
#[derive(Debug, Clone, Args)]
pub struct TimeoutArgs {
    /// Wall-clock limit of a run when the tool sets none, in milliseconds.
    #[arg(long, env = "TOOLSMITH_DEFAULT_TIMEOUT_MS", default_value_t = 10_000)]
    pub default_timeout_ms: u64,

    /// Largest wall-clock limit a tool may set, in milliseconds.
    #[arg(long, env = "TOOLSMITH_MAX_TIMEOUT_MS", default_value_t = 60_000)]
    pub max_timeout_ms: u64,
}

impl TimeoutArgs {
    pub fn max_timeout(&self) -> Duration {
        Duration::from_millis(self.max_timeout_ms)
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON lines, for log collectors in clusters.
    Json,
    /// Readable lines, for a terminal.
    Text,
}

/// Logging, tracing and metrics labels.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log format. Filter with RUST_LOG (default `info`).
    #[arg(long, env = "TOOLSMITH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// OTLP collector for traces (the standard variable); unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", hide = true)]
    pub otlp_endpoint: Option<String>,

    /// Trace-specific OTLP endpoint (the standard variable).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", hide = true)]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP protocol: `http/protobuf` or `grpc` (the standard variable).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::HttpProtobuf, hide = true)]
    pub otlp_protocol: OtlpProtocol,

    /// `service.name` of exported traces (the standard variable); defaults to
    /// toolsmith-gateway or toolsmith-worker.
    #[arg(long, env = "OTEL_SERVICE_NAME", hide = true)]
    pub service_name: Option<String>,

    /// Distinct (tenant, tool) pairs that get their own metric labels; later ones are
    /// counted under tenant="_other", tool="_other".
    #[arg(long, env = "TOOLSMITH_METRICS_MAX_TOOLS", default_value_t = 200)]
    pub metrics_max_tools: usize,
}

/// OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    #[value(name = "grpc")]
    Grpc,
}

/// Builds the limits of one run from a tool's timeout and the sandbox settings.
pub fn run_limits(timeout_ms: u64, sandbox: &SandboxArgs) -> Limits {
    Limits {
        timeout_ms,
        memory_mb: sandbox.memory_mb,
        output_bytes: sandbox.output_bytes,
    }
}
