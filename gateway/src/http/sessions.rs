//! MCP 2025-11-25 sessions that any gateway replica can serve. rmcp keeps a session's live
//! state in the replica that holds it; this store keeps what it takes to rebuild the
//! session elsewhere (the client's `initialize` parameters) in the registry database. A
//! request for a session the replica does not hold (because the load balancer sent it
//! elsewhere, or the session idled out of memory, or the gateway restarted) restores the
//! session from the store and carries on: no sticky load balancing is needed.
//!
//! A session belongs to the tenant that opened it. The store learns the caller's tenant
//! from the authentication layer ([`scoped`]), records it, and answers "unknown session" to
//! any other tenant.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rmcp::transport::streamable_http_server::session::{
    SessionState, SessionStore, SessionStoreError,
};
use tokio_util::sync::CancellationToken;

use shared::model::TenantId;
use shared::registry::SessionTable;

/// Largest session state stored; a larger one (absurd `initialize` parameters) leaves the
/// session served by its own replica only.
const MAX_STATE_BYTES: usize = 64 * 1024;
/// How often each replica forgets sessions nobody used for the idle time.
const PURGE_EVERY: Duration = Duration::from_secs(600);

tokio::task_local! {
    static REQUEST_TENANT: TenantId;
}

/// Runs `future` (the rest of one HTTP request) with the caller's tenant known to the store.
pub async fn scoped<F: Future>(tenant: TenantId, future: F) -> F::Output {
    REQUEST_TENANT.scope(tenant, future).await
}

fn request_tenant() -> Option<TenantId> {
    REQUEST_TENANT.try_with(Clone::clone).ok()
}

/// rmcp's session store over the registry's session table.
pub struct SharedSessions {
    table: Arc<dyn SessionTable>,
    idle: Duration,
}

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSessions")
            .field("idle", &self.idle)
            .finish()
    }
}

impl SharedSessions {
    /// A store whose sessions are forgotten after `idle` without use; purges them in the
    /// background until `shutdown`.
    pub fn start(
        table: Arc<dyn SessionTable>,
        idle: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let store = Arc::new(Self { table, idle });
        tokio::spawn(purge(store.clone(), shutdown));
        store
    }

    fn idle_ms(&self) -> i64 {
        i64::try_from(self.idle.as_millis()).unwrap_or(i64::MAX)
    }
}

async fn purge(store: Arc<SharedSessions>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match store.table.purge_sessions(store.idle_ms()).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "forgot idle MCP sessions"),
            Err(error) => tracing::warn!(error = %error, "could not purge idle MCP sessions"),
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for SharedSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let Some(tenant) = request_tenant() else {
            return Ok(None);
        };
        let Some(stored) = self.table.load_session(session_id, self.idle_ms()).await? else {
            return Ok(None);
        };
        if stored.tenant != tenant {
            tracing::warn!(
                tenant = %tenant,
                "a request named another tenant's MCP session; treating it as unknown"
            );
            return Ok(None);
        }
        tracing::debug!(tenant = %tenant, "restoring an MCP session opened elsewhere");
        Ok(Some(serde_json::from_str(&stored.state)?))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let Some(tenant) = request_tenant() else {
            return Ok(());
        };
        let state = serde_json::to_string(state)?;
        if state.len() > MAX_STATE_BYTES {
            tracing::warn!(
                bytes = state.len(),
                "MCP session state too large to share; the session stays on this replica"
            );
            return Ok(());
        }
        self.table.save_session(session_id, &tenant, &state).await?;
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        if let Some(tenant) = request_tenant() {
            self.table.delete_session(session_id, &tenant).await?;
        }
        Ok(())
    }
}
