//! The sandbox: runs one job's tool code in a Deno subprocess with deny-by-default
//! permissions and hard limits enforced from outside Deno (wall clock, memory, output).

mod cgroup;
mod confine;
mod frames;
mod network;
mod process;
mod warm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use process::{DenoProcess, Launcher, RunLimits, Spec};
use warm::{WarmKey, WarmPool, WarmSettings};

use shared::config::{CgroupMode, SandboxArgs};
use shared::model::Isolation;
use shared::protocol::{ErrorKind, PROTOCOL_VERSION, RunError, RunJob, RunResult};
use shared::time::until;

pub use network::DENIED_NETWORKS;

/// The oldest Deno this sandbox trusts: the pinned release it is tested against. Check
/// <https://github.com/denoland/deno/security/advisories> before moving the pin.
pub const MIN_DENO_VERSION: (u64, u64, u64) = (2, 9, 8);

/// Extra wall-clock time a run gets for Deno itself to start.
const STARTUP_ALLOWANCE: Duration = Duration::from_millis(1000);

const RUNNER_JS: &str = include_str!("runner.js");

/// Why the sandbox could not run a job at all (as opposed to the tool failing).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start deno at {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("deno at {path} is version {found}; Toolsmith needs {}.{}.{} or later", MIN_DENO_VERSION.0, MIN_DENO_VERSION.1, MIN_DENO_VERSION.2)]
    DenoTooOld { path: PathBuf, found: String },
    #[error("cannot read the version of deno at {path}: {detail}")]
    DenoVersion { path: PathBuf, detail: String },
    #[error("cannot prepare the sandbox directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot prepare the sandbox confinement: {0}")]
    Confinement(String),
    #[error("the sandbox process failed before running the tool: {0}")]
    Crashed(String),
    #[error("talking to the sandbox process failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How a run ended, as the worker must act on it. This alone decides ack, retry or
/// dead-letter.
#[derive(Debug)]
pub enum Execution {
    /// The tool returned a value.
    Ok(RunResult),
    /// The tool failed in a way that is its own (error thrown, bad code, denied access,
    /// output too large): retrying would fail the same way.
    ToolError(RunResult),
    /// The run hit its wall-clock limit.
    Timeout(RunResult),
    /// The run hit its memory limit.
    MemoryLimit(RunResult),
    /// The sandbox itself could not run the job; another worker might.
    Infrastructure(SandboxError),
}

impl Execution {
    /// The result to send home, when there is one.
    pub fn result(&self) -> Option<&RunResult> {
        match self {
            Execution::Ok(r)
            | Execution::ToolError(r)
            | Execution::Timeout(r)
            | Execution::MemoryLimit(r) => Some(r),
            Execution::Infrastructure(_) => None,
        }
    }

    fn from_result(result: RunResult) -> Self {
        match result.error_kind() {
            None => Execution::Ok(result),
            Some(ErrorKind::Timeout) => Execution::Timeout(result),
            Some(ErrorKind::MemoryLimit) => Execution::MemoryLimit(result),
            Some(_) => Execution::ToolError(result),
        }
    }
}

/// Runs jobs in Deno subprocesses.
#[derive(Debug)]
pub struct Sandbox {
    launcher: Arc<Launcher>,
    warm: Arc<WarmPool>,
    memory_mb_ceiling: u64,
    output_bytes_ceiling: u64,
    version: String,
    metrics: Option<Arc<crate::metrics::WorkerMetrics>>,
}

