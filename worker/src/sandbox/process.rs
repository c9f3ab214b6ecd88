//! A Deno process running the sandbox runner. It is spawned in its own process group, in
//! its own cgroups, under the confinement of `confine.rs`; loaded with one tool; then run
//! once (strict) or many times (warm). Every exchange with it is bounded: a wall clock, a
//! memory watchdog, a byte cap on what it prints. A process that misbehaves is killed with
//! its whole group and never reused.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::cgroup::{Cgroups, RunCgroup};
use super::confine::{Confinement, Plan};
use super::frames::{self, Frame, FrameKind, FrameReader};
use super::{SandboxError, network, result};
use shared::protocol::{ErrorKind, Outcome, RunError, RunJob, RunResult};

/// How often the memory watchdog samples the process.
const MEMORY_POLL: Duration = Duration::from_millis(20);
/// Bytes of stderr kept for diagnostics.
const STDERR_KEEP: usize = 16 * 1024;

/// Limits for one run, already resolved from the job and the worker's ceilings.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunLimits {
    pub timeout_ms: u64,
    pub memory_bytes: u64,
    pub output_bytes: u64,
}

/// What a process's command line depends on: processes are only shared between runs whose
/// spec is equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Spec {
    pub allowed_hosts: Vec<String>,
    pub memory_bytes: u64,
}

/// Everything needed to start sandbox processes.
#[derive(Debug)]
pub(super) struct Launcher {
    pub deno: PathBuf,
    pub runner: PathBuf,
    pub deno_dir: PathBuf,
    pub cwd: PathBuf,
    pub deny_net: String,
    pub max_tasks: u64,
    pub max_user_tasks: u64,
    pub confinement: Arc<Confinement>,
    pub cgroups: Cgroups,
}

