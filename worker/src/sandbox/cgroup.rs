//! Per-run cgroups: a hard memory limit that also covers ArrayBuffers and everything else
//! off the V8 heap (the kernel kills the run at the limit), and a cap on processes and
//! threads. cgroup v2 where the worker can create child groups (a delegated subtree),
//! cgroup v1 where its memory and pids hierarchies are writable, otherwise none: then the
//! resident-memory watchdog and rlimits are what bound a run.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where run cgroups are made. The per-worker group is removed when this is dropped.
#[derive(Debug)]
pub enum Cgroups {
    V2 {
        runs: PathBuf,
    },
    V1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
    },
    Unavailable {
        reason: String,
    },
}

/// One run's cgroups, removed when dropped (after its process is gone).
#[derive(Debug)]
pub struct RunCgroup {
    memory_dir: PathBuf,
    dirs: Vec<PathBuf>,
    procs: Vec<OwnedFd>,
    v2: bool,
}

impl Cgroups {
    /// Finds a place for run cgroups under this process's own, or says why there is none.
    pub fn detect() -> Self {
        let own = match fs::read_to_string("/proc/self/cgroup") {
            Ok(text) => text,
            Err(error) => {
                return Self::unavailable(format!("cannot read /proc/self/cgroup: {error}"));
            }
        };
        // One group per sandbox instance: a process may hold several (tests do).
        static INSTANCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let instance = INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("toolsmith-{}-{instance}", std::process::id());
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            match detect_v2(&own, &tag) {
                Ok(runs) => return Cgroups::V2 { runs },
                Err(error) => return Self::unavailable(format!("cgroup v2: {error}")),
            }
        }
        match detect_v1(&own, &tag) {
            Ok((memory, pids)) => Cgroups::V1 { memory, pids },
            Err(error) => Self::unavailable(format!("cgroup v1: {error}")),
        }
    }

    fn unavailable(reason: String) -> Self {
        Cgroups::Unavailable { reason }
    }

    pub fn describe(&self) -> String {
        match self {
            Cgroups::V2 { runs } => format!("cgroup v2 at {}", runs.display()),
            Cgroups::V1 { memory, pids } => format!(
                "cgroup v1 (memory at {}, pids {})",
                memory.display(),
                pids.as_ref().map_or_else(
                    || "unavailable".to_owned(),
                    |p| format!("at {}", p.display())
                )
            ),
            Cgroups::Unavailable { reason } => format!("no cgroups ({reason})"),
        }
    }

    /// True when runs get a process cap from a cgroup.
    pub fn limits_tasks(&self) -> bool {
        matches!(self, Cgroups::V2 { .. } | Cgroups::V1 { pids: Some(_), .. })
    }

    /// Creates the cgroups of one run, with its limits set, ready to be joined.
    pub fn create(
        &self,
        run: &str,
        memory_bytes: u64,
        max_tasks: u64,
    ) -> io::Result<Option<RunCgroup>> {
        match self {
            Cgroups::Unavailable { .. } => Ok(None),
            Cgroups::V2 { runs } => {
                let dir = runs.join(run);
                fs::create_dir(&dir)?;
                let mut cgroup = RunCgroup {
                    memory_dir: dir.clone(),
                    dirs: vec![dir.clone()],
                    procs: Vec::new(),
                    v2: true,
                };
                fs::write(dir.join("memory.max"), memory_bytes.to_string())?;
                // No swap: a run over its limit is killed, not slowed down.
                let _ = fs::write(dir.join("memory.swap.max"), "0");
                fs::write(dir.join("pids.max"), max_tasks.to_string())?;
                cgroup.procs.push(open_procs(&dir)?);
                Ok(Some(cgroup))
            }
            Cgroups::V1 { memory, pids } => {
                let dir = memory.join(run);
                fs::create_dir(&dir)?;
                let mut cgroup = RunCgroup {
                    memory_dir: dir.clone(),
                    dirs: vec![dir.clone()],
                    procs: Vec::new(),
                    v2: false,
                };
                fs::write(dir.join("memory.limit_in_bytes"), memory_bytes.to_string())?;
                let _ = fs::write(
                    dir.join("memory.memsw.limit_in_bytes"),
                    memory_bytes.to_string(),
                );
                let _ = fs::write(dir.join("memory.swappiness"), "0");
                cgroup.procs.push(open_procs(&dir)?);
                if let Some(pids) = pids {
                    let dir = pids.join(run);
                    fs::create_dir(&dir)?;
                    cgroup.dirs.push(dir.clone());
                    fs::write(dir.join("pids.max"), max_tasks.to_string())?;
                    cgroup.procs.push(open_procs(&dir)?);
                }
                Ok(Some(cgroup))
            }
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let dirs: Vec<&PathBuf> = match &*self {
            Cgroups::V2 { runs } => vec![runs],
            Cgroups::V1 { memory, pids } => std::iter::once(memory).chain(pids.as_ref()).collect(),
            Cgroups::Unavailable { .. } => Vec::new(),
        };
        for dir in dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Removes empty `toolsmith-<pid>-<n>` groups left by workers that were killed.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("toolsmith-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // Fails harmlessly if a run is still inside.
            let _ = remove_group(&entry.path());
        }
    }
}

