//! Publishes probe results to Kafka with an idempotent producer and follows every delivery
//! report, so no result is lost silently.
//!
//! # The hand-off
//!
//! A probe task hands its result to [`Publisher::submit`], which never waits: it takes one of
//! `limit` permits (`queue.buffering.max.messages`, see [`results_waiting_limit`]), encodes the
//! result and enqueues it into librdkafka itself. The delivery report is handled by the
//! producer's context on librdkafka's poll thread: a success releases the permit and updates
//! the gauges there, so a result costs no wake-up of any task after its probe (measured in
//! BENCHMARKS.md, section 1, against the loop that took every result and awaited one future
//! per report). A failed report, and a result librdkafka's queue refuses, go to the one
//! publish loop ([`PublishLoop::run`]); while it holds results to send again, probe tasks hand
//! theirs to it too, so that they queue behind the older ones, and it lets them enqueue
//! themselves again once it has caught up. The permit is released only when the broker
//! acknowledged the result or its delivery failed for good. So at most `limit` results wait
//! (`healthcheck_checker_results_waiting`), whatever the broker does, and the memory they hold
//! is bounded: the probe task ends at once, and what waits is the encoded payload (in
//! librdkafka's queue) plus about a hundred bytes of bookkeeping. `limit` equals librdkafka's
//! own message bound, so its queue never reports "queue full" on message count; when its byte
//! bound (`queue.buffering.max.kbytes`) is hit, the loop tries again at the next delivery
//! report (or after 100 ms), never in a busy retry.
//!
//! # When the buffer is full
//!
//! New results are dropped and counted in
//! `healthcheck_checker_results_dropped_total{reason="buffer_full"}`; probing goes on. Probing
//! on keeps the per-target `probe_*` gauges on `/metrics` current (Prometheus alerts keep
//! working through a broker outage), and skipping slots instead would lose exactly the same
//! results. The results kept are the oldest ones of the outage: the ones already in
//! librdkafka's queue cannot be taken out one by one, and the first minutes of an incident are
//! the ones people look up. The transition to full is logged once, and the way back once the
//! buffer is below 90 % of its bound (so a broker slower than the probes does not flood the
//! log).
//!
//! # Fatal producer errors
//!
//! librdkafka raises a fatal error when the idempotent producer can no longer guarantee
//! ordering or once-ness (e.g. "unknown producer id" or "out of order sequence number" from a
//! broker that lost the producer's state); from then on every produce fails. The loop then
//! builds a new producer (new producer id) and re-sends, in order, every result the old one
//! did not deliver (librdkafka hands their payloads back in the failed delivery reports).
//! Rebuilding loses nothing; exiting so that the orchestrator restarts the process would
//! lose every waiting result plus the slots of the restart (a restarted checker never
//! re-probes a slot at or before its start). A re-sent result that the broker had persisted
//! after all becomes a duplicate on the topic, which the sink absorbs (its rows are unique by
//! `check_id`). Fatal errors are counted in `healthcheck_checker_producer_fatal_errors_total`.
//!
//! # A producer that stops delivering
//!
//! A broker can also lose the producer's state without librdkafka calling it fatal: the
//! tansu test broker restarted empty answers every produce with `UNKNOWN_PRODUCER_ID`, which
//! librdkafka 2.12.1 retries for ever (`message.timeout.ms=0`). So when results have waited
//! for the stall timeout ([`PublishLoop::replace_when_stalled`], `DELIVERY_STALL_TIMEOUT`)
//! with no delivery while the broker answers a metadata request for the topic (so this is not
//! an outage), the loop replaces the producer as after a fatal error, purges the old one's
//! queue and requests in flight (librdkafka hands their payloads back) and sends them again
//! through the new one (`healthcheck_checker_producer_stall_replacements_total`).
//!
//! This module must never block a probe task, busy-wait, or hold more than `limit` results.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::config::ConfigError;
use common::kafka::{KafkaSettings, Protected};
use common::result::ProbeResult;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::{DropReason, Metrics, PublishFailure};

/// librdkafka property that bounds the messages in the producer's queue, and so the results
/// waiting in the checker (see the module doc).
pub const QUEUE_MAX_MESSAGES: &str = "queue.buffering.max.messages";

