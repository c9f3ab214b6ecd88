//! The gateway's one typed configuration: flags with `TOOLSMITH_*` environment twins, read
//! once in `main` and passed down.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use shared::config::{SandboxArgs, TelemetryArgs, TimeoutArgs};
use shared::queue::amqp::AmqpArgs;

/// Toolsmith gateway: the self-extending MCP server.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

/// What to do instead of serving. Every command uses the same `--database-url`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage per-tenant quotas.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Manage per-tenant secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Show the audit trail (newest last).
    Audit {
        /// Only this tenant's entries.
        tenant: Option<String>,
        /// How many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and its first API key (printed once, last on the last line).
    Create {
        /// Lowercase letters, digits and '-', starting with a letter.
        name: String,
    },
    /// List tenants with their tool and key counts.
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create another API key for a tenant (printed once, last on the last line).
    Create { tenant: String },
    /// Revoke an API key by its id (the part after `tsk_` and before the next `_`).
    Revoke { key_id: String },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a tenant's quotas; unset ones keep their value (or the gateway's default).
    Set {
        tenant: String,
        #[arg(long)]
        runs_per_minute: Option<i64>,
        #[arg(long)]
        concurrent_runs: Option<i64>,
        #[arg(long)]
        max_tools: Option<i64>,
        #[arg(long)]
        max_code_bytes: Option<i64>,
    },
    /// Show a tenant's quotas.
    Show { tenant: String },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a tenant's secret; the value is read from stdin (one trailing newline dropped).
    Set { tenant: String, name: String },
    /// Print a new random secrets key for TOOLSMITH_SECRETS_KEY.
    NewKey,
}

/// Who may call `/mcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every caller is the one built-in tenant.
    None,
    /// `Authorization: Bearer <API key>`; the key decides the tenant.
    ApiKey,
}

/// Everything the gateway needs to serve.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address for HTTP: MCP at /mcp, plus /healthz, /readyz and /metrics.
    #[arg(long, env = "TOOLSMITH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Separate address for /metrics (plus /healthz and /readyz); /metrics then leaves the
    /// main address. Use it wherever tenants can reach the main address: metrics name
    /// tenants and tools.
    #[arg(long, env = "TOOLSMITH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve MCP over stdin/stdout instead of HTTP (for desktop clients); logs go to stderr.
    #[arg(long)]
    pub stdio: bool,

    /// Registry database: sqlite://FILE (embedded) or mysql://USER:PASS@HOST:PORT/DB.
    #[arg(
        long,
        env = "TOOLSMITH_DATABASE_URL",
        default_value = "sqlite://toolsmith.db",
        global = true,
        hide_default_value = false,
        value_parser = parse_secret
    )]
    pub database_url: SecretString,

    /// Do not apply migrations at startup; instead refuse to start until `gateway migrate`
    /// (run with schema-changing credentials, e.g. by an init container) has applied this
    /// release's migrations. Lets the serving process hold data-only database rights.
    #[arg(long, env = "TOOLSMITH_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    /// RabbitMQ URL (amqp://user:pass@host:5672/%2f). Unset: embedded mode, with an
    /// in-process queue and worker pool.
    #[arg(long, env = "TOOLSMITH_AMQP_URL", value_parser = parse_secret)]
    pub amqp_url: Option<SecretString>,

    #[command(flatten)]
    pub amqp: AmqpArgs,

    /// Host names the HTTP endpoint answers to (Host header check against DNS rebinding).
    /// Defaults to loopback names when listening on loopback, and to any host otherwise.
    #[arg(
        long = "allowed-host",
        env = "TOOLSMITH_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Authentication for /mcp. Default: `api-key`, or `none` when listening on loopback.
    #[arg(long, env = "TOOLSMITH_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// Allow `--auth none` on an address other than loopback.
    #[arg(long, env = "TOOLSMITH_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Key that seals tenant secrets (32 bytes, base64; `gateway secret new-key` makes one).
    /// Kept out of the database; needed to set secrets and to run tools that use them.
    #[arg(long, env = "TOOLSMITH_SECRETS_KEY", value_parser = parse_secret, global = true, hide_env_values = true)]
    pub secrets_key: Option<SecretString>,

    /// Largest tool code accepted, in bytes (a tenant's max_code_bytes quota by default).
    #[arg(long, env = "TOOLSMITH_MAX_CODE_BYTES", default_value_t = 256 * 1024)]
    pub max_code_bytes: usize,

    /// Runs per minute a tenant may start, unless its quota says otherwise.
    #[arg(
        long,
        env = "TOOLSMITH_DEFAULT_RUNS_PER_MINUTE",
        default_value_t = 6000
    )]
    pub default_runs_per_minute: i64,

    /// Runs a tenant may have in flight at once, unless its quota says otherwise.
    #[arg(long, env = "TOOLSMITH_DEFAULT_CONCURRENT_RUNS", default_value_t = 64)]
    pub default_concurrent_runs: i64,

    /// Tools a tenant may store, unless its quota says otherwise.
    #[arg(long, env = "TOOLSMITH_DEFAULT_MAX_TOOLS", default_value_t = 1000)]
    pub default_max_tools: i64,

    /// How long a run may wait for a free worker before its caller gets an error, in ms.
    #[arg(long, env = "TOOLSMITH_QUEUE_WAIT_MS", default_value_t = 30_000)]
    pub queue_wait_ms: u64,

    /// Time an MCP session (2025-11-25) may go unused before it is forgotten, in seconds.
    /// Sessions are kept in the database, so any replica can serve them.
    #[arg(long, env = "TOOLSMITH_SESSION_IDLE_SECS", default_value_t = 86_400)]
    pub session_idle_secs: u64,

    /// Time to finish open requests on shutdown, in seconds.
    #[arg(long, env = "TOOLSMITH_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub sandbox: SandboxArgs,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_owned()))
}

