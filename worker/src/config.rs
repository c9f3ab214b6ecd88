//! The worker's one typed configuration: flags with `TOOLSMITH_*` environment twins. A
//! worker takes no database settings: every job carries what its run needs.

use std::net::SocketAddr;

use clap::Parser;
use secrecy::SecretString;

use shared::config::{SandboxArgs, TelemetryArgs};
use shared::queue::amqp::{AmqpArgs, parse_secret};

/// Toolsmith worker: runs tool jobs from RabbitMQ in the Deno sandbox.
#[derive(Debug, Clone, Parser)]
#[command(name = "worker", version, about, long_about = None)]
pub struct Config {
    /// RabbitMQ URL, e.g. amqp://user:pass@rabbitmq:5672/%2f.
    #[arg(long, env = "TOOLSMITH_AMQP_URL", value_parser = parse_secret)]
    pub amqp_url: SecretString,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    /// Address for /metrics, /healthz and /readyz (off when unset).
    #[arg(long, env = "TOOLSMITH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Time runs in flight get to finish after SIGTERM, in seconds.
    #[arg(long, env = "TOOLSMITH_SHUTDOWN_GRACE_SECS", default_value_t = 90)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub sandbox: SandboxArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_url_is_required_and_secret() {
        assert!(Config::try_parse_from(["worker"]).is_err());
        let config = Config::try_parse_from([
            "worker",
            "--amqp-url",
            "amqp://u:p@h/%2f",
            "--concurrency",
            "3",
        ])
        .unwrap();
        assert_eq!(config.sandbox.concurrency(), 3);
        assert!(!format!("{config:?}").contains("u:p"));
    }
}
