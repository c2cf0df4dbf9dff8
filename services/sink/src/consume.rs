//! The consume loop: Kafka messages → batches → PostgreSQL → stored offsets.
//!
//! Invariants:
//! - An offset is stored only after the transaction holding its row (or its dead letter) has
//!   committed, and only when every batch consumed before it has committed too (the
//!   [`Watermark`]): up to `WRITE_CONCURRENCY` batches are written at once and may commit out
//!   of order. Auto-commit then commits stored offsets (librdkafka `enable.auto.offset.store=false`,
//!   `enable.auto.commit=true`). After a crash the group resumes at or before the first
//!   unwritten message: at-least-once delivery, and `ON CONFLICT DO NOTHING` on the
//!   deterministic `check_id` turns replays into no-ops (exactly-once effect).
//! - The loop keeps polling while batches are being written or retried, filling the next
//!   batch. When every write slot is busy and that batch is full too, it stops taking messages
//!   (they wait in librdkafka's bounded queue) until a write commits. It does not pause
//!   partitions: with librdkafka 2.x against tansu, pause/resume (even followed by a seek) was
//!   seen to skip the messages that were prefetched when the pause came. A write stuck longer
//!   than `max.poll.interval.ms` (default 5 min) makes the group reassign the partitions; the
//!   sink rejoins when the write completes, its offset stores for lost partitions fail, and
//!   the replay is absorbed by `ON CONFLICT DO NOTHING`.
//! - On revoke, messages of the revoked partitions that are not being written yet are dropped
//!   (their new owner consumes them); writes in flight finish, and their offset stores for
//!   those partitions are refused.
//! - A message that is not a probe result is dead-lettered, never dropped and never fatal.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::admin::Heartbeat;
use common::result::ProbeResult;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rand::Rng;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{DeadLetter, ErrorClass, Row, Store, StoreError, WriteOutcome};

/// The consumer's librdkafka context: statistics and rebalance events become metrics.
pub struct SinkContext {
    /// Metrics to update.
    metrics: Metrics,
    /// Partitions revoked since the consume loop last looked, and whether there are any.
    revoked: Mutex<Vec<i32>>,
    any_revoked: AtomicBool,
}

impl SinkContext {
    /// A context updating `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            revoked: Mutex::default(),
            any_revoked: AtomicBool::new(false),
        }
    }

    /// The partitions revoked since the last call (cheap when there are none).
    fn take_revoked(&self) -> Vec<i32> {
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
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                tracing::info!(partitions = ?partitions(tpl), "Partitions assigned.");
            }
            Rebalance::Revoke(tpl) => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                // The consume loop drops the revoked partitions' messages it has not started to
                // write (it looks before taking the next message, which librdkafka returns only
                // after this callback). Writes already in flight finish; their offset stores
                // for these partitions are refused (stores are checked against the assignment)
                // and the new owner's replay is absorbed by ON CONFLICT DO NOTHING.
                let revoked = partitions(tpl);
                for (topic, p) in &revoked {
                    let _ = self.metrics.consumer_lag.remove_label_values(&[topic, &p.to_string()]);
                }
                self.revoked
                    .lock()
                    .expect("lock")
                    .extend(revoked.iter().map(|(_, p)| *p));
                self.any_revoked.store(true, Ordering::Release);
                tracing::info!(partitions = ?partitions(tpl), "Partitions revoked.");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance error."),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Messages per batch.
    pub max_rows: usize,
    /// Payload bytes per batch.
    pub max_bytes: usize,
    /// Longest wait between the first message of a batch and its write.
    pub linger: Duration,
}

/// A message as taken from librdkafka, not decoded yet.
struct RawMessage {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// Messages gathered for one transaction, with the highest offset seen per partition. The
/// consume loop only copies messages in (`raw`); the write task decodes them into `rows` and
/// `dead`, so that decoding runs in parallel with consuming.
#[derive(Default)]
struct Batch {
    raw: Vec<RawMessage>,
    rows: Vec<Row>,
    dead: Vec<DeadLetter>,
    bytes: usize,
    offsets: BTreeMap<i32, i64>,
    opened: Option<Instant>,
}

impl Batch {
    fn len(&self) -> usize {
        self.raw.len() + self.rows.len() + self.dead.len()
    }

