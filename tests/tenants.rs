//! The multi-tenant endpoint: API keys, isolation between tenants, quotas, secrets and the
//! audit trail, through the real gateway (and worker) binaries, the admin CLI and MCP.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{
    Namespace, admin, amqp_url, create_tenant, embedded_gateway_with, gateway_with, worker_with,
};
use support::gateway::{call, connect_with_key, error, ok, temp_dir, text};
use support::mysql::TestDatabase;
use support::within;

fn sqlite_url() -> String {
    format!(
        "sqlite://{}",
        temp_dir("toolsmith-test-tenants")
            .join("registry.db")
            .display()
    )
}

const SECRETS_KEY: &str = "TOOLSMITH_SECRETS_KEY";

fn secrets_key() -> String {
    // 32 random bytes, base64: what `gateway secret new-key` prints.
    use base64::Engine as _;
    let bytes: Vec<u8> = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .copied()
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn post_mcp(url: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}})
            .to_string(),
        );
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("the gateway answers")
}

#[tokio::test]
async fn missing_wrong_and_revoked_keys_get_401_with_a_challenge() {
    let db = sqlite_url();
    let key = create_tenant(&db, "acme").await;
    let gateway = embedded_gateway_with(&db, &["--auth", "api-key"], &[]).await;
    let url = format!("http://{}/mcp", gateway.addr);

    let missing = post_mcp(&url, None).await;
    assert_eq!(missing.status(), 401);
    let challenge = missing.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");

    let wrong = post_mcp(
        &url,
        Some("tsk_0123456789ab_wrongwrongwrongwrongwrongwrongwrongwro"),
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let challenge = wrong.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    let garbage = post_mcp(&url, Some("not-a-key")).await;
    assert_eq!(garbage.status(), 401);

    assert_eq!(
        post_mcp(&url, Some(&key)).await.status(),
        200,
        "the real key works"
    );

    let metadata: Value = reqwest::get(format!(
        "http://{}/.well-known/oauth-protected-resource",
        gateway.addr
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(metadata["resource"], url);

    // A revoked key stops working (the gateway caches answers for 10 s).
    let key_id = key.split('_').nth(1).unwrap();
    let (revoked, stdout, _) = admin(&db, &["key", "revoke", key_id], &[], None).await;
    assert!(revoked, "{stdout}");
    within(30, async {
        while post_mcp(&url, Some(&key)).await.status() != 401 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn tenants_never_reach_each_others_tools() {
    let db = sqlite_url();
    let acme_key = create_tenant(&db, "acme").await;
    let globex_key = create_tenant(&db, "globex").await;
    let gateway = embedded_gateway_with(&db, &["--auth", "api-key"], &[]).await;
    let url = format!("http://{}/mcp", gateway.addr);
    let (acme, _) = connect_with_key(&url, &acme_key).await;
    let (globex, _) = connect_with_key(&url, &globex_key).await;

    // Both may own a tool of the same name.
    ok(&call(
        &acme,
        "create_tool",
        json!({"name": "weather", "description": "Acme's.", "code": "return 'acme weather';"}),
    )
    .await);
    ok(&call(
        &globex,
        "create_tool",
        json!({"name": "weather", "description": "Globex's.", "code": "return 'globex weather';"}),
    )
    .await);
    assert_eq!(
        text(&call(&acme, "weather", json!({})).await),
        "acme weather"
    );
    assert_eq!(
        text(&call(&globex, "weather", json!({})).await),
        "globex weather"
    );

    let private_code = "return 'acme only';";
    ok(&call(
        &acme,
        "create_tool",
        json!({"name": "private", "description": "Acme's private tool.", "code": private_code}),
    )
    .await);

    // Every way in from the other tenant.
    let listed = call(&globex, "list_tools", json!({})).await;
    let names: Vec<&str> = ok(&listed)["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["weather"]);
    let first_class = within(10, globex.list_all_tools()).await.unwrap();
    assert!(first_class.iter().all(|t| t.name != "private"));
    for (tool, args) in [
        ("get_tool", json!({"name": "private"})),
        ("run_tool", json!({"name": "private", "params": {}})),
        ("private", json!({})),
        (
            "update_tool",
            json!({"name": "private", "code": "return 'pwned';"}),
        ),
        ("delete_tool", json!({"name": "private"})),
    ] {
        let result = call(&globex, tool, args.clone()).await;
        let body = error(&result, "not_found");
        assert!(
            !serde_json::to_string(&result)
                .unwrap()
                .contains("acme only"),
            "{tool}: {body}"
        );
    }
    // Creating it in globex makes globex's own tool, not a change to acme's.
    ok(&call(
        &globex,
        "create_tool",
        json!({"name": "private", "description": "Globex's.", "code": "return 'globex private';"}),
    )
    .await);

    let owner = call(&acme, "get_tool", json!({"name": "private"})).await;
    assert_eq!(ok(&owner)["version"], 1);
    assert_eq!(ok(&owner)["code"], private_code);
    assert_eq!(text(&call(&acme, "private", json!({})).await), "acme only");

    // A session opened with one tenant's key cannot be used with another's.
    let opened = post_mcp(&url, Some(&acme_key)).await;
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let hijack = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&globex_key)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string())
        .send()
        .await
        .unwrap();
    let body = hijack.text().await.unwrap();
    assert!(body.contains("another API key's tenant"), "{body}");
    assert!(!body.contains("private"), "{body}");
}

#[tokio::test]
async fn quotas_refuse_with_the_quota_named_and_when_to_retry() {
    let db = sqlite_url();
    let key = create_tenant(&db, "acme").await;
    let (set, stdout, stderr) = admin(
        &db,
        &[
            "quota",
            "set",
            "acme",
            "--runs-per-minute",
            "5",
            "--max-tools",
            "2",
            "--max-code-bytes",
            "200",
        ],
        &[],
        None,
    )
    .await;
    assert!(set, "{stdout}{stderr}");
    assert!(stdout.contains("runs_per_minute 5"), "{stdout}");
    let gateway = embedded_gateway_with(&db, &["--auth", "api-key"], &[]).await;
    let (client, _) = connect_with_key(&format!("http://{}/mcp", gateway.addr), &key).await;

    ok(&call(
        &client,
        "create_tool",
        json!({"name": "one", "description": "One.", "code": "return 1;"}),
    )
    .await);
    let big = call(&client, "create_tool", json!({"name": "big", "description": "Too big.", "code": format!("return '{}';", "x".repeat(300))})).await;
    assert!(
        error(&big, "quota_exceeded")["message"]
            .as_str()
            .unwrap()
            .contains("max_code_bytes")
    );
    ok(&call(
        &client,
        "create_tool",
        json!({"name": "two", "description": "Two.", "code": "return 2;"}),
    )
    .await);
    let third = call(
        &client,
        "create_tool",
        json!({"name": "three", "description": "Three.", "code": "return 3;"}),
    )
    .await;
    assert!(
        error(&third, "quota_exceeded")["message"]
            .as_str()
            .unwrap()
            .contains("max_tools")
    );

    // Keep the six runs inside one minute window.
    let into_minute = shared::time::now_ms().rem_euclid(60_000);
    if into_minute > 45_000 {
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(61_000 - into_minute).unwrap(),
        ))
        .await;
    }
    for _ in 0..5 {
        assert_eq!(text(&call(&client, "one", json!({})).await), "1");
    }
    let sixth = call(&client, "one", json!({})).await;
    let message = error(&sixth, "quota_exceeded")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("runs_per_minute quota (5)"), "{message}");
    assert!(message.contains("retry in"), "{message}");
}

#[tokio::test]
async fn concurrent_runs_are_capped_per_tenant() {
    let db = sqlite_url();
    let key = create_tenant(&db, "acme").await;
    let (set, _, _) = admin(
        &db,
        &["quota", "set", "acme", "--concurrent-runs", "1"],
        &[],
        None,
    )
    .await;
    assert!(set);
    let gateway = embedded_gateway_with(&db, &["--auth", "api-key"], &[]).await;
    let (client, _) = connect_with_key(&format!("http://{}/mcp", gateway.addr), &key).await;
    ok(&call(&client, "create_tool", json!({"name": "slow", "description": "Slow.", "code": "await new Promise((r) => setTimeout(r, 1500));\nreturn 'done';"})).await);
    let first = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "slow", json!({})).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = call(&client, "slow", json!({})).await;
    assert!(
        error(&second, "quota_exceeded")["message"]
            .as_str()
            .unwrap()
            .contains("concurrent_runs")
    );
    assert_eq!(text(&within(30, first).await.unwrap()), "done");
    assert_eq!(
        text(&call(&client, "slow", json!({})).await),
        "done",
        "the slot is free again"
    );
}

#[tokio::test]
async fn a_secret_reaches_only_its_tool_and_never_comes_back() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let key = secrets_key();
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
    let env = [(SECRETS_KEY, key.as_str()), ("RUST_LOG", "debug")];
    let acme_key = create_tenant(&database.url, "acme").await;
    let globex_key = create_tenant(&database.url, "globex").await;
    let (set, stdout, stderr) = admin(
        &database.url,
        &["secret", "set", "acme", "API_TOKEN"],
        &[(SECRETS_KEY, key.as_str())],
        Some(&format!("{secret}\n")),
    )
    .await;
    assert!(set, "{stdout}{stderr}");
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));

    let gateway = gateway_with(&database.url, &namespace, &["--auth", "api-key"], &env).await;
    let worker = worker_with(&namespace, &[], &[("RUST_LOG", "debug")]).await;
    let url = format!("http://{}/mcp", gateway.addr);
    let (acme, _) = connect_with_key(&url, &acme_key).await;
    ok(&call(&acme, "create_tool", json!({
        "name": "uses_token", "description": "Uses the token.", "secrets": ["API_TOKEN"],
        "code": "const token = context.secrets.API_TOKEN;\nconsole.log('token is', token);\nreturn { length: token.length, echoed: token, nested: [`Bearer ${token}`] };"
    })).await);
    ok(&call(
        &acme,
        "create_tool",
        json!({
            "name": "leaks_in_error", "description": "Throws the token.", "secrets": ["API_TOKEN"],
            "code": "throw new Error('token=' + context.secrets.API_TOKEN);"
        }),
    )
    .await);
    ok(&call(
        &acme,
        "create_tool",
        json!({
            "name": "undeclared", "description": "Declares nothing.",
            "code": "return { secrets: context.secrets ?? null };"
        }),
    )
    .await);

    let used = call(&acme, "uses_token", json!({})).await;
    let body = ok(&used);
    assert_eq!(body["length"], secret.len(), "the tool got the real value");
    assert_eq!(body["echoed"], "[redacted secret API_TOKEN]");
    assert_eq!(body["nested"][0], "Bearer [redacted secret API_TOKEN]");
    let thrown = call(&acme, "leaks_in_error", json!({})).await;
    assert!(
        error(&thrown, "runtime_error")["message"]
            .as_str()
            .unwrap()
            .contains("[redacted secret API_TOKEN]")
    );
    assert_eq!(
        ok(&call(&acme, "undeclared", json!({})).await),
        &json!({"secrets": null})
    );
    let definition = call(&acme, "get_tool", json!({"name": "uses_token"})).await;
    assert_eq!(ok(&definition)["secrets"], json!(["API_TOKEN"]));

    // Another tenant declaring the same name does not get acme's secret.
    let (globex, _) = connect_with_key(&url, &globex_key).await;
    ok(&call(
        &globex,
        "create_tool",
        json!({
            "name": "steal", "description": "Wants acme's token.", "secrets": ["API_TOKEN"],
            "code": "return context.secrets.API_TOKEN;"
        }),
    )
    .await);
    let stolen = call(&globex, "steal", json!({})).await;
    assert!(
        error(&stolen, "not_found")["message"]
            .as_str()
            .unwrap()
            .contains("API_TOKEN")
    );

    for result in [&used, &thrown, &definition, &stolen] {
        let everything = serde_json::to_string(result).unwrap();
        assert!(
            !everything.contains(&secret),
            "a result carried the secret: {everything}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (name, process) in [("gateway", &gateway), ("worker", &worker)] {
        let logs = process.logs();
        assert!(
            logs.iter().filter(|l| l.contains("\"DEBUG\"")).count() > 0,
            "{name} logged at debug level"
        );
        assert!(
            logs.iter().all(|line| !line.contains(&secret)),
            "the {name} logged the secret"
        );
    }
}

