//! The gateway's shared state and how it is wired: registry, queue, change bus, cache and
//! MCP listeners. Embedded mode wires an in-process queue to an in-process worker pool.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use shared::config::{SandboxArgs, TimeoutArgs};
use shared::queue::amqp::{AmqpClient, AmqpMetrics, Topology};
use shared::queue::memory::{self, MemoryBus, MemoryQueue};
use shared::queue::{ChangeBus, JobQueue};
use shared::registry::{self, Registry, RegistryError, TenantStore};
use shared::secrets::SecretsKey;
use worker::metrics::WorkerMetrics;
use worker::{Pool, Sandbox, SandboxError};

use crate::cache::ToolCache;
use crate::config::{AuthMode, Config};
use crate::drain::Drain;
use crate::http::auth::Authenticator;
use crate::http::metrics::GatewayMetrics;
use crate::http::sessions::SharedSessions;
use crate::mcp::Listeners;
use crate::quota::{QuotaDefaults, Quotas};

/// How long a cached tool is trusted without a change event.
const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_CAPACITY: usize = 10_000;
/// Jobs the in-process queue holds before callers wait.
const MEMORY_QUEUE_CAPACITY: usize = 1024;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("secrets key: {0}")]
    SecretsKey(#[from] shared::secrets::SecretsError),
    #[error(
        "refusing to serve without authentication on {0}, which is not loopback: use \
         --auth api-key, or --allow-unauthenticated if this is really meant"
    )]
    Unauthenticated(std::net::SocketAddr),
}

/// Settings the request path reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub timeouts: TimeoutArgs,
    pub sandbox: SandboxArgs,
    pub queue_wait_ms: u64,
}

/// Everything a request needs, shared by all requests.
pub struct App {
    pub registry: Arc<dyn Registry>,
    pub tenants: Arc<dyn TenantStore>,
    pub quotas: Arc<Quotas>,
    pub auth: Authenticator,
    pub secrets_key: Option<Arc<SecretsKey>>,
    pub queue: Arc<dyn JobQueue>,
    pub bus: Arc<dyn ChangeBus>,
    pub cache: ToolCache,
    pub listeners: Listeners,
    pub sessions: Arc<SharedSessions>,
    pub drain: Drain,
    pub metrics: GatewayMetrics,
    pub settings: Settings,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("settings", &self.settings)
            .finish()
    }
}

impl App {
    /// Connects the registry (applying migrations) and the job queue: RabbitMQ when an AMQP
    /// URL is set, otherwise an in-process queue and worker pool. Background tasks stop
    /// when `shutdown` fires.
    pub async fn start(
        config: &Config,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Self>, StartError> {
        let mode = config.auth_mode();
        if !config.stdio
            && mode == AuthMode::None
            && !config.listen.ip().is_loopback()
            && !config.allow_unauthenticated
        {
            return Err(StartError::Unauthenticated(config.listen));
        }
        let secrets_key = config
            .secrets_key
            .as_ref()
            .map(|key| SecretsKey::from_base64(key.expose_secret()).map(Arc::new))
            .transpose()?;
        let registry =
            registry::connect(config.database_url.expose_secret(), !config.skip_migrations).await?;
        let tenants: Arc<dyn TenantStore> = registry.clone();
        let sessions = SharedSessions::start(
            registry.clone(),
            Duration::from_secs(config.session_idle_secs),
            shutdown.child_token(),
        );
        let quotas = Quotas::new(
            QuotaDefaults {
                runs_per_minute: config.default_runs_per_minute,
                concurrent_runs: config.default_concurrent_runs,
                max_tools: config.default_max_tools,
                max_code_bytes: i64::try_from(config.max_code_bytes).unwrap_or(i64::MAX),
            },
            tenants.clone(),
            config.amqp_url.is_some(),
        );
        let prometheus = shared::metrics::registry();
        let max_tools = config.telemetry.metrics_max_tools;
        let (queue, bus): (Arc<dyn JobQueue>, Arc<dyn ChangeBus>) = match &config.amqp_url {
            Some(url) => {
                let client = AmqpClient::start(
                    url.clone(),
                    Topology::new(&config.amqp),
                    AmqpMetrics::register(&prometheus)?,
                    shutdown.child_token(),
                );
                if !client.wait_connected(Duration::from_secs(10)).await {
                    tracing::warn!(
                        "RabbitMQ is not reachable yet; serving as not ready until it is"
                    );
                }
                (Arc::new(client.clone()), Arc::new(client))
            }
            None => {
                let metrics = Arc::new(WorkerMetrics::register(&prometheus, max_tools)?);
                let queue = start_embedded_pool(config, metrics, shutdown).await?;
                (Arc::new(queue), Arc::new(MemoryBus::new()))
            }
        };
        let app = Arc::new(Self {
            registry,
            auth: Authenticator::new(mode, tenants.clone()),
            tenants,
            quotas,
            secrets_key,
            queue,
            bus,
            cache: ToolCache::new(CACHE_TTL, CACHE_CAPACITY),
            listeners: Listeners::default(),
            sessions,
            drain: Drain::default(),
            metrics: GatewayMetrics::register(prometheus, max_tools)?,
            settings: Settings {
                timeouts: config.timeouts.clone(),
                sandbox: config.sandbox.clone(),
                queue_wait_ms: config.queue_wait_ms,
            },
        });
        tokio::spawn(follow_changes(app.clone(), shutdown.child_token()));
        Ok(app)
    }
}

/// Embedded mode: an in-process queue feeding an in-process worker pool.
async fn start_embedded_pool(
    config: &Config,
    metrics: Arc<WorkerMetrics>,
    shutdown: &CancellationToken,
) -> Result<MemoryQueue, StartError> {
    let sandbox = Arc::new(
        Sandbox::new(&config.sandbox)
            .await?
            .with_metrics(metrics.clone()),
    );
    tracing::info!(
        deno = %config.sandbox.deno.display(),
        version = sandbox.deno_version(),
        "sandbox ready"
    );
    let (queue, source) = memory::channel(MEMORY_QUEUE_CAPACITY);
    let pool = Pool::new(
        sandbox,
        config.sandbox.concurrency(),
        Duration::from_secs(config.shutdown_grace_secs),
        metrics,
    );
    tracing::info!(
        concurrency = pool.concurrency(),
        "in-process worker pool started"
    );
    tokio::spawn(pool.run(source, shutdown.child_token()));
    Ok(queue)
}

/// Applies change events from every replica: drop the cached entry, tell the tenant's MCP
/// listeners the list changed.
async fn follow_changes(app: Arc<App>, shutdown: CancellationToken) {
    let mut events = app.bus.subscribe();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = shutdown.cancelled() => return,
        };
        match event {
            Ok(event) => {
                app.cache.remove(&event.tenant, &event.tool);
                app.listeners.notify(&event.tenant);
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "change events were missed; dropping the whole cache"
                );
                app.cache.clear();
                app.listeners.notify_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}
