//! The rollup job: every `ROLLUP_INTERVAL`, one [`Store::rollup_once`] pass recomputes the
//! status page's rollups, incidents and target states for the history written since the last
//! pass (see `store::rollup`), then updates its gauges. Every replica runs it; an advisory
//! lock lets one pass run at a time, and a replica that finds it taken skips its turn.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// Runs passes every `interval` until `stop`.
pub async fn run(store: Store, metrics: Metrics, interval: Duration, stop: CancellationToken) {
    loop {
        once(&store, &metrics).await;
        if common::shutdown::until_cancelled(&stop, tokio::time::sleep(interval))
            .await
            .is_none()
        {
            break;
        }
    }
}

/// One pass and its metrics; errors are logged and counted (the next pass retries: marks
/// stay until a pass commits).
pub async fn once(store: &Store, metrics: &Metrics) {
    let t = Instant::now();
    match store.rollup_once().await {
        Ok(r) => {
            metrics.rollup_runs.with_label_values(&["ok"]).inc();
            if r.hours > 0 {
                tracing::debug!(hours = r.hours, targets = r.targets, "Rollup pass.");
            }
        }
        Err(e) => {
            metrics.rollup_runs.with_label_values(&["error"]).inc();
            tracing::warn!(error = %e, "Rollup pass failed; retrying next interval.");
        }
    }
    metrics.rollup_seconds.observe(t.elapsed().as_secs_f64());
    match store.rollup_status().await {
        Ok((lag, open)) => {
            metrics.rollup_lag.set(lag);
            metrics.open_incidents.set(open);
        }
        Err(e) => tracing::warn!(error = %e, "Could not read the rollup job's gauges."),
    }
}