impl Sandbox {
    /// Prepares the sandbox directory, checks the Deno binary, sets up confinement and starts
    /// the warm pool.
    pub async fn new(args: &SandboxArgs) -> Result<Self, SandboxError> {
        let dir = match &args.sandbox_dir {
            Some(dir) => dir.clone(),
            None => default_dir(),
        };
        let deno_dir = dir.join("deno-cache");
        let cwd = dir.join("empty");
        for path in [&dir, &deno_dir, &cwd] {
            create_private_dir(path).await?;
        }
        let runner = dir.join(format!(
            "runner-{}.js",
            &shared::model::code_hash(RUNNER_JS)[..12]
        ));
        write_atomically(&runner, RUNNER_JS).await?;
        let version = deno_version(&args.deno).await?;
        let confinement =
            confine::Confinement::new(Some(args.sandbox_uid)).map_err(SandboxError::Confinement)?;
        if let Some(uid) = confinement.sandbox_uid() {
            // Deno runs as the sandbox user: it needs its cache and runner, nothing else.
            hand_over(&dir, uid).map_err(|source| SandboxError::Directory {
                path: dir.clone(),
                source,
            })?;
        }
        let cgroups = match args.cgroups {
            CgroupMode::Auto => cgroup::Cgroups::detect(),
            CgroupMode::Off => cgroup::Cgroups::Unavailable {
                reason: "turned off".into(),
            },
        };
        tracing::info!(
            limits = %cgroups.describe(),
            sandbox_uid = ?confinement.sandbox_uid().map(|u| u.as_raw()),
            "sandbox confinement"
        );
        let mut denied: Vec<String> = network::host_addresses();
        denied.extend(args.deny_net.iter().map(|entry| entry.trim().to_owned()));
        let launcher = Arc::new(Launcher {
            deno: args.deno.clone(),
            runner,
            deno_dir,
            cwd,
            deny_net: network::deny_net_flag(&denied),
            max_tasks: args.max_tasks,
            max_user_tasks: args.max_user_tasks,
            confinement: Arc::new(confinement),
            cgroups,
        });
        let concurrency = args.concurrency();
        let warm = WarmPool::start(
            launcher.clone(),
            WarmSettings {
                max_runs: args.warm_runs,
                idle_ttl: Duration::from_secs(args.warm_idle_secs),
                max_idle: args.warm_processes.unwrap_or(concurrency * 2),
                prestart: args.prestart.unwrap_or(concurrency),
                blank_spec: Spec {
                    allowed_hosts: Vec::new(),
                    memory_bytes: args.memory_mb << 20,
                },
            },
        );
        Ok(Self {
            launcher,
            warm,
            memory_mb_ceiling: args.memory_mb,
            output_bytes_ceiling: args.output_bytes,
            version,
            metrics: None,
        })
    }

    /// Reports Deno start times and run paths to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::WorkerMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The Deno version in use.
    pub fn deno_version(&self) -> &str {
        &self.version
    }

    /// Unused warm processes and pre-started blank processes right now.
    pub fn idle_processes(&self) -> (usize, usize) {
        (self.warm.idle_count(), self.warm.blank_count())
    }

    /// Runs one job to the end. Never panics on tool behaviour; every tool failure is a
    /// result, and only a sandbox that cannot run at all is an `Infrastructure` outcome.
    #[tracing::instrument(name = "sandbox.run", skip_all, fields(path = tracing::field::Empty))]
    pub async fn run(&self, job: &RunJob) -> Execution {
        let started = Instant::now();
        let left = until(job.deadline_ms);
        if left.is_zero() {
            return Execution::Timeout(RunResult::error(
                &job.job_id,
                RunError::new(
                    ErrorKind::Timeout,
                    "the run was not started: its caller's deadline had already passed",
                ),
            ));
        }
        let limits = RunLimits {
            timeout_ms: job.limits.timeout_ms,
            memory_bytes: job.limits.memory_mb.min(self.memory_mb_ceiling) << 20,
            output_bytes: job.limits.output_bytes.min(self.output_bytes_ceiling),
        };
        let deadline =
            started + (Duration::from_millis(job.limits.timeout_ms) + STARTUP_ALLOWANCE).min(left);
        match self.execute(job, &limits, deadline).await {
            Ok(mut result) => {
                result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(0);
                redact(&mut result, &job.secrets);
                Execution::from_result(result)
            }
            Err(error) => Execution::Infrastructure(error),
        }
    }

    async fn execute(
        &self,
        job: &RunJob,
        limits: &RunLimits,
        deadline: Instant,
    ) -> Result<RunResult, SandboxError> {
        let spec = Spec {
            allowed_hosts: job.permissions.allowed_hosts.clone(),
            memory_bytes: limits.memory_bytes,
        };
        let key = (job.isolation == Isolation::Warm && self.warm.warm_enabled())
            .then(|| WarmKey::new(job, &spec));
        if let Some(key) = &key
            && let Some(mut process) = self.warm.take_idle(key)
        {
            self.note_path("warm");
            let result = process.run(job, limits, deadline).await?;
            self.settle(key.clone(), process, &result);
            return Ok(result);
        }
        let mut blank = self.warm.take_blank(&spec);
        loop {
            let (mut process, path) = match blank.take() {
                Some(process) => (process, "blank"),
                None => (DenoProcess::spawn(&self.launcher, &spec)?, "cold"),
            };
            self.note_path(path);
            match process.load(job, limits, deadline).await {
                // A pre-started process that died while waiting: start a fresh one.
                Err(SandboxError::Crashed(reason)) if path == "blank" => {
                    tracing::warn!(reason = %reason, "a pre-started sandbox process was dead");
                    continue;
                }
                Err(error) => return Err(error),
                Ok(Some(failed)) => {
                    warm::discard(process);
                    return Ok(failed);
                }
                Ok(None) => {}
            }
            if path == "cold"
                && let Some(metrics) = &self.metrics
            {
                metrics.deno_started(process.spawned.elapsed());
            }
            let result = process.run(job, limits, deadline).await?;
            match key {
                Some(key) => self.settle(key, process, &result),
                None => warm::discard(process),
            }
            return Ok(result);
        }
    }

