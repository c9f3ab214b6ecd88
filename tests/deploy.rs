//! The Kubernetes deployment and the container images, checked the way an operator would
//! read them: every overlay rendered with Debian's kubectl and validated against the
//! Kubernetes and CRD schemas (scripts/check-deploy), then the properties that keep the
//! hosted service safe asserted on the rendered objects: unprivileged pods with limits and
//! probes, workers that reach only RabbitMQ, DNS and the public internet, shutdown grace
//! above the longest run, scaling on in-flight jobs, pinned images.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const OVERLAYS: [&str; 2] = ["dev", "prod"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Debian's kubectl, as scripts/lib.sh unpacks it.
fn kubectl() -> PathBuf {
    let path = std::env::var_os("TOOLSMITH_KUBECTL").map_or_else(
        || root().join(".toolsmith/kubernetes-client/usr/bin/kubectl"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/test (or ./scripts/check-deploy), which unpacks Debian's \
         kubernetes-client package",
        path.display()
    );
    path
}

/// The objects an overlay renders to.
fn render(overlay: &str) -> Vec<Value> {
    let output = Command::new(kubectl())
        .arg("kustomize")
        .arg(root().join("deploy/k8s/overlays").join(overlay))
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "{overlay} does not render: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_saphyr::from_multiple(&String::from_utf8(output.stdout).unwrap())
        .expect("the rendered overlay is YAML")
}

fn read_yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn objects<'a>(all: &'a [Value], kind: &str) -> Vec<&'a Value> {
    all.iter().filter(|o| o["kind"] == kind).collect()
}

fn object<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// A generated ConfigMap (its name carries a hash suffix) as a map.
fn config(all: &[Value], prefix: &str) -> serde_json::Map<String, Value> {
    objects(all, "ConfigMap")
        .into_iter()
        .find(|o| {
            o["metadata"]["name"].as_str().is_some_and(|n| {
                n.strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('-'))
            })
        })
        .unwrap_or_else(|| panic!("no ConfigMap {prefix}-…"))["data"]
        .as_object()
        .unwrap()
        .clone()
}

fn number(config: &serde_json::Map<String, Value>, key: &str) -> u64 {
    config[key].as_str().unwrap().parse().unwrap()
}

fn toolsmith_deployments(all: &[Value]) -> Vec<&Value> {
    objects(all, "Deployment")
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "toolsmith")
        .collect()
}

#[test]
fn every_overlay_renders_and_every_object_validates_against_its_schema() {
    let output = Command::new("bash")
        .arg(root().join("scripts/check-deploy"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "validation failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for overlay in OVERLAYS {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("/{overlay}.yaml:")))
            .unwrap_or_else(|| panic!("{overlay} was not checked:\n{stdout}"));
        assert!(line.ends_with(": ok"), "{line}");
        // Every rendered object was validated, built-in or custom.
        let rendered = render(overlay).len();
        assert!(line.contains(&format!(" {rendered} objects")), "{line}");
    }
}

#[test]
fn pods_run_unprivileged_with_limits_and_probes() {
    for overlay in OVERLAYS {
        let all = render(overlay);
        let deployments = toolsmith_deployments(&all);
        assert_eq!(deployments.len(), 2, "{overlay}: gateway and worker");
        for deployment in deployments {
            let name = deployment["metadata"]["name"].as_str().unwrap();
            let pod = &deployment["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_ne!(pod["securityContext"]["runAsUser"], 0, "{name}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
            let init = pod["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let containers = pod["containers"].as_array().unwrap();
            for container in containers.iter().chain(&init) {
                let who = format!("{overlay} {name}/{}", container["name"]);
                let security = &container["securityContext"];
                assert_eq!(security["runAsNonRoot"], true, "{who}");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{who}");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{who}");
                assert!(
                    security["capabilities"]["drop"]
                        .as_array()
                        .is_some_and(|d| d.contains(&Value::from("ALL"))),
                    "{who}: capabilities must be dropped"
                );
                assert!(security["privileged"].is_null(), "{who}");
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(
                            container["resources"][bound][resource].is_string(),
                            "{who}: no {resource} {bound}"
                        );
                    }
                }
            }
            for container in containers {
                let who = format!("{overlay} {name}/{}", container["name"]);
                assert_eq!(
                    container["livenessProbe"]["httpGet"]["path"], "/healthz",
                    "{who}"
                );
                assert_eq!(
                    container["readinessProbe"]["httpGet"]["path"], "/readyz",
                    "{who}"
                );
            }
        }
    }
}

