//! One batch write, as its own task: decode the batch, write it in one transaction, and
//! retry transient failures ([`crate::retry`]) until they pass or the sink stops.
//!
//! It never stores an offset (the loop and [`super::offsets`] do, once the write committed)
//! and never gives up on a transient failure by itself.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::batch::Batch;
use crate::metrics::Metrics;
use crate::retry::{self, GaveUp};
use crate::store::{Store, StoreError, WriteOutcome};

/// A committed batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    /// What the transaction did.
    pub outcome: WriteOutcome,
    /// Messages dead-lettered because they did not decode (class `decode`).
    pub undecodable: u64,
}

/// Writes `batch`, retrying transient failures with [`retry::WRITE`]'s backoff (a wait after
/// a lost connection ends early once the database answers again) until they pass or `stop`
/// is cancelled.
///
/// # Errors
/// [`GaveUp::Fatal`] when PostgreSQL refuses the batch for a reason that is not transient;
/// [`GaveUp::Stopped`] when `stop` came first.
pub(super) async fn write_batch(
    store: Store,
    metrics: Metrics,
    topic: String,
    mut batch: Batch,
    stop: CancellationToken,
) -> Result<Written, GaveUp<StoreError>> {
    batch.decode(&topic);
    tracing::debug!(rows = batch.rows.len(), dead_letters = batch.dead.len(), last_offsets = ?batch.offsets, "Writing a batch.");
    let (store, metrics, batch) = (&store, &metrics, &batch);
    let attempt = move || async move {
        let t = Instant::now();
        let outcome = store.write(&batch.rows, &batch.dead).await?;
        metrics.transaction_seconds.observe(t.elapsed().as_secs_f64());
        Ok(outcome)
    };
    let on_retry = |e: &StoreError, wait: std::time::Duration| {
        metrics.retries.with_label_values(&[e.retry_label()]).inc();
        tracing::warn!(code = %e.code, error = %e.message, retry_in_ms = wait.as_millis() as u64, rows = batch.len(), "Batch write failed; retrying.");
    };
    match retry::until_stopped(retry::WRITE, &stop, Some(store), attempt, on_retry).await {
        Ok(outcome) => {
            metrics.batch_rows.observe(batch.len() as f64);
            Ok(Written {
                outcome,
                undecodable: batch.dead.len() as u64,
            })
        }
        Err(GaveUp::Fatal(e)) => {
            tracing::error!(code = %e.code, error = %e.message, "Batch write failed with a non-retryable error.");
            Err(GaveUp::Fatal(e))
        }
        Err(stopped) => Err(stopped),
    }
}
