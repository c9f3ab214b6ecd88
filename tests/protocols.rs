//! Both protocol revisions and both transports: 2026-07-28 stateless requests with
//! `subscriptions/listen`, 2025-11-25 sessions over stdio, and the official Python SDK.

mod support;

use std::process::Stdio;

use rmcp::ServiceExt;
use rmcp::model::{ServerNotification, SubscriptionFilter};
use rmcp::transport::TokioChildProcess;
use serde_json::json;
use support::gateway::{Watcher, call, connect_legacy, connect_modern, ok, start, temp_dir};
use support::{deno_path, sdk_python, within, workspace_binary};

#[tokio::test]
async fn a_2026_client_runs_tools_and_hears_list_changes_on_listen() {
    let gateway = start(None, &[]).await;
    let client = connect_modern(&gateway.url).await;
    let mut subscription = within(
        10,
        client.listen(SubscriptionFilter::builder().tools_list_changed().build()),
    )
    .await
    .expect("the server accepts the subscription");
    assert_eq!(subscription.acknowledged().tools_list_changed, Some(true));

    // Another client (another session, another protocol revision) creates a tool.
    let (other, _) = connect_legacy(&gateway.url).await;
    ok(&call(
        &other,
        "create_tool",
        json!({
            "name": "shout", "description": "Upper-cases text.",
            "code": "return context.text.toUpperCase();"
        }),
    )
    .await);

    let notification = within(10, subscription.next())
        .await
        .expect("the stream stays open")
        .expect("a notification arrives");
    assert!(matches!(
        notification,
        ServerNotification::ToolListChangedNotification(_)
    ));

    let tools = within(10, client.list_all_tools()).await.unwrap();
    assert!(tools.iter().any(|t| t.name == "shout"));
    let result = call(&client, "shout", json!({"text": "hey"})).await;
    assert_eq!(support::gateway::text(&result), "HEY");
}

#[tokio::test]
async fn stdio_serves_a_session_with_list_change_notifications() {
    let dir = temp_dir("toolsmith-test-stdio");
    let mut command = tokio::process::Command::new(workspace_binary("gateway"));
    command
        .arg("--stdio")
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("registry.db").display()))
        .env("TOOLSMITH_DENO", deno_path())
        .env("TOOLSMITH_SANDBOX_DIR", dir.join("sandbox"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    let transport = TokioChildProcess::new(command).expect("the gateway starts");
    let watcher = Watcher::default();
    let client = within(30, watcher.clone().serve(transport))
        .await
        .expect("stdio session");

    let seen = watcher.changes();
    ok(&call(
        &client,
        "create_tool",
        json!({
            "name": "square", "description": "Squares a number.", "code": "return context.n ** 2;"
        }),
    )
    .await);
    watcher.wait_past(seen).await;
    let result = call(&client, "square", json!({"n": 12})).await;
    // 2025-11-25 allows only objects as structured content: a number comes back as text.
    assert_eq!(result.is_error, Some(false));
    assert_eq!(support::gateway::text(&result), "144");
    client.cancel().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_official_python_sdk_drives_the_loop() {
    let gateway = start(None, &[]).await;
    let output = within(
        60,
        tokio::process::Command::new(sdk_python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/sdk_client.py"
            ))
            .arg(&gateway.url)
            .arg("doubler")
            .output(),
    )
    .await
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["protocol"], "2025-11-25");
    assert_eq!(seen["listed"], true);
    assert_eq!(seen["direct"], json!({"doubled": 42}));
    assert_eq!(seen["via_run_tool"], json!({"doubled": 8}));
    assert_eq!(seen["bad_kind"], "invalid_params");
    assert_eq!(seen["gone_kind"], "not_found");
}