/// Producer defaults; `KAFKA_CFG_*` overrides any of them. `enable.idempotence` implies
/// `acks=all`, retries and at most 5 in-flight requests per connection (librdkafka
/// CONFIGURATION.md), so retries neither duplicate nor reorder messages within a partition.
/// `compression.type=lz4`: results are similar JSON documents, so batches shrink several-fold
/// on the wire and on the broker's disk for little CPU.
/// `linger.ms=20` (librdkafka's default is 5): a result waits up to 20 ms for others to share
/// its produce request. Measured at 2,490 probes/s against 5 ms (`make bench`, section 1, 3
/// pairs): the checker's CPU per probe 0.89 of it, and the broker's CPU 0.22 cores against
/// 0.57, for at most 15 ms more between a probe and its row (end-to-end goal 250 ms).
/// `queue.buffering.max.messages=100000` (librdkafka's default, set so that the bound does not
/// change with the library): the most results that wait for the broker.
/// `message.timeout.ms=0` (no limit): a result waits for the broker as long as the outage
/// lasts; the bound on waiting results is the buffer, and a time limit on top of it would
/// discard results the buffer has room for.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "20"),
    ("compression.type", "lz4"),
    (QUEUE_MAX_MESSAGES, "100000"),
    ("message.timeout.ms", "0"),
    ("client.id", "healthcheck-checker"),
];

/// The producer properties the checker's guarantees rest on, with the reason: `KAFKA_CFG_*`
/// may not change them (see [`KafkaSettings::check_properties`]). librdkafka itself refuses
/// `max.in.flight` above 5 with idempotence.
pub const PROTECTED: &[Protected] = &[
    Protected {
        name: "enable.idempotence",
        aliases: &[],
        why: "retries neither duplicate nor reorder results within a partition",
    },
    Protected {
        name: "acks",
        aliases: &["request.required.acks"],
        why: "a result counts as delivered only once every in-sync replica has it",
    },
];

/// The most results that may wait for delivery: `queue.buffering.max.messages` from
/// `KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES`, else [`PRODUCER_DEFAULTS`]' 100000.
///
/// # Errors
/// A [`ConfigError`] naming `KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES` when it is not an integer
/// in librdkafka's range 1 to 2147483647.
pub fn results_waiting_limit(kafka: &KafkaSettings) -> Result<usize, ConfigError> {
    let default = PRODUCER_DEFAULTS
        .iter()
        .find(|(k, _)| *k == QUEUE_MAX_MESSAGES)
        .map(|(_, v)| *v)
        .expect("a default bound");
    let v = kafka.properties.get(QUEUE_MAX_MESSAGES).map_or(default, String::as_str);
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=i32::MAX as u32).contains(n))
        .map(|n| n as usize)
        .ok_or_else(|| {
            ConfigError::new(
                "KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES",
                format!("{v:?} is not an integer from 1 to 2147483647"),
                default,
            )
        })
}

/// One producer's callbacks, run on its poll thread. A delivery report is handled here: a
/// success releases its result's permit and updates the gauges, with no task woken; a failure
/// goes to the publish loop with its payload (it decides whether to send it again). A fatal
/// error wakes the loop, which replaces the producer.
struct PublishContext {
    shared: Arc<Shared>,
    fatal: Arc<Notify>,
    /// The producer's place in the sequence of replacements (0 for the first).
    generation: u64,
    /// Results enqueued into this producer whose delivery report is not handled yet.
    outstanding: AtomicUsize,
    failed: mpsc::UnboundedSender<Failed>,
}

impl ClientContext for PublishContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::Fatal)) {
            tracing::error!(error = %error, reason, "Kafka producer hit a fatal error.");
            self.fatal.notify_one();
        } else {
            tracing::warn!(error = %error, reason, "Kafka client error.");
        }
    }
}

impl ProducerContext for PublishContext {
    /// The result's place in the buffer, released with its report.
    type DeliveryOpaque = Box<OwnedSemaphorePermit>;

