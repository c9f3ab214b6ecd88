//! The same end-to-end loop with the MySQL registry, against the machine's real MariaDB
//! (a fresh database per test).

mod support;

use support::gateway::start;
use support::mysql::TestDatabase;

#[tokio::test]
async fn the_self_extension_loop_works_on_mysql() {
    let database = TestDatabase::create().await;
    let gateway = start(Some(database.url.clone()), &[]).await;
    support::scenarios::self_extension_loop(&gateway.url).await;
}

/// During a rolling upgrade the new release migrates the database first; a replica of the
/// previous release must still start against it (migrations only ever add).
#[tokio::test]
async fn an_older_release_starts_against_a_newer_schema() {
    let database = TestDatabase::create().await;
    for url in [database.url.clone(), sqlite_url()] {
        shared::registry::connect(&url, true)
            .await
            .expect("first migration");
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        // What a newer release's migration leaves behind: a table and a row in sqlx's log
        // for a version this build does not have.
        sqlx::query("CREATE TABLE from_the_future (id INTEGER NOT NULL PRIMARY KEY)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101, 'from the future', TRUE, X'00', 1)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let registry = shared::registry::connect(&url, true)
            .await
            .unwrap_or_else(|error| panic!("{url}: the older release refused to start: {error}"));
        let tools = shared::registry::Registry::list_tools(
            registry.as_ref(),
            &shared::model::TenantId::default_tenant(),
            None,
            None,
        )
        .await
        .expect("the registry still answers");
        assert!(tools.items.is_empty());
    }
}

fn sqlite_url() -> String {
    let path = std::env::temp_dir().join(format!(
        "toolsmith-future-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Shared MCP sessions: stored with their tenant, forgotten after their idle time.
#[tokio::test]
async fn sessions_are_kept_per_tenant_and_expire_when_idle() {
    use shared::registry::SessionTable;
    let database = TestDatabase::create().await;
    for url in [database.url.clone(), sqlite_url()] {
        let registry = shared::registry::connect(&url, true).await.unwrap();
        let alice = shared::model::TenantId::new("alice".to_owned());
        let bob = shared::model::TenantId::new("bob".to_owned());
        registry
            .save_session("s-1", &alice, r#"{"initialize_params":{}}"#)
            .await
            .unwrap();
        let stored = registry.load_session("s-1", 60_000).await.unwrap().unwrap();
        assert_eq!(stored.tenant, alice);
        assert_eq!(stored.state, r#"{"initialize_params":{}}"#);
        assert!(
            registry
                .load_session("s-2", 60_000)
                .await
                .unwrap()
                .is_none()
        );

        // Another tenant cannot delete it.
        registry.delete_session("s-1", &bob).await.unwrap();
        assert!(
            registry
                .load_session("s-1", 60_000)
                .await
                .unwrap()
                .is_some()
        );

        // Idle longer than allowed: not loaded, and purged.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(registry.load_session("s-1", 5).await.unwrap().is_none());
        assert_eq!(registry.purge_sessions(5).await.unwrap(), 1);
        assert!(
            registry
                .load_session("s-1", 60_000)
                .await
                .unwrap()
                .is_none()
        );
    }
}

/// A gateway told not to migrate (its database user may lack schema rights) refuses to
/// start on a database without its migrations, saying what to run; after `gateway migrate`
/// it serves.
#[tokio::test]
async fn a_gateway_that_does_not_migrate_needs_the_migrations_applied() {
    let database = TestDatabase::create().await;
    let output = support::within(
        60,
        tokio::process::Command::new(support::workspace_binary("gateway"))
            .args(["--listen", "127.0.0.1:0", "--database-url", &database.url])
            .arg("--skip-migrations")
            .env("TOOLSMITH_DENO", support::deno_path())
            .output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("lacks this release's migrations") && stderr.contains("gateway migrate"),
        "{stderr}"
    );

    let (ok, _, stderr) = support::cluster::admin(&database.url, &["migrate"], &[], None).await;
    assert!(ok, "{stderr}");

    // Serving and administering need data rights only (the grants the README gives).
    let user = DataOnlyUser::create(&database).await;
    let gateway =
        support::cluster::embedded_gateway_with(&user.url, &["--skip-migrations"], &[]).await;
    support::scenarios::self_extension_loop(&format!("http://{}/mcp", gateway.addr)).await;
    let (ok, stdout, stderr) = support::cluster::admin(
        &user.url,
        &["tenant", "create", "acme"],
        &[("TOOLSMITH_SKIP_MIGRATIONS", "true")],
        None,
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    // And that user really cannot change the schema.
    let (ok, _, stderr) = support::cluster::admin(&user.url, &["migrate"], &[], None).await;
    assert!(!ok, "a data-only user must not be able to migrate");
    assert!(stderr.contains("denied"), "{stderr}");
}

/// A MariaDB user with SELECT, INSERT, UPDATE and DELETE on one database, dropped after.
struct DataOnlyUser {
    name: String,
    url: String,
}

impl DataOnlyUser {
    async fn create(database: &TestDatabase) -> Self {
        let name = format!("ts_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let db = database.url.rsplit('/').next().unwrap().to_owned();
        let mut root = <sqlx::AnyConnection as sqlx::Connection>::connect(&database.url)
            .await
            .unwrap();
        for statement in [
            format!("CREATE USER '{name}'@'%' IDENTIFIED BY 'pw-{name}'"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON `{db}`.* TO '{name}'@'%'"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut root)
                .await
                .unwrap();
        }
        let server = support::mysql::server_url();
        let host = server.rsplit('@').next().unwrap();
        Self {
            url: format!("mysql://{name}:pw-{name}@{host}/{db}"),
            name,
        }
    }
}

impl Drop for DataOnlyUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = format!("{}/test", support::mysql::server_url());
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                if let Ok(mut conn) =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP USER '{name}'@'%'")))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join()
        .unwrap();
    }
}
