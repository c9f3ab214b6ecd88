//! The sandbox's network policy as Deno flags: public addresses only, narrowed to a tool's
//! `allowed_hosts` when it names some. Deno checks `--deny-net` ranges against the address
//! it actually dials, after DNS resolution, so host names that resolve inward are caught.

/// Address ranges no tool may reach: "this" network, private, CGNAT, loopback, link-local
/// (cloud metadata lives at 169.254.169.254), IETF protocol assignments, documentation and
/// benchmarking ranges, multicast, reserved and broadcast.
pub const DENIED_NETWORKS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "[::1]",
    "[::]",
];

/// `--allow-net`, narrowed to the tool's hosts when it lists any.
pub fn allow_net_flag(allowed_hosts: &[String]) -> String {
    if allowed_hosts.is_empty() {
        "--allow-net".to_owned()
    } else {
        // Entries were checked at create time to be host[:port] with no separators.
        format!("--allow-net={}", allowed_hosts.join(","))
    }
}

/// `--deny-net` with every denied range plus `extra` entries.
pub fn deny_net_flag(extra: &[String]) -> String {
    let mut entries: Vec<&str> = DENIED_NETWORKS.to_vec();
    entries.extend(
        extra
            .iter()
            .map(String::as_str)
            .filter(|e| is_deny_entry(e)),
    );
    format!("--deny-net={}", entries.join(","))
}

/// An IPv4 address or CIDR range, or a bracketed IPv6 literal: nothing that could carry a
/// flag or a list separator.
fn is_deny_entry(entry: &str) -> bool {
    let (address, prefix) = entry.split_once('/').unwrap_or((entry, "32"));
    if let Some(inner) = address.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        return prefix == "32" && inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    address.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
}

/// This host's own addresses (a public address of the worker's machine would otherwise lead
/// straight back to its database or broker ports).
pub fn host_addresses() -> Vec<String> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for interface in addresses {
        let Some(address) = interface.address else {
            continue;
        };
        // IPv6 needs no entry: the seccomp filter refuses IPv6 sockets altogether.
        let Some(v4) = address.as_sockaddr_in() else {
            continue;
        };
        let entry = format!("{}/32", v4.ip());
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_net_is_narrowed_to_declared_hosts() {
        assert_eq!(allow_net_flag(&[]), "--allow-net");
        assert_eq!(
            allow_net_flag(&["api.example.com".into(), "example.org:8443".into()]),
            "--allow-net=api.example.com,example.org:8443"
        );
    }

    #[test]
    fn extra_entries_are_checked() {
        let flag = deny_net_flag(&[
            "203.0.113.7/32".into(),
            "[fd00::1]".into(),
            "1.2.3.4,--allow-all".into(),
            "host.example".into(),
        ]);
        assert!(flag.contains("203.0.113.7/32"));
        assert!(flag.contains("[fd00::1]"));
        assert!(!flag.contains("allow-all"));
        assert!(!flag.contains("host.example"));
    }

    #[test]
    fn deny_net_covers_loopback_private_and_metadata() {
        let flag = deny_net_flag(&[]);
        for range in [
            "127.0.0.0/8",
            "10.0.0.0/8",
            "169.254.0.0/16",
            "100.64.0.0/10",
        ] {
            assert!(flag.contains(range), "{range}");
        }
    }
}
