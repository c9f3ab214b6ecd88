//! The MCP surface: the server handler, the meta-tools, stored tools as first-class tools,
//! and telling connected clients when a tenant's tool list changes.

mod handler;
mod meta;
mod result;

use std::collections::HashMap;
use std::sync::Mutex;

use rmcp::RoleServer;
use rmcp::service::Peer;

use shared::model::TenantId;

pub use handler::McpHandler;
pub use meta::META_TOOL_NAMES;

/// Clients on 2025-11-25 sessions (HTTP or stdio) that want `notifications/tools/list_changed`,
/// by tenant. Clients on 2026-07-28 use `subscriptions/listen` instead, which follows the
/// change bus directly.
#[derive(Default)]
pub struct Listeners {
    peers: Mutex<HashMap<TenantId, Vec<Peer<RoleServer>>>>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners").finish_non_exhaustive()
    }
}

impl Listeners {
    /// Registers a session's peer for its tenant's list changes.
    pub fn add(&self, tenant: TenantId, peer: Peer<RoleServer>) {
        let mut peers = self.lock();
        let list = peers.entry(tenant).or_default();
        list.retain(|p| !p.is_transport_closed());
        list.push(peer);
    }

    /// Tells every live session of `tenant` that its tool list changed.
    pub fn notify(&self, tenant: &TenantId) {
        let targets = {
            let mut peers = self.lock();
            let Some(list) = peers.get_mut(tenant) else {
                return;
            };
            list.retain(|p| !p.is_transport_closed());
            list.clone()
        };
        send_list_changed(targets);
    }

    /// Tells every live session of every tenant (after missed events).
    pub fn notify_all(&self) {
        let targets: Vec<_> = {
            let mut peers = self.lock();
            peers.retain(|_, list| {
                list.retain(|p| !p.is_transport_closed());
                !list.is_empty()
            });
            peers.values().flatten().cloned().collect()
        };
        send_list_changed(targets);
    }

    /// Live sessions registered for list changes.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Vec<Peer<RoleServer>>>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn send_list_changed(targets: Vec<Peer<RoleServer>>) {
    for peer in targets {
        tokio::spawn(async move {
            if let Err(error) = peer.notify_tool_list_changed().await {
                tracing::debug!(error = %error, "a session did not take the list-changed notification");
            }
        });
    }
}
