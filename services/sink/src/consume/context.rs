//! librdkafka's context for the sink's consumer: statistics become the lag metric, rebalances
//! become metrics, and a revoke hands the revoked partitions over cleanly (their unwritten
//! messages dropped by the loop, their writes in flight waited for, their offsets stored).
//!
//! It runs on librdkafka's callbacks, inside the consume loop's poll: it must never wait
//! longer than [`REVOKE_DRAIN_TIMEOUT`], and never store an offset [`Progress`] did not
//! release.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Statistics, TopicPartitionList};

use super::offsets::{store_offsets, Progress};
use super::REVOKE_DRAIN_TIMEOUT;
use crate::metrics::Metrics;

/// The consumer's librdkafka context: statistics and rebalance events become metrics.
pub struct SinkContext {
    /// Metrics to update.
    pub(super) metrics: Metrics,
    /// Partitions revoked since the consume loop last looked, and whether there are any.
    revoked: Mutex<Vec<i32>>,
    any_revoked: AtomicBool,
    /// Offset bookkeeping of the batches being written.
    pub(super) progress: Arc<Progress>,
}

impl SinkContext {
    /// A context updating `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            revoked: Mutex::default(),
            any_revoked: AtomicBool::new(false),
            progress: Arc::default(),
        }
    }

    /// The partitions revoked since the last call (cheap when there are none).
    pub(super) fn take_revoked(&self) -> Vec<i32> {
        // A plain load on the per-message path; the swap only after a rebalance.
        if !self.any_revoked.load(Ordering::Acquire) || !self.any_revoked.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.revoked.lock().expect("lock"))
    }
}

impl ClientContext for SinkContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" partition; lag -1 is unknown.
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic, &p.to_string()])
                        .set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                tracing::info!(partitions = ?partitions(tpl), "Partitions assigned.");
            }
            Rebalance::Revoke(tpl) => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                let revoked = partitions(tpl);
                tracing::info!(partitions = ?revoked, "Partitions revoked.");
                for (topic, p) in &revoked {
                    let _ = self.metrics.consumer_lag.remove_label_values(&[topic, &p.to_string()]);
                }
                let ps: Vec<i32> = revoked.iter().map(|(_, p)| *p).collect();
                // The consume loop drops the revoked partitions' messages it has not started to
                // write (it looks before taking the next message, which librdkafka returns only
                // after this callback).
                self.revoked.lock().expect("lock").extend(&ps);
                self.any_revoked.store(true, Ordering::Release);
                self.drain(consumer, tpl, &ps);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance error."),
        }
    }
}

impl SinkContext {
    /// Waits (at most [`REVOKE_DRAIN_TIMEOUT`]) for the writes in flight that hold messages of
    /// the revoked partitions `ps`, then stores their offsets while the partitions are still
    /// assigned; librdkafka commits them on unassign (`enable.auto.commit`), so the new owner
    /// starts after them. Called from the rebalance callback, on the thread polling the
    /// consumer, which is the consume loop's: the write tasks run on the runtime's other
    /// workers meanwhile ([`tokio::task::block_in_place`]).
    fn drain(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, ps: &[i32]) {
        let wait = || self.progress.wait_written(ps, REVOKE_DRAIN_TIMEOUT);
        let started = Instant::now();
        let drained = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            // A current-thread runtime cannot run the writes while this thread waits.
            Ok(_) => false,
            Err(_) => wait(),
        };
        if !drained {
            tracing::warn!(
                partitions = ?ps,
                "Revoked partitions still have writes in flight; the new owner will replay them (duplicates are absorbed)."
            );
        }
        let ready = self.progress.take_ready(Some(ps));
        if let (Some(e), false) = (tpl.elements().first(), ready.is_empty()) {
            if let Err(e) = store_offsets(consumer, e.topic(), &ready, &self.metrics) {
                tracing::warn!(error = %e, "Could not store the revoked partitions' offsets; the new owner will replay them.");
            }
        }
        self.progress.forget(ps);
        tracing::debug!(partitions = ?ps, drained, waited_ms = started.elapsed().as_millis() as u64, "Revoked partitions drained.");
    }
}

/// The (topic, partition) pairs of `tpl`, for logs and metric labels.
pub(super) fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}