/// Removes a group and its empty run groups (a killed worker leaves both behind).
fn remove_group(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::remove_dir(entry.path());
        }
    }
    fs::remove_dir(dir)
}

impl RunCgroup {
    /// The `cgroup.procs` files the child writes itself into.
    pub fn take_procs(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.procs)
    }

    /// True when the kernel killed a process of this run for exceeding its memory.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        let text = fs::read_to_string(self.memory_dir.join(file)).unwrap_or_default();
        let kills = text
            .lines()
            .find_map(|line| line.strip_prefix(key)?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if kills > 0 {
            return true;
        }
        // Older v1 kernels report no oom_kill count; a failed charge with no swap to fall
        // back on ends in the OOM killer.
        !self.v2
            && fs::read_to_string(self.memory_dir.join("memory.failcnt"))
                .ok()
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Empty once the run's processes are reaped; a leftover empty group is harmless.
            let _ = fs::remove_dir(dir);
        }
    }
}

fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    Ok(fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?
        .into())
}

/// This process's path in the hierarchy whose controller list contains `controller`
/// (v1), or in the unified hierarchy (`controller` empty).
fn own_path(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.trim_start_matches('/').to_owned())
    })
}

fn detect_v1(proc_cgroup: &str, tag: &str) -> Result<(PathBuf, Option<PathBuf>), String> {
    let memory_path = own_path(proc_cgroup, "memory").ok_or("no memory controller")?;
    let memory = Path::new("/sys/fs/cgroup/memory")
        .join(memory_path)
        .join(tag);
    make_group(&memory)?;
    let pids = own_path(proc_cgroup, "pids").and_then(|path| {
        let dir = Path::new("/sys/fs/cgroup/pids").join(path).join(tag);
        make_group(&dir).ok().map(|()| dir)
    });
    Ok((memory, pids))
}

fn detect_v2(proc_cgroup: &str, tag: &str) -> Result<PathBuf, String> {
    let own = Path::new("/sys/fs/cgroup")
        .join(own_path(proc_cgroup, "").ok_or("not in the unified hierarchy")?);
    let available =
        fs::read_to_string(own.join("cgroup.controllers")).map_err(|e| e.to_string())?;
    for needed in ["memory", "pids"] {
        if !available.split_whitespace().any(|c| c == needed) {
            return Err(format!(
                "the {needed} controller is not delegated to {}",
                own.display()
            ));
        }
    }
    // "No internal processes": move this process into a leaf before enabling controllers
    // for child groups.
    let home = own.join(format!("{tag}-self"));
    make_group(&home)?;
    fs::write(home.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| e.to_string())?;
    fs::write(own.join("cgroup.subtree_control"), "+memory +pids").map_err(|e| e.to_string())?;
    let runs = own.join(tag);
    make_group(&runs)?;
    fs::write(runs.join("cgroup.subtree_control"), "+memory +pids").map_err(|e| e.to_string())?;
    Ok(runs)
}

fn make_group(dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        sweep_stale(parent);
    }
    let create = || fs::create_dir(dir);
    match create() {
        // The tag holds this process's pid and a per-process counter, so a group that
        // exists was left by an earlier process with the same pid. It is not ours to
        // trust (it may belong to another user): remove it and start clean, or give up.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            remove_group(dir).and_then(|()| create())
        }
        result => result,
    }
    .map_err(|error| format!("cannot create {}: {error}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_path_per_controller() {
        let text = "9:name=systemd:/\n8:pids:/a/b\n4:memory:/process_api/x\n1:cpu,cpuacct:/c\n0::/unified/p\n";
        assert_eq!(own_path(text, "memory").as_deref(), Some("process_api/x"));
        assert_eq!(own_path(text, "pids").as_deref(), Some("a/b"));
        assert_eq!(own_path(text, "cpuacct").as_deref(), Some("c"));
        assert_eq!(own_path(text, "").as_deref(), Some("unified/p"));
        assert_eq!(own_path(text, "blkio"), None);
    }
}
