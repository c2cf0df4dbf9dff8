//! The consume loop: Kafka messages → batches → PostgreSQL → stored offsets.
//!
//! Invariants:
//! - An offset is stored only after the transaction holding its row (or its dead letter) has
//!   committed, and only when every batch consumed before it that holds messages of the same
//!   partition has committed too (the [`Watermark`]): up to `WRITE_CONCURRENCY` batches are
//!   written at once and may commit out of order. Auto-commit then commits stored offsets (librdkafka `enable.auto.offset.store=false`,
//!   `enable.auto.commit=true`). After a crash the group resumes at or before the first
//!   unwritten message: at-least-once delivery, and `ON CONFLICT DO NOTHING` on the
//!   deterministic `check_id` turns replays into no-ops (exactly-once effect).
//! - The loop keeps polling while batches are being written or retried, filling the next
//!   batch. When every write slot is busy and that batch is full too, it stops taking messages
//!   (they wait in librdkafka's bounded queue). If that lasts longer than [`PAUSE_AFTER`] (a
//!   slow or unreachable database), it pauses the assigned partitions and goes on polling, so
//!   that `max.poll.interval.ms` is never exceeded and the group does not reassign partitions
//!   of a live sink. librdkafka drops what it had prefetched for paused partitions and fetches
//!   again from the application's position on resume (the offset after the last message
//!   returned to the sink), so nothing is skipped; the loop resumes as soon as the next batch
//!   is written.
//! - On revoke, messages of the revoked partitions that are not being written yet are dropped
//!   (their new owner consumes them), and the rebalance callback waits up to
//!   [`REVOKE_DRAIN_TIMEOUT`] for the writes in flight that hold those partitions, then stores
//!   their offsets, which librdkafka commits before handing the partitions over: the new owner
//!   starts after them instead of replaying them. A write still in flight after the timeout
//!   (database down) finishes later; its offset store is refused and the new owner's replay is
//!   absorbed.
//! - A message that is not a probe result is dead-lettered, never dropped and never fatal.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::admin::Heartbeat;
use common::kafka::Protected;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rand::Rng;
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{DeadLetter, DeadLetterClass, ErrorClass, ErrorCode, Row, Store, StoreError, WriteOutcome};