#[tokio::test]
async fn the_audit_trail_names_tenant_key_action_and_version() {
    let db = sqlite_url();
    let key = create_tenant(&db, "acme").await;
    let key_id = key.split('_').nth(1).unwrap().to_owned();
    let gateway = embedded_gateway_with(&db, &["--auth", "api-key"], &[]).await;
    let (client, _) = connect_with_key(&format!("http://{}/mcp", gateway.addr), &key).await;
    ok(&call(
        &client,
        "create_tool",
        json!({"name": "audited", "description": "Audited.", "code": "return 1;"}),
    )
    .await);
    ok(&call(
        &client,
        "update_tool",
        json!({"name": "audited", "code": "return 2;"}),
    )
    .await);
    ok(&call(&client, "delete_tool", json!({"name": "audited"})).await);

    let (listed, stdout, stderr) = admin(&db, &["audit", "acme"], &[], None).await;
    assert!(listed, "{stderr}");
    let actor = format!("key:{key_id}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("audited")).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, (action, version)) in lines.iter().zip([
        ("create_tool", "v1"),
        ("update_tool", "v2"),
        ("delete_tool", "v2"),
    ]) {
        assert!(
            line.contains("acme")
                && line.contains(&actor)
                && line.contains(action)
                && line.ends_with(version),
            "{line}"
        );
    }
    assert!(
        stdout.contains("create_tenant"),
        "admin actions are audited too: {stdout}"
    );
    let (ok_list, tenants, _) = admin(&db, &["tenant", "list"], &[], None).await;
    assert!(
        ok_list && tenants.contains("acme") && tenants.contains("default"),
        "{tenants}"
    );
}