    /// Keeps a process for its tool version after a clean run; recycles it otherwise.
    fn settle(&self, key: WarmKey, process: DenoProcess, result: &RunResult) {
        if process.healthy() && result.error_kind().is_none() {
            self.warm.put_idle(key, process);
        } else {
            warm::discard(process);
        }
    }

    fn note_path(&self, path: &'static str) {
        tracing::Span::current().record("path", path);
        if let Some(metrics) = &self.metrics {
            metrics.run_path(path);
        }
    }
}

/// Gives the sandbox directory tree to the sandbox user.
fn hand_over(dir: &Path, uid: nix::unistd::Uid) -> std::io::Result<()> {
    let gid = nix::unistd::Gid::from_raw(uid.as_raw());
    nix::unistd::chown(dir, Some(uid), Some(gid)).map_err(std::io::Error::from)?;
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir)? {
            hand_over(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

fn default_dir() -> PathBuf {
    let uid = nix::unistd::Uid::current();
    std::env::temp_dir().join(format!("toolsmith-sandbox-{uid}"))
}

async fn create_private_dir(path: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let wrap = |source| SandboxError::Directory {
        path: path.to_owned(),
        source,
    };
    tokio::fs::create_dir_all(path).await.map_err(wrap)?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(wrap)
}

async fn write_atomically(path: &Path, contents: &str) -> Result<(), SandboxError> {
    let wrap = |source| SandboxError::Directory {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, contents).await.map_err(wrap)?;
    tokio::fs::rename(&tmp, path).await.map_err(wrap)
}

/// Reads `deno --version` and refuses versions older than [`MIN_DENO_VERSION`].
pub async fn deno_version(deno: &Path) -> Result<String, SandboxError> {
    let output = tokio::process::Command::new(deno)
        .arg("--version")
        .env("NO_COLOR", "1")
        .output()
        .await
        .map_err(|source| SandboxError::Spawn {
            path: deno.to_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let found = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .ok_or_else(|| SandboxError::DenoVersion {
            path: deno.to_owned(),
            detail: format!("unexpected output {text:?}"),
        })?
        .to_owned();
    let parsed = parse_version(&found).ok_or_else(|| SandboxError::DenoVersion {
        path: deno.to_owned(),
        detail: format!("unexpected version {found:?}"),
    })?;
    if parsed < MIN_DENO_VERSION {
        return Err(SandboxError::DenoTooOld {
            path: deno.to_owned(),
            found,
        });
    }
    Ok(found)
}

fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Replaces secret values wherever the run's output would carry them home.
fn redact(result: &mut RunResult, secrets: &shared::secrets::SecretValues) {
    if secrets.is_empty() {
        return;
    }
    match &mut result.outcome {
        shared::protocol::Outcome::Ok { value } => secrets.redact_value(value),
        shared::protocol::Outcome::Error { error } => {
            error.message = secrets.redact_text(&error.message);
        }
    }
    for line in &mut result.logs {
        line.text = secrets.redact_text(&line.text);
    }
}

/// Builds a result for a job from the runner's outcome.
fn result(job_id: &str, outcome: shared::protocol::Outcome) -> RunResult {
    RunResult {
        v: PROTOCOL_VERSION,
        job_id: job_id.to_owned(),
        outcome,
        logs: Vec::new(),
        logs_truncated: false,
        duration_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("2.9.8"), Some((2, 9, 8)));
        assert_eq!(parse_version("2.10.0-rc.1"), Some((2, 10, 0)));
        assert!(parse_version("2.10.0").unwrap() > MIN_DENO_VERSION);
        assert!(parse_version("1.46.3").unwrap() < MIN_DENO_VERSION);
        assert_eq!(parse_version("garbage"), None);
    }
}