/// The consumer's librdkafka context: statistics and rebalance events become metrics.
pub struct SinkContext {
    /// Metrics to update.
    metrics: Metrics,
    /// Partitions revoked since the consume loop last looked, and whether there are any.
    revoked: Mutex<Vec<i32>>,
    any_revoked: AtomicBool,
    /// Offset bookkeeping of the batches being written.
    progress: Arc<Progress>,
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
    fn pre_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
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
    fn drain(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, tpl: &TopicPartitionList, ps: &[i32]) {
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
        self.progress.lock().watermark.forget(ps);
        tracing::debug!(partitions = ?ps, drained, waited_ms = started.elapsed().as_millis() as u64, "Revoked partitions drained.");
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

    /// Decodes the raw messages: probe results the schema can hold become rows (with the
    /// message's raw key and payload, kept for a dead letter should PostgreSQL refuse the
    /// row), anything else a dead letter of class `decode` ([`crate::decode`]).
    fn decode(&mut self, topic: &str) {
        for m in std::mem::take(&mut self.raw) {
            match crate::decode::decode(m.payload.as_deref()) {
                Ok(result) => self.rows.push(Row {
                    result,
                    partition: m.partition,
                    offset: m.offset,
                    key: m.key,
                    payload: m.payload,
                }),
                Err(error) => {
                    tracing::warn!(partition = m.partition, offset = m.offset, error = %error, "Dead-lettering an undecodable message.");
                    self.dead.push(DeadLetter {
                        topic: topic.to_string(),
                        partition: m.partition,
                        offset: m.offset,
                        key: m.key,
                        payload: m.payload,
                        error_class: DeadLetterClass::Decode,
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

/// A batch write and what became of it.
type Flush = Pin<Box<dyn Future<Output = Result<(Batch, WriteOutcome), (Batch, StoreError)>> + Send>>;

/// What became of a batch, as far as its offsets are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
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
struct Progress {
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

    fn open(&self, seq: u64, offsets: &BTreeMap<i32, i64>) {
        self.lock().watermark.open(seq, offsets);
    }

    fn finished(&self, seq: u64, state: Write) {
        let mut s = self.lock();
        let ready = s.watermark.finished(seq, state);
        s.ready.extend(ready);
        drop(s);
        self.changed.notify_all();
    }

    /// Takes the offsets that may be stored (all partitions, or only `only`).
    fn take_ready(&self, only: Option<&[i32]>) -> BTreeMap<i32, i64> {
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
    fn wait_written(&self, partitions: &[i32], timeout: Duration) -> bool {
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

/// The consumer's librdkafka properties (besides `group.id`, `group.instance.id` and
/// `bootstrap.servers`); `KAFKA_CFG_*` may override any but [`PROTECTED`].
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "healthcheck-sink"),
    ("enable.auto.offset.store", "false"),
    ("enable.auto.commit", "true"),
    ("auto.commit.interval.ms", "1000"),
    ("auto.offset.reset", "earliest"),
    ("isolation.level", "read_committed"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("statistics.interval.ms", "5000"),
    // librdkafka's default (500 ms) is how long a broker may hold an empty fetch; some
    // brokers (tansu) answer only at that deadline even when data arrives meanwhile,
    // which adds up to half a second to every result's latency.
    ("fetch.wait.max.ms", "100"),
];

/// The consumer properties the sink's guarantees rest on, with the reason: `KAFKA_CFG_*`
/// may not change them (see [`common::kafka::KafkaSettings::check_properties`]).
pub const PROTECTED: &[Protected] = &[
    Protected {
        name: "enable.auto.offset.store",
        aliases: &[],
        why: "an offset is stored only after the transaction holding its row committed",
    },
    Protected {
        name: "enable.auto.commit",
        aliases: &[],
        why: "stored offsets are committed by auto-commit, and on revoke before the partitions move",
    },
    Protected {
        name: "auto.offset.reset",
        aliases: &[],
        why: "a new group, or one whose offsets expired, must read what the topic holds, not skip it",
    },
    Protected {
        name: "isolation.level",
        aliases: &[],
        why: "messages of aborted transactions must never become rows",
    },
];

/// Messages taken from librdkafka's queue per turn of the loop without waiting.
const BURST: usize = 512;

/// How long writes may hold the loop back (messages left in librdkafka's queue) before it
/// pauses the assigned partitions and goes on polling. Short stalls are absorbed by the queue
/// (a pause discards what librdkafka prefetched); long ones (a database outage) must not
/// exceed `max.poll.interval.ms`.
pub const PAUSE_AFTER: Duration = Duration::from_secs(2);

/// The longest a revoke waits for the writes in flight that hold the revoked partitions.
/// Bounded, as the group waits for this member: a write stuck on a database outage is
/// replayed by the new owner instead.
pub const REVOKE_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
        let progress = self.consumer.context().progress.clone();
        let mut next_seq = 0_u64;
        // Since when messages have been left in librdkafka's queue because every write slot
        // is busy and the next batch is full.
        let mut held_back: Option<Instant> = None;
        // Whether the assigned partitions are paused (after PAUSE_AFTER of holding back), and
        // whether a message arrived since (from a partition assigned after the pause).
        let mut paused = false;
        let mut taken_while_paused = false;
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
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    match done {
                        Ok((batch, outcome)) => self.committed(batch, outcome),
                        Err((_, e)) if e.class != ErrorClass::Fatal => {} // only on shutdown
                        Err((_, e)) => break Err(ConsumeError::Fatal(e)),
                    }
                    if let Some(since) = held_back.take() {
                        self.metrics.backpressure_seconds.inc_by(since.elapsed().as_secs_f64());
                    }
                }
                // While paused, polling goes on (that is what keeps the group membership);
                // only messages of partitions assigned since the pause can arrive.
                msg = self.consumer.recv(), if paused || !pending.is_full(&self.limits) => match msg {
                    Ok(m) => {
                        taken_while_paused |= paused;
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
            // A revoke may have come in a poll that returned no message.
            self.drop_revoked(&mut pending);
            // The linger timer is armed only while a write slot is free: a timer past its
            // deadline completes at once every time it is polled, so one left armed while
            // every slot is busy would turn this loop into a busy loop until a write finishes
            // (and a finishing write wakes the loop anyway).
            let slot_free = inflight.len() < concurrency;
            match pending.opened {
                Some(opened) if slot_free && !linger_armed => {
                    linger.as_mut().reset((opened + self.limits.linger).into());
                    linger_armed = true;
                }
                Some(_) if slot_free => {}
                _ => linger_armed = false,
            }
            let due =
                pending.is_full(&self.limits) || pending.opened.is_some_and(|t| t.elapsed() >= self.limits.linger);
            if due && inflight.len() < concurrency {
                let seq = next_seq;
                next_seq += 1;
                progress.open(seq, &pending.offsets);
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
            let hold = pending.is_full(&self.limits);
            if hold && (taken_while_paused || (!paused && held_back.is_some_and(|t| t.elapsed() >= PAUSE_AFTER))) {
                // Once anything is paused, stay "paused" until resumed, even if a re-pause fails.
                paused |= self.pause();
                taken_while_paused = false;
            } else if paused && !hold {
                self.resume();
                paused = false;
            }
        };
        if paused {
            // The partitions stay assigned to this consumer only until it closes; resuming
            // keeps a later assignment of the same partitions from starting paused.
            self.resume();
        }
        if result.is_ok() {
            // Shutdown: finish the writes in flight (their retries stop at the first failure),
            // then write what is pending, once.
            while let Some(done) = inflight.next().await {
                match done {
                    Ok((batch, outcome)) => self.committed(batch, outcome),
                    Err((_, e)) => {
                        tracing::warn!(error = %e, "In-flight batch not written at shutdown; it will be replayed.");
                    }
                }
            }
            // Offsets after an unwritten batch must not be stored: write the pending batch only
            // when every earlier one committed.
            if pending.len() > 0 && progress.lock().watermark.is_clear() {
                let cancelled = CancellationToken::new();
                cancelled.cancel();
                progress.open(next_seq, &pending.offsets);
                match self.flush(next_seq, pending, cancelled).await {
                    Ok((batch, outcome)) => self.committed(batch, outcome),
                    Err((_, e)) => {
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
        self.drop_revoked(batch);
        self.add(batch, m);
    }

    /// Drops from `batch` the messages of partitions revoked since the last look.
    fn drop_revoked(&self, batch: &mut Batch) {
        let revoked = self.consumer.context().take_revoked();
        if revoked.is_empty() {
            return;
        }
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
        let progress = self.consumer.context().progress.clone();
        let task = tokio::spawn(async move {
            let done = write_batch(store, metrics, topic, batch, stop).await;
            // Recorded by the task itself: a revoke waits for it while the loop cannot run.
            progress.finished(
                seq,
                if done.is_ok() {
                    Write::Committed
                } else {
                    Write::Abandoned
                },
            );
            done
        });
        let progress = self.consumer.context().progress.clone();
        Box::pin(async move {
            match task.await {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only when the runtime shuts down; the batch is lost from memory and replayed.
                Err(e) => {
                    progress.finished(seq, Write::Abandoned);
                    Err((
                        Batch::default(),
                        StoreError::transient(ErrorCode::Cancelled, e.to_string()),
                    ))
                }
            }
        })
    }

    /// After a batch committed: metrics, then store the offsets that the commits so far allow
    /// (never past a batch of the same partition that is not committed).
    fn committed(&self, batch: Batch, outcome: WriteOutcome) {
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
        self.metrics.dead_letters_skipped.inc_by(outcome.skipped_dead_letters);
        tracing::debug!(
            rows = outcome.offered,
            inserted = outcome.inserted,
            dead_letters = batch.dead.len(),
            "Batch committed."
        );
        let ready = self.consumer.context().progress.take_ready(None);
        if ready.is_empty() {
            return;
        }
        if let Err(e) = store_offsets(self.consumer, &self.topic, &ready, &self.metrics) {
            tracing::info!(error = %e, "Offsets not stored (partition no longer assigned); the new owner replays and duplicates are absorbed.");
        }
    }

    /// Pauses every assigned partition; returns whether it did.
    fn pause(&self) -> bool {
        let assignment = match self.consumer.assignment() {
            Ok(a) if a.count() > 0 => a,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the assignment to pause it.");
                return false;
            }
        };
        match self.consumer.pause(&assignment) {
            Ok(()) => {
                self.metrics.partitions_paused.set(assignment.count() as i64);
                tracing::warn!(
                    partitions = ?partitions(&assignment),
                    held_back_s = PAUSE_AFTER.as_secs_f64(),
                    "Writes are behind; partitions paused (polling goes on)."
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not pause partitions.");
                false
            }
        }
    }

    /// Resumes every assigned partition.
    fn resume(&self) {
        self.metrics.partitions_paused.set(0);
        match self.consumer.assignment().and_then(|a| self.consumer.resume(&a)) {
            Ok(()) => tracing::info!("Writes caught up; partitions resumed."),
            Err(e) => tracing::warn!(error = %e, "Could not resume partitions."),
        }
    }
}

/// Stores, for each partition of `topic` in `ready`, the offset after its last written message
/// (librdkafka `rd_kafka_offsets_store`: refused for partitions not assigned any more);
/// auto-commit then commits them.
fn store_offsets<C: Consumer<SinkContext>>(
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
                metrics.retries.with_label_values(&[e.retry_label()]).inc();
                tracing::warn!(code = %e.code, error = %e.message, retry_in_ms = backoff.as_millis() as u64, rows = batch.len(), "Batch write failed; retrying.");
                if stop.is_cancelled() {
                    return Err((batch, e));
                }
                let jitter = rand::thread_rng().gen_range(0.5..1.0);
                // After a lost connection, readiness's next successful ping ends the wait.
                let connection_lost = e.connection_lost();
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

    #[test]
    fn dropping_revoked_partitions_keeps_the_others() {
        let mut b = Batch::default();
        b.dead.push(DeadLetter {
            topic: "t".into(),
            partition: 1,
            offset: 3,
            key: None,
            payload: None,
            error_class: DeadLetterClass::Decode,
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