#[tokio::test]
async fn no_authentication_off_loopback_is_refused_unless_forced() {
    let db = sqlite_url();
    let mut command = tokio::process::Command::new(support::workspace_binary("gateway"));
    command.args([
        "--listen",
        "0.0.0.0:0",
        "--auth",
        "none",
        "--database-url",
        &db,
    ]);
    let output = within(60, command.output()).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve without authentication"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_runs_per_minute_quota_holds_across_gateway_replicas() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let key = create_tenant(&database.url, "acme").await;
    let (set, _, _) = admin(
        &database.url,
        &["quota", "set", "acme", "--runs-per-minute", "6"],
        &[],
        None,
    )
    .await;
    assert!(set);
    let auth = ["--auth", "api-key"];
    let gateway_a = gateway_with(&database.url, &namespace, &auth, &[]).await;
    let gateway_b = gateway_with(&database.url, &namespace, &auth, &[]).await;
    let _worker = worker_with(&namespace, &[], &[]).await;
    let (a, _) = connect_with_key(&format!("http://{}/mcp", gateway_a.addr), &key).await;
    let (b, _) = connect_with_key(&format!("http://{}/mcp", gateway_b.addr), &key).await;
    ok(&call(
        &a,
        "create_tool",
        json!({"name": "one", "description": "One.", "code": "return 1;"}),
    )
    .await);

    // Keep all runs inside one minute window.
    let into_minute = shared::time::now_ms().rem_euclid(60_000);
    if into_minute > 40_000 {
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(61_000 - into_minute).unwrap(),
        ))
        .await;
    }
    for _ in 0..3 {
        assert_eq!(text(&call(&a, "one", json!({})).await), "1");
    }
    // Replicas share their counts every half second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        assert_eq!(text(&call(&b, "one", json!({})).await), "1");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for client in [&a, &b] {
        let refused = call(client, "one", json!({})).await;
        assert!(
            error(&refused, "quota_exceeded")["message"]
                .as_str()
                .unwrap()
                .contains("runs_per_minute quota (6)")
        );
    }
}