    fn delivery(&self, report: &DeliveryResult<'_>, permit: Self::DeliveryOpaque) {
        match report {
            Ok(msg) => {
                drop(permit);
                self.shared.delivered(msg.partition(), msg.offset());
            }
            Err((error, msg)) => {
                let failed = Failed {
                    error: error.clone(),
                    msg: msg.detach(),
                    permit: *permit,
                    generation: self.generation,
                };
                if self.failed.send(failed).is_err() {
                    // The loop has returned (shutdown): nothing can send it again.
                    self.shared.metrics.publish_failures.inc(PublishFailure::Delivery);
                    tracing::error!(error = %error, "Result delivery failed after the publisher stopped.");
                }
            }
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.settled.notify_one();
        }
        if self.shared.blocked.load(Ordering::Relaxed) && self.shared.blocked.swap(false, Ordering::AcqRel) {
            // A place in librdkafka's queue came free for what the loop could not enqueue.
            self.shared.room.notify_one();
        }
        self.shared.update_waiting();
    }
}

type Kafka = ThreadedProducer<PublishContext>;

/// One encoded result on its way to the broker, holding its place in the buffer.
struct Pending {
    key: Vec<u8>,
    payload: Vec<u8>,
    timestamp_ms: Option<i64>,
    permit: OwnedSemaphorePermit,
}

impl Pending {
    /// The result back from a failed delivery report, to be sent again.
    fn from_failed(msg: &OwnedMessage, permit: OwnedSemaphorePermit) -> Self {
        Self {
            key: msg.key().unwrap_or_default().to_vec(),
            payload: msg.payload().unwrap_or_default().to_vec(),
            timestamp_ms: msg.timestamp().to_millis(),
            permit,
        }
    }
}

/// A failed delivery report, handed from the poll thread to the loop.
struct Failed {
    error: KafkaError,
    msg: OwnedMessage,
    permit: OwnedSemaphorePermit,
    generation: u64,
}

/// What the handle, the loop and the producers' callbacks share.
struct Shared {
    waiting: Arc<Semaphore>,
    limit: usize,
    metrics: Metrics,
    started: Instant,
    /// Milliseconds since `started` of the last delivery, or of the moment results began to
    /// wait after none did: the clock readiness compares with its stall timeout.
    progress_ms: AtomicU64,
    full: AtomicBool,
    dropped_while_full: AtomicU64,
    closing: CancellationToken,
    /// Probe tasks may enqueue into librdkafka themselves: the loop holds no result to send
    /// first and librdkafka's queue took the last one. Cleared when it refuses one (full, or a
    /// fatal error) and at shutdown; set again by the loop once it has caught up.
    direct: AtomicBool,
    /// Notified when a producer's last outstanding report was handled.
    settled: Notify,
    /// The loop waits for room in librdkafka's queue: the next report notifies `room`.
    blocked: AtomicBool,
    room: Notify,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn waiting_now(&self) -> usize {
        self.limit - self.waiting.available_permits()
    }

    fn update_waiting(&self) {
        let waiting = self.waiting_now();
        self.metrics.results_waiting.set(waiting as i64);
        // "Has room again" only below 90 % of the bound: a broker that takes results slower
        // than they come frees one place at a time, and each would otherwise log twice.
        if waiting <= self.limit - self.limit.div_ceil(10) && self.full.swap(false, Ordering::Relaxed) {
            let dropped = self.dropped_while_full.swap(0, Ordering::Relaxed);
            tracing::info!(
                waiting,
                dropped,
                "Result buffer has room again; results are kept again."
            );
        }
    }

    /// Accounts for a result the broker acknowledged.
    fn delivered(&self, partition: i32, offset: i64) {
        self.metrics.published.inc();
        self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
        self.metrics
            .last_delivery
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        tracing::debug!(partition, offset, "Result delivered.");
    }
}

/// The handle probe tasks hand their results to. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
    /// The producer in use; replaced by the loop after a fatal error or a stall.
    current: Arc<Mutex<Kafka>>,
    tx: mpsc::UnboundedSender<Pending>,
    topic: Arc<str>,
}

/// The loop that sends again what librdkafka refused or handed back, replaces the producer
/// when it is unusable, and drains it at shutdown; run it with [`PublishLoop::run`].
pub struct PublishLoop {
    shared: Arc<Shared>,
    current: Arc<Mutex<Kafka>>,
    rx: mpsc::UnboundedReceiver<Pending>,
    failed_tx: mpsc::UnboundedSender<Failed>,
    failed: mpsc::UnboundedReceiver<Failed>,
    config: ClientConfig,
    topic: Arc<str>,
    fatal: Arc<Notify>,
    replace_after: Option<Duration>,
}

