//! The README's quick start as a newcomer follows it: `./scripts/serve` in an empty
//! directory starts the embedded server with its defaults, an MCP client drives the whole
//! self-extension loop against it, and the registry it keeps in `toolsmith.db` in that
//! directory survives a restart.

mod support;

use serde_json::json;
use support::gateway::{call, connect_legacy, ok, temp_dir, text};

#[tokio::test]
async fn the_readme_first_command_serves_the_self_extension_loop() {
    let cwd = temp_dir("toolsmith-quickstart");
    let server = support::cluster::quickstart(&cwd).await;
    let url = format!("http://{}/mcp", server.addr);
    let health = reqwest::get(format!("http://{}/healthz", server.addr))
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);
    support::scenarios::self_extension_loop(&url).await;
    assert!(
        cwd.join("toolsmith.db").exists(),
        "the registry is toolsmith.db in the working directory"
    );

    let (client, _) = connect_legacy(&url).await;
    ok(&call(&client, "create_tool", json!({
        "name": "shout",
        "description": "Upper-cases text.",
        "code": "return context.text.toUpperCase();",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    }))
    .await);
    drop(client);
    drop(server);

    // Started again in the same directory, the server still has the tool.
    let server = support::cluster::quickstart(&cwd).await;
    let (client, _) = connect_legacy(&format!("http://{}/mcp", server.addr)).await;
    let result = call(&client, "shout", json!({"text": "kept"})).await;
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(text(&result), "KEPT");
    let _ = std::fs::remove_dir_all(&cwd);
}
