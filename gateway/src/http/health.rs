//! Probes: `/healthz` says the process serves HTTP; `/readyz` says it can do its job (the
//! registry answers and jobs can be queued).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::App;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn live() -> &'static str {
    "ok"
}

pub async fn ready(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    if app.drain.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        );
    }
    let registry = match tokio::time::timeout(CHECK_TIMEOUT, app.registry.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 2 s".to_owned()),
    };
    let queue = match tokio::time::timeout(CHECK_TIMEOUT, app.queue.ready()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 2 s".to_owned()),
    };
    if let Err(error) = &registry {
        tracing::warn!(error = %error, "not ready: registry");
    }
    if let Err(error) = &queue {
        tracing::warn!(error = %error, "not ready: queue");
    }
    let status = if registry.is_ok() && queue.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let describe = |check: &Result<(), String>| match check {
        Ok(()) => json!("ok"),
        // Details stay in the logs: probes are often reachable from outside.
        Err(_) => json!("unavailable"),
    };
    (
        status,
        Json(json!({"registry": describe(&registry), "queue": describe(&queue)})),
    )
}