    /// Decodes the raw messages: probe results become rows, anything else a dead letter.
    fn decode(&mut self, topic: &str) {
        for m in std::mem::take(&mut self.raw) {
            let decoded = match &m.payload {
                None => Err("empty payload (tombstone)".to_string()),
                Some(p) => serde_json::from_slice::<ProbeResult>(p).map_err(|e| format!("not a probe result: {e}")),
            };
            match decoded {
                Ok(result) => self.rows.push(Row {
                    result,
                    partition: m.partition,
                    offset: m.offset,
                }),
                Err(error) => {
                    tracing::warn!(partition = m.partition, offset = m.offset, error = %error, "Dead-lettering an undecodable message.");
                    self.dead.push(DeadLetter {
                        topic: topic.to_string(),
                        partition: m.partition,
                        offset: m.offset,
                        key: m.key,
                        payload: m.payload,
                        error_class: "decode".into(),
                        error,
                    });
                }
            }
        }
    }

    fn is_full(&self, limits: &BatchLimits) -> bool {
        self.len() >= limits.max_rows || self.bytes >= limits.max_bytes
    }

    /// Removes the messages of `partitions` (bytes are left as counted: a limit, not a total).
    fn drop_partitions(&mut self, partitions: &[i32]) {
        self.raw.retain(|m| !partitions.contains(&m.partition));
        self.rows.retain(|r| !partitions.contains(&r.partition));
        self.dead.retain(|d| !partitions.contains(&d.partition));
        self.offsets.retain(|p, _| !partitions.contains(p));
        if self.len() == 0 {
            *self = Self::default();
        }
    }
}

/// Why the loop stopped consuming.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// PostgreSQL rejected the schema or permissions: nothing can be written until an operator acts.
    #[error("fatal database error (SQLSTATE {}): {}", .0.code, .0.message)]
    Fatal(StoreError),
}

/// A batch write: its sequence number and what became of it.
type Flush = Pin<Box<dyn Future<Output = (u64, Result<(Batch, WriteOutcome), (Batch, StoreError)>)> + Send>>;

/// Batches in consumption order, so that offsets are stored only up to the first batch that
/// is not committed yet, even when later batches (written concurrently) commit first.
#[derive(Default)]
struct Watermark {
    /// (sequence number, the batch's highest offset per partition once committed).
    open: VecDeque<(u64, Option<BTreeMap<i32, i64>>)>,
}

impl Watermark {
    /// Registers batch `seq` (sequence numbers increase) as being written.
    fn open(&mut self, seq: u64) {
        self.open.push_back((seq, None));
    }

    /// Marks batch `seq` committed; returns the highest committed offset per partition over
    /// the batches that are now committed with every batch before them (empty when an
    /// earlier batch is still being written).
    fn committed(&mut self, seq: u64, offsets: BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        if let Some(entry) = self.open.iter_mut().find(|(s, _)| *s == seq) {
            entry.1 = Some(offsets);
        }
        let mut ready = BTreeMap::new();
        while let Some((_, Some(_))) = self.open.front() {
            let (_, done) = self.open.pop_front().expect("front exists");
            for (p, o) in done.expect("committed") {
                let max = ready.entry(p).or_insert(o);
                *max = (*max).max(o);
            }
        }
        ready
    }

    fn len(&self) -> usize {
        self.open.len()
    }
}

/// Everything the loop needs.
pub struct Loop<'a> {
    /// The subscribed consumer.
    pub consumer: &'a StreamConsumer<SinkContext>,
    /// The topic (for offset stores and dead letters).
    pub topic: String,
    /// Where rows go.
    pub store: Store,
    /// Batching limits.
    pub limits: BatchLimits,
    /// Batches written at the same time (at least 1).
    pub write_concurrency: usize,
    /// Metrics.
    pub metrics: Metrics,
    /// Beaten on every turn (liveness).
    pub heartbeat: Heartbeat,
}

