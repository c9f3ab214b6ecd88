//! A "public" web server the sandbox may reach: a network namespace holding a public-range
//! address, routed from this host over a veth pair, running `tests/python/public_host.py`.
//! It lets tests show both sides of the egress policy: the public host answers, and its
//! redirects into private space are refused. Needs root (`ip netns`, `ip link`).

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::within;

pub struct PublicHost {
    /// The public address, e.g. `1.2.7.19`.
    pub ip: String,
    namespace: String,
    host_link: String,
    _server: Child,
}

fn ip(args: &[&str]) {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("the `ip` command (iproute2) is installed");
    assert!(
        output.status.success(),
        "ip {args:?} failed (these tests need root): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PublicHost {
    pub async fn start() -> Self {
        let id = uuid::Uuid::new_v4();
        let bytes = id.as_bytes();
        let (a, b) = (bytes[0] % 250 + 2, bytes[1] % 250 + 2);
        let tag = &id.simple().to_string()[..8];
        let namespace = format!("tspub-{tag}");
        let host_link = format!("tsh{tag}");
        let inner_link = format!("tsn{tag}");
        let public_ip = format!("1.2.{a}.{b}");
        let host_side = format!("10.213.{a}.{b}");
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
        ]);
        ip(&["link", "set", &inner_link, "netns", &namespace]);
        ip(&["addr", "add", &format!("{host_side}/32"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&[
            "route",
            "add",
            &format!("{public_ip}/32"),
            "dev",
            &host_link,
        ]);
        let inside = |args: &[&str]| {
            let mut full = vec!["netns", "exec", namespace.as_str(), "ip"];
            full.extend_from_slice(args);
            ip(&full);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&[
            "addr",
            "add",
            &format!("{public_ip}/32"),
            "dev",
            &inner_link,
        ]);
        inside(&["link", "set", &inner_link, "up"]);
        inside(&[
            "route",
            "add",
            &format!("{host_side}/32"),
            "dev",
            &inner_link,
        ]);
        inside(&[
            "route",
            "add",
            "default",
            "via",
            &host_side,
            "dev",
            &inner_link,
            "onlink",
        ]);

        let mut server = Command::new("ip")
            .args(["netns", "exec", &namespace, "python3"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/public_host.py"
            ))
            .args([public_ip.as_str(), "80"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the public host's server");
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let ready = within(20, lines.next_line()).await.expect("server output");
        assert_eq!(ready.as_deref(), Some("ready"));
        Self {
            ip: public_ip,
            namespace,
            host_link,
            _server: server,
        }
    }
}

impl Drop for PublicHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .output();
    }
}