impl Publisher {
    /// Creates the producer (no network traffic yet) and the loop that feeds it, with room for
    /// `limit` waiting results (see [`results_waiting_limit`]).
    ///
    /// # Errors
    /// librdkafka's error for an invalid property.
    pub fn new(kafka: &KafkaSettings, limit: usize, metrics: Metrics) -> Result<(Self, PublishLoop), KafkaError> {
        let mut config = kafka.client_config(PRODUCER_DEFAULTS);
        // The buffer and librdkafka's queue have the same bound (the module doc says why).
        config.set(QUEUE_MAX_MESSAGES, limit.to_string());
        let fatal = Arc::new(Notify::new());
        metrics.results_waiting_limit.set(limit as i64);
        let shared = Arc::new(Shared {
            waiting: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
            started: Instant::now(),
            progress_ms: AtomicU64::new(0),
            full: AtomicBool::new(false),
            dropped_while_full: AtomicU64::new(0),
            closing: CancellationToken::new(),
            direct: AtomicBool::new(true),
            settled: Notify::new(),
            blocked: AtomicBool::new(false),
            room: Notify::new(),
        });
        let (failed_tx, failed) = mpsc::unbounded_channel(); // bounded by the permits
        let producer = create(&config, &shared, &fatal, &failed_tx, 0)?;
        let current = Arc::new(Mutex::new(producer));
        let (tx, rx) = mpsc::unbounded_channel(); // bounded by `shared.waiting`'s permits
        let topic: Arc<str> = Arc::from(kafka.topic.as_str());
        let handle = Self {
            shared: shared.clone(),
            current: current.clone(),
            tx,
            topic: topic.clone(),
        };
        let publish_loop = PublishLoop {
            shared,
            current,
            rx,
            failed_tx,
            failed,
            config,
            topic,
            fatal,
            replace_after: None,
        };
        Ok((handle, publish_loop))
    }

    /// The current producer's client, for metadata requests (the producer is replaced after a
    /// fatal error).
    pub fn metadata(&self, timeout: Duration) -> Result<usize, String> {
        let producer = lock(&self.current).clone();
        common::kafka::topic_partitions(producer.client(), &self.topic, timeout)
    }

    /// Hands `result` over for publishing, keyed by its target name (so one target's results
    /// stay ordered in one partition, but for one sent again after a fatal error or a full
    /// queue). Never waits: the result goes into librdkafka's queue from the caller's task
    /// when the loop holds nothing to send first, else to the loop.
    ///
    /// Returns `false` when the result was dropped: the buffer was full (counted in
    /// `healthcheck_checker_results_dropped_total{reason="buffer_full"}`), the result could
    /// not be encoded (`healthcheck_checker_publish_failures_total{reason="encode"}`) or
    /// enqueued (`{reason="enqueue"}`, e.g. larger than `message.max.bytes`), or the publisher
    /// is shutting down (`healthcheck_checker_results_dropped_total{reason="shutdown"}`).
    pub fn submit(&self, result: &ProbeResult) -> bool {
        let shared = &self.shared;
        let Ok(permit) = shared.waiting.clone().try_acquire_owned() else {
            shared.metrics.results_dropped.inc(DropReason::BufferFull);
            shared.dropped_while_full.fetch_add(1, Ordering::Relaxed);
            if !shared.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    limit = shared.limit,
                    "Result buffer is full (the broker is not taking results); dropping new results until it has room."
                );
            }
            return false;
        };
        if shared.waiting_now() == 1 {
            // Results begin to wait: the stall clock starts now, not at the last delivery.
            shared.progress_ms.store(shared.now_ms(), Ordering::Relaxed);
        }
        let payload = match serde_json::to_vec(result) {
            Ok(p) => p,
            Err(e) => {
                drop(permit);
                shared.metrics.publish_failures.inc(PublishFailure::Encode);
                tracing::error!(check_id = %result.check_id, error = %e, "Could not encode a result.");
                return false;
            }
        };
        let mut pending = Pending {
            key: result.target.as_bytes().to_vec(),
            payload,
            timestamp_ms: Some(result.scheduled_at.timestamp_millis()),
            permit,
        };
        if shared.direct.load(Ordering::Acquire) {
            match enqueue(&lock(&self.current), &self.topic, pending) {
                Enqueued::Sent => {
                    shared.update_waiting();
                    return true;
                }
                Enqueued::Rejected => {
                    shared.update_waiting();
                    return false;
                }
                Enqueued::Later(p, _) => {
                    // The loop sends it, and every result after it, until it has caught up.
                    shared.direct.store(false, Ordering::Release);
                    pending = p;
                }
            }
        }
        let sent = self.tx.send(pending).is_ok();
        if !sent {
            shared.metrics.results_dropped.inc(DropReason::Shutdown);
        }
        shared.update_waiting();
        sent
    }

    /// Results handed over and not yet delivered or failed for good.
    pub fn waiting(&self) -> usize {
        self.shared.waiting_now()
    }

    /// `Err` with the reason when results are waiting and none has been delivered for
    /// `timeout` (the last delivery, or the moment results began to wait, is older): the
    /// checker probes but its results do not reach the topic.
    pub fn delivering(&self, timeout: Duration) -> Result<(), String> {
        let waiting = self.waiting();
        let since = Duration::from_millis(
            self.shared
                .now_ms()
                .saturating_sub(self.shared.progress_ms.load(Ordering::Relaxed)),
        );
        if waiting > 0 && since > timeout {
            // The text stays the same while the state lasts: readiness logs each change.
            Err(format!(
                "no result delivered to Kafka for more than {} while results wait",
                humantime::format_duration(timeout)
            ))
        } else {
            Ok(())
        }
    }

    /// Asks the loop to finish: it takes no new results, delivers those waiting and returns.
    pub fn close(&self) {
        self.shared.direct.store(false, Ordering::Release);
        self.shared.closing.cancel();
    }
}

