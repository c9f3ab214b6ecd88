//! Embedded mode end to end: a real gateway with its in-process worker pool and SQLite
//! registry, driven by real MCP clients, running tools in a real Deno.

mod support;

use serde_json::json;
use support::gateway::{call, connect_legacy, error, ok, start, text};

#[tokio::test]
async fn the_self_extension_loop_works_end_to_end() {
    let gateway = start(None, &[]).await;
    support::scenarios::self_extension_loop(&gateway.url).await;
}

#[tokio::test]
async fn params_are_checked_against_the_schema_before_anything_runs() {
    let gateway = start(None, &[]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    ok(&call(&client, "create_tool", json!({
        "name": "greet",
        "description": "Greets someone.",
        "code": "return `hello ${context.who}`;",
        "input_schema": {"type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"]}
    })).await);
    let missing = call(&client, "greet", json!({})).await;
    let body = error(&missing, "invalid_params");
    assert!(body["message"].as_str().unwrap().contains("who"), "{body}");
    let wrong_type = call(&client, "greet", json!({"who": 42})).await;
    assert!(
        error(&wrong_type, "invalid_params")["message"]
            .as_str()
            .unwrap()
            .contains("/who")
    );
    let fine = call(&client, "greet", json!({"who": "Ada"})).await;
    assert_eq!(fine.is_error, Some(false));
    assert_eq!(
        text(&fine),
        "hello Ada",
        "a string comes back as plain text"
    );
    assert_eq!(fine.structured_content, None);
}

#[tokio::test]
async fn code_that_does_not_parse_is_refused_with_its_line_and_nothing_is_stored() {
    let gateway = start(None, &[]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    let refused = call(
        &client,
        "create_tool",
        json!({
            "name": "broken",
            "description": "Does not parse.",
            "code": "const a = 1;\nconst b = ;\nreturn a;"
        }),
    )
    .await;
    let body = error(&refused, "compile_error");
    assert_eq!(
        (body["line"].clone(), body["column"].clone()),
        (json!(2), json!(11))
    );
    error(
        &call(&client, "get_tool", json!({"name": "broken"})).await,
        "not_found",
    );

    ok(&call(
        &client,
        "create_tool",
        json!({
            "name": "fine", "description": "Parses.", "code": "return 1;"
        }),
    )
    .await);
    let refused = call(
        &client,
        "update_tool",
        json!({"name": "fine", "code": "return (;"}),
    )
    .await;
    assert_eq!(error(&refused, "compile_error")["line"], 1);
    let still = call(&client, "get_tool", json!({"name": "fine"})).await;
    assert_eq!(ok(&still)["version"], 1);
    assert_eq!(ok(&still)["code"], "return 1;");
}

#[tokio::test]
async fn runtime_errors_carry_the_line_in_the_agents_code() {
    let gateway = start(None, &[]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    ok(&call(&client, "create_tool", json!({
        "name": "thrower",
        "description": "Throws on big numbers.",
        "code": "const n = context.n;\nif (n > 3) {\n  throw new RangeError(`n is ${n}`);\n}\nreturn n;"
    })).await);
    let failed = call(&client, "thrower", json!({"n": 7})).await;
    let body = error(&failed, "runtime_error");
    assert_eq!(body["line"], 3);
    assert_eq!(body["column"], 9);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("RangeError: n is 7")
    );
    assert!(text(&failed).contains("line 3"));
}

#[tokio::test]
async fn console_output_comes_back_beside_the_value() {
    let gateway = start(None, &[]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    ok(&call(
        &client,
        "create_tool",
        json!({
            "name": "chatty",
            "description": "Logs while it works.",
            "code": "console.log('step', 1);\nconsole.error('careful');\nreturn { done: true };"
        }),
    )
    .await);
    let result = call(&client, "chatty", json!({})).await;
    assert_eq!(ok(&result), &json!({"done": true}));
    let console = result.content[1]
        .as_text()
        .expect("a console block")
        .text
        .clone();
    assert!(console.contains("[log] step 1"), "{console}");
    assert!(console.contains("[error] careful"), "{console}");
    let meta = result.meta.expect("console metadata");
    assert_eq!(meta.0["io.toolsmith/console"]["lines"][0]["text"], "step 1");
}

#[tokio::test]
async fn slow_tools_time_out_and_floods_hit_the_output_limit() {
    let gateway = start(None, &[]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    ok(&call(&client, "create_tool", json!({
        "name": "spin", "description": "Never ends.", "code": "while (true) {}", "timeout_ms": 300
    })).await);
    let spun = call(&client, "spin", json!({})).await;
    let body = error(&spun, "timeout");
    assert!(body["message"].as_str().unwrap().contains("300 ms"));

    ok(&call(&client, "create_tool", json!({
        "name": "flood", "description": "Returns too much.", "code": "return 'x'.repeat(3_000_000);"
    })).await);
    error(&call(&client, "flood", json!({})).await, "output_limit");
}

#[tokio::test]
async fn files_env_processes_and_local_network_are_denied() {
    let gateway = start(None, &[]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    let attempts = [
        (
            "read_file",
            "return await Deno.readTextFile('/etc/passwd');",
        ),
        ("read_env", "return Deno.env.get('HOME');"),
        (
            "spawn",
            "const out = await new Deno.Command('id').output();\nreturn out.code;",
        ),
        (
            "fetch_local",
            "const r = await fetch('http://127.0.0.1:3306/');\nreturn r.status;",
        ),
    ];
    for (name, code) in attempts {
        ok(&call(
            &client,
            "create_tool",
            json!({"name": name, "description": "Tries something.", "code": code}),
        )
        .await);
        let result = call(&client, name, json!({})).await;
        let body = error(&result, "permission_denied");
        assert!(
            body["message"].as_str().unwrap().starts_with("Requires"),
            "{name}: {body}"
        );
    }
}

#[tokio::test]
async fn bad_definitions_get_clear_errors() {
    let gateway = start(None, &[]).await;
    let (client, _) = connect_legacy(&gateway.url).await;
    let cases = [
        (
            json!({"name": "Bad Name", "description": "d", "code": "return 1"}),
            "pattern",
        ),
        (
            json!({"name": "run_tool", "description": "d", "code": "return 1"}),
            "reserved",
        ),
        (
            json!({"name": "x", "description": "d", "code": "return 1", "input_schema": {"type": "string"}}),
            "object",
        ),
        (
            json!({"name": "x", "description": "d", "code": "return 1", "timeout_ms": 10_000_000}),
            "timeout_ms",
        ),
        (
            json!({"name": "x", "description": "d", "code": "return 1", "allowed_hosts": ["a.com,127.0.0.1"]}),
            "allowed_hosts",
        ),
        (json!({"name": "x", "description": "d"}), "code"),
        (
            json!({"name": "x", "description": "d", "code": "return 1", "extra": true}),
            "extra",
        ),
    ];
    for (args, needle) in cases {
        let result = call(&client, "create_tool", args.clone()).await;
        let body = error(&result, "invalid_params");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{args}: {body}"
        );
    }
    ok(&call(
        &client,
        "create_tool",
        json!({"name": "dup", "description": "d", "code": "return 1"}),
    )
    .await);
    let again = call(
        &client,
        "create_tool",
        json!({"name": "dup", "description": "d", "code": "return 2"}),
    )
    .await;
    assert!(
        error(&again, "invalid_params")["message"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );
}
