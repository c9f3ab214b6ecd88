//! Tenant quotas: runs per minute, concurrent runs, tools stored and code size, each a
//! gateway default unless the tenant has its own value.
//!
//! Admission never waits on the database: each replica counts its own runs in memory and,
//! in distributed mode, every half second adds them to the shared per-minute count in the
//! registry and reports its runs in flight, reading back what the other replicas did. So
//! one replica enforces exactly, and several replicas together to within about half a
//! second of their traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use shared::model::TenantId;
use shared::protocol::{ErrorKind, RunError};
use shared::registry::{QuotaOverrides, TenantStore};
use shared::time::now_ms;

use crate::tools::registry_error;

/// How long a tenant's quota values are trusted before they are read again.
const QUOTA_TTL: Duration = Duration::from_secs(10);
/// How often usage is shared with the other replicas.
const SYNC_INTERVAL: Duration = Duration::from_millis(500);
const WINDOW_MS: i64 = 60_000;

/// The gateway's defaults.
#[derive(Debug, Clone, Copy)]
pub struct QuotaDefaults {
    pub runs_per_minute: i64,
    pub concurrent_runs: i64,
    pub max_tools: i64,
    pub max_code_bytes: i64,
}

/// A tenant's quotas in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub runs_per_minute: i64,
    pub concurrent_runs: i64,
    pub max_tools: i64,
    pub max_code_bytes: i64,
}

/// Whether a run may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Admitted,
    RateLimited { retry_after_secs: u64 },
    TooManyInFlight,
}

/// One tenant's usage as this replica sees it.
#[derive(Debug, Default)]
struct Usage {
    window_start: i64,
    /// Runs in this window already counted in the registry (all replicas), as of the last
    /// sync.
    shared_runs: i64,
    /// Runs this replica admitted in this window since the last sync.
    pending_runs: i64,
    in_flight: i64,
    /// Runs the other replicas had in flight at the last sync.
    others_in_flight: i64,
}

/// Quota lookups and run admission.
pub struct Quotas {
    defaults: QuotaDefaults,
    store: Arc<dyn TenantStore>,
    cache: Mutex<HashMap<TenantId, (Instant, QuotaOverrides)>>,
    usage: Mutex<HashMap<TenantId, Usage>>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("defaults", &self.defaults)
            .finish()
    }
}

/// Holds a concurrent-run slot until dropped.
#[derive(Debug)]
pub struct RunPermit {
    quotas: Arc<Quotas>,
    tenant: TenantId,
}

impl Drop for RunPermit {
    fn drop(&mut self) {
        if let Some(usage) = lock(&self.quotas.usage).get_mut(&self.tenant) {
            usage.in_flight -= 1;
        }
    }
}

/// The error an agent sees past a quota.
pub fn exceeded(message: String) -> RunError {
    RunError::new(ErrorKind::QuotaExceeded, message)
}

impl Quotas {
    /// `shared`: share usage with other replicas through the registry (distributed mode);
    /// the sync task ends with the `Quotas`.
    pub fn new(defaults: QuotaDefaults, store: Arc<dyn TenantStore>, shared: bool) -> Arc<Self> {
        let quotas = Arc::new(Self {
            defaults,
            store,
            cache: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
        });
        if shared {
            tokio::spawn(sync_usage(
                Arc::downgrade(&quotas),
                uuid::Uuid::new_v4().to_string(),
            ));
        }
        quotas
    }

    /// The tenant's quotas in effect.
    pub async fn limits(&self, tenant: &TenantId) -> Result<Limits, RunError> {
        let cached = lock(&self.cache)
            .get(tenant)
            .filter(|(at, _)| at.elapsed() < QUOTA_TTL)
            .map(|(_, overrides)| *overrides);
        let overrides = match cached {
            Some(overrides) => overrides,
            None => {
                let overrides = self.store.quotas(tenant).await.map_err(registry_error)?;
                lock(&self.cache).insert(tenant.clone(), (Instant::now(), overrides));
                overrides
            }
        };
        let d = self.defaults;
        Ok(Limits {
            runs_per_minute: overrides.runs_per_minute.unwrap_or(d.runs_per_minute),
            concurrent_runs: overrides.concurrent_runs.unwrap_or(d.concurrent_runs),
            max_tools: overrides.max_tools.unwrap_or(d.max_tools),
            max_code_bytes: overrides.max_code_bytes.unwrap_or(d.max_code_bytes),
        })
    }

    /// Admits a run against the runs-per-minute and concurrent-runs quotas, or says which
    /// one is used up and when to retry.
    pub async fn admit(self: &Arc<Self>, tenant: &TenantId) -> Result<RunPermit, RunError> {
        let limits = self.limits(tenant).await?;
        match admit(&mut lock(&self.usage), tenant, &limits, now_ms()) {
            Admission::Admitted => Ok(RunPermit {
                quotas: self.clone(),
                tenant: tenant.clone(),
            }),
            Admission::RateLimited { retry_after_secs } => Err(exceeded(format!(
                "the runs_per_minute quota ({}) is used up for this minute; retry in {retry_after_secs} s",
                limits.runs_per_minute
            ))),
            Admission::TooManyInFlight => Err(exceeded(format!(
                "the concurrent_runs quota ({}) is in use; retry when one of your runs finishes",
                limits.concurrent_runs
            ))),
        }
    }
}