/// The producer in use. Held only to enqueue one result or to replace it.
fn lock(current: &Mutex<Kafka>) -> MutexGuard<'_, Kafka> {
    // Nothing panics while holding it with the producer half replaced.
    current.lock().unwrap_or_else(PoisonError::into_inner)
}

fn create(
    config: &ClientConfig,
    shared: &Arc<Shared>,
    fatal: &Arc<Notify>,
    failed: &mpsc::UnboundedSender<Failed>,
    generation: u64,
) -> Result<Kafka, KafkaError> {
    config.create_with_context(PublishContext {
        shared: shared.clone(),
        fatal: fatal.clone(),
        generation,
        outstanding: AtomicUsize::new(0),
        failed: failed.clone(),
    })
}

/// What became of an attempt to enqueue.
enum Enqueued {
    /// In librdkafka's queue; its delivery report is handled by the producer's context.
    Sent,
    /// Not now (librdkafka's queue is full, or the producer hit a fatal error): try again.
    Later(Pending, KafkaError),
    /// Never (e.g. a message larger than `message.max.bytes`): counted and dropped.
    Rejected,
}

/// Enqueues `p` into `producer`'s queue (librdkafka copies key and payload).
fn enqueue(producer: &Kafka, topic: &str, p: Pending) -> Enqueued {
    let Pending {
        key,
        payload,
        timestamp_ms,
        permit,
    } = p;
    let context = producer.context();
    context.outstanding.fetch_add(1, Ordering::AcqRel);
    let mut record = BaseRecord::<[u8], [u8], _>::with_opaque_to(topic, Box::new(permit))
        .key(&key[..])
        .payload(&payload[..]);
    if let Some(ts) = timestamp_ms {
        record = record.timestamp(ts);
    }
    let Err((e, record)) = producer.send(record) else {
        return Enqueued::Sent;
    };
    let permit = *record.delivery_opaque;
    // No report will come for it.
    if context.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
        context.shared.settled.notify_one();
    }
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull | RDKafkaErrorCode::Fatal) => Enqueued::Later(
            Pending {
                key,
                payload,
                timestamp_ms,
                permit,
            },
            e,
        ),
        e => {
            drop(permit);
            context.shared.metrics.publish_failures.inc(PublishFailure::Enqueue);
            tracing::error!(target_name = %String::from_utf8_lossy(&key), error = %e, "Could not enqueue a result.");
            Enqueued::Rejected
        }
    }
}

