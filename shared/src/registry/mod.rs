//! The tool registry: where tool definitions and their versions live. MySQL in production,
//! SQLite embedded; the database URL's scheme picks one. Every call is scoped to a tenant.

mod mysql;
mod sessions;
mod sql;
mod sqlite;
mod tenants;

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{Page, TenantId, ToolDefinition, ToolName, ToolSpec, ToolSummary};

pub use sessions::{SessionTable, StoredSession};
pub use sql::SqlRegistry;
pub use tenants::{
    AuditEntry, KeyRecord, QuotaOverrides, TenantStore, TenantSummary, UsageSnapshot,
};

/// How many tools one `list_tools` page holds.
pub const PAGE_SIZE: u32 = 50;

/// Registry failures. The gateway maps these to MCP errors without leaking SQL.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("a tool named {0:?} already exists; use update_tool to change it")]
    AlreadyExists(String),
    #[error("no tool named {0:?}")]
    NotFound(String),
    #[error("tool {0:?} was changed by another request at the same time; try again")]
    Conflict(String),
    #[error("the cursor is not one this server returned")]
    InvalidCursor,
    #[error("database URL must start with sqlite:, mysql: or mariadb:")]
    UnsupportedUrl,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the tenant already has {0} tools, its quota (max_tools)")]
    TooManyTools(i64),
    #[error("no tenant named {0:?}")]
    NoSuchTenant(String),
    #[error("no API key with id {0:?}")]
    NoSuchKey(String),
    #[error("another replica held the migration lock for more than {0} s")]
    MigrationLock(i64),
    #[error(
        "the database lacks this release's migrations {0:?}: run `gateway migrate` first \
         (in Kubernetes, the gateway's init container does)"
    )]
    SchemaBehind(Vec<i64>),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
}

impl RegistryError {
    /// True when the database could not be reached (as opposed to a bad request).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RegistryError::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
            )
        )
    }
}

/// The registry's operations. Writes add versions; nothing is overwritten.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Stores version 1 of a new tool (or the next version of a deleted one), refusing it
    /// when the tenant already has `max_tools` live tools. `actor` goes to the audit trail.
    async fn create_tool(
        &self,
        tenant: &TenantId,
        spec: &ToolSpec,
        actor: &str,
        max_tools: Option<i64>,
    ) -> Result<ToolDefinition, RegistryError>;

    /// Stores the next version of a live tool, if its current version is still `base_version`.
    async fn update_tool(
        &self,
        tenant: &TenantId,
        spec: &ToolSpec,
        base_version: i64,
        actor: &str,
    ) -> Result<ToolDefinition, RegistryError>;

    /// Marks a live tool deleted; returns the version it had.
    async fn delete_tool(
        &self,
        tenant: &TenantId,
        name: &ToolName,
        actor: &str,
    ) -> Result<i64, RegistryError>;

    /// The current version of a live tool.
    async fn get_tool(
        &self,
        tenant: &TenantId,
        name: &ToolName,
    ) -> Result<Option<ToolDefinition>, RegistryError>;

    /// One page of live tools ordered by name, optionally filtered by a case-insensitive
    /// substring of the name or description.
    async fn list_tools(
        &self,
        tenant: &TenantId,
        query: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<Page<ToolSummary>, RegistryError>;

    /// Succeeds when the database answers.
    async fn ping(&self) -> Result<(), RegistryError>;
}

/// Opens the registry a URL names and applies pending migrations when `migrate` is set;
/// otherwise checks that they have been applied.
pub async fn connect(url: &str, migrate: bool) -> Result<Arc<SqlRegistry>, RegistryError> {
    let registry = SqlRegistry::connect(url).await?;
    if migrate {
        registry.migrate().await?;
    } else {
        registry.check_schema().await?;
    }
    Ok(Arc::new(registry))
}

/// Redacts the password from a database URL for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("mysql://root:hunter2@db:3306/t"),
            "mysql://root:***@db:3306/t"
        );
        assert_eq!(
            redact_url("mysql://root@db:3306/t"),
            "mysql://root@db:3306/t"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