fn admit(
    usage: &mut HashMap<TenantId, Usage>,
    tenant: &TenantId,
    limits: &Limits,
    now: i64,
) -> Admission {
    let window = now - now.rem_euclid(WINDOW_MS);
    let usage = usage.entry(tenant.clone()).or_default();
    if usage.window_start != window {
        usage.window_start = window;
        usage.shared_runs = 0;
        usage.pending_runs = 0;
    }
    if usage.shared_runs + usage.pending_runs >= limits.runs_per_minute {
        let left = window + WINDOW_MS - now;
        return Admission::RateLimited {
            retry_after_secs: u64::try_from(left.div_euclid(1000) + 1).unwrap_or(60),
        };
    }
    if usage.in_flight + usage.others_in_flight >= limits.concurrent_runs {
        return Admission::TooManyInFlight;
    }
    usage.pending_runs += 1;
    usage.in_flight += 1;
    Admission::Admitted
}

/// Shares this replica's usage every half second: adds its new runs to the registry's
/// per-minute counts, reports its runs in flight, and reads back the totals.
async fn sync_usage(quotas: Weak<Quotas>, replica: String) {
    loop {
        tokio::time::sleep(SYNC_INTERVAL).await;
        let Some(quotas) = quotas.upgrade() else {
            return;
        };
        let now = now_ms();
        let window = now - now.rem_euclid(WINDOW_MS);
        let reports: Vec<(TenantId, i64, i64, i64)> = {
            let mut usage = lock(&quotas.usage);
            usage.retain(|_, u| u.in_flight > 0 || u.pending_runs > 0 || u.window_start == window);
            usage
                .iter_mut()
                .map(|(tenant, u)| {
                    let pending = std::mem::take(&mut u.pending_runs);
                    (tenant.clone(), u.window_start, pending, u.in_flight)
                })
                .collect()
        };
        for (tenant, window_start, pending, in_flight) in reports {
            match quotas
                .store
                .sync_usage(&replica, &tenant, window_start, pending, in_flight)
                .await
            {
                Ok(snapshot) => {
                    if let Some(u) = lock(&quotas.usage).get_mut(&tenant)
                        && u.window_start == window_start
                    {
                        // Runs admitted during the sync are still pending, on top of this.
                        u.shared_runs = snapshot.window_runs;
                        u.others_in_flight = snapshot.others_in_flight;
                    }
                }
                Err(error) => {
                    // Keep the runs to add them on the next sync.
                    if let Some(u) = lock(&quotas.usage).get_mut(&tenant)
                        && u.window_start == window_start
                    {
                        u.pending_runs += pending;
                    }
                    tracing::warn!(error = %error, "cannot share quota usage with other replicas");
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: i64, concurrent: i64) -> Limits {
        Limits {
            runs_per_minute: rpm,
            concurrent_runs: concurrent,
            max_tools: 10,
            max_code_bytes: 1000,
        }
    }

    #[test]
    fn the_sixth_run_in_a_minute_is_refused() {
        let mut usage = HashMap::new();
        let tenant = TenantId::new("acme");
        let now = 60_000 * 20_000_000 + 30_000;
        for _ in 0..5 {
            assert_eq!(
                admit(&mut usage, &tenant, &limits(5, 100), now),
                Admission::Admitted
            );
        }
        assert_eq!(
            admit(&mut usage, &tenant, &limits(5, 100), now),
            Admission::RateLimited {
                retry_after_secs: 31
            }
        );
        let other = TenantId::new("other");
        assert_eq!(
            admit(&mut usage, &other, &limits(5, 100), now),
            Admission::Admitted
        );
        // The next minute starts afresh.
        assert_eq!(
            admit(&mut usage, &tenant, &limits(5, 100), now + 60_000),
            Admission::Admitted
        );
    }

    #[test]
    fn other_replicas_count_against_the_quotas() {
        let mut usage = HashMap::new();
        let tenant = TenantId::new("acme");
        let now = 60_000 * 20_000_000;
        usage.insert(
            tenant.clone(),
            Usage {
                window_start: now,
                shared_runs: 4,
                others_in_flight: 2,
                ..Usage::default()
            },
        );
        assert_eq!(
            admit(&mut usage, &tenant, &limits(100, 2), now),
            Admission::TooManyInFlight
        );
        assert_eq!(
            admit(&mut usage, &tenant, &limits(5, 100), now),
            Admission::Admitted
        );
        assert!(matches!(
            admit(&mut usage, &tenant, &limits(5, 100), now),
            Admission::RateLimited { .. }
        ));
    }

    #[test]
    fn concurrency_is_counted_per_tenant() {
        let mut usage = HashMap::new();
        let tenant = TenantId::new("acme");
        assert_eq!(
            admit(&mut usage, &tenant, &limits(100, 1), 0),
            Admission::Admitted
        );
        assert_eq!(
            admit(&mut usage, &tenant, &limits(100, 1), 0),
            Admission::TooManyInFlight
        );
    }
}
