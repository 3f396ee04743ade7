//! The shutdown signal every listener watches: `serve` flips it on SIGTERM/SIGINT, the inbound
//! and admin accept loops stop accepting and drain.

use tokio::sync::watch;

/// Resolves once shutdown has been requested (or the sender is gone).
pub async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here rather than hold it in a select!.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
