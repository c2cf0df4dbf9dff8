//! The loop itself: poll messages into the pending batch, hand full or lingered batches to
//! write tasks (at most `WRITE_CONCURRENCY` at once), store offsets as writes commit, and on
//! shutdown finish what it can. When to write, hold back, pause and resume is [`State`]'s
//! decision; this module carries it out.
//!
//! It never decodes or writes itself (the write tasks do, [`super::write`]) and never stops
//! polling for longer than [`PAUSE_AFTER`] while writes are behind.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::admin::Heartbeat;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use tokio_util::sync::CancellationToken;

use super::batch::{Batch, BatchLimits};
use super::context::{partitions, SinkContext};
use super::offsets::{store_offsets, Write};
use super::state::{Partitions, State, Turn};
use super::write::{write_batch, Written};
use super::PAUSE_AFTER;
use crate::metrics::Metrics;
use crate::retry::GaveUp;
use crate::store::{Store, StoreError};

/// Why the loop stopped consuming.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// PostgreSQL rejected the schema or permissions: nothing can be written until an operator acts.
    #[error("fatal database error (SQLSTATE {}): {}", .0.code, .0.message)]
    Fatal(StoreError),
}

/// A batch write and what became of it.
type Flush = Pin<Box<dyn Future<Output = Result<Written, GaveUp<StoreError>>> + Send>>;

/// Messages taken from librdkafka's queue per turn of the loop without waiting.
const BURST: usize = 512;

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

/// The loop's mutable part.
#[derive(Default)]
struct Writes {
    /// The batch being filled.
    pending: Batch,
    /// The writes in flight, in any order of completion.
    inflight: FuturesUnordered<Flush>,
    /// The next batch's sequence number ([`super::offsets::Progress`]).
    next_seq: u64,
    /// Lingering, holding back, paused ...
    state: State,
}

/// What woke the loop.
enum Event<'m> {
    /// Shutdown.
    Stop,
    /// A write finished.
    Written(Result<Written, GaveUp<StoreError>>),
    /// A message, or the consumer's error.
    Message(KafkaResult<BorrowedMessage<'m>>),
    /// The linger timer, or the 1 s tick (heartbeat, a revoke without a message).
    Timer,
}