/// Messages taken from librdkafka's queue per turn of the loop without waiting.
const BURST: usize = 512;

impl Loop<'_> {
    /// Consumes until `shutdown` is cancelled, then finishes the writes in flight, writes what
    /// it holds (one attempt, so a database outage during shutdown loses nothing: those
    /// offsets are simply not stored) and commits the stored offsets synchronously.
    ///
    /// # Errors
    /// [`ConsumeError::Fatal`] when PostgreSQL rejects the schema or permissions.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ConsumeError> {
        let concurrency = self.write_concurrency.max(1);
        let mut pending = Batch::default();
        let mut inflight: FuturesUnordered<Flush> = FuturesUnordered::new();
        let mut watermark = Watermark::default();
        let mut next_seq = 0_u64;
        // Since when messages have been left in librdkafka's queue because every write slot
        // is busy and the next batch is full.
        let mut held_back: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // One cancellation future and one linger timer for the whole loop: re-creating them on
        // every turn costs more than the rest of the turn.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        let mut linger_armed = false;
        let result = loop {
            tokio::select! {
                biased;
                () = &mut cancelled => break Ok(()),
                Some((seq, done)) = inflight.next(), if !inflight.is_empty() => {
                    match done {
                        Ok((batch, outcome)) => self.committed(&mut watermark, seq, batch, outcome),
                        Err((_, e)) if e.class != ErrorClass::Fatal => {} // only on shutdown
                        Err((_, e)) => break Err(ConsumeError::Fatal(e)),
                    }
                    if let Some(since) = held_back.take() {
                        self.metrics.backpressure_seconds.inc_by(since.elapsed().as_secs_f64());
                    }
                }
                msg = self.consumer.recv(), if !pending.is_full(&self.limits) => match msg {
                    Ok(m) => {
                        self.take(&mut pending, &m);
                        // Take what else is already queued, without waiting.
                        for _ in 1..BURST {
                            if pending.is_full(&self.limits) {
                                break;
                            }
                            match self.consumer.recv().now_or_never() {
                                Some(Ok(m)) => self.take(&mut pending, &m),
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "Kafka consumer error.");
                                    break;
                                }
                                None => break,
                            }
                        }
                        // librdkafka's queue is not a tokio resource, so this task would run
                        // as long as messages are queued, starving the write tasks it spawned
                        // (which wait in this worker's LIFO slot): let them run.
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut linger, if linger_armed => {}
                _ = tick.tick() => {}
            }
            self.heartbeat.beat();
            match pending.opened {
                Some(opened) if !linger_armed => {
                    linger.as_mut().reset((opened + self.limits.linger).into());
                    linger_armed = true;
                }
                None => linger_armed = false,
                Some(_) => {}
            }
            let due =
                pending.is_full(&self.limits) || pending.opened.is_some_and(|t| t.elapsed() >= self.limits.linger);
            if due && inflight.len() < concurrency {
                let seq = next_seq;
                next_seq += 1;
                watermark.open(seq);
                linger_armed = false;
                inflight.push(self.flush(seq, std::mem::take(&mut pending), shutdown.clone()));
            } else if pending.is_full(&self.limits) && held_back.is_none() {
                tracing::debug!(
                    pending = pending.len(),
                    writes_in_flight = inflight.len(),
                    "Writes are behind; holding back until a batch in flight commits."
                );
                held_back = Some(Instant::now());
            }
        };
        if result.is_ok() {
            // Shutdown: finish the writes in flight (their retries stop at the first failure),
            // then write what is pending, once.
            while let Some((seq, done)) = inflight.next().await {
                match done {
                    Ok((batch, outcome)) => self.committed(&mut watermark, seq, batch, outcome),
                    Err((_, e)) => {
                        tracing::warn!(error = %e, "In-flight batch not written at shutdown; it will be replayed.");
                    }
                }
            }
            // Offsets after an unwritten batch must not be stored: write the pending batch only
            // when every earlier one committed.
            if pending.len() > 0 && watermark.len() == 0 {
                let cancelled = CancellationToken::new();
                cancelled.cancel();
                watermark.open(next_seq);
                match self.flush(next_seq, pending, cancelled).await {
                    (seq, Ok((batch, outcome))) => self.committed(&mut watermark, seq, batch, outcome),
                    (_, Err((_, e))) => {
                        tracing::warn!(error = %e, "Pending batch not written at shutdown; it will be replayed.");
                    }
                }
            }
        }
        // Offsets stored so far are committed even after a fatal error: they are all written.
        match self.consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            // Nothing stored since the last auto-commit: nothing to commit.
            Ok(()) | Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Final offset commit failed; uncommitted rows will be replayed (and absorbed).")
            }
        }
        result
    }

    /// Adds a message to `batch`, after dropping from it the messages of partitions revoked
    /// since the last message (the rebalance callback runs inside `recv`, before the first
    /// message fetched under the new assignment is returned).
    fn take(&self, batch: &mut Batch, m: &rdkafka::message::BorrowedMessage<'_>) {
        let revoked = self.consumer.context().take_revoked();
        if !revoked.is_empty() {
            let before = batch.len();
            batch.drop_partitions(&revoked);
            if batch.len() < before {
                tracing::info!(
                    dropped = before - batch.len(),
                    partitions = ?revoked,
                    "Dropped unwritten messages of revoked partitions; their new owner consumes them."
                );
            }
        }
        self.add(batch, m);
    }

    fn add(&self, batch: &mut Batch, m: &rdkafka::message::BorrowedMessage<'_>) {
        self.metrics.consumed.inc();
        let (partition, offset) = (m.partition(), m.offset());
        let payload = m.payload();
        batch.bytes += payload.map_or(0, <[u8]>::len);
        batch.raw.push(RawMessage {
            partition,
            offset,
            key: m.key().map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
        });
        let max = batch.offsets.entry(partition).or_insert(offset);
        *max = (*max).max(offset);
        batch.opened.get_or_insert_with(Instant::now);
    }

    /// Writes `batch`, retrying transient failures with capped exponential backoff and jitter
    /// until they pass or `stop` is cancelled.
    ///
    /// The write runs as its own task, so that encoding and sending it proceed in parallel
    /// with decoding the next batch (this loop's task) and with the other writes.
    fn flush(&self, seq: u64, batch: Batch, stop: CancellationToken) -> Flush {
        let (store, metrics, topic) = (self.store.clone(), self.metrics.clone(), self.topic.clone());
        let task = tokio::spawn(write_batch(store, metrics, topic, batch, stop));
        Box::pin(async move {
            match task.await {
                Ok(done) => (seq, done),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only when the runtime shuts down; the batch is lost from memory and replayed.
                Err(e) => (
                    seq,
                    Err((
                        Batch::default(),
                        StoreError {
                            class: ErrorClass::Transient,
                            code: "cancelled".into(),
                            message: e.to_string(),
                        },
                    )),
                ),
            }
        })
    }

    /// After batch `seq` committed: metrics, then store the offsets that every earlier batch's
    /// commit now allows (never before).
    fn committed(&self, watermark: &mut Watermark, seq: u64, batch: Batch, outcome: WriteOutcome) {
        self.metrics.inserted.inc_by(outcome.inserted);
        self.metrics
            .duplicates
            .inc_by(outcome.offered - outcome.inserted - outcome.rejected_rows);
        self.metrics
            .dead_letters
            .with_label_values(&["decode"])
            .inc_by(batch.dead.len() as u64);
        self.metrics
            .dead_letters
            .with_label_values(&["data"])
            .inc_by(outcome.rejected_rows);
        tracing::debug!(
            rows = outcome.offered,
            inserted = outcome.inserted,
            dead_letters = batch.dead.len(),
            "Batch committed."
        );
        let ready = watermark.committed(seq, batch.offsets);
        if ready.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &ready {
            let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(o + 1));
        }
        match self.consumer.store_offsets(&tpl) {
            Ok(()) => self
                .metrics
                .last_offset_store
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0),
            Err(e) => {
                tracing::info!(error = %e, "Offsets not stored (partition no longer assigned); the new owner replays and duplicates are absorbed.")
            }
        }
    }
}