impl Config {
    /// The authentication mode in effect: explicit, else `none` on loopback only.
    pub fn auth_mode(&self) -> AuthMode {
        self.auth.unwrap_or(if self.listen.ip().is_loopback() {
            AuthMode::None
        } else {
            AuthMode::ApiKey
        })
    }

    /// Parses a configuration from arguments (without the program name), for tests and
    /// embedding.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(
            std::iter::once("gateway".into()).chain(args.into_iter().map(Into::into)),
        )?;
        Ok(cli.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn defaults_are_embedded_mode_on_loopback() {
        let config = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url.expose_secret(), "sqlite://toolsmith.db");
        assert!(!config.stdio);
        assert_eq!(config.timeouts.default_timeout_ms, 10_000);
    }

    #[test]
    fn auth_defaults_to_keys_off_loopback() {
        let local = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(local.auth_mode(), AuthMode::None);
        let public = Config::from_args(["--listen", "0.0.0.0:8080"]).unwrap();
        assert_eq!(public.auth_mode(), AuthMode::ApiKey);
        let forced = Config::from_args(["--listen", "0.0.0.0:8080", "--auth", "none"]).unwrap();
        assert_eq!(forced.auth_mode(), AuthMode::None);
    }

    #[test]
    fn admin_commands_parse() {
        let cli =
            Cli::try_parse_from(["gateway", "quota", "set", "acme", "--runs-per-minute", "5"])
                .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Quota(QuotaCommand::Set {
                runs_per_minute: Some(5),
                ..
            }))
        ));
        let cli = Cli::try_parse_from([
            "gateway",
            "tenant",
            "create",
            "acme",
            "--database-url",
            "sqlite://x.db",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Tenant(TenantCommand::Create { .. }))
        ));
    }

    #[test]
    fn migrate_takes_the_database_url_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["gateway", "migrate", "--database-url", "sqlite://x.db"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Migrate)));
        assert_eq!(cli.config.database_url.expose_secret(), "sqlite://x.db");
    }
}
