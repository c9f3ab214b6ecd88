//! The Toolsmith gateway: authenticates callers, serves MCP (HTTP or stdio), keeps the tool
//! registry, validates params and puts run jobs on the queue. In embedded mode it also runs
//! the worker pool in-process.

pub mod admin;
pub mod app;
pub mod cache;
pub mod caller;
pub mod config;
pub mod drain;
pub mod http;
pub mod mcp;
pub mod quota;
mod run;
pub mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shared::registry::{self, RegistryError};

pub use app::{App, StartError};

/// Time between the last call finishing and MCP sessions closing at shutdown.
const RESPONSE_FLUSH: Duration = Duration::from_millis(500);
pub use config::{Cli, Command, Config};

/// A started gateway, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    app: Arc<App>,
    config: Config,
    shutdown: CancellationToken,
    /// Stops the queue, worker pool and change follower; cancelled only after serving has
    /// drained, so calls in flight at shutdown still get their results.
    background: tokio_util::sync::DropGuard,
}

impl Gateway {
    /// Connects the registry (migrating it) and starts the background work. Everything
    /// stops when `shutdown` is cancelled.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        let background = CancellationToken::new();
        let app = App::start(&config, &background).await?;
        Ok(Self {
            app,
            config,
            shutdown,
            background: background.drop_guard(),
        })
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves HTTP on `listener` until shutdown. On shutdown `/readyz` starts failing, no
    /// new connections are taken, calls in flight finish (within the grace period), then
    /// MCP sessions and streams are closed.
    pub async fn serve_http(self, listener: TcpListener) -> Result<(), StartError> {
        let addr = listener.local_addr().map_err(StartError::Serve)?;
        let settings = http::HttpSettings {
            allowed_hosts: allowed_hosts(&self.config),
            metrics: self.config.metrics_listen.is_none(),
        };
        let admin = match self.config.metrics_listen {
            Some(admin_addr) => Some(self.serve_admin(admin_addr).await?),
            None => None,
        };
        let sessions = CancellationToken::new();
        let router = http::router(self.app.clone(), &settings, sessions.clone());
        tracing::info!(%addr, "serving MCP at http://{addr}/mcp");
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let app = self.app.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let in_flight = app.drain.in_flight();
            tracing::info!(in_flight, "draining calls in flight");
            if !app.drain.drain(grace).await {
                tracing::warn!(
                    in_flight = app.drain.in_flight(),
                    "calls still in flight after the grace period"
                );
            }
            // A call counts as finished when its handler returns; give the transport a
            // moment to write the last responses before the sessions close.
            tokio::time::sleep(RESPONSE_FLUSH).await;
            sessions.cancel();
        });
        let shutdown = self.shutdown.clone();
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .into_future();
        tokio::pin!(serve);
        tokio::select! {
            served = &mut serve => served.map_err(StartError::Serve)?,
            () = async {
                self.shutdown.cancelled().await;
                tokio::time::sleep(grace + Duration::from_secs(5)).await;
            } => tracing::warn!("connections still open after the grace period"),
        }
        if let Some(admin) = admin {
            admin.cancel();
        }
        drop(self.background);
        tracing::info!("gateway stopped");
        Ok(())
    }

    /// Serves `/metrics` and the probes on their own address until the returned token is
    /// cancelled (after the main address has drained, so probes answer throughout).
    async fn serve_admin(&self, addr: SocketAddr) -> Result<CancellationToken, StartError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let bound = listener.local_addr().map_err(StartError::Serve)?;
        tracing::info!(addr = %bound, "serving /metrics at http://{bound}/metrics");
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let router = http::admin_router(self.app.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(error = %error, "the metrics address stopped serving");
            }
        });
        Ok(stop)
    }

    /// Serves MCP over stdin/stdout for one local tenant until the client disconnects or
    /// shutdown.
    pub async fn serve_stdio(self) -> Result<(), StartError> {
        let handler = mcp::McpHandler::local(self.app.clone(), caller::Caller::local());
        let running = handler
            .serve_with_ct(rmcp::transport::stdio(), self.shutdown.child_token())
            .await
            .map_err(|error| StartError::Serve(std::io::Error::other(error)))?;
        tracing::info!("serving MCP on stdio");
        running
            .waiting()
            .await
            .map_err(|error| StartError::Serve(std::io::Error::other(error)))?;
        self.shutdown.cancel();
        drop(self.background);
        Ok(())
    }
}

fn allowed_hosts(config: &Config) -> Vec<String> {
    if !config.allowed_hosts.is_empty() {
        return config.allowed_hosts.clone();
    }
    if config.listen.ip().is_loopback() {
        return vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    }
    Vec::new()
}

/// Runs the gateway as configured until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let stdio = config.stdio;
    let listen = config.listen;
    let gateway = Gateway::start(config, shutdown).await?;
    if stdio {
        return gateway.serve_stdio().await;
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    gateway.serve_http(listener).await
}

/// Applies pending migrations and returns.
pub async fn migrate(config: &Config) -> Result<(), RegistryError> {
    registry::connect(config.database_url.expose_secret(), true).await?;
    Ok(())
}
