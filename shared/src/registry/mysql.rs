//! MySQL/MariaDB specifics: the production registry, shared by every gateway replica.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

/// Migrations for MySQL/MariaDB, embedded in the binary. Migrations a newer release
/// applied are tolerated, so an older replica still starts during a rolling upgrade
/// (migrations only ever add; see the README on upgrades).
pub(super) fn migrator() -> Migrator {
    Migrator {
        ignore_missing: true,
        ..sqlx::migrate!("../migrations/mysql")
    }
}

/// Seconds a replica waits for another one's migrations.
const MIGRATION_LOCK_SECS: i64 = 300;

/// Applies migrations under a database-wide lock. sqlx's own migration lock asks for
/// `GET_LOCK(name, -1)`, which MariaDB answers at once with NULL instead of waiting, so
/// replicas starting together would see each other's half-applied migration.
pub(super) async fn migrate(pool: &AnyPool) -> Result<(), super::RegistryError> {
    let mut holder = pool.acquire().await?;
    let name = "toolsmith_migrations";
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT CAST(GET_LOCK(CONCAT(?, '.', DATABASE()), ?) AS SIGNED)")
            .bind(name)
            .bind(MIGRATION_LOCK_SECS)
            .fetch_one(&mut *holder)
            .await?;
    if locked != Some(1) {
        return Err(super::RegistryError::MigrationLock(MIGRATION_LOCK_SECS));
    }
    let outcome = migrator().run(pool).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT(?, '.', DATABASE()))")
        .bind(name)
        .execute(&mut *holder)
        .await;
    outcome?;
    Ok(())
}

pub(super) async fn pool(url: &str) -> Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .max_connections(16)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}
