//! The registry over SQL, one implementation for both databases through sqlx's `Any`
//! driver. The SQL is portable; what differs (connection setup, migrations, how a write
//! transaction starts) lives in `mysql.rs` and `sqlite.rs`.

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::AnyPool;
use sqlx::any::AnyRow;
use sqlx::migrate::MigrateDatabase;
use sqlx::{Any, Row};

use super::{PAGE_SIZE, Registry, RegistryError, mysql, sqlite};
use crate::model::{Isolation, Page, TenantId, ToolDefinition, ToolName, ToolSpec, ToolSummary};
use crate::time::now_ms;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    MySql,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Self, RegistryError> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Dialect::MySql)
        } else {
            Err(RegistryError::UnsupportedUrl)
        }
    }
}

/// A registry on MySQL/MariaDB or SQLite.
#[derive(Debug, Clone)]
pub struct SqlRegistry {
    pool: AnyPool,
    dialect: Dialect,
}

const SELECT_DEFINITION: &str = "SELECT t.tenant_id, t.name, v.version, v.description, v.code, \
     v.code_hash, v.input_schema, v.allowed_hosts, v.timeout_ms, v.secrets, v.isolation, t.created_at, \
     v.created_at AS updated_at \
     FROM tools t JOIN tool_versions v \
       ON v.tenant_id = t.tenant_id AND v.name = t.name AND v.version = t.current_version \
     WHERE t.tenant_id = ? AND t.name = ? AND t.deleted_at IS NULL";

const INSERT_VERSION: &str = "INSERT INTO tool_versions (tenant_id, name, version, description, \
     code, code_hash, input_schema, allowed_hosts, timeout_ms, secrets, isolation, created_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const LIST: &str = "SELECT t.name, v.description, v.version, v.created_at AS updated_at, v.input_schema \
     FROM tools t JOIN tool_versions v \
       ON v.tenant_id = t.tenant_id AND v.name = t.name AND v.version = t.current_version \
     WHERE t.tenant_id = ? AND t.deleted_at IS NULL AND t.name > ? \
       AND (? = '' OR LOWER(t.name) LIKE ? ESCAPE '!' OR LOWER(v.description) LIKE ? ESCAPE '!') \
     ORDER BY t.name LIMIT ?";

impl SqlRegistry {
    /// Connects, creating the database (or SQLite file) when it does not exist yet.
    pub async fn connect(url: &str) -> Result<Self, RegistryError> {
        let dialect = Dialect::from_url(url)?;
        sqlx::any::install_default_drivers();
        if !Any::database_exists(url).await? {
            tracing::info!(
                database = %super::redact_url(url),
                "creating the database, which did not exist"
            );
            Any::create_database(url).await?;
        }
        let pool = match dialect {
            Dialect::Sqlite => sqlite::pool(url).await?,
            Dialect::MySql => mysql::pool(url).await?,
        };
        Ok(Self { pool, dialect })
    }

    /// Applies pending migrations. On MySQL the migrator holds a database lock, so
    /// replicas starting together against an empty database take turns.
    pub async fn migrate(&self) -> Result<(), RegistryError> {
        match self.dialect {
            Dialect::Sqlite => sqlite::migrator().run(&self.pool).await?,
            Dialect::MySql => mysql::migrate(&self.pool).await?,
        }
        Ok(())
    }

    /// Fails with [`RegistryError::SchemaBehind`] unless every migration of this build has
    /// been applied (for a process that does not migrate itself).
    pub async fn check_schema(&self) -> Result<(), RegistryError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => sqlite::migrator(),
            Dialect::MySql => mysql::migrator(),
        };
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
                .fetch_all(&self.pool)
                .await
            {
                Ok(applied) => applied,
                // No migrations table: nothing was applied.
                Err(sqlx::Error::Database(_)) => Vec::new(),
                Err(error) => return Err(error.into()),
            };
        let missing: Vec<i64> = migrator
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::SchemaBehind(missing))
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The pool, for the other stores that share this database.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write transaction. SQLite takes the write lock up front so two writers
    /// queue on the busy timeout instead of failing when one upgrades a read lock.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Any>, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::MySql => self.pool.begin().await,
        }
    }

    async fn fetch_definition(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<ToolDefinition>, RegistryError> {
        let row = sqlx::query(SELECT_DEFINITION)
            .bind(tenant.as_str())
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| definition_from_row(&row)).transpose()
    }
}

