//! The worker's small HTTP server: `/healthz` (the process is up), `/readyz` (consuming
//! from the broker) and `/metrics`.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use prometheus::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Serves the probes until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    consuming: watch::Receiver<bool>,
    registry: Registry,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let body = shared::metrics::encode(&registry);
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = *consuming.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "consuming")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not connected to the broker",
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
