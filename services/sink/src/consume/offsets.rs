//! Offsets: which offsets may be stored, given batches written concurrently that commit in any
//! order ([`Watermark`], inside [`Progress`], which the write tasks, the loop and the
//! rebalance callback share), and storing them ([`store_offsets`]).
//!
//! It must never release an offset past a message whose transaction has not committed, nor
//! past one of a batch that was given up: stored offsets only move forward, in consumption
//! order per partition.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::SinkContext;
use crate::metrics::Metrics;

/// What became of a batch, as far as its offsets are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    /// Being written (or retried).
    InFlight,
    /// Committed: its offsets may be stored once every earlier batch of the partition is.
    Committed,
    /// Given up (shutdown, fatal error): its offsets, and every later one of the same
    /// partitions, must never be stored.
    Abandoned,
}

/// Per partition, the batches holding its messages in consumption order, so that an offset is
/// stored only when every batch before it (for that partition) has committed, even when later
/// batches, written concurrently, commit first.
#[derive(Default)]
struct Watermark {
    /// partition → (batch sequence number, the batch's highest offset in it, state).
    partitions: BTreeMap<i32, VecDeque<(u64, i64, Write)>>,
}

impl Watermark {
    /// Registers batch `seq` (sequence numbers increase) with its highest offset per partition.
    fn open(&mut self, seq: u64, offsets: &BTreeMap<i32, i64>) {
        for (&p, &o) in offsets {
            self.partitions
                .entry(p)
                .or_default()
                .push_back((seq, o, Write::InFlight));
        }
    }

    /// Records what became of batch `seq`; returns, per partition, the highest offset that is
    /// now committed together with every batch before it (empty when none moved).
    fn finished(&mut self, seq: u64, state: Write) -> BTreeMap<i32, i64> {
        let mut ready = BTreeMap::new();
        for (&p, queue) in &mut self.partitions {
            if let Some(entry) = queue.iter_mut().find(|(s, _, _)| *s == seq) {
                entry.2 = state;
            }
            while let Some(&(_, offset, Write::Committed)) = queue.front() {
                queue.pop_front();
                ready.insert(p, offset);
            }
        }
        self.partitions.retain(|_, q| !q.is_empty());
        ready
    }

    /// Whether a batch holding messages of any of `partitions` is still being written.
    fn writing(&self, partitions: &[i32]) -> bool {
        partitions.iter().any(|p| {
            self.partitions
                .get(p)
                .is_some_and(|q| q.iter().any(|(_, _, w)| *w == Write::InFlight))
        })
    }

    /// Forgets `partitions` (after they were revoked: a later assignment starts afresh from
    /// the committed offset).
    fn forget(&mut self, partitions: &[i32]) {
        self.partitions.retain(|p, _| !partitions.contains(p));
    }

    /// Whether every registered batch has committed (nothing blocks an offset store).
    fn is_clear(&self) -> bool {
        self.partitions.is_empty()
    }
}

/// Offset bookkeeping shared by the consume loop, its write tasks and the rebalance callback:
/// the write tasks record their commits here themselves, so that the callback can wait for
/// them while the loop is blocked in it.
#[derive(Default)]
pub(super) struct Progress {
    state: Mutex<ProgressState>,
    /// Notified whenever a batch finishes.
    changed: Condvar,
}

#[derive(Default)]
struct ProgressState {
    watermark: Watermark,
    /// Offsets (of the last committed message) that may be stored and have not been yet.
    ready: BTreeMap<i32, i64>,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether every batch registered so far has committed (nothing blocks an offset store).
    pub(super) fn is_clear(&self) -> bool {
        self.lock().watermark.is_clear()
    }

    /// Forgets revoked `partitions` ([`Watermark::forget`]).
    pub(super) fn forget(&self, partitions: &[i32]) {
        self.lock().watermark.forget(partitions);
    }

    pub(super) fn open(&self, seq: u64, offsets: &BTreeMap<i32, i64>) {
        self.lock().watermark.open(seq, offsets);
    }

    pub(super) fn finished(&self, seq: u64, state: Write) {
        let mut s = self.lock();
        let ready = s.watermark.finished(seq, state);
        s.ready.extend(ready);
        drop(s);
        self.changed.notify_all();
    }

