//! The hosted shape end to end: gateway and worker binaries as separate processes, the
//! machine's MariaDB and RabbitMQ (a private database and namespace per test), real MCP
//! clients, real Deno.

mod support;

use std::time::{Duration, Instant};

use futures::future::join_all;
use nix::sys::signal::Signal;
use serde_json::json;
use support::cluster::{Namespace, PrivateBroker, amqp_url, deno_children, gateway, worker};
use support::gateway::{call, connect_legacy, error, ok, text};
use support::mysql::TestDatabase;
use support::within;

#[tokio::test]
async fn a_tool_created_through_one_gateway_runs_through_another() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let gateway_a = gateway(&database.url, &namespace, &[]).await;
    let gateway_b = gateway(&database.url, &namespace, &[]).await;
    let _workers = [worker(&namespace, &[]).await, worker(&namespace, &[]).await];

    let (client_a, _) = connect_legacy(&format!("http://{}/mcp", gateway_a.addr)).await;
    let (client_b, watcher_b) = connect_legacy(&format!("http://{}/mcp", gateway_b.addr)).await;
    let seen = watcher_b.changes();
    ok(&call(&client_a, "create_tool", json!({
        "name": "triple", "description": "Triples n.",
        "code": "return { tripled: context.n * 3 };",
        "input_schema": {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}
    })).await);
    watcher_b.wait_past(seen).await;

    let tools = within(10, client_b.list_all_tools()).await.unwrap();
    assert!(tools.iter().any(|t| t.name == "triple"));
    assert_eq!(
        ok(&call(&client_b, "triple", json!({"n": 14})).await),
        &json!({"tripled": 42})
    );

    // An update through B is what A runs next.
    ok(&call(
        &client_b,
        "update_tool",
        json!({"name": "triple", "code": "return { tripled: context.n * 3, v: 2 };"}),
    )
    .await);
    assert_eq!(
        ok(&call(&client_a, "triple", json!({"n": 1})).await),
        &json!({"tripled": 3, "v": 2})
    );
}

#[tokio::test]
async fn two_hundred_concurrent_runs_each_get_their_own_result() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    // All 200 run at once: above the default concurrent-runs quota, which is not under test.
    let quota = ["--default-concurrent-runs", "500"];
    let gateway_a = gateway(&database.url, &namespace, &quota).await;
    let gateway_b = gateway(&database.url, &namespace, &quota).await;
    let _workers = [worker(&namespace, &[]).await, worker(&namespace, &[]).await];
    let (client_a, _) = connect_legacy(&format!("http://{}/mcp", gateway_a.addr)).await;
    let (client_b, _) = connect_legacy(&format!("http://{}/mcp", gateway_b.addr)).await;
    ok(&call(&client_a, "create_tool", json!({
        "name": "echo_n", "description": "Echoes n with a tag.",
        "code": "await new Promise((r) => setTimeout(r, 5));\nreturn { n: context.n, tag: `run-${context.n}` };"
    })).await);

    let runs = (0..200).map(|n| {
        let client = if n % 2 == 0 { &client_a } else { &client_b };
        async move { (n, call(client, "echo_n", json!({"n": n})).await) }
    });
    let results = within(180, join_all(runs)).await;
    for (n, result) in results {
        assert_eq!(ok(&result), &json!({"n": n, "tag": format!("run-{n}")}));
    }
}

