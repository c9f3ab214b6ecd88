//! The HTTP front: MCP at `/mcp` behind authentication, `/healthz` and `/readyz` for probes,
//! `/metrics` here or on a separate admin address.

pub mod auth;
mod health;
pub mod metrics;
pub mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::mcp::McpHandler;

/// Largest MCP request body accepted (tool code plus schema plus params fit easily).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How `/mcp` is exposed.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Host header values accepted; empty accepts any.
    pub allowed_hosts: Vec<String>,
    /// Whether `/metrics` is served here (no separate admin address).
    pub metrics: bool,
}

/// The gateway's routes.
pub fn router(app: Arc<App>, settings: &HttpSettings, shutdown: CancellationToken) -> Router {
    // Plain JSON answers for stateless (2026-07-28) requests that need no stream: cheaper for
    // both sides, and the HTTP connection stays reusable.
    let mut mcp_config = StreamableHttpServerConfig::default()
        .with_json_response(true)
        .with_cancellation_token(shutdown)
        .with_max_request_body_bytes(MAX_REQUEST_BYTES);
    mcp_config = if settings.allowed_hosts.is_empty() {
        mcp_config.disable_allowed_hosts()
    } else {
        mcp_config.with_allowed_hosts(settings.allowed_hosts.clone())
    };
    // 2025-11-25 sessions live in the database too, so any replica can serve them.
    mcp_config.session_store = Some(app.sessions.clone());
    let handler_app = app.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(McpHandler::http(handler_app.clone())),
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );
    let mcp_routes =
        Router::new()
            .nest_service("/mcp", mcp)
            .layer(axum::middleware::from_fn_with_state(
                app.clone(),
                auth::authenticate,
            ));
    let mut routes = Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route(
            "/.well-known/oauth-protected-resource",
            get(auth::resource_metadata),
        );
    if settings.metrics {
        routes = routes.route("/metrics", get(metrics::scrape));
    }
    routes
        .merge(mcp_routes)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            metrics::count,
        ))
        .with_state(app)
}

/// The admin address's routes: `/metrics` and the probes, nothing a tenant uses.
pub fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(metrics::scrape))
        .with_state(app)
}