impl Loop<'_> {
    /// Consumes until `shutdown` is cancelled, then finishes the writes in flight, writes what
    /// it holds (one attempt, so a database outage during shutdown loses nothing: those
    /// offsets are simply not stored) and commits the stored offsets synchronously.
    ///
    /// # Errors
    /// [`ConsumeError::Fatal`] when PostgreSQL rejects the schema or permissions.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ConsumeError> {
        let mut w = Writes::default();
        let result = self.consume(&mut w, &shutdown).await;
        if matches!(w.state, State::Paused { .. }) {
            // The partitions stay assigned to this consumer only until it closes; resuming
            // keeps a later assignment of the same partitions from starting paused.
            self.resume();
        }
        if result.is_ok() {
            self.finish(w).await;
        }
        self.commit();
        result
    }

    /// The loop: one event, then one turn of the state machine, until shutdown or a fatal
    /// error.
    async fn consume(&self, w: &mut Writes, shutdown: &CancellationToken) -> Result<(), ConsumeError> {
        let concurrency = self.write_concurrency.max(1);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // One cancellation future and one linger timer for the whole loop: re-creating them on
        // every turn costs more than the rest of the turn.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        loop {
            let event = tokio::select! {
                biased;
                () = &mut cancelled => Event::Stop,
                Some(done) = w.inflight.next(), if !w.inflight.is_empty() => Event::Written(done),
                msg = common::kafka::recv(self.consumer), if w.state.polls(w.pending.is_full(&self.limits)) => Event::Message(msg),
                () = &mut linger, if w.state.linger_deadline().is_some() => Event::Timer,
                _ = tick.tick() => Event::Timer,
            };
            match event {
                Event::Stop => return Ok(()),
                Event::Written(Ok(written)) => self.committed(written),
                Event::Written(Err(GaveUp::Fatal(e))) => return Err(ConsumeError::Fatal(e)),
                // Only on shutdown: the write gave up; its offsets are never stored.
                Event::Written(Err(GaveUp::Stopped(_))) => {}
                Event::Message(Ok(m)) => {
                    w.state = w.state.taken();
                    self.take_burst(&mut w.pending, &m);
                    // librdkafka's queue is not a tokio resource, so this task would run as
                    // long as messages are queued, starving the write tasks it spawned (which
                    // wait in this worker's LIFO slot): let them run.
                    tokio::task::yield_now().await;
                }
                Event::Message(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Event::Timer => {}
            }
            self.heartbeat.beat();
            // A revoke may have come in a poll that returned no message.
            self.drop_revoked(&mut w.pending);
            self.turn(w, concurrency, shutdown, linger.as_mut());
        }
    }

    /// One turn of the state machine: write the pending batch if it is due, and carry out the
    /// transition (linger timer, backpressure metric).
    fn turn(&self, w: &mut Writes, concurrency: usize, stop: &CancellationToken, linger: Pin<&mut tokio::time::Sleep>) {
        let now = Instant::now();
        let turn = Turn {
            opened: w.pending.opened,
            full: w.pending.is_full(&self.limits),
            slot_free: w.inflight.len() < concurrency,
            linger: self.limits.linger,
        };
        let (write, next) = w.state.turn(turn, now, self);
        if write {
            self.write_pending(w, stop.clone());
        }
        match (w.state.held_since(), next.held_since()) {
            (None, Some(_)) => tracing::debug!(
                pending = w.pending.len(),
                writes_in_flight = w.inflight.len(),
                "Writes are behind; holding back until a batch in flight commits."
            ),
            (Some(since), None) => self
                .metrics
                .backpressure_seconds
                .inc_by(now.saturating_duration_since(since).as_secs_f64()),
            _ => {}
        }
        if let Some(deadline) = next.linger_deadline() {
            if w.state.linger_deadline() != Some(deadline) {
                linger.reset(deadline.into());
            }
        }
        w.state = next;
    }

    /// Hands the pending batch to a write task.
    fn write_pending(&self, w: &mut Writes, stop: CancellationToken) {
        let seq = w.next_seq;
        w.next_seq += 1;
        self.consumer.context().progress.open(seq, &w.pending.offsets);
        w.inflight.push(self.flush(seq, std::mem::take(&mut w.pending), stop));
    }

    /// Shutdown: finish the writes in flight (their retries stop at the first failure), then
    /// write what is pending, once.
    async fn finish(&self, mut w: Writes) {
        self.drain(&mut w.inflight, "in flight").await;
        // Offsets after an unwritten batch must not be stored: write the pending batch only
        // when every earlier one committed.
        if w.pending.len() > 0 && self.consumer.context().progress.is_clear() {
            let cancelled = CancellationToken::new();
            cancelled.cancel();
            self.write_pending(&mut w, cancelled);
            self.drain(&mut w.inflight, "pending").await;
        }
    }

    /// Waits for every write in `inflight`, storing the offsets of those that commit.
    async fn drain(&self, inflight: &mut FuturesUnordered<Flush>, which: &str) {
        while let Some(done) = inflight.next().await {
            match done {
                Ok(written) => self.committed(written),
                Err(e) => {
                    tracing::warn!(error = %e, batch = which, "Batch not written at shutdown; it will be replayed.")
                }
            }
        }
    }

    /// Commits the stored offsets synchronously; those stored so far are committed even after
    /// a fatal error: they are all written.
    fn commit(&self) {
        match self.consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            // Nothing stored since the last auto-commit: nothing to commit.
            Ok(()) | Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Final offset commit failed; uncommitted rows will be replayed (and absorbed).")
            }
        }
    }

    /// Takes `m`, then what else is already queued without waiting (up to [`BURST`], until
    /// the batch is full).
    fn take_burst(&self, batch: &mut Batch, m: &BorrowedMessage<'_>) {
        self.take(batch, m);
        for _ in 1..BURST {
            if batch.is_full(&self.limits) {
                break;
            }
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => self.take(batch, &m),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error.");
                    break;
                }
                None => break,
            }
        }
    }

    /// Adds a message to `batch`, after dropping from it the messages of partitions revoked
    /// since the last message (the rebalance callback runs inside `recv`, before the first
    /// message fetched under the new assignment is returned).
    fn take(&self, batch: &mut Batch, m: &BorrowedMessage<'_>) {
        self.drop_revoked(batch);
        self.metrics.consumed.inc();
        batch.push(m);
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

    /// Writes `batch` as its own task ([`write_batch`]), so that encoding and sending it
    /// proceed in parallel with decoding the next batch (this loop's task) and with the other
    /// writes.
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
                    tracing::debug!(error = %e, "Write task cancelled.");
                    progress.finished(seq, Write::Abandoned);
                    Err(GaveUp::Stopped(None))
                }
            }
        })
    }

    /// After a batch committed: metrics, then store the offsets that the commits so far allow
    /// (never past a batch of the same partition that is not committed).
    fn committed(&self, Written { outcome, undecodable }: Written) {
        self.metrics.inserted.inc_by(outcome.inserted);
        self.metrics.copied_directly.inc_by(outcome.copied_directly);
        self.metrics
            .duplicates
            .inc_by(outcome.offered - outcome.inserted - outcome.rejected_rows);
        self.metrics
            .dead_letters
            .with_label_values(&["decode"])
            .inc_by(undecodable);
        self.metrics
            .dead_letters
            .with_label_values(&["data"])
            .inc_by(outcome.rejected_rows);
        self.metrics.dead_letters_skipped.inc_by(outcome.skipped_dead_letters);
        tracing::debug!(
            rows = outcome.offered,
            inserted = outcome.inserted,
            dead_letters = undecodable,
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
}

impl Partitions for Loop<'_> {
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
