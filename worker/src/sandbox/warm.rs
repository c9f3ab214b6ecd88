//! Warm execution: processes kept after a successful run and reused for the next run of the
//! same tenant, tool version and process spec, and never for anything else; plus a few
//! pre-started blank processes that hide Deno's start-up for tools not yet warm. A warm
//! process is recycled after a bounded number of runs, after idle time, and after any run
//! that did not end cleanly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use shared::model::{TenantId, ToolName};
use shared::protocol::RunJob;

use super::process::{DenoProcess, Launcher, Spec};

/// How warm execution is sized.
#[derive(Debug, Clone)]
pub(super) struct WarmSettings {
    /// Runs one process serves before it is recycled; 0 turns warm execution off.
    pub max_runs: u32,
    /// How long an unused warm process is kept.
    pub idle_ttl: Duration,
    /// Most warm processes kept unused at once (oldest go first).
    pub max_idle: usize,
    /// Blank processes kept started.
    pub prestart: usize,
    /// The spec blank processes are started with (no host narrowing, default memory).
    pub blank_spec: Spec,
}

/// What a warm process may be reused for: exactly one tenant's tool version and spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct WarmKey {
    tenant: TenantId,
    tool: ToolName,
    version: i64,
    code_hash: String,
    spec: Spec,
}

impl WarmKey {
    pub fn new(job: &RunJob, spec: &Spec) -> Self {
        Self {
            tenant: job.tenant.clone(),
            tool: job.tool.clone(),
            version: job.version,
            code_hash: job.code_hash.clone(),
            spec: spec.clone(),
        }
    }
}

struct Idle {
    process: DenoProcess,
    since: Instant,
}

/// The warm and blank processes of one sandbox.
pub(super) struct WarmPool {
    launcher: Arc<Launcher>,
    settings: WarmSettings,
    idle: Mutex<HashMap<WarmKey, Vec<Idle>>>,
    blanks: Mutex<Vec<DenoProcess>>,
    refill: Notify,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("settings", &self.settings)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl WarmPool {
    /// Starts the pool and its upkeep task (blank refills, idle eviction), which ends with
    /// the pool.
    pub fn start(launcher: Arc<Launcher>, settings: WarmSettings) -> Arc<Self> {
        let pool = Arc::new(Self {
            launcher,
            settings,
            idle: Mutex::new(HashMap::new()),
            blanks: Mutex::new(Vec::new()),
            refill: Notify::new(),
        });
        tokio::spawn(upkeep(Arc::downgrade(&pool)));
        pool.refill.notify_one();
        pool
    }

    pub fn warm_enabled(&self) -> bool {
        self.settings.max_runs > 0
    }

    /// A warm process for exactly this key, if one is idle.
    pub fn take_idle(&self, key: &WarmKey) -> Option<DenoProcess> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(key)?;
        let taken = list.pop().map(|entry| entry.process);
        if list.is_empty() {
            idle.remove(key);
        }
        taken
    }

    /// A started, never-used process, when `spec` is the blank spec.
    pub fn take_blank(&self, spec: &Spec) -> Option<DenoProcess> {
        if *spec != self.settings.blank_spec {
            return None;
        }
        let taken = lock(&self.blanks).pop();
        self.refill.notify_one();
        taken
    }

    /// Keeps a process that just ran cleanly, unless it has served its runs; evicts the
    /// oldest idle process when over capacity.
    pub fn put_idle(&self, key: WarmKey, process: DenoProcess) {
        if !self.warm_enabled() || process.runs >= self.settings.max_runs {
            discard(process);
            return;
        }
        let evicted = {
            let mut idle = lock(&self.idle);
            idle.entry(key).or_default().push(Idle {
                process,
                since: Instant::now(),
            });
            let mut evicted = Vec::new();
            while idle.values().map(Vec::len).sum::<usize>() > self.settings.max_idle {
                let Some(oldest) = idle
                    .iter()
                    .filter_map(|(key, list)| list.first().map(|e| (key.clone(), e.since)))
                    .min_by_key(|(_, since)| *since)
                    .map(|(key, _)| key)
                else {
                    break;
                };
                if let Some(list) = idle.get_mut(&oldest) {
                    evicted.push(list.remove(0).process);
                    if list.is_empty() {
                        idle.remove(&oldest);
                    }
                }
            }
            evicted
        };
        evicted.into_iter().for_each(discard);
    }

    pub fn idle_count(&self) -> usize {
        lock(&self.idle).values().map(Vec::len).sum()
    }

    pub fn blank_count(&self) -> usize {
        lock(&self.blanks).len()
    }

    fn evict_expired(&self) {
        let ttl = self.settings.idle_ttl;
        let expired: Vec<DenoProcess> = {
            let mut idle = lock(&self.idle);
            let mut expired = Vec::new();
            idle.retain(|_, list| {
                let (old, fresh): (Vec<Idle>, Vec<Idle>) = list
                    .drain(..)
                    .partition(|entry| entry.since.elapsed() >= ttl);
                expired.extend(old.into_iter().map(|entry| entry.process));
                *list = fresh;
                !list.is_empty()
            });
            expired
        };
        expired.into_iter().for_each(discard);
    }

    fn fill_blanks(&self) {
        while lock(&self.blanks).len() < self.settings.prestart {
            match DenoProcess::spawn(&self.launcher, &self.settings.blank_spec) {
                Ok(process) => lock(&self.blanks).push(process),
                Err(error) => {
                    tracing::warn!(error = %error, "cannot pre-start a sandbox process");
                    return;
                }
            }
        }
    }
}

async fn upkeep(pool: Weak<WarmPool>) {
    loop {
        let Some(strong) = pool.upgrade() else {
            return;
        };
        strong.fill_blanks();
        strong.evict_expired();
        let notified = async {
            strong.refill.notified().await;
        };
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Ends a process in the background (kill the group, reap it).
pub(super) fn discard(process: DenoProcess) {
    tokio::spawn(process.discard());
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
