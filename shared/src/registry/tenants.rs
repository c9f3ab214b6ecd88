//! Tenants and what hangs off them: API keys (hashed), quota overrides, sealed secrets, the
//! audit trail, and the shared counters that enforce run quotas across gateway replicas.

use async_trait::async_trait;
use sqlx::Row;

use super::sql::{Dialect, audit, is_unique_violation};
use super::{RegistryError, SqlRegistry};
use crate::model::TenantId;
use crate::secrets::Sealed;
use crate::time::now_ms;

/// A tenant as `gateway tenant list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSummary {
    pub id: TenantId,
    pub created_at: i64,
    pub tools: i64,
    pub active_keys: i64,
}

/// A stored API key: its id, owner and SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: TenantId,
    pub key_hash: String,
    pub revoked: bool,
}

/// Per-tenant quota values; `None` means the gateway's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaOverrides {
    pub runs_per_minute: Option<i64>,
    pub concurrent_runs: Option<i64>,
    pub max_tools: Option<i64>,
    pub max_code_bytes: Option<i64>,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: i64,
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub version: Option<i64>,
}

/// A tenant's usage across every gateway replica, as of a sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageSnapshot {
    /// Runs counted in the window, this replica's included.
    pub window_runs: i64,
    /// Runs other replicas have in flight.
    pub others_in_flight: i64,
}

/// The tenant side of the registry.
#[async_trait]
pub trait TenantStore: Send + Sync + 'static {
    async fn create_tenant(&self, id: &TenantId, actor: &str) -> Result<(), RegistryError>;
    async fn tenant_exists(&self, id: &TenantId) -> Result<bool, RegistryError>;
    async fn list_tenants(&self) -> Result<Vec<TenantSummary>, RegistryError>;

    async fn create_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        key_hash: &str,
        actor: &str,
    ) -> Result<(), RegistryError>;
    async fn find_key(&self, key_id: &str) -> Result<Option<KeyRecord>, RegistryError>;
    /// Revokes a key; returns its tenant.
    async fn revoke_key(&self, key_id: &str, actor: &str) -> Result<TenantId, RegistryError>;

    async fn quotas(&self, tenant: &TenantId) -> Result<QuotaOverrides, RegistryError>;
    /// Sets the given values (others keep theirs); returns the tenant's overrides after.
    async fn set_quotas(
        &self,
        tenant: &TenantId,
        changes: &QuotaOverrides,
        actor: &str,
    ) -> Result<QuotaOverrides, RegistryError>;

    async fn put_secret(
        &self,
        tenant: &TenantId,
        name: &str,
        sealed: &Sealed,
        actor: &str,
    ) -> Result<(), RegistryError>;
    /// The sealed secrets of `names` that exist.
    async fn secrets(
        &self,
        tenant: &TenantId,
        names: &[String],
    ) -> Result<Vec<(String, Sealed)>, RegistryError>;

    /// The newest `limit` audit entries, oldest first, optionally for one tenant.
    async fn audit_log(
        &self,
        tenant: Option<&TenantId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, RegistryError>;

    /// Adds `new_runs` to the tenant's count for the minute starting at `window_start`,
    /// reports this replica's runs in flight, and returns the count for that minute across
    /// all replicas and the runs other replicas reported in flight within the last 5 s.
    async fn sync_usage(
        &self,
        replica: &str,
        tenant: &TenantId,
        window_start: i64,
        new_runs: i64,
        in_flight: i64,
    ) -> Result<UsageSnapshot, RegistryError>;
}

/// Replica reports older than this are ignored (the replica is gone).
const REPLICA_STALE_MS: i64 = 5_000;