/// Kills the process group when dropped, whatever path the run took.
struct GroupKill(Option<Pid>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // The group may be gone already; that is the goal.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

enum Ending {
    Frame(Frame),
    Eof,
    OutputFlood(u64),
    MemoryExceeded(u64),
    TimedOut,
}

/// One sandbox process.
pub(super) struct DenoProcess {
    child: Child,
    pid: Option<Pid>,
    kill: GroupKill,
    stdin: ChildStdin,
    reader: FrameReader<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
    cgroup: Option<RunCgroup>,
    token: String,
    pub spawned: Instant,
    pub runs: u32,
    healthy: bool,
}

impl DenoProcess {
    /// Starts a process for `spec`; it waits, idle, for a tool to load.
    pub fn spawn(launcher: &Launcher, spec: &Spec) -> Result<Self, SandboxError> {
        let run_id = format!("run-{}", uuid::Uuid::new_v4().simple());
        let mut cgroup = launcher
            .cgroups
            .create(&run_id, spec.memory_bytes, launcher.max_tasks)
            .map_err(|e| {
                SandboxError::Confinement(format!("cannot create the run's cgroup: {e}"))
            })?;
        let plan = Plan {
            confinement: launcher.confinement.clone(),
            cgroup_procs: cgroup
                .as_mut()
                .map(RunCgroup::take_procs)
                .unwrap_or_default(),
            user_tasks: (!launcher.cgroups.limits_tasks() && launcher.max_user_tasks > 0)
                .then_some(launcher.max_user_tasks),
        };
        let mut child = command(launcher, spec, &run_id, plan)
            .spawn()
            .map_err(|source| SandboxError::Spawn {
                path: launcher.deno.clone(),
                source,
            })?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let stdin = child.stdin.take().ok_or_else(closed_pipe)?;
        let stdout = child.stdout.take().ok_or_else(closed_pipe)?;
        let stderr = child.stderr.take().ok_or_else(closed_pipe)?;
        let token = frames::new_token();
        Ok(Self {
            child,
            pid,
            kill: GroupKill(pid),
            stdin,
            reader: FrameReader::new(stdout, token.clone(), 0),
            stderr: Some(tokio::spawn(read_capped(stderr, STDERR_KEEP))),
            cgroup,
            token,
            spawned: Instant::now(),
            runs: 0,
            healthy: true,
        })
    }

    /// False once the process failed in any way; it must then be discarded.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Loads the job's tool. `Ok(None)` when it loaded; `Ok(Some(result))` when loading failed
    /// in a way the agent should see (the process is then unhealthy).
    pub async fn load(
        &mut self,
        job: &RunJob,
        limits: &RunLimits,
        until: Instant,
    ) -> Result<Option<RunResult>, SandboxError> {
        let mut line = serde_json::to_vec(&json!({
            "token": self.token,
            "source": job.code.source,
            "output_bytes": limits.output_bytes,
        }))
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        let ending = self.exchange(line, true, limits, until).await;
        match ending {
            Ending::Frame(frame) if frame.kind == FrameKind::Ready => Ok(None),
            ending => self.conclude(ending, job, limits).await.map(Some),
        }
    }

    /// Runs the loaded tool once with the job's context.
    pub async fn run(
        &mut self,
        job: &RunJob,
        limits: &RunLimits,
        until: Instant,
    ) -> Result<RunResult, SandboxError> {
        let mut line = serde_json::to_vec(&json!({"id": job.job_id, "context": context_of(job)}))
            .map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.runs += 1;
        let ending = self.exchange(line, false, limits, until).await;
        self.conclude(ending, job, limits).await
    }

    /// Kills the process group and reaps it.
    pub async fn discard(mut self) {
        self.terminate().await;
    }

    async fn exchange(
        &mut self,
        line: Vec<u8>,
        until_ready: bool,
        limits: &RunLimits,
        until: Instant,
    ) -> Ending {
        // Frames plus JSON escaping can exceed the output limit itself; past this the
        // process is flooding and is stopped without buffering more.
        self.reader
            .reset(limits.output_bytes.saturating_mul(2) + 256 * 1024);
        let Self {
            stdin, reader, pid, ..
        } = self;
        let write = async {
            // A failed write means the process is gone; the reader sees the end.
            if stdin.write_all(&line).await.is_ok() {
                let _ = stdin.flush().await;
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            biased;
            ending = read_until(reader, until_ready) => ending,
            used = watch_memory(*pid, limits.memory_bytes) => Ending::MemoryExceeded(used),
            () = tokio::time::sleep_until(until.into()) => Ending::TimedOut,
            () = write => Ending::Eof,
        }
    }

    /// Turns how an exchange ended into the run's result; anything but a clean frame ends
    /// the process.
    async fn conclude(
        &mut self,
        ending: Ending,
        job: &RunJob,
        limits: &RunLimits,
    ) -> Result<RunResult, SandboxError> {
        let mut result = match ending {
            Ending::Frame(frame) => {
                let result = frames::into_result(frame, job);
                if result.error_kind().is_some() {
                    self.healthy = false;
                }
                result
            }
            ending => {
                self.healthy = false;
                let (status, stderr) = self.terminate().await;
                if self.cgroup.as_ref().is_some_and(RunCgroup::oom_killed) {
                    return Ok(memory_result(job, limits, None));
                }
                match ending {
                    Ending::TimedOut => error_result(
                        job,
                        ErrorKind::Timeout,
                        format!(
                            "the run took longer than its {} ms limit and was stopped",
                            limits.timeout_ms
                        ),
                    ),
                    Ending::MemoryExceeded(used) => memory_result(job, limits, Some(used)),
                    Ending::OutputFlood(bytes) => error_result(
                        job,
                        ErrorKind::OutputLimit,
                        format!(
                            "the tool wrote more than {bytes} bytes of output; the limit is {}",
                            limits.output_bytes
                        ),
                    ),
                    Ending::Eof | Ending::Frame(_) => {
                        return died_without_result(job, limits, status, &stderr);
                    }
                }
            }
        };
        frames::attach_stray(&mut result, self.reader.take_stray());
        Ok(result)
    }

    /// Kills the group, reaps the process and collects what it wrote to stderr.
    async fn terminate(&mut self) -> (Option<std::process::ExitStatus>, String) {
        drop(std::mem::replace(&mut self.kill, GroupKill(None)));
        let _ = self.child.start_kill();
        let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        let stderr = match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        };
        (status, stderr)
    }
}

fn command(launcher: &Launcher, spec: &Spec, run_id: &str, plan: Plan) -> Command {
    let heap_mb = ((spec.memory_bytes >> 20) * 3 / 4).max(16);
    let mut command = Command::new(&launcher.deno);
    command
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
        ])
        .arg(network::allow_net_flag(&spec.allowed_hosts))
        .arg(&launcher.deny_net)
        // Unique per process, so no web storage is ever shared.
        .arg(format!("--location=https://{run_id}.toolsmith.invalid/"))
        .arg(format!("--v8-flags=--max-old-space-size={heap_mb}"))
        .arg(&launcher.runner)
        .env_clear()
        .env("DENO_DIR", &launcher.deno_dir)
        // Deno resolves a command before checking run permission; with a PATH the tool is
        // told "Requires run access" instead of "not found".
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("NO_COLOR", "1")
        // No WebGPU adapter: GPU drivers are host code outside Deno's permissions.
        .env("DENO_WEBGPU_BACKEND", "none")
        .env("DENO_NO_UPDATE_CHECK", "1")
        .env("DENO_NO_PROMPT", "1")
        .current_dir(&launcher.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "DENO_CERT"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    #[allow(unsafe_code)]
    // SAFETY: `Plan::apply` runs in the forked child before exec and makes only
    // async-signal-safe system calls (write, setgroups/setgid/setuid, prctl, setrlimit,
    // seccomp) on data prepared before the fork: it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || plan.apply());
    }
    command
}