#[tokio::test]
async fn a_run_survives_kill_9_of_its_worker() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let gw = gateway(&database.url, &namespace, &[]).await;
    // No pre-started processes: a worker's Deno child then means a run in progress.
    let mut workers = [
        worker(&namespace, &["--prestart", "0"]).await,
        worker(&namespace, &["--prestart", "0"]).await,
    ];
    let (client, _) = connect_legacy(&format!("http://{}/mcp", gw.addr)).await;
    ok(&call(
        &client,
        "create_tool",
        json!({
            "name": "slow", "description": "Takes two seconds.", "timeout_ms": 20_000,
            "code": "await new Promise((r) => setTimeout(r, 2000));\nreturn 'finished';"
        }),
    )
    .await);

    let running = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "slow", json!({})).await }
    });
    let victim = within(20, async {
        loop {
            if let Some(i) = workers
                .iter()
                .position(|w| !deno_children(w.pid()).is_empty())
            {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let orphans = deno_children(workers[victim].pid());
    workers[victim].kill9().await;
    let survivor = &workers[1 - victim];
    within(10, async {
        while orphans
            .iter()
            .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let result = within(60, running).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(text(&result), "finished");
    assert!(
        !survivor.logs_with("run finished").is_empty(),
        "the surviving worker ran the job"
    );
}

#[tokio::test]
async fn a_run_that_kills_its_worker_every_time_is_dead_lettered() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let gw = gateway(&database.url, &namespace, &["--delivery-limit", "1"]).await;
    let (client, _) = connect_legacy(&format!("http://{}/mcp", gw.addr)).await;
    ok(&call(
        &client,
        "create_tool",
        json!({
            "name": "poison", "description": "Brings its worker down.", "timeout_ms": 30_000,
            "code": "await new Promise((r) => setTimeout(r, 30000));\nreturn 'never';"
        }),
    )
    .await);
    let mut current = worker(&namespace, &["--delivery-limit", "1", "--prestart", "0"]).await;
    let running = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "poison", json!({})).await }
    });
    // Each time the job starts on a worker, that worker dies; a fresh one replaces it.
    let mut kills = 0;
    while !running.is_finished() && kills < 5 {
        let started = within(30, async {
            loop {
                if running.is_finished() {
                    return false;
                }
                if !deno_children(current.pid()).is_empty() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if !started {
            break;
        }
        current.kill9().await;
        kills += 1;
        current = worker(&namespace, &["--delivery-limit", "1", "--prestart", "0"]).await;
    }
    let result = within(60, running).await.unwrap();
    let body = error(&result, "runtime_error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("crashed its worker on each of 2 attempts"),
        "{body}"
    );
    assert_eq!(kills, 2, "one first run and one redelivery");
    let parked = within(10, async {
        loop {
            let depth = namespace.depth("dead.parked").await;
            if depth > 0 {
                return depth;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        parked, 1,
        "the job waits in the dead letters for an operator"
    );
}

#[tokio::test]
async fn a_caller_gets_a_clear_timeout_when_no_worker_answers_and_the_job_never_runs() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let gw = gateway(&database.url, &namespace, &["--queue-wait-ms", "500"]).await;
    let (client, _) = connect_legacy(&format!("http://{}/mcp", gw.addr)).await;
    ok(&call(&client, "create_tool", json!({
        "name": "quick", "description": "Returns at once.", "timeout_ms": 500, "code": "return 1;"
    })).await);
    let started = Instant::now();
    let result = call(&client, "quick", json!({})).await;
    let body = error(&result, "timeout");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("workers may be busy or down")
    );
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");

    // The job expired in the queue; a worker that starts now never runs it.
    let late = worker(&namespace, &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        late.logs_with("run finished").is_empty(),
        "the expired job was not run"
    );
    assert_eq!(namespace.depth("jobs").await, 0);
}

#[tokio::test]
async fn sigterm_lets_a_worker_finish_its_run_before_it_exits() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let gw = gateway(&database.url, &namespace, &[]).await;
    let mut only = worker(&namespace, &["--prestart", "0"]).await;
    let (client, _) = connect_legacy(&format!("http://{}/mcp", gw.addr)).await;
    ok(&call(
        &client,
        "create_tool",
        json!({
            "name": "slow", "description": "Takes a second and a half.", "timeout_ms": 10_000,
            "code": "await new Promise((r) => setTimeout(r, 1500));\nreturn 'done';"
        }),
    )
    .await);
    let running = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "slow", json!({})).await }
    });
    within(20, async {
        while deno_children(only.pid()).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    only.signal(Signal::SIGTERM);
    let result = within(30, running).await.unwrap();
    assert_eq!(text(&result), "done");
    assert!(
        only.wait_exit(30).await,
        "the worker exits cleanly after draining"
    );
    assert_eq!(namespace.depth("jobs").await, 0, "the job was acknowledged");
}

#[tokio::test]
async fn runs_are_served_again_after_a_broker_restart() {
    let broker = PrivateBroker::start().await;
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&broker.url).await;
    let mut gw = gateway(&database.url, &namespace, &[]).await;
    let mut wk = worker(&namespace, &[]).await;
    let (client, _) = connect_legacy(&format!("http://{}/mcp", gw.addr)).await;
    ok(&call(
        &client,
        "create_tool",
        json!({
            "name": "ping", "description": "Answers pong.", "code": "return 'pong';"
        }),
    )
    .await);
    assert_eq!(text(&call(&client, "ping", json!({})).await), "pong");

    broker.ctl(&["stop_app"]).await;
    let during = call(&client, "ping", json!({})).await;
    error(&during, "unavailable");
    let readyz = |addr: &str| {
        let url = format!("http://{addr}/readyz");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(
        readyz(&gw.addr).await,
        503,
        "the gateway is not ready without its broker"
    );
    assert_eq!(
        readyz(&wk.addr).await,
        503,
        "the worker is not ready without its broker"
    );
    broker.ctl(&["start_app"]).await;

    let recovered = within(30, async {
        let started = Instant::now();
        loop {
            let result = call(&client, "ping", json!({})).await;
            if result.is_error != Some(true) {
                return (started.elapsed(), result);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(text(&recovered.1), "pong");
    assert!(
        recovered.0 < Duration::from_secs(15),
        "served again within seconds: {:?}",
        recovered.0
    );
    assert!(
        gw.is_running() && wk.is_running(),
        "no process was restarted"
    );
}

#[tokio::test]
async fn sigterm_lets_a_gateway_finish_open_calls_before_it_exits() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let mut gw = gateway(&database.url, &namespace, &[]).await;
    let _wk = worker(&namespace, &[]).await;
    let (client, _) = connect_legacy(&format!("http://{}/mcp", gw.addr)).await;
    ok(&call(
        &client,
        "create_tool",
        json!({
            "name": "slow", "description": "Takes a second.", "timeout_ms": 10_000,
            "code": "await new Promise((r) => setTimeout(r, 1000));\nreturn 'drained';"
        }),
    )
    .await);
    let running = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "slow", json!({})).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal(Signal::SIGTERM);
    let result = within(30, running).await.unwrap();
    assert_eq!(text(&result), "drained");
    assert!(gw.wait_exit(30).await, "the gateway exits cleanly");
}

#[tokio::test]
async fn two_gateways_starting_together_on_an_empty_database_both_come_up() {
    let database = TestDatabase::create().await;
    let namespace = Namespace::new(&amqp_url()).await;
    let (a, b) = tokio::join!(
        gateway(&database.url, &namespace, &[]),
        gateway(&database.url, &namespace, &[])
    );
    for gw in [&a, &b] {
        support::cluster::wait_ready(&gw.addr, "\"registry\":\"ok\"").await;
    }
    let _wk = worker(&namespace, &[]).await;
    let (client, _) = connect_legacy(&format!("http://{}/mcp", b.addr)).await;
    ok(&call(
        &client,
        "create_tool",
        json!({"name": "one", "description": "One.", "code": "return 1;"}),
    )
    .await);
}

#[tokio::test]
async fn readiness_follows_the_database_while_health_stays_up() {
    let database = TestDatabase::create().await;
    let proxy = support::proxy::Cuttable::start("127.0.0.1:3306").await;
    let url = database
        .url
        .replace("127.0.0.1:3306", &format!("127.0.0.1:{}", proxy.port));
    let gw = support::gateway::start(Some(url), &[]).await;
    let status = |path: &'static str| {
        let url = format!("{}{path}", gw.base);
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/readyz").await, 200);
    proxy.cut();
    within(20, async {
        while status("/readyz").await != 503 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(status("/healthz").await, 200);
    let (client, _) = connect_legacy(&gw.url).await;
    let during = call(&client, "get_tool", json!({"name": "anything"})).await;
    error(&during, "unavailable");
    proxy.restore();
    within(30, async {
        while status("/readyz").await != 200 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}