/// The producers the loop keeps: the one in use (in `PublishLoop::current`) and the ones it
/// replaced that still owe delivery reports.
struct Producers {
    /// Counts replacements; every producer's context carries the generation it was made for.
    generation: u64,
    /// Producers replaced after a fatal error or a stall, kept until their last delivery
    /// report (dropping one would purge its queue and lose the results it hands back).
    retired: Vec<Kafka>,
    /// When a stalled producer was last replaced (start-up before the first): the stall
    /// timeout counts from it too.
    stall_replaced: Instant,
}

impl Producers {
    /// Drops the retired producers that owe no report.
    fn drop_settled(&mut self) {
        self.retired
            .retain(|p| p.context().outstanding.load(Ordering::Acquire) > 0);
    }
}

impl PublishLoop {
    /// Replaces the producer when results have waited `after` without any delivery while the
    /// broker answers metadata for the topic (the module doc says why). Off by default.
    #[must_use]
    pub fn replace_when_stalled(self, after: Duration) -> Self {
        Self {
            replace_after: Some(after),
            ..self
        }
    }

    /// Sends again what librdkafka refused or handed back and replaces an unusable producer,
    /// until [`Publisher::close`] was called and every waiting result is delivered (or failed
    /// for good). The caller bounds the time this takes at shutdown.
    ///
    /// # Errors
    /// librdkafka refused to create a new producer after a fatal error (it accepted the same
    /// configuration at start-up, so this does not happen in practice).
    pub async fn run(mut self) -> Result<(), KafkaError> {
        let mut producers = Producers {
            generation: 0,
            retired: Vec::new(),
            stall_replaced: Instant::now(),
        };
        let mut rx_closed = false;
        // Results to send before any new one, oldest first: returned by a fatal producer, or
        // refused by a full librdkafka queue.
        let mut again: VecDeque<Pending> = VecDeque::new();
        let mut blocked = false;
        let mut input_open = true;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !blocked {
                blocked = self.send_again(&mut producers, &mut again)?;
                self.shared.blocked.store(blocked, Ordering::Release);
            }
            if !blocked && again.is_empty() && input_open && !self.shared.closing.is_cancelled() && self.rx.is_empty() {
                // Caught up: probe tasks enqueue themselves again.
                self.shared.direct.store(true, Ordering::Release);
            }
            if !input_open && again.is_empty() && self.settled(&mut producers) {
                break;
            }
            tokio::select! {
                () = self.fatal.notified() => {
                    self.rebuild_if_fatal(&mut producers)?;
                }
                Some(f) = self.failed.recv() => {
                    blocked = false;
                    if let Some(p) = self.on_failed(f, &producers) {
                        again.push_back(p);
                    }
                    producers.drop_settled();
                    self.shared.update_waiting();
                }
                p = self.rx.recv(), if input_open && !blocked && again.is_empty() => match p {
                    Some(p) => again.push_back(p),
                    None => input_open = false,
                },
                () = self.shared.closing.cancelled(), if input_open && !rx_closed => {
                    // Take what was handed over already, then nothing more.
                    self.rx.close();
                    rx_closed = true;
                }
                // A report handled: a retired producer may be done, or the last one at shutdown.
                () = self.shared.settled.notified(), if !input_open || !producers.retired.is_empty() => {
                    blocked = false;
                    producers.drop_settled();
                }
                () = self.shared.room.notified(), if blocked => blocked = false,
                () = tokio::time::sleep(Duration::from_millis(100)), if blocked => blocked = false,
                _ = tick.tick() => self.on_tick(&mut producers).await?,
            }
        }
        self.shared.update_waiting();
        let producer = lock(&self.current).clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Timeout::After(Duration::from_secs(5)))).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "Producer flush did not complete.");
        }
        Ok(())
    }

    /// No producer, current or retired, owes a delivery report (the retired ones are dropped).
    fn settled(&self, producers: &mut Producers) -> bool {
        producers.drop_settled();
        producers.retired.is_empty() && lock(&self.current).context().outstanding.load(Ordering::Acquire) == 0
    }

    /// Enqueues `again`, oldest first, until it is empty or librdkafka's queue is full;
    /// returns whether it is (blocked until the next delivery report, or 100 ms).
    fn send_again(&self, producers: &mut Producers, again: &mut VecDeque<Pending>) -> Result<bool, KafkaError> {
        while let Some(p) = again.pop_front() {
            let enqueued = enqueue(&lock(&self.current), &self.topic, p);
            match enqueued {
                Enqueued::Sent | Enqueued::Rejected => {}
                Enqueued::Later(p, e) => {
                    again.push_front(p);
                    self.shared.direct.store(false, Ordering::Release);
                    if !self.rebuild_if_fatal(producers)? {
                        tracing::debug!(error = %e, "librdkafka's queue is full; waiting for a delivery.");
                        return Ok(true);
                    }
                }
            }
        }
        self.shared.update_waiting();
        Ok(false)
    }

    /// Every second: the queue gauges, settled retired producers dropped, and a stalled
    /// producer replaced.
    async fn on_tick(&self, producers: &mut Producers) -> Result<(), KafkaError> {
        let current = lock(&self.current).clone();
        self.shared
            .metrics
            .producer_queue
            .set(i64::from(current.in_flight_count()));
        self.shared.update_waiting();
        producers.drop_settled();
        if self.stalled(&current, producers.stall_replaced).await {
            self.replace(producers)?;
            self.shared.metrics.producer_stall_replacements.inc();
            producers.stall_replaced = Instant::now();
        }
        Ok(())
    }

    /// Accounts for a failed delivery report; returns the result when it must be sent again
    /// (its producer hit a fatal error or was replaced).
    fn on_failed(&self, f: Failed, producers: &Producers) -> Option<Pending> {
        let fatal = f.generation < producers.generation || lock(&self.current).client().fatal_error().is_some();
        if fatal {
            // Sent again by the next producer (this one is unusable).
            Some(Pending::from_failed(&f.msg, f.permit))
        } else {
            self.shared.metrics.publish_failures.inc(PublishFailure::Delivery);
            tracing::error!(target_name = %String::from_utf8_lossy(f.msg.key().unwrap_or_default()), error = %f.error, "Result delivery failed.");
            None
        }
    }

    /// When the producer hit a fatal error, replaces it with a new one (the old one is kept
    /// until its last delivery report). Returns whether it did.
    fn rebuild_if_fatal(&self, producers: &mut Producers) -> Result<bool, KafkaError> {
        let Some((code, reason)) = lock(&self.current).client().fatal_error() else {
            return Ok(false);
        };
        self.shared.metrics.producer_fatal_errors.inc();
        tracing::error!(
            error = ?code,
            reason = %reason,
            waiting = self.shared.waiting_now(),
            "Kafka producer is unusable after a fatal error; replacing it and sending its undelivered results again."
        );
        self.replace(producers)?;
        Ok(true)
    }

    /// Results wait, none was delivered for the stall timeout (nor since the last
    /// replacement), and the broker answers metadata for the topic: the producer is stuck.
    async fn stalled(&self, producer: &Kafka, last_replaced: Instant) -> bool {
        let Some(after) = self.replace_after else {
            return false;
        };
        let since_delivery = Duration::from_millis(
            self.shared
                .now_ms()
                .saturating_sub(self.shared.progress_ms.load(Ordering::Relaxed)),
        );
        if self.shared.waiting_now() == 0 || since_delivery <= after || last_replaced.elapsed() <= after {
            return false;
        }
        let (p, topic) = (producer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || p.client().fetch_metadata(Some(&topic), Duration::from_secs(2)).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Puts a new producer in the current one's place and purges the old one's queue and
    /// requests in flight: their failed delivery reports hand the results back, to be sent
    /// again (the old producer is kept until its last report).
    fn replace(&self, producers: &mut Producers) -> Result<(), KafkaError> {
        tracing::warn!(
            waiting = self.shared.waiting_now(),
            "Replacing the Kafka producer; its undelivered results are sent again."
        );
        let new = create(
            &self.config,
            &self.shared,
            &self.fatal,
            &self.failed_tx,
            producers.generation + 1,
        )?;
        let old = std::mem::replace(&mut *lock(&self.current), new);
        producers.generation += 1;
        old.purge(PurgeConfig::default().queue().inflight());
        producers.retired.push(old);
        // A producer with no report outstanding is not kept.
        producers.drop_settled();
        Ok(())
    }
}