/// Writes `batch`, retrying transient failures with capped exponential backoff and jitter
/// until they pass or `stop` is cancelled.
async fn write_batch(
    store: Store,
    metrics: Metrics,
    topic: String,
    mut batch: Batch,
    stop: CancellationToken,
) -> Result<(Batch, WriteOutcome), (Batch, StoreError)> {
    batch.decode(&topic);
    let mut backoff = Duration::from_millis(100);
    tracing::debug!(rows = batch.rows.len(), dead_letters = batch.dead.len(), last_offsets = ?batch.offsets, "Writing a batch.");
    loop {
        let t = Instant::now();
        match store.write(&batch.rows, &batch.dead).await {
            Ok(outcome) => {
                metrics.transaction_seconds.observe(t.elapsed().as_secs_f64());
                metrics.batch_rows.observe(batch.len() as f64);
                return Ok((batch, outcome));
            }
            Err(e) if e.class == ErrorClass::Transient => {
                let class = if e.code.len() == 5 {
                    &e.code[..2]
                } else {
                    e.code.as_str()
                };
                metrics.retries.with_label_values(&[class]).inc();
                tracing::warn!(code = %e.code, error = %e.message, retry_in_ms = backoff.as_millis() as u64, rows = batch.len(), "Batch write failed; retrying.");
                if stop.is_cancelled() {
                    return Err((batch, e));
                }
                let jitter = rand::thread_rng().gen_range(0.5..1.0);
                // After a lost connection, readiness's next successful ping ends the wait.
                let connection_lost =
                    e.code == "io" || e.code == "pool" || e.code.starts_with("08") || e.code.starts_with("57P0");
                tokio::select! {
                    () = stop.cancelled() => return Err((batch, e)),
                    () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                    () = store.reachable(), if connection_lost => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                tracing::error!(code = %e.code, error = %e.message, "Batch write failed with a non-retryable error.");
                return Err((
                    batch,
                    StoreError {
                        class: ErrorClass::Fatal,
                        ..e
                    },
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn offsets_are_released_only_up_to_the_first_unwritten_batch() {
        let mut w = Watermark::default();
        for seq in 0..3 {
            w.open(seq);
        }
        // Batch 1 commits first: nothing may be stored while batch 0 is unwritten.
        assert!(w.committed(1, offsets(&[(0, 20), (1, 7)])).is_empty());
        assert!(w.committed(2, offsets(&[(0, 30)])).is_empty());
        // Batch 0 commits: everything up to batch 2, the highest offset per partition.
        assert_eq!(
            w.committed(0, offsets(&[(0, 10), (2, 4)])),
            offsets(&[(0, 30), (1, 7), (2, 4)])
        );
        assert_eq!(w.len(), 0);
        w.open(3);
        assert_eq!(w.committed(3, offsets(&[(2, 5)])), offsets(&[(2, 5)]));
    }

    #[test]
    fn dropping_revoked_partitions_keeps_the_others() {
        let mut b = Batch::default();
        b.dead.push(DeadLetter {
            topic: "t".into(),
            partition: 1,
            offset: 3,
            key: None,
            payload: None,
            error_class: "decode".into(),
            error: "x".into(),
        });
        b.offsets = offsets(&[(0, 9), (1, 3)]);
        b.opened = Some(Instant::now());
        b.drop_partitions(&[0]);
        assert_eq!((b.len(), b.offsets.clone()), (1, offsets(&[(1, 3)])));
        b.drop_partitions(&[1]);
        assert!(
            b.opened.is_none() && b.offsets.is_empty(),
            "an emptied batch is a new batch"
        );
    }
}
