//! MCP 2025-11-25 sessions kept in the registry database, so that a session opened on one
//! gateway replica can be served by any other (and survives a restart). What is kept is
//! what a replica needs to rebuild the session: the client's `initialize` parameters, and
//! the tenant the session belongs to.

use async_trait::async_trait;
use sqlx::Row;

use super::{RegistryError, SqlRegistry};
use crate::model::TenantId;
use crate::time::now_ms;

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub tenant: TenantId,
    /// The session state as JSON (the client's `initialize` parameters).
    pub state: String,
}

/// Sessions shared by gateway replicas.
#[async_trait]
pub trait SessionTable: Send + Sync + 'static {
    /// Stores (or replaces) a session.
    async fn save_session(
        &self,
        id: &str,
        tenant: &TenantId,
        state: &str,
    ) -> Result<(), RegistryError>;
    /// The session, unless it is unknown or unused for longer than `idle_ms`; marks it used.
    async fn load_session(
        &self,
        id: &str,
        idle_ms: i64,
    ) -> Result<Option<StoredSession>, RegistryError>;
    /// Forgets a session.
    async fn delete_session(&self, id: &str, tenant: &TenantId) -> Result<(), RegistryError>;
    /// Forgets every session unused for longer than `idle_ms`; returns how many.
    async fn purge_sessions(&self, idle_ms: i64) -> Result<u64, RegistryError>;
}

#[async_trait]
impl SessionTable for SqlRegistry {
    async fn save_session(
        &self,
        id: &str,
        tenant: &TenantId,
        state: &str,
    ) -> Result<(), RegistryError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM mcp_sessions WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO mcp_sessions (id, tenant_id, state, created_at, seen_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(tenant.as_str())
        .bind(state)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load_session(
        &self,
        id: &str,
        idle_ms: i64,
    ) -> Result<Option<StoredSession>, RegistryError> {
        let now = now_ms();
        let row =
            sqlx::query("SELECT tenant_id, state FROM mcp_sessions WHERE id = ? AND seen_at >= ?")
                .bind(id)
                .bind(now.saturating_sub(idle_ms))
                .fetch_optional(self.pool())
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        sqlx::query("UPDATE mcp_sessions SET seen_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(Some(StoredSession {
            tenant: TenantId::new(row.try_get::<String, _>("tenant_id")?),
            state: row.try_get("state")?,
        }))
    }

    async fn delete_session(&self, id: &str, tenant: &TenantId) -> Result<(), RegistryError> {
        sqlx::query("DELETE FROM mcp_sessions WHERE id = ? AND tenant_id = ?")
            .bind(id)
            .bind(tenant.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn purge_sessions(&self, idle_ms: i64) -> Result<u64, RegistryError> {
        let purged = sqlx::query("DELETE FROM mcp_sessions WHERE seen_at < ?")
            .bind(now_ms().saturating_sub(idle_ms))
            .execute(self.pool())
            .await?;
        Ok(purged.rows_affected())
    }
}
