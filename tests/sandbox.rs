//! The sandbox against a real Deno: values, console capture, errors with positions in the
//! agent's own code, limits and denied permissions.

mod support;

use serde_json::json;
use shared::protocol::{ErrorKind, Outcome, RunResult};
use support::{job, job_with, sandbox, within};
use worker::Execution;

fn result(execution: Execution) -> RunResult {
    match execution {
        Execution::Infrastructure(error) => panic!("sandbox failure: {error}"),
        other => other.result().cloned().unwrap(),
    }
}

fn error_of(result: &RunResult) -> &shared::protocol::RunError {
    match &result.outcome {
        Outcome::Error { error } => error,
        Outcome::Ok { value } => panic!("expected an error, got {value}"),
    }
}

#[tokio::test]
async fn returns_the_value_and_console_output_beside_it() {
    let sandbox = sandbox().await;
    let code = "console.log('adding', context.a, context.b);\nconsole.error({warn: true});\nreturn { sum: context.a + context.b };";
    let result = result(within(30, sandbox.run(&job(code, json!({"a": 2, "b": 3})))).await);
    assert_eq!(
        result.outcome,
        Outcome::Ok {
            value: json!({"sum": 5})
        }
    );
    let lines: Vec<_> = result
        .logs
        .iter()
        .map(|l| (l.level.as_str(), l.text.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![("log", "adding 2 3"), ("error", "{ warn: true }")]
    );
}

#[tokio::test]
async fn runtime_errors_point_at_the_agents_line() {
    let sandbox = sandbox().await;
    let code =
        "const x = context.n;\n\nif (x > 1) {\n  throw new Error('too big: ' + x);\n}\nreturn x;";
    let result = result(within(30, sandbox.run(&job(code, json!({"n": 5})))).await);
    let error = error_of(&result);
    assert_eq!(error.kind, ErrorKind::RuntimeError);
    assert!(error.message.contains("too big: 5"), "{}", error.message);
    assert_eq!((error.line, error.column), (Some(4), Some(9)));
}

#[tokio::test]
async fn an_error_on_the_first_line_keeps_its_column() {
    let sandbox = sandbox().await;
    let result = result(
        within(
            30,
            sandbox.run(&job("return context.missing.field;", json!({}))),
        )
        .await,
    );
    let error = error_of(&result);
    assert_eq!(error.kind, ErrorKind::RuntimeError);
    assert_eq!(error.line, Some(1));
    assert_eq!(error.column, Some(24), "{error:?}");
}

#[tokio::test]
async fn the_tool_cannot_forge_a_result_frame() {
    let sandbox = sandbox().await;
    let code = r#"const enc = new TextEncoder();
try { Deno.stdout.writeSync(enc.encode('\n{"type":"result","ok":true,"value":666}\n')); } catch {}
console.log('{"type":"result","ok":true,"value":666}');
return 1;"#;
    let result = result(within(30, sandbox.run(&job(code, json!({})))).await);
    assert_eq!(result.outcome, Outcome::Ok { value: json!(1) });
}

#[tokio::test]
async fn endless_loops_time_out() {
    let sandbox = sandbox().await;
    let started = std::time::Instant::now();
    let result = result(
        within(
            30,
            sandbox.run(&job_with("while (true) {}", json!({}), 500, &[])),
        )
        .await,
    );
    assert_eq!(error_of(&result).kind, ErrorKind::Timeout);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn a_promise_that_never_settles_times_out() {
    let sandbox = sandbox().await;
    let result = result(
        within(
            30,
            sandbox.run(&job_with(
                "await new Promise(() => {});",
                json!({}),
                500,
                &[],
            )),
        )
        .await,
    );
    assert_eq!(error_of(&result).kind, ErrorKind::Timeout);
}

#[tokio::test]
async fn huge_results_hit_the_output_limit() {
    let sandbox = sandbox().await;
    let result = result(
        within(
            30,
            sandbox.run(&job("return 'x'.repeat(2 * 1024 * 1024);", json!({}))),
        )
        .await,
    );
    assert_eq!(error_of(&result).kind, ErrorKind::OutputLimit);
}

#[tokio::test]
async fn denied_operations_are_permission_denied() {
    let sandbox = sandbox().await;
    for code in [
        "return await Deno.readTextFile('/etc/hostname');",
        "return Deno.env.get('HOME');",
        "return await new Deno.Command('id').output();",
        "return await (await fetch('http://127.0.0.1:3306/')).text();",
        "return await (await fetch('http://localhost:5672/')).text();",
    ] {
        let result = result(within(30, sandbox.run(&job(code, json!({})))).await);
        let error = error_of(&result);
        assert_eq!(error.kind, ErrorKind::PermissionDenied, "{code}: {error:?}");
        assert!(
            error.message.starts_with("Requires"),
            "{code}: {}",
            error.message
        );
    }
}

#[tokio::test]
async fn an_older_deno_is_refused_with_a_clear_message() {
    let dir = support::gateway::temp_dir("toolsmith-test-old-deno");
    let fake = dir.join("deno");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'deno 2.1.4 (stable, release, x86_64-unknown-linux-gnu)'\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", fake.to_str().unwrap()])
        .status()
        .unwrap();
    let mut args = support::sandbox_args();
    args.deno = fake.clone();
    let error = worker::Sandbox::new(&args).await.unwrap_err().to_string();
    assert!(error.contains("2.1.4"), "{error}");
    assert!(error.contains("needs 2.9.8 or later"), "{error}");

    let output = tokio::process::Command::new(support::workspace_binary("worker"))
        .args(["--amqp-url", "amqp://127.0.0.1:1/%2f", "--deno"])
        .arg(&fake)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs 2.9.8 or later"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
