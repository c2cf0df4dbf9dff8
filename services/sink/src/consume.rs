//! The consume loop: Kafka messages → batches → PostgreSQL → stored offsets.
//!
//! Invariants:
//! - An offset is stored only after the transaction holding its row (or its dead letter) has
//!   committed; auto-commit then commits stored offsets. After a crash the group resumes at or
//!   before the first unwritten message: at-least-once delivery, and `ON CONFLICT DO NOTHING`
//!   on the deterministic `check_id` turns replays into no-ops (exactly-once effect).
//! - Batches are written one at a time, in order, so stored offsets only move forward.
//! - The loop keeps polling while a batch is being written or retried, filling the next batch.
//!   When that one is full too, it stops taking messages (they wait in librdkafka's bounded
//!   queue) until the write in flight commits. It does not pause partitions: with librdkafka
//!   2.x against tansu, pause/resume (even followed by a seek) was seen to skip the messages
//!   that were prefetched when the pause came. A write stuck longer than
//!   `max.poll.interval.ms` (default 5 min) makes the group reassign the partitions; the sink
//!   rejoins when the write completes, its offset stores for lost partitions fail, and the
//!   replay is absorbed by `ON CONFLICT DO NOTHING`.
//! - A message that is not a probe result is dead-lettered, never dropped and never fatal.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::admin::Heartbeat;
use common::result::ProbeResult;
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
    pub metrics: Metrics,
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
                // Rows of revoked partitions still in flight are written anyway; their offsets
                // are then not stored (the store is checked against ownership) and the new
                // owner's replay is absorbed by ON CONFLICT DO NOTHING.
                for (topic, p) in partitions(tpl) {
                    let _ = self.metrics.consumer_lag.remove_label_values(&[&topic, &p.to_string()]);
                }
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

/// Messages gathered for one transaction, with the highest offset seen per partition.
#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    dead: Vec<DeadLetter>,
    bytes: usize,
    offsets: BTreeMap<i32, i64>,
    opened: Option<Instant>,
}

impl Batch {
    fn len(&self) -> usize {
        self.rows.len() + self.dead.len()
    }

    fn is_full(&self, limits: &BatchLimits) -> bool {
        self.len() >= limits.max_rows || self.bytes >= limits.max_bytes
    }
}

/// Why the loop stopped consuming.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// PostgreSQL rejected the schema or permissions: nothing can be written until an operator acts.
    #[error("fatal database error (SQLSTATE {}): {}", .0.code, .0.message)]
    Fatal(StoreError),
}

type Flush = Pin<Box<dyn Future<Output = Result<(Batch, WriteOutcome), (Batch, StoreError)>> + Send>>;

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
    /// Metrics.
    pub metrics: Metrics,
    /// Beaten on every turn (liveness).
    pub heartbeat: Heartbeat,
}

impl Loop<'_> {
    /// Consumes until `shutdown` is cancelled, then writes what it holds (one attempt, so a
    /// database outage during shutdown loses nothing: those offsets are simply not stored) and
    /// commits the stored offsets synchronously.
    ///
    /// # Errors
    /// [`ConsumeError::Fatal`] when PostgreSQL rejects the schema or permissions.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), ConsumeError> {
        let mut pending = Batch::default();
        let mut inflight: Option<Flush> = None;
        // Since when polling has stopped because the next batch is full while one is written.
        let mut held_back: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let result = loop {
            let linger_at = pending.opened.map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                |t| (t + self.limits.linger).into(),
            );
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                done = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    match done {
                        Ok((batch, outcome)) => self.committed(&batch, outcome),
                        Err((_, e)) if e.class != ErrorClass::Fatal => {} // only on shutdown
                        Err((_, e)) => break Err(ConsumeError::Fatal(e)),
                    }
                    if let Some(since) = held_back.take() {
                        self.metrics.backpressure_seconds.inc_by(since.elapsed().as_secs_f64());
                    }
                }
                msg = self.consumer.recv(), if inflight.is_none() || !pending.is_full(&self.limits) => match msg {
                    Ok(m) => self.add(&mut pending, &m),
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = tokio::time::sleep_until(linger_at), if pending.opened.is_some() => {}
                _ = tick.tick() => {}
            }
            self.heartbeat.beat();
            let due =
                pending.is_full(&self.limits) || pending.opened.is_some_and(|t| t.elapsed() >= self.limits.linger);
            if inflight.is_none() && due {
                inflight = Some(self.flush(std::mem::take(&mut pending), shutdown.clone()));
            } else if inflight.is_some() && pending.is_full(&self.limits) && held_back.is_none() {
                tracing::debug!(
                    pending = pending.len(),
                    "Writes are behind; holding back until the batch in flight commits."
                );
                held_back = Some(Instant::now());
            }
        };
        result?;
        // Shutdown: finish the write in flight, then write what is pending, once.
        if let Some(f) = inflight.take() {
            match f.await {
                Ok((batch, outcome)) => self.committed(&batch, outcome),
                Err((_, e)) => {
                    tracing::warn!(error = %e, "In-flight batch not written at shutdown; it will be replayed.")
                }
            }
        }
        if pending.len() > 0 {
            let cancelled = CancellationToken::new();
            cancelled.cancel();
            match self.flush(pending, cancelled).await {
                Ok((batch, outcome)) => self.committed(&batch, outcome),
                Err((_, e)) => {
                    tracing::warn!(error = %e, "Pending batch not written at shutdown; it will be replayed.")
                }
            }
        }
        match self.consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            // Nothing stored since the last auto-commit: nothing to commit.
            Ok(()) | Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Final offset commit failed; uncommitted rows will be replayed (and absorbed).")
            }
        }
        Ok(())
    }

    fn add(&self, batch: &mut Batch, m: &rdkafka::message::BorrowedMessage<'_>) {
        self.metrics.consumed.inc();
        let (partition, offset) = (m.partition(), m.offset());
        let payload = m.payload();
        batch.bytes += payload.map_or(0, <[u8]>::len);
        let decoded = match payload {
            None => Err("empty payload (tombstone)".to_string()),
            Some(p) => serde_json::from_slice::<ProbeResult>(p).map_err(|e| format!("not a probe result: {e}")),
        };
        match decoded {
            Ok(result) => batch.rows.push(Row {
                result,
                partition,
                offset,
            }),
            Err(error) => {
                tracing::warn!(partition, offset, error = %error, "Dead-lettering an undecodable message.");
                batch.dead.push(DeadLetter {
                    topic: self.topic.clone(),
                    partition,
                    offset,
                    key: m.key().map(<[u8]>::to_vec),
                    payload: payload.map(<[u8]>::to_vec),
                    error_class: "decode".into(),
                    error,
                });
            }
        }
        let max = batch.offsets.entry(partition).or_insert(offset);
        *max = (*max).max(offset);
        batch.opened.get_or_insert_with(Instant::now);
    }

    /// Writes `batch`, retrying transient failures with capped exponential backoff and jitter
    /// until they pass or `stop` is cancelled.
    fn flush(&self, batch: Batch, stop: CancellationToken) -> Flush {
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        Box::pin(async move {
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
                        tokio::select! {
                            () = stop.cancelled() => return Err((batch, e)),
                            () = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
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
        })
    }

    /// After a commit: metrics, then store the offsets (never before).
    fn committed(&self, batch: &Batch, outcome: WriteOutcome) {
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
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &batch.offsets {
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
        tracing::debug!(
            rows = outcome.offered,
            inserted = outcome.inserted,
            dead_letters = batch.dead.len(),
            "Batch committed."
        );
    }
}