#[async_trait]
impl TenantStore for SqlRegistry {
    async fn create_tenant(&self, id: &TenantId, actor: &str) -> Result<(), RegistryError> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query("INSERT INTO tenants (id, created_at) VALUES (?, ?)")
            .bind(id.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(error) if is_unique_violation(&error) => {
                return Err(RegistryError::AlreadyExists(id.to_string()));
            }
            other => {
                other?;
            }
        }
        audit(&mut tx, id, actor, "create_tenant", id.as_str(), None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_exists(&self, id: &TenantId) -> Result<bool, RegistryError> {
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await?;
        Ok(found.is_some())
    }

    async fn list_tenants(&self) -> Result<Vec<TenantSummary>, RegistryError> {
        let rows = sqlx::query(
            "SELECT t.id, t.created_at, \
               (SELECT COUNT(*) FROM tools WHERE tenant_id = t.id AND deleted_at IS NULL) AS tools, \
               (SELECT COUNT(*) FROM api_keys WHERE tenant_id = t.id AND revoked_at IS NULL) AS active_keys \
             FROM tenants t ORDER BY t.id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TenantSummary {
                    id: TenantId::new(row.try_get::<String, _>("id")?),
                    created_at: row.try_get("created_at")?,
                    tools: row.try_get("tools")?,
                    active_keys: row.try_get("active_keys")?,
                })
            })
            .collect()
    }

    async fn create_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        key_hash: &str,
        actor: &str,
    ) -> Result<(), RegistryError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO api_keys (id, tenant_id, key_hash, created_at, revoked_at) VALUES (?, ?, ?, ?, NULL)")
            .bind(key_id)
            .bind(tenant.as_str())
            .bind(key_hash)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        audit(&mut tx, tenant, actor, "create_key", key_id, None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_key(&self, key_id: &str) -> Result<Option<KeyRecord>, RegistryError> {
        let row =
            sqlx::query("SELECT id, tenant_id, key_hash, revoked_at FROM api_keys WHERE id = ?")
                .bind(key_id)
                .fetch_optional(self.pool())
                .await?;
        row.map(|row| {
            Ok(KeyRecord {
                id: row.try_get("id")?,
                tenant: TenantId::new(row.try_get::<String, _>("tenant_id")?),
                key_hash: row.try_get("key_hash")?,
                revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            })
        })
        .transpose()
    }

    async fn revoke_key(&self, key_id: &str, actor: &str) -> Result<TenantId, RegistryError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        let tenant: Option<String> =
            sqlx::query_scalar("SELECT tenant_id FROM api_keys WHERE id = ?")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await?;
        let tenant =
            TenantId::new(tenant.ok_or_else(|| RegistryError::NoSuchKey(key_id.to_owned()))?);
        audit(&mut tx, &tenant, actor, "revoke_key", key_id, None).await?;
        tx.commit().await?;
        Ok(tenant)
    }

    async fn quotas(&self, tenant: &TenantId) -> Result<QuotaOverrides, RegistryError> {
        let row = sqlx::query(
            "SELECT runs_per_minute, concurrent_runs, max_tools, max_code_bytes FROM quotas WHERE tenant_id = ?",
        )
        .bind(tenant.as_str())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(QuotaOverrides::default());
        };
        Ok(QuotaOverrides {
            runs_per_minute: row.try_get("runs_per_minute")?,
            concurrent_runs: row.try_get("concurrent_runs")?,
            max_tools: row.try_get("max_tools")?,
            max_code_bytes: row.try_get("max_code_bytes")?,
        })
    }

    async fn set_quotas(
        &self,
        tenant: &TenantId,
        changes: &QuotaOverrides,
        actor: &str,
    ) -> Result<QuotaOverrides, RegistryError> {
        if !self.tenant_exists(tenant).await? {
            return Err(RegistryError::NoSuchTenant(tenant.to_string()));
        }
        let current = self.quotas(tenant).await?;
        let merged = QuotaOverrides {
            runs_per_minute: changes.runs_per_minute.or(current.runs_per_minute),
            concurrent_runs: changes.concurrent_runs.or(current.concurrent_runs),
            max_tools: changes.max_tools.or(current.max_tools),
            max_code_bytes: changes.max_code_bytes.or(current.max_code_bytes),
        };
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM quotas WHERE tenant_id = ?")
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO quotas (tenant_id, runs_per_minute, concurrent_runs, max_tools, max_code_bytes) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(tenant.as_str())
        .bind(merged.runs_per_minute)
        .bind(merged.concurrent_runs)
        .bind(merged.max_tools)
        .bind(merged.max_code_bytes)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            tenant,
            actor,
            "set_quota",
            &describe(&merged),
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(merged)
    }

    async fn put_secret(
        &self,
        tenant: &TenantId,
        name: &str,
        sealed: &Sealed,
        actor: &str,
    ) -> Result<(), RegistryError> {
        if !self.tenant_exists(tenant).await? {
            return Err(RegistryError::NoSuchTenant(tenant.to_string()));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM secrets WHERE tenant_id = ? AND name = ?")
            .bind(tenant.as_str())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO secrets (tenant_id, name, nonce, ciphertext, updated_at) VALUES (?, ?, ?, ?, ?)")
            .bind(tenant.as_str())
            .bind(name)
            .bind(&sealed.nonce)
            .bind(&sealed.ciphertext)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        audit(&mut tx, tenant, actor, "set_secret", name, None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn secrets(
        &self,
        tenant: &TenantId,
        names: &[String],
    ) -> Result<Vec<(String, Sealed)>, RegistryError> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let row = sqlx::query(
                "SELECT nonce, ciphertext FROM secrets WHERE tenant_id = ? AND name = ?",
            )
            .bind(tenant.as_str())
            .bind(name.as_str())
            .fetch_optional(self.pool())
            .await?;
            if let Some(row) = row {
                out.push((
                    name.clone(),
                    Sealed {
                        nonce: row.try_get("nonce")?,
                        ciphertext: row.try_get("ciphertext")?,
                    },
                ));
            }
        }
        Ok(out)
    }

    async fn audit_log(
        &self,
        tenant: Option<&TenantId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, RegistryError> {
        let query = match tenant {
            Some(tenant) => sqlx::query(
                "SELECT at, tenant_id, actor, action, subject, version FROM audit_log \
                 WHERE tenant_id = ? ORDER BY id DESC LIMIT ?",
            )
            .bind(tenant.as_str()),
            None => sqlx::query(
                "SELECT at, tenant_id, actor, action, subject, version FROM audit_log \
                 ORDER BY id DESC LIMIT ?",
            ),
        };
        let rows = query.bind(i64::from(limit)).fetch_all(self.pool()).await?;
        let mut entries = rows
            .iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: row.try_get("at")?,
                    tenant: row.try_get("tenant_id")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    subject: row.try_get("subject")?,
                    version: row.try_get("version")?,
                })
            })
            .collect::<Result<Vec<_>, RegistryError>>()?;
        entries.reverse();
        Ok(entries)
    }

    async fn sync_usage(
        &self,
        replica: &str,
        tenant: &TenantId,
        window_start: i64,
        new_runs: i64,
        in_flight: i64,
    ) -> Result<UsageSnapshot, RegistryError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let (upsert_runs, upsert_replica) = match self.dialect() {
            Dialect::Sqlite => (
                "INSERT INTO run_windows (tenant_id, window_start, runs) VALUES (?, ?, ?) \
                 ON CONFLICT (tenant_id, window_start) DO UPDATE SET runs = runs + excluded.runs",
                "INSERT INTO quota_replicas (replica_id, tenant_id, in_flight, seen_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (replica_id, tenant_id) DO UPDATE SET in_flight = excluded.in_flight, seen_at = excluded.seen_at",
            ),
            Dialect::MySql => (
                "INSERT INTO run_windows (tenant_id, window_start, runs) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE runs = runs + VALUES(runs)",
                "INSERT INTO quota_replicas (replica_id, tenant_id, in_flight, seen_at) VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE in_flight = VALUES(in_flight), seen_at = VALUES(seen_at)",
            ),
        };
        sqlx::query(upsert_runs)
            .bind(tenant.as_str())
            .bind(window_start)
            .bind(new_runs)
            .execute(&mut *tx)
            .await?;
        let window_runs: i64 = sqlx::query_scalar(
            "SELECT runs FROM run_windows WHERE tenant_id = ? AND window_start = ?",
        )
        .bind(tenant.as_str())
        .bind(window_start)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(upsert_replica)
            .bind(replica)
            .bind(tenant.as_str())
            .bind(in_flight)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let others_in_flight: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(in_flight) AS SIGNED) FROM quota_replicas \
             WHERE tenant_id = ? AND replica_id <> ? AND seen_at > ?",
        )
        .bind(tenant.as_str())
        .bind(replica)
        .bind(now - REPLICA_STALE_MS)
        .fetch_one(&mut *tx)
        .await?;
        // Now and then, forget windows and replicas nobody will look at again.
        if now % 64 == 0 {
            sqlx::query("DELETE FROM run_windows WHERE window_start < ?")
                .bind(now - 3_600_000)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM quota_replicas WHERE seen_at < ?")
                .bind(now - 3_600_000)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(UsageSnapshot {
            window_runs,
            others_in_flight: others_in_flight.unwrap_or(0),
        })
    }
}

fn describe(quotas: &QuotaOverrides) -> String {
    let show = |v: Option<i64>| v.map_or_else(|| "default".to_owned(), |n| n.to_string());
    format!(
        "runs_per_minute={} concurrent_runs={} max_tools={} max_code_bytes={}",
        show(quotas.runs_per_minute),
        show(quotas.concurrent_runs),
        show(quotas.max_tools),
        show(quotas.max_code_bytes)
    )
}
