//! MCP 2025-11-25 sessions are kept in the registry database, so a session does not depend
//! on the replica that opened it: any gateway replica serves it (no sticky load balancing),
//! a restarted gateway keeps it, and it stays with the tenant that opened it.

mod support;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use support::balancer::RoundRobin;
use support::cluster::{self, Namespace};
use support::gateway::{call, connect_legacy, ok, temp_dir};
use support::mysql::TestDatabase;
use support::{sdk_python, within};

const MCP_ACCEPT: &str = "application/json, text/event-stream";

#[tokio::test]
async fn any_replica_serves_a_session_another_one_opened() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&cluster::amqp_url()).await;
    let a = cluster::gateway(&database.url, &namespace, &[]).await;
    let b = cluster::gateway(&database.url, &namespace, &[]).await;
    let _worker = cluster::worker(&namespace, &[]).await;
    let balancer = RoundRobin::start(&[&a.addr, &b.addr]).await;
    let url = format!("http://{}/mcp", balancer.addr);

    // The official Python SDK through a load balancer with no affinity: its initialize,
    // notification stream and calls land on alternating replicas.
    let output = within(
        120,
        tokio::process::Command::new(sdk_python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/sdk_client.py"
            ))
            .arg(&url)
            .arg("doubler")
            .output(),
    )
    .await
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK client failed across replicas:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["protocol"], "2025-11-25");
    assert_eq!(seen["listed"], true);
    assert_eq!(seen["direct"], json!({"doubled": 42}));
    assert_eq!(seen["via_run_tool"], json!({"doubled": 8}));

    // The Rust SDK too, with a list-changed notification and many calls.
    let (client, watcher) = connect_legacy(&url).await;
    let (other, _) = connect_legacy(&url).await;
    let seen_changes = watcher.changes();
    ok(&call(
        &other,
        "create_tool",
        json!({"name": "add", "description": "Adds a and b.", "code": "return context.a + context.b;"}),
    )
    .await);
    watcher.wait_past(seen_changes).await;
    for i in 0..20 {
        let result = call(&client, "add", json!({"a": i, "b": 1})).await;
        assert_eq!(support::gateway::text(&result), (i + 1).to_string());
    }
    let served = balancer.served();
    assert!(
        served.iter().all(|&n| n >= 10),
        "both replicas must have served requests: {served:?}"
    );
}

#[tokio::test]
async fn a_session_survives_a_gateway_restart() {
    let db = temp_dir("toolsmith-test-db").join("registry.db");
    let database_url = format!("sqlite://{}", db.display());
    let listen = free_address();
    let mut first = cluster::embedded_gateway_at(&database_url, &listen, &[]).await;
    let http = reqwest::Client::new();
    let session = open_session(&http, &listen, "local").await;
    let (status, body) = call_tool(
        &http,
        &listen,
        "local",
        &session,
        "create_tool",
        json!({"name": "triple", "description": "Triples n.", "code": "return context.n * 3;"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    first.signal(Signal::SIGTERM);
    assert!(first.wait_exit(30).await, "the gateway stops cleanly");
    let _second = cluster::embedded_gateway_at(&database_url, &listen, &[]).await;

    // The same session id, no new initialize: the restarted gateway carries on.
    let (status, body) =
        call_tool(&http, &listen, "local", &session, "triple", json!({"n": 5})).await;
    assert_eq!(
        status, 200,
        "the session did not survive the restart: {body}"
    );
    assert!(body.contains(r#""text":"15""#), "{body}");
}

#[tokio::test]
async fn a_session_stays_with_the_tenant_that_opened_it() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&cluster::amqp_url()).await;
    let auth = ["--auth", "api-key"];
    let a = cluster::gateway(&database.url, &namespace, &auth).await;
    let b = cluster::gateway(&database.url, &namespace, &auth).await;
    let alice = cluster::create_tenant(&database.url, "alice").await;
    let mallory = cluster::create_tenant(&database.url, "mallory").await;

    let http = reqwest::Client::new();
    let session = open_session(&http, &a.addr, &alice).await;

    // Another tenant's key with alice's session id, on the replica that does not hold it:
    // the session is unknown to mallory.
    let (status, _) = list_tools(&http, &b.addr, &mallory, &session).await;
    assert_eq!(status, 404, "another tenant must not take over the session");
    // And on the replica that holds it, the session refuses the other tenant.
    let (status, body) = list_tools(&http, &a.addr, &mallory, &session).await;
    assert!(
        status == 404 || body.contains("another API key's tenant"),
        "{status} {body}"
    );

    // Alice's own key works on either replica.
    for addr in [&b.addr, &a.addr] {
        let (status, body) = list_tools(&http, addr, &alice, &session).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("create_tool"), "{body}");
    }
}

/// Opens a 2025-11-25 session with raw HTTP and returns its id.
async fn open_session(http: &reqwest::Client, addr: &str, key: &str) -> String {
    let response = http
        .post(format!("http://{addr}/mcp"))
        .bearer_auth(key)
        .header("accept", MCP_ACCEPT)
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}
            }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let session = response
        .headers()
        .get("mcp-session-id")
        .expect("a session id")
        .to_str()
        .unwrap()
        .to_owned();
    let _ = response.text().await;
    let initialized = http
        .post(format!("http://{addr}/mcp"))
        .bearer_auth(key)
        .header("accept", MCP_ACCEPT)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert_eq!(initialized.status(), 202);
    session
}

async fn list_tools(http: &reqwest::Client, addr: &str, key: &str, session: &str) -> (u16, String) {
    request(http, addr, key, session, "tools/list", json!({})).await
}

async fn call_tool(
    http: &reqwest::Client,
    addr: &str,
    key: &str,
    session: &str,
    name: &str,
    arguments: Value,
) -> (u16, String) {
    let params = json!({"name": name, "arguments": arguments});
    request(http, addr, key, session, "tools/call", params).await
}

/// One JSON-RPC request on a session; the status and the whole body.
async fn request(
    http: &reqwest::Client,
    addr: &str,
    key: &str,
    session: &str,
    method: &str,
    params: Value,
) -> (u16, String) {
    let response = http
        .post(format!("http://{addr}/mcp"))
        .bearer_auth(key)
        .header("accept", MCP_ACCEPT)
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": method, "params": params}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}