    /// Takes the offsets that may be stored (all partitions, or only `only`).
    pub(super) fn take_ready(&self, only: Option<&[i32]>) -> BTreeMap<i32, i64> {
        let mut s = self.lock();
        match only {
            None => std::mem::take(&mut s.ready),
            Some(ps) => {
                let (taken, kept) = std::mem::take(&mut s.ready)
                    .into_iter()
                    .partition(|(p, _)| ps.contains(p));
                s.ready = kept;
                taken
            }
        }
    }

    /// Waits until no batch holding `partitions` is being written, or `timeout` passed;
    /// returns whether they all finished.
    pub(super) fn wait_written(&self, partitions: &[i32], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.watermark.writing(partitions) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// Stores, for each partition of `topic` in `ready`, the offset after its last written message
/// (librdkafka `rd_kafka_offsets_store`: refused for partitions not assigned any more);
/// auto-commit then commits them.
pub(super) fn store_offsets<C: Consumer<SinkContext>>(
    consumer: &C,
    topic: &str,
    ready: &BTreeMap<i32, i64>,
    metrics: &Metrics,
) -> rdkafka::error::KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in ready {
        tpl.add_partition_offset(topic, p, Offset::Offset(o + 1))?;
    }
    consumer.store_offsets(&tpl)?;
    metrics
        .last_offset_store
        .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn offsets_are_released_only_up_to_the_first_unwritten_batch_of_the_partition() {
        let mut w = Watermark::default();
        w.open(0, &offsets(&[(0, 10), (2, 4)]));
        w.open(1, &offsets(&[(0, 20), (1, 7)]));
        w.open(2, &offsets(&[(0, 30)]));
        // Batch 1 commits first: partition 1 has no earlier batch, partition 0 waits for batch 0.
        assert_eq!(w.finished(1, Write::Committed), offsets(&[(1, 7)]));
        assert!(w.finished(2, Write::Committed).is_empty());
        assert!(w.writing(&[0]) && w.writing(&[2]) && !w.writing(&[1]));
        // Batch 0 commits: everything up to batch 2, the highest offset per partition.
        assert_eq!(w.finished(0, Write::Committed), offsets(&[(0, 30), (2, 4)]));
        assert!(w.is_clear());
        w.open(3, &offsets(&[(2, 5)]));
        assert_eq!(w.finished(3, Write::Committed), offsets(&[(2, 5)]));
    }

    #[test]
    fn an_abandoned_batch_blocks_its_partitions_until_they_are_forgotten() {
        let mut w = Watermark::default();
        w.open(0, &offsets(&[(0, 10), (1, 3)]));
        w.open(1, &offsets(&[(0, 20), (1, 9), (2, 1)]));
        assert!(w.finished(0, Write::Abandoned).is_empty());
        assert_eq!(w.finished(1, Write::Committed), offsets(&[(2, 1)]));
        assert!(!w.writing(&[0, 1, 2]), "nothing is being written any more");
        assert!(!w.is_clear(), "offsets past the abandoned batch must never be stored");
        w.forget(&[0, 1]);
        assert!(w.is_clear());
        // A batch that finishes after its partitions were forgotten changes nothing.
        w.open(2, &offsets(&[(3, 1)]));
        assert!(w.finished(1, Write::Committed).is_empty());
        assert!(w.writing(&[3]));
    }

    #[test]
    fn a_revoke_waits_for_the_write_of_its_partitions_only() {
        let progress = Arc::new(Progress::default());
        progress.open(0, &offsets(&[(0, 10)]));
        progress.open(1, &offsets(&[(1, 5)]));
        assert!(
            progress.wait_written(&[2], Duration::ZERO),
            "no write holds partition 2"
        );
        assert!(
            !progress.wait_written(&[0], Duration::from_millis(10)),
            "batch 0 is in flight"
        );
        let writer = {
            let progress = progress.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                progress.finished(0, Write::Committed);
            })
        };
        assert!(progress.wait_written(&[0], Duration::from_secs(10)));
        writer.join().unwrap();
        assert_eq!(progress.take_ready(Some(&[1])), offsets(&[]));
        assert_eq!(progress.take_ready(Some(&[0])), offsets(&[(0, 10)]));
        assert!(progress.take_ready(None).is_empty());
    }
}