fn context_of(job: &RunJob) -> serde_json::Value {
    let mut context = job.params.clone();
    if !job.secrets.is_empty()
        && let Some(object) = context.as_object_mut()
    {
        object.insert("secrets".into(), json!(job.secrets));
    }
    context
}

async fn read_until<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    until_ready: bool,
) -> Ending {
    loop {
        match reader.next().await {
            Ok(Some(frame)) if frame.kind == FrameKind::Ready && !until_ready => continue,
            Ok(Some(frame)) => return Ending::Frame(frame),
            Ok(None) => return Ending::Eof,
            Err(frames::ReadError::Flood(bytes)) => return Ending::OutputFlood(bytes),
            Err(frames::ReadError::Io(error)) => {
                tracing::warn!(error = %error, "reading the sandbox's output failed");
                return Ending::Eof;
            }
        }
    }
}

/// Resolves once the process's resident memory passes `limit`.
async fn watch_memory(pid: Option<Pid>, limit: u64) -> u64 {
    let Some(pid) = pid else {
        return std::future::pending().await;
    };
    let path = format!("/proc/{pid}/statm");
    let page = 4096u64;
    loop {
        tokio::time::sleep(MEMORY_POLL).await;
        let Ok(statm) = tokio::fs::read_to_string(&path).await else {
            // The process is gone; the reader will see the end.
            return std::future::pending().await;
        };
        let resident = statm
            .split_whitespace()
            .nth(1)
            .and_then(|pages| pages.parse::<u64>().ok())
            .unwrap_or(0)
            * page;
        if resident > limit {
            return resident;
        }
    }
}

fn error_result(job: &RunJob, kind: ErrorKind, message: String) -> RunResult {
    result(
        &job.job_id,
        Outcome::Error {
            error: RunError::new(kind, message),
        },
    )
}

fn memory_result(job: &RunJob, limits: &RunLimits, used: Option<u64>) -> RunResult {
    let detail = used.map_or(String::new(), |u| format!(" ({} MiB in use)", u >> 20));
    error_result(
        job,
        ErrorKind::MemoryLimit,
        format!(
            "the run exceeded its memory limit of {} MiB{detail} and was stopped",
            limits.memory_bytes >> 20
        ),
    )
}

fn died_without_result(
    job: &RunJob,
    limits: &RunLimits,
    status: Option<std::process::ExitStatus>,
    stderr: &str,
) -> Result<RunResult, SandboxError> {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("out of memory") || lower.contains("heap limit") {
        return Ok(memory_result(job, limits, None));
    }
    let excerpt: String = stderr.trim().chars().take(2000).collect();
    if status.is_some_and(|s| s.success()) {
        return Ok(error_result(
            job,
            ErrorKind::RuntimeError,
            "the tool's process ended before the tool returned".into(),
        ));
    }
    Err(SandboxError::Crashed(format!(
        "deno exited with {} without a result: {excerpt}",
        status.map_or_else(|| "an unknown status".to_owned(), |s| s.to_string())
    )))
}

async fn read_capped<R: AsyncRead + Unpin>(mut stream: R, keep: usize) -> String {
    let mut kept = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let room = keep.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn closed_pipe() -> SandboxError {
    SandboxError::Io(std::io::Error::other(
        "a pipe to the deno process was not opened",
    ))
}
