//! Warm execution: a process is reused only for the same tenant and tool version, is
//! recycled after any failure, after its run budget and after idle time, and strict tools
//! get a fresh process every run. Tools report `Deno.pid` so the tests see which process
//! served them.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use shared::model::{Isolation, TenantId};
use shared::protocol::Outcome;
use support::gateway::{Watcher, call, connect_legacy, error, ok, start};
use support::{job, sandbox, within};

/// Module-level state that survives between warm runs of one version.
const COUNTER: &str = "let runs = 0;\nexport default async function (context) {\n  if (context.spin) { while (true) {} }\n  if (context.bomb) { const keep = []; for (;;) keep.push(new Uint8Array(32 << 20).fill(1)); }\n  if (context.fail) throw new Error('asked to fail');\n  runs += 1;\n  return { pid: Deno.pid, runs, version: VERSION };\n}\nconst VERSION = 1;";

async fn counter(client: &rmcp::Peer<rmcp::RoleClient>, name: &str, args: Value) -> (u64, u64) {
    let result = call(client, name, args).await;
    let body = ok(&result);
    (
        body["pid"].as_u64().unwrap(),
        body["runs"].as_u64().unwrap(),
    )
}

async fn create(client: &rmcp::Peer<rmcp::RoleClient>, name: &str, code: &str, extra: Value) {
    let mut args =
        json!({"name": name, "description": "counts its runs", "code": code, "timeout_ms": 1500});
    args.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    ok(&call(client, "create_tool", args).await);
}

#[tokio::test]
async fn a_warm_process_serves_only_its_own_tool_version() {
    let gateway = start(None, &[]).await;
    let (client, _): (_, Watcher) = connect_legacy(&gateway.url).await;
    create(&client, "counter", COUNTER, json!({})).await;
    let (pid, first) = counter(&client, "counter", json!({})).await;
    let (again, second) = counter(&client, "counter", json!({})).await;
    assert_eq!(
        (again, first, second),
        (pid, 1, 2),
        "the same process served both runs"
    );

    // Another tool, same code: its own process.
    create(&client, "other", COUNTER, json!({})).await;
    let (other_pid, other_runs) = counter(&client, "other", json!({})).await;
    assert_ne!(other_pid, pid);
    assert_eq!(other_runs, 1);

    // A new version never runs in the old version's process.
    ok(&call(
        &client,
        "update_tool",
        json!({"name": "counter", "code": COUNTER.replace("VERSION = 1", "VERSION = 2")}),
    )
    .await);
    let result = call(&client, "counter", json!({})).await;
    let body = ok(&result);
    assert_ne!(body["pid"].as_u64().unwrap(), pid);
    assert_eq!(
        (
            body["runs"].as_u64().unwrap(),
            body["version"].as_u64().unwrap()
        ),
        (1, 2)
    );
}

#[tokio::test]
async fn strict_tools_get_a_fresh_process_every_run() {
    let gateway = start(None, &[]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    create(
        &client,
        "strict_counter",
        COUNTER,
        json!({"isolation": "strict"}),
    )
    .await;
    let mut pids = Vec::new();
    for _ in 0..3 {
        let (pid, runs) = counter(&client, "strict_counter", json!({})).await;
        assert_eq!(runs, 1, "nothing carried over");
        pids.push(pid);
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "three different processes: {pids:?}");
    let shown = call(&client, "get_tool", json!({"name": "strict_counter"})).await;
    assert_eq!(ok(&shown)["isolation"], "strict");
}

#[tokio::test]
async fn a_timeout_memory_limit_or_error_recycles_the_process_and_the_next_run_is_clean() {
    let gateway = start(None, &[]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    create(&client, "counter", COUNTER, json!({})).await;
    let (mut pid, runs) = counter(&client, "counter", json!({})).await;
    assert_eq!(runs, 1);
    for (args, kind) in [
        (json!({"spin": true}), "timeout"),
        (json!({"bomb": true}), "memory_limit"),
        (json!({"fail": true}), "runtime_error"),
    ] {
        error(&call(&client, "counter", args.clone()).await, kind);
        let (next_pid, next_runs) = counter(&client, "counter", json!({})).await;
        assert_ne!(next_pid, pid, "after {kind} the process was replaced");
        assert_eq!(next_runs, 1, "after {kind} the next run starts clean");
        pid = next_pid;
    }
}

#[tokio::test]
async fn processes_are_recycled_after_their_run_budget_and_idle_time() {
    let gateway = start(None, &["--warm-runs", "2", "--warm-idle-secs", "1"]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    create(&client, "counter", COUNTER, json!({})).await;
    let (a, _) = counter(&client, "counter", json!({})).await;
    let (b, runs) = counter(&client, "counter", json!({})).await;
    assert_eq!((b, runs), (a, 2));
    let (c, runs) = counter(&client, "counter", json!({})).await;
    assert_ne!(c, a, "two runs is the budget");
    assert_eq!(runs, 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (d, runs) = counter(&client, "counter", json!({})).await;
    assert_ne!(d, c, "an idle process is recycled");
    assert_eq!(runs, 1);
}

#[tokio::test]
async fn tenants_never_share_a_warm_process() {
    let sandbox = sandbox().await;
    let run = |tenant: &str| {
        let mut job = job(COUNTER, json!({}));
        job.tenant = TenantId::new(tenant);
        job.isolation = Isolation::Warm;
        job
    };
    let pid_of = |result: Option<&shared::protocol::RunResult>| match &result.unwrap().outcome {
        Outcome::Ok { value } => (
            value["pid"].as_u64().unwrap(),
            value["runs"].as_u64().unwrap(),
        ),
        other => panic!("{other:?}"),
    };
    let a1 = pid_of(within(30, sandbox.run(&run("acme"))).await.result());
    let a2 = pid_of(within(30, sandbox.run(&run("acme"))).await.result());
    let b1 = pid_of(within(30, sandbox.run(&run("globex"))).await.result());
    assert_eq!((a2.0, a2.1), (a1.0, 2), "acme's runs share acme's process");
    assert_ne!(b1.0, a1.0, "globex never gets acme's process");
    assert_eq!(b1.1, 1);
}