#[test]
fn only_the_gateway_holds_database_credentials_and_the_secrets_key() {
    for overlay in OVERLAYS {
        let all = render(overlay);
        let worker = object(&all, "Deployment", "toolsmith-worker");
        let text = worker.to_string();
        for forbidden in [
            "TOOLSMITH_DATABASE_URL",
            "TOOLSMITH_SECRETS_KEY",
            "database-url",
            "secrets-key",
        ] {
            assert!(
                !text.contains(forbidden),
                "{overlay}: worker has {forbidden}"
            );
        }
        // The serving gateway container gets data-only credentials; the schema-changing
        // ones go to the migration init container alone.
        let gateway = object(&all, "Deployment", "toolsmith-gateway");
        let pod = &gateway["spec"]["template"]["spec"];
        assert_eq!(pod["initContainers"][0]["args"][0], "migrate");
        assert!(
            pod["initContainers"][0]
                .to_string()
                .contains("migrate-database-url")
        );
        assert!(
            !pod["containers"][0]
                .to_string()
                .contains("migrate-database-url")
        );
        assert_eq!(
            config(&all, "toolsmith-gateway")["TOOLSMITH_SKIP_MIGRATIONS"],
            "true"
        );
    }
}

/// Whether `cidr` (e.g. `10.0.0.0/8`, `::/0`) contains `ip`.
fn contains(cidr: &str, ip: IpAddr) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let bits: u32 = bits.parse().unwrap();
    match (net.parse::<IpAddr>().unwrap(), ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// Whether an egress peer admits `ip` by address (ipBlock peers only).
fn ip_block_admits(peer: &Value, ip: IpAddr) -> bool {
    let block = &peer["ipBlock"];
    block["cidr"]
        .as_str()
        .is_some_and(|cidr| contains(cidr, ip))
        && !block["except"]
            .as_array()
            .is_some_and(|except| except.iter().any(|e| contains(e.as_str().unwrap(), ip)))
}

fn selects(policy: &Value, labels: &Value) -> bool {
    policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| &labels[k] == v)
}

