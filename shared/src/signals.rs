//! Shutdown on signals: the first SIGTERM or SIGINT cancels the root token so every component
//! drains; a second one exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM/SIGINT and exits the process on the second.
pub async fn cancel_on_signal(token: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for shutdown signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down; a second signal stops at once");
    token.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
