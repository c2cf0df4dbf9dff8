//! The targets topic's consumer: librdkafka's group membership (cooperative-sticky, KIP-429),
//! the rebalance callback and the poll loop, on a thread of its own (librdkafka calls the
//! rebalance callback from inside `poll`, and the roster's methods are synchronous).
//!
//! It never commits an offset and never produces: every assigned partition is read from its
//! beginning (`Offset::Beginning` set in the assignment itself, so even offsets committed by
//! some other client of the group are ignored), and the state is the last value per key.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::config::Env;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::metrics::{FleetMetrics, RebalanceKind};
use super::state::{Change, State};
use crate::roster::Roster;
use crate::target::{target_from_json, Defaults};

/// What the poll loop and the rebalance callback share.
pub(super) struct Shared {
    pub state: Mutex<State>,
    pub roster: Roster,
    pub metrics: FleetMetrics,
    pub topic: String,
    /// Partitions assigned since the poll loop last looked: it asks their watermarks, since an
    /// empty partition gives no end-of-partition event on some brokers (tansu).
    pub new_partitions: Mutex<Vec<i32>>,
}

impl Shared {
    pub fn apply(&self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Upsert(t) => self.roster.upsert(t),
                Change::Remove(name) => self.roster.remove(&name),
            }
        }
        let state = self.state.lock().expect("fleet state");
        self.metrics.assigned_partitions.set(state.assigned() as i64);
        self.metrics.handover_targets.set(state.handing_over() as i64);
    }
}

/// librdkafka's context: the rebalance callback.
pub(super) struct FleetContext {
    pub shared: Arc<Shared>,
}

impl ClientContext for FleetContext {
    /// librdkafka's errors, logged; an end of partition is an event here, not an error.
    fn error(&self, error: KafkaError, reason: &str) {
        if let KafkaError::PartitionEOF(p) = error {
            tracing::debug!(partition = p, "End of a targets partition.");
        } else {
            tracing::error!(error = %error, reason, "Targets topic consumer error.");
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic).iter().map(|e| e.partition()).collect()
}

impl ConsumerContext for FleetContext {
    /// Replaces rdkafka's default handling: assigned partitions start at their beginning, and
    /// the state learns of every change before librdkafka applies it.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let shared = &self.shared;
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let now = Instant::now();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = tpl.set_all_offsets(Offset::Beginning) {
                    tracing::error!(error = %e, "Could not set the assigned partitions to their beginning.");
                }
                let parts = partitions_of(tpl, &shared.topic);
                shared.metrics.rebalance(RebalanceKind::Assign);
                shared.state.lock().expect("fleet state").assign(&parts, now);
                shared.new_partitions.lock().expect("new partitions").extend(&parts);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "Assigning the targets topic's partitions failed.");
                }
                tracing::info!(partitions = ?parts, "Targets partitions assigned; loading them from their beginning.");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts = partitions_of(tpl, &shared.topic);
                let lost = consumer.assignment_lost();
                shared.metrics.rebalance(if lost {
                    RebalanceKind::Lost
                } else {
                    RebalanceKind::Revoke
                });
                {
                    let mut state = shared.state.lock().expect("fleet state");
                    if lost {
                        state.lose(&parts);
                    } else {
                        state.revoke(&parts, now);
                    }
                }
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "Unassigning the targets topic's partitions failed.");
                }
                tracing::info!(partitions = ?parts, lost, "Targets partitions revoked; their targets are handed over.");
            }
            other => {
                let code: rdkafka::error::RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "Rebalance error; treating the assignment as lost.");
                shared.metrics.rebalance(RebalanceKind::Lost);
                shared.state.lock().expect("fleet state").lose_all();
                let _ = consumer.unassign();
            }
        }
        shared.apply(Vec::new());
    }
}

/// How a record's value is turned into a target.
pub(super) struct Parser {
    pub env: Env,
    pub defaults: Defaults,
}

/// Runs the poll loop until `shutdown`, then leaves the group (closing the consumer sends
/// LeaveGroup at once, and its revocation hands every target over), keeps the handed-over
/// targets scheduled until their hand-over period ends, and cancels `roster_stop`.
pub(super) fn run(
    consumer: BaseConsumer<FleetContext>,
    shared: Arc<Shared>,
    parser: Parser,
    shutdown: CancellationToken,
    roster_stop: CancellationToken,
) {
    if let Err(e) = consumer.subscribe(&[shared.topic.as_str()]) {
        tracing::error!(error = %e, topic = %shared.topic, "Could not subscribe to the targets topic.");
    }
    while !shutdown.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => record(&shared, &parser, &m),
            Some(Err(KafkaError::PartitionEOF(p))) => loaded(&shared, p),
            Some(Err(e)) => tracing::warn!(error = %e, "Targets topic consumer error."),
        }
        check_empty(&consumer, &shared);
        let changes = shared.state.lock().expect("fleet state").tick(Instant::now());
        shared.apply(changes);
    }
    tracing::info!("Leaving the checker group; handing targets over.");
    drop(consumer);
    shared.state.lock().expect("fleet state").revoke_all(Instant::now());
    loop {
        let changes = shared.state.lock().expect("fleet state").tick(Instant::now());
        shared.apply(changes);
        if shared.state.lock().expect("fleet state").handing_over() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("Hand-over over; stopping the schedules.");
    roster_stop.cancel();
}

fn record(shared: &Shared, parser: &Parser, m: &rdkafka::message::BorrowedMessage<'_>) {
    let Some(name) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
        shared.metrics.target_errors.inc();
        tracing::warn!(
            partition = m.partition(),
            offset = m.offset(),
            "Targets topic record without a UTF-8 key; ignored."
        );
        return;
    };
    let value = match m.payload() {
        None => None,
        Some(bytes) => match target_from_json(name, bytes, &parser.env, &parser.defaults) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                shared.metrics.target_errors.inc();
                tracing::warn!(error = %e, target_name = name, partition = m.partition(), offset = m.offset(), "Invalid target spec in the targets topic; the previous spec (if any) keeps running.");
                return;
            }
        },
    };
    let changes = shared
        .state
        .lock()
        .expect("fleet state")
        .record(m.partition(), name, value);
    shared.apply(changes);
}

fn loaded(shared: &Shared, p: i32) {
    let done = shared
        .state
        .lock()
        .expect("fleet state")
        .end_of_partition(p, Instant::now());
    if let Some((took, changes)) = done {
        shared.metrics.partition_load.observe(took.as_secs_f64());
        tracing::info!(
            partition = p,
            targets = changes.len(),
            seconds = took.as_secs_f64(),
            "Targets partition loaded; its targets are scheduled."
        );
        shared.apply(changes);
    }
}

/// Newly assigned partitions that are empty are loaded at once (ListOffsets is right about
/// emptiness even on tansu, where its end offset is not).
fn check_empty(consumer: &BaseConsumer<FleetContext>, shared: &Shared) {
    let parts: Vec<i32> = std::mem::take(&mut *shared.new_partitions.lock().expect("new partitions"));
    let loading = shared.state.lock().expect("fleet state").loading();
    let mut retry = Vec::new();
    for p in parts.into_iter().filter(|p| loading.contains(p)) {
        match consumer.fetch_watermarks(&shared.topic, p, Duration::from_secs(2)) {
            Ok((low, high)) if high <= low => loaded(shared, p),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, partition = p, "Watermarks unknown yet; asking again.");
                retry.push(p);
            }
        }
    }
    shared.new_partitions.lock().expect("new partitions").extend(retry);
}
