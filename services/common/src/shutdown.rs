//! Shutdown on SIGTERM (what Kubernetes and `docker stop` send) and SIGINT (Ctrl-C).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancels `token` on the first SIGTERM or SIGINT.
///
/// # Panics
/// When the signal handlers cannot be installed (only possible outside a Tokio runtime).
pub fn cancel_on_signals(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            () = token.cancelled() => return,
        };
        tracing::info!(signal = name, "Shutdown requested.");
        token.cancel();
    });
}

/// Waits for the tracked tasks to finish, at most `grace`. Returns `false` (and logs) when the
/// grace period ran out first.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    match tokio::time::timeout(grace, tracker.wait()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::error!(
                grace_seconds = grace.as_secs_f64(),
                tasks = tracker.len(),
                "Grace period ran out; exiting with tasks still running."
            );
            false
        }
    }
}

/// Runs `fut` until it ends or `token` is cancelled, whichever comes first.
pub async fn until_cancelled<F: Future>(token: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        () = token.cancelled() => None,
        out = fut => Some(out),
    }
}
