//! SQLite specifics: the embedded registry is one file beside the server, in WAL mode so
//! readers never wait for the writer.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::Executor;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

/// Migrations for SQLite, embedded in the binary; those of a newer release are tolerated.
pub(super) fn migrator() -> Migrator {
    Migrator {
        ignore_missing: true,
        ..sqlx::migrate!("../migrations/sqlite")
    }
}

pub(super) async fn pool(url: &str) -> Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        })
        .connect(url)
        .await
}