fn ports(rule: &Value) -> Vec<u64> {
    rule["ports"]
        .as_array()
        .map(|ports| ports.iter().map(|p| p["port"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn workers_reach_only_rabbitmq_dns_and_the_public_internet() {
    let private: Vec<IpAddr> = [
        "10.0.0.5",
        "172.20.1.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "fd00:ec2::254",
        "fe80::1",
        "::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let public: Vec<IpAddr> = ["1.1.1.1", "93.184.215.14", "2606:4700:4700::1111"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    for overlay in OVERLAYS {
        let all = render(overlay);
        let worker = object(&all, "Deployment", "toolsmith-worker");
        let labels = &worker["spec"]["template"]["metadata"]["labels"];
        let policies: Vec<&Value> = objects(&all, "NetworkPolicy")
            .into_iter()
            .filter(|p| selects(p, labels))
            .collect();
        // A policy that lists both directions selects the workers, so everything not listed
        // is denied.
        assert!(
            policies.iter().any(|p| {
                let types = p["spec"]["policyTypes"].as_array().unwrap();
                types.contains(&Value::from("Egress")) && types.contains(&Value::from("Ingress"))
            }),
            "{overlay}: no policy restricts the workers in both directions"
        );
        let mut reaches_public = vec![false; public.len()];
        for policy in &policies {
            let name = policy["metadata"]["name"].as_str().unwrap();
            for rule in policy["spec"]["egress"].as_array().into_iter().flatten() {
                for peer in rule["to"].as_array().unwrap() {
                    let pods = &peer["podSelector"];
                    if !pods.is_null() {
                        // Pods: RabbitMQ's AMQP port, cluster DNS, and (prod) the trace
                        // collector; never a database.
                        let selected = pods["matchLabels"].to_string();
                        let allowed = match ports(rule).as_slice() {
                            [5672] => selected.contains(r#""app.kubernetes.io/name":"rabbitmq""#),
                            [53, 53] => selected.contains(r#""k8s-app":"kube-dns""#),
                            [4317] => name == "toolsmith-otlp",
                            _ => false,
                        };
                        assert!(allowed, "{overlay} {name}: workers may reach {peer} {rule}");
                        assert!(pods["matchExpressions"].is_null(), "{overlay} {name}");
                    } else {
                        assert!(
                            peer["namespaceSelector"].is_null(),
                            "{overlay} {name}: {peer}"
                        );
                        for ip in &private {
                            assert!(
                                !ip_block_admits(peer, *ip),
                                "{overlay} {name}: workers may reach {ip}"
                            );
                        }
                        for (i, ip) in public.iter().enumerate() {
                            reaches_public[i] |= ip_block_admits(peer, *ip);
                        }
                    }
                }
            }
        }
        assert!(
            reaches_public.iter().all(|r| *r),
            "{overlay}: workers must reach the public internet: {reaches_public:?}"
        );
    }
}

#[test]
fn gateways_reach_the_database_and_the_broker_and_take_clients_on_one_port() {
    for overlay in OVERLAYS {
        let all = render(overlay);
        let gateway = object(&all, "Deployment", "toolsmith-gateway");
        let labels = &gateway["spec"]["template"]["metadata"]["labels"];
        let policy = object(&all, "NetworkPolicy", "toolsmith-gateway");
        assert!(selects(policy, labels));
        let egress: Vec<Vec<u64>> = policy["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .map(ports)
            .collect();
        assert_eq!(
            egress,
            vec![vec![3306], vec![5672], vec![53, 53]],
            "{overlay}"
        );
        let ingress = policy["spec"]["ingress"].as_array().unwrap();
        assert_eq!(ports(&ingress[0]), vec![8080], "{overlay}: MCP clients");
        // Metrics name tenants and tools: only the monitoring namespace may scrape them.
        assert_eq!(ports(&ingress[1]), vec![9090]);
        assert!(!ingress[1]["from"].is_null());
    }
}

#[test]
fn shutdown_grace_outlasts_the_longest_run() {
    for overlay in OVERLAYS {
        let all = render(overlay);
        let gateway_config = config(&all, "toolsmith-gateway");
        let worker_config = config(&all, "toolsmith-worker");
        let longest_run = number(&gateway_config, "TOOLSMITH_MAX_TIMEOUT_MS") / 1000;
        let queue_wait = number(&gateway_config, "TOOLSMITH_QUEUE_WAIT_MS") / 1000;

        let worker = object(&all, "Deployment", "toolsmith-worker");
        let worker_kill = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        let worker_drain = number(&worker_config, "TOOLSMITH_SHUTDOWN_GRACE_SECS");
        assert!(worker_kill >= 60, "{overlay}");
        assert!(
            longest_run < worker_drain && worker_drain < worker_kill,
            "{overlay}: run {longest_run} s, drain {worker_drain} s, kill {worker_kill} s"
        );

        let gateway = object(&all, "Deployment", "toolsmith-gateway");
        let pod = &gateway["spec"]["template"]["spec"];
        let gateway_kill = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        let pause = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap();
        let gateway_drain = number(&gateway_config, "TOOLSMITH_SHUTDOWN_GRACE_SECS");
        assert!(
            queue_wait + longest_run <= gateway_drain && pause + gateway_drain < gateway_kill,
            "{overlay}: a call may take {} s, drain {gateway_drain} s, kill {gateway_kill} s",
            queue_wait + longest_run
        );
    }
}

#[test]
fn workers_scale_on_queued_and_in_flight_jobs() {
    for overlay in OVERLAYS {
        let all = render(overlay);
        let worker_config = config(&all, "toolsmith-worker");
        let scaled = object(&all, "ScaledObject", "toolsmith-worker");
        assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "toolsmith-worker");
        let triggers = scaled["spec"]["triggers"].as_array().unwrap();
        assert_eq!(triggers.len(), 1, "{overlay}");
        let trigger = &triggers[0];
        assert_eq!(trigger["type"], "rabbitmq");
        // The management API's count includes unacknowledged (running) jobs; AMQP's does not.
        assert_eq!(trigger["metadata"]["protocol"], "http", "{overlay}");
        assert_eq!(trigger["metadata"]["mode"], "QueueLength");
        assert!(trigger["metadata"]["excludeUnacknowledged"].is_null());
        assert_eq!(
            trigger["metadata"]["queueName"].as_str().unwrap(),
            format!(
                "{}.jobs",
                worker_config["TOOLSMITH_AMQP_NAMESPACE"].as_str().unwrap()
            )
        );
        // One pod's share is what it runs at once.
        assert_eq!(
            trigger["metadata"]["value"].as_str().unwrap(),
            worker_config["TOOLSMITH_CONCURRENCY"].as_str().unwrap(),
            "{overlay}"
        );
        // The trigger's credentials come from a Secret the overlay names correctly.
        let auth = object(
            &all,
            "TriggerAuthentication",
            trigger["authenticationRef"]["name"].as_str().unwrap(),
        );
        let secret = auth["spec"]["secretTargetRef"][0]["name"].as_str().unwrap();
        if overlay == "dev" {
            object(&all, "Secret", secret);
        }
        assert!(scaled["spec"]["minReplicaCount"].as_u64().unwrap() >= 1);

        for name in ["toolsmith-gateway", "toolsmith-worker"] {
            object(&all, "PodDisruptionBudget", name);
        }
        let hpa = object(&all, "HorizontalPodAutoscaler", "toolsmith-gateway");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "toolsmith-gateway");
    }
}

#[test]
fn sessions_need_no_affinity_and_metrics_are_scraped() {
    for overlay in OVERLAYS {
        let all = render(overlay);
        let service = object(&all, "Service", "toolsmith-gateway");
        assert_eq!(service["spec"]["sessionAffinity"], "None");
        let monitor = object(&all, "ServiceMonitor", "toolsmith");
        let selector = &monitor["spec"]["selector"]["matchLabels"];
        let scraped: Vec<&str> = objects(&all, "Service")
            .into_iter()
            .filter(|s| {
                selector
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
            })
            .map(|s| s["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            scraped,
            ["toolsmith-gateway-metrics", "toolsmith-worker-metrics"],
            "{overlay}"
        );
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
        for name in &scraped {
            assert_eq!(
                object(&all, "Service", name)["spec"]["ports"][0]["name"],
                "metrics"
            );
        }
    }
}

#[test]
fn the_prometheus_rule_carries_the_alert_rules_file() {
    let rules = read_yaml(&root().join("deploy/prometheus/toolsmith-rules.yml"));
    let custom = read_yaml(&root().join("deploy/k8s/base/prometheusrule.yaml"));
    assert_eq!(custom["spec"]["groups"], rules["groups"]);
    assert_eq!(custom["kind"], "PrometheusRule");
}

#[test]
fn production_images_are_pinned_and_built_unprivileged() {
    let all = render("prod");
    for deployment in toolsmith_deployments(&all) {
        let pod = &deployment["spec"]["template"]["spec"];
        let init = pod["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for container in pod["containers"].as_array().unwrap().iter().chain(&init) {
            let image = container["image"].as_str().unwrap();
            let tag = image.rsplit_once(':').map(|(_, tag)| tag);
            assert!(
                tag.is_some_and(|t| t != "latest" && !t.contains('/')),
                "{image} is not pinned"
            );
        }
    }

    let dockerfile = std::fs::read_to_string(root().join("deploy/docker/Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 3, "multi-stage: {stages:?}");
    for target in ["gateway", "worker"] {
        let stage = dockerfile
            .split(&format!(" AS {target}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {target} stage"));
        let stage = stage.split("\nFROM ").next().unwrap();
        assert!(stage.contains("USER 65532:65532"), "{target} runs as root");
    }
    // The worker image's Deno is the version the worker requires and the tests use.
    let pinned = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG DENO_VERSION="))
        .expect("a pinned Deno");
    let (major, minor, patch) = worker::sandbox::MIN_DENO_VERSION;
    assert_eq!(pinned, format!("{major}.{minor}.{patch}"));
    let lib = std::fs::read_to_string(root().join("scripts/lib.sh")).unwrap();
    assert!(lib.contains(&format!("DENO_VERSION=\"{pinned}\"")));
    // The build context holds every workspace member.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for member in ["shared", "worker", "gateway", "migrations"] {
        assert!(manifest.contains(member) || member == "migrations");
        assert!(
            dockerfile.contains(&format!("COPY {member} {member}")),
            "{member}"
        );
        assert!(ignore.contains(&format!("!{member}/")), "{member}");
    }
}