#[async_trait]
impl Registry for SqlRegistry {
    #[tracing::instrument(skip_all, fields(tenant = %tenant, tool = %spec.name), err)]
    async fn create_tool(
        &self,
        tenant: &TenantId,
        spec: &ToolSpec,
        actor: &str,
        max_tools: Option<i64>,
    ) -> Result<ToolDefinition, RegistryError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        if let Some(max) = max_tools {
            // Serialises creates per tenant so the count below cannot be raced past.
            if self.dialect == Dialect::MySql {
                sqlx::query("SELECT id FROM tenants WHERE id = ? FOR UPDATE")
                    .bind(tenant.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            let live: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM tools WHERE tenant_id = ? AND deleted_at IS NULL",
            )
            .bind(tenant.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if live >= max {
                return Err(RegistryError::TooManyTools(max));
            }
        }
        // A deleted tool comes back with the next version number.
        let revived = sqlx::query(
            "UPDATE tools SET current_version = current_version + 1, deleted_at = NULL, \
             created_at = ?, updated_at = ? \
             WHERE tenant_id = ? AND name = ? AND deleted_at IS NOT NULL",
        )
        .bind(now)
        .bind(now)
        .bind(tenant.as_str())
        .bind(spec.name.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if revived == 0 {
            let inserted = sqlx::query(
                "INSERT INTO tools (tenant_id, name, current_version, deleted_at, created_at, updated_at) \
                 VALUES (?, ?, 1, NULL, ?, ?)",
            )
            .bind(tenant.as_str())
            .bind(spec.name.as_str())
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await;
            if let Err(error) = inserted {
                if is_unique_violation(&error) {
                    return Err(RegistryError::AlreadyExists(spec.name.to_string()));
                }
                return Err(error.into());
            }
        }
        let version: i64 = sqlx::query_scalar(
            "SELECT current_version FROM tools WHERE tenant_id = ? AND name = ?",
        )
        .bind(tenant.as_str())
        .bind(spec.name.as_str())
        .fetch_one(&mut *tx)
        .await?;
        insert_version(&mut tx, tenant, spec, version, now).await?;
        audit(
            &mut tx,
            tenant,
            actor,
            "create_tool",
            spec.name.as_str(),
            Some(version),
        )
        .await?;
        tx.commit().await?;
        Ok(definition_of(tenant, spec, version, now, now))
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, tool = %spec.name), err)]
    async fn update_tool(
        &self,
        tenant: &TenantId,
        spec: &ToolSpec,
        base_version: i64,
        actor: &str,
    ) -> Result<ToolDefinition, RegistryError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let bumped = sqlx::query(
            "UPDATE tools SET current_version = current_version + 1, updated_at = ? \
             WHERE tenant_id = ? AND name = ? AND deleted_at IS NULL AND current_version = ?",
        )
        .bind(now)
        .bind(tenant.as_str())
        .bind(spec.name.as_str())
        .bind(base_version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if bumped == 0 {
            let live: Option<i64> = sqlx::query_scalar(
                "SELECT current_version FROM tools WHERE tenant_id = ? AND name = ? AND deleted_at IS NULL",
            )
            .bind(tenant.as_str())
            .bind(spec.name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            return Err(match live {
                None => RegistryError::NotFound(spec.name.to_string()),
                Some(_) => RegistryError::Conflict(spec.name.to_string()),
            });
        }
        let created_at: i64 =
            sqlx::query_scalar("SELECT created_at FROM tools WHERE tenant_id = ? AND name = ?")
                .bind(tenant.as_str())
                .bind(spec.name.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let version = base_version + 1;
        insert_version(&mut tx, tenant, spec, version, now).await?;
        audit(
            &mut tx,
            tenant,
            actor,
            "update_tool",
            spec.name.as_str(),
            Some(version),
        )
        .await?;
        tx.commit().await?;
        Ok(definition_of(tenant, spec, version, created_at, now))
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, tool = %name), err)]
    async fn delete_tool(
        &self,
        tenant: &TenantId,
        name: &ToolName,
        actor: &str,
    ) -> Result<i64, RegistryError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(
            "UPDATE tools SET deleted_at = ?, updated_at = ? \
             WHERE tenant_id = ? AND name = ? AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(now)
        .bind(tenant.as_str())
        .bind(name.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        let version: i64 = sqlx::query_scalar(
            "SELECT current_version FROM tools WHERE tenant_id = ? AND name = ?",
        )
        .bind(tenant.as_str())
        .bind(name.as_str())
        .fetch_one(&mut *tx)
        .await?;
        audit(
            &mut tx,
            tenant,
            actor,
            "delete_tool",
            name.as_str(),
            Some(version),
        )
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn get_tool(
        &self,
        tenant: &TenantId,
        name: &ToolName,
    ) -> Result<Option<ToolDefinition>, RegistryError> {
        self.fetch_definition(tenant, name.as_str()).await
    }

    async fn list_tools(
        &self,
        tenant: &TenantId,
        query: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<Page<ToolSummary>, RegistryError> {
        let after = match cursor {
            None | Some("") => String::new(),
            Some(cursor) => decode_cursor(cursor)?,
        };
        let query = query.map(str::trim).unwrap_or_default().to_lowercase();
        let pattern = format!("%{}%", escape_like(&query));
        let rows = sqlx::query(LIST)
            .bind(tenant.as_str())
            .bind(after)
            .bind(query.as_str())
            .bind(pattern.as_str())
            .bind(pattern.as_str())
            .bind(i64::from(PAGE_SIZE) + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut items = rows
            .iter()
            .map(summary_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > PAGE_SIZE as usize {
            items.truncate(PAGE_SIZE as usize);
            items.last().map(|last| encode_cursor(last.name.as_str()))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

async fn insert_version(
    tx: &mut sqlx::Transaction<'static, Any>,
    tenant: &TenantId,
    spec: &ToolSpec,
    version: i64,
    now: i64,
) -> Result<(), RegistryError> {
    let schema = serde_json::to_string(&spec.input_schema)
        .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
    let hosts = serde_json::to_string(&spec.allowed_hosts)
        .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
    let secrets =
        serde_json::to_string(&spec.secrets).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
    let inserted = sqlx::query(INSERT_VERSION)
        .bind(tenant.as_str())
        .bind(spec.name.as_str())
        .bind(version)
        .bind(spec.description.as_str())
        .bind(spec.code.as_str())
        .bind(spec.code_hash())
        .bind(schema)
        .bind(hosts)
        .bind(i64::try_from(spec.timeout_ms).unwrap_or(i64::MAX))
        .bind(secrets)
        .bind(spec.isolation.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(error) if is_unique_violation(&error) => {
            Err(RegistryError::Conflict(spec.name.to_string()))
        }
        Err(error) => Err(error.into()),
    }
}

/// Appends to the audit trail inside the caller's transaction.
pub(crate) async fn audit(
    tx: &mut sqlx::Transaction<'static, Any>,
    tenant: &TenantId,
    actor: &str,
    action: &str,
    subject: &str,
    version: Option<i64>,
) -> Result<(), RegistryError> {
    sqlx::query(
        "INSERT INTO audit_log (at, tenant_id, actor, action, subject, version) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(now_ms())
    .bind(tenant.as_str())
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn definition_of(
    tenant: &TenantId,
    spec: &ToolSpec,
    version: i64,
    created_at: i64,
    updated_at: i64,
) -> ToolDefinition {
    ToolDefinition {
        tenant: tenant.clone(),
        name: spec.name.clone(),
        version,
        description: spec.description.clone(),
        code: spec.code.clone(),
        code_hash: spec.code_hash(),
        input_schema: spec.input_schema.clone(),
        allowed_hosts: spec.allowed_hosts.clone(),
        timeout_ms: spec.timeout_ms,
        secrets: spec.secrets.clone(),
        isolation: spec.isolation,
        created_at,
        updated_at,
    }
}

fn definition_from_row(row: &AnyRow) -> Result<ToolDefinition, RegistryError> {
    let name: String = row.try_get("name")?;
    let schema: String = row.try_get("input_schema")?;
    let hosts: String = row.try_get("allowed_hosts")?;
    let secrets: String = row.try_get("secrets")?;
    let timeout_ms: i64 = row.try_get("timeout_ms")?;
    Ok(ToolDefinition {
        tenant: TenantId::new(row.try_get::<String, _>("tenant_id")?),
        name: ToolName::parse(&name).map_err(|e| RegistryError::Corrupt(e.message))?,
        version: row.try_get("version")?,
        description: row.try_get("description")?,
        code: row.try_get("code")?,
        code_hash: row.try_get("code_hash")?,
        input_schema: serde_json::from_str(&schema)
            .map_err(|e| RegistryError::Corrupt(format!("input_schema of {name}: {e}")))?,
        allowed_hosts: serde_json::from_str(&hosts)
            .map_err(|e| RegistryError::Corrupt(format!("allowed_hosts of {name}: {e}")))?,
        timeout_ms: u64::try_from(timeout_ms).unwrap_or(0),
        secrets: serde_json::from_str(&secrets)
            .map_err(|e| RegistryError::Corrupt(format!("secrets of {name}: {e}")))?,
        isolation: Isolation::parse(&row.try_get::<String, _>("isolation")?)
            .ok_or_else(|| RegistryError::Corrupt(format!("isolation of {name}")))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn summary_from_row(row: &AnyRow) -> Result<ToolSummary, RegistryError> {
    let name: String = row.try_get("name")?;
    let schema: String = row.try_get("input_schema")?;
    Ok(ToolSummary {
        input_schema: serde_json::from_str(&schema)
            .map_err(|e| RegistryError::Corrupt(format!("input_schema of {name}: {e}")))?,
        name: ToolName::parse(&name).map_err(|e| RegistryError::Corrupt(e.message))?,
        description: row.try_get("description")?,
        version: row.try_get("version")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

fn encode_cursor(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name)
}

fn decode_cursor(cursor: &str) -> Result<String, RegistryError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| RegistryError::InvalidCursor)?;
    let name = String::from_utf8(bytes).map_err(|_| RegistryError::InvalidCursor)?;
    ToolName::parse(&name).map_err(|_| RegistryError::InvalidCursor)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like("50%_off!"), "50!%!_off!!");
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor("weather")).unwrap(), "weather");
        assert!(decode_cursor("!!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("Not A Name")).is_err());
    }

    #[test]
    fn dialect_comes_from_the_scheme() {
        assert_eq!(Dialect::from_url("sqlite://x.db").unwrap(), Dialect::Sqlite);
        assert_eq!(
            Dialect::from_url("mysql://root@h/db").unwrap(),
            Dialect::MySql
        );
        assert!(Dialect::from_url("postgres://h/db").is_err());
    }
}
