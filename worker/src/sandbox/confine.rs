//! Confinement applied to each Deno process between fork and exec, underneath Deno's own
//! permissions, so that even a bug in Deno leaves the process boxed in:
//!
//! - it joins its run's cgroups (memory and process limits) before it executes anything;
//! - a worker running as root drops the process to an unprivileged uid/gid (65534 by default);
//! - it dies with its worker (`PR_SET_PDEATHSIG`), so a killed worker orphans nothing;
//! - resource limits: open files, no core dumps, and a process cap where no cgroup gives one;
//! - a seccomp filter (with `no_new_privs`) refuses IPv6 and raw sockets, which Deno's
//!   `--deny-net` cannot express for private IPv6 ranges, and the syscalls a sandbox escape
//!   would reach for (ptrace, mount, namespaces, kernel modules, bpf, …).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, setgid, setgroups, setuid, write};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Open files a Deno process may hold (its own runtime needs a few dozen).
pub const MAX_OPEN_FILES: u64 = 256;

/// What every run's process gets, prepared once.
#[derive(Debug, Clone)]
pub struct Confinement {
    filter: BpfProgram,
    /// Drop to this uid/gid when the worker runs as root.
    drop_to: Option<(Uid, Gid)>,
}

/// One process's confinement: the shared parts plus its cgroup membership files.
#[derive(Debug)]
pub struct Plan {
    pub confinement: std::sync::Arc<Confinement>,
    /// Open `cgroup.procs` files; writing "0" moves the writer in.
    pub cgroup_procs: Vec<OwnedFd>,
    /// RLIMIT_NPROC for the sandbox's uid, where no pids cgroup bounds the run.
    pub user_tasks: Option<u64>,
}

impl Confinement {
    /// Builds the seccomp program and decides on the sandbox user.
    pub fn new(sandbox_uid: Option<u32>) -> Result<Self, String> {
        let drop_to = if Uid::effective().is_root() {
            let id = sandbox_uid.unwrap_or(65534);
            Some((Uid::from_raw(id), Gid::from_raw(id)))
        } else {
            None
        };
        Ok(Self {
            filter: seccomp_program()?,
            drop_to,
        })
    }

    /// The uid runs execute as, when it differs from the worker's.
    pub fn sandbox_uid(&self) -> Option<Uid> {
        self.drop_to.map(|(uid, _)| uid)
    }
}

impl Plan {
    /// Runs in the child between fork and exec: only async-signal-safe system calls on data
    /// prepared before the fork (no allocation, no locks).
    pub fn apply(&self) -> std::io::Result<()> {
        for procs in &self.cgroup_procs {
            write(procs.as_fd(), b"0")?;
        }
        if let Some((uid, gid)) = self.confinement.drop_to {
            setgroups(&[])?;
            setgid(gid)?;
            setuid(uid)?;
        }
        // Set after the uid change, which would clear it.
        nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL))?;
        setrlimit(Resource::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES)?;
        setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
        if let Some(tasks) = self.user_tasks {
            setrlimit(Resource::RLIMIT_NPROC, tasks, tasks)?;
        }
        seccompiler::apply_filter(&self.confinement.filter)
            .map_err(|_| std::io::Error::other("cannot install the seccomp filter"))?;
        Ok(())
    }
}

/// Syscalls refused outright: debugging other processes, reading their memory, mounting,
/// namespaces, kernel modules and keyrings, bpf and perf, and other host-level controls.
const DENIED_SYSCALLS: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_syslog,
    libc::SYS_quotactl,
];

/// Socket families refused: IPv6 (Deno cannot deny private IPv6 ranges, so tools get IPv4
/// only), raw packets.
const DENIED_SOCKET_FAMILIES: &[i32] = &[libc::AF_INET6, libc::AF_PACKET];

fn seccomp_program() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS
        .iter()
        .map(|&syscall| (syscall, Vec::new()))
        .collect();
    let families = DENIED_SOCKET_FAMILIES
        .iter()
        .map(|&family| {
            let condition = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::try_from(family).unwrap_or(u64::MAX),
            )
            .map_err(|e| e.to_string())?;
            SeccompRule::new(vec![condition]).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    rules.insert(libc::SYS_socket, families);
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::EPERM).unwrap_or(1)),
        arch,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_machine() {
        let program = seccomp_program().unwrap();
        assert!(!program.is_empty());
    }
}
