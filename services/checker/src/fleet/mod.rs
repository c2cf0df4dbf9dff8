//! Fleet mode (`TargetSource::Topic`): the location's checkers share the targets topic
//! (`KAFKA_TARGETS_TOPIC`) through the consumer group `checker-<LOCATION>`, and each probes
//! exactly the targets of the partitions it holds. Kafka does the membership: the
//! cooperative-sticky assignor (KIP-429) moves only the partitions that must move, the session
//! timeout detects a dead replica, and a stopping replica leaves the group first so that its
//! partitions move at once.
//!
//! - [`state`]: the pure rules (loading a partition from its beginning, live records,
//!   hand-over of revoked targets).
//! - [`consumer`]: librdkafka's consumer, its rebalance callback and the poll loop, on a
//!   thread of its own.
//! - [`metrics`]: assigned partitions, rebalances, partition load time, invalid values.
//!
//! Invariant: coverage over exclusivity during a rebalance, exclusive in steady state. A slot
//! probed twice within a location costs nothing (same `check_id`, the sink keeps one row), a
//! missed slot is a hole in the history; so revoked targets keep being probed for
//! `HANDOVER_PERIOD` (also after SIGTERM, once the group was left) and are removed then,
//! unless they came back.
//!
//! This module never commits an offset, never produces, and never schedules a target itself:
//! the [`Roster`] does.

pub mod consumer;
pub mod metrics;
pub mod state;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::{KafkaSettings, Protected};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::config::TargetContext;
use crate::roster::Roster;
use consumer::{FleetContext, Parser, Shared};
pub use metrics::FleetMetrics;
use state::State;

/// The consumer's librdkafka properties (under the user's `KAFKA_CFG_*`, which may not
/// change the [`PROTECTED`] ones).
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "true"),
    ("auto.offset.reset", "earliest"),
];

/// The consumer properties fleet mode rests on.
pub const PROTECTED: &[Protected] = &[
    Protected {
        name: "partition.assignment.strategy",
        aliases: &[],
        why: "replicas move only the partitions that must move (KIP-429), and keep probing the others",
    },
    Protected {
        name: "enable.auto.commit",
        aliases: &[],
        why: "the targets topic is always read from its beginning; nothing is committed",
    },
    Protected {
        name: "enable.partition.eof",
        aliases: &[],
        why: "a partition's targets are scheduled when its end is reached",
    },
];

/// What fleet mode needs beyond the Kafka settings and the target context.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The consumer group, `checker-<LOCATION>`.
    pub group_id: String,
    /// How long revoked targets stay scheduled (`HANDOVER_PERIOD`).
    pub handover_period: Duration,
}

/// The running fleet consumer.
pub struct Fleet {
    shared: Arc<Shared>,
    done: CancellationToken,
    handover_period: Duration,
}

impl Fleet {
    /// Joins the group and starts loading partitions on a thread of its own; target specs
    /// are built with `targets` (the environment and defaults of start-up). On `shutdown` it
    /// leaves the group, hands its targets over for the hand-over period and then cancels
    /// `roster_stop` (the token `roster` was built with). Call inside a tokio runtime.
    ///
    /// # Errors
    /// librdkafka rejects the consumer's configuration.
    pub fn start(
        kafka: &KafkaSettings,
        config: FleetConfig,
        targets: TargetContext,
        roster: Roster,
        metrics: FleetMetrics,
        shutdown: CancellationToken,
        roster_stop: CancellationToken,
    ) -> Result<Self, KafkaError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config.handover_period)),
            roster,
            metrics,
            topic: kafka.targets_topic.clone(),
            new_partitions: Mutex::new(Vec::new()),
        });
        let mut cfg = kafka.client_config(CONSUMER_DEFAULTS);
        cfg.set("group.id", &config.group_id);
        let consumer: BaseConsumer<FleetContext> = cfg.create_with_context(FleetContext { shared: shared.clone() })?;
        let parser = Parser {
            env: targets.env,
            defaults: targets.defaults,
        };
        let done = CancellationToken::new();
        let (s, d) = (shared.clone(), done.clone());
        std::thread::Builder::new()
            .name("fleet-consumer".into())
            .spawn(move || {
                consumer::run(consumer, s, parser, shutdown, roster_stop);
                d.cancel();
            })
            .expect("spawn the fleet consumer thread");
        tracing::info!(group = %config.group_id, topic = %kafka.targets_topic, "Joining the checker group.");
        Ok(Self {
            shared,
            done,
            handover_period: config.handover_period,
        })
    }

    /// Readiness: every assigned partition has been loaded (a replica holding no partition is
    /// a ready standby).
    pub fn readiness(&self) -> Readiness {
        Readiness(self.shared.clone())
    }

    /// After shutdown: waits until the group was left and the hand-over period is over (at
    /// most `limit`), i.e. until the roster's stop token is cancelled.
    pub async fn stopped(&self, limit: Duration) {
        let t0 = Instant::now();
        if tokio::time::timeout(limit, self.done.cancelled()).await.is_err() {
            tracing::warn!(waited = ?t0.elapsed(), handover = ?self.handover_period, "The fleet consumer did not finish its hand-over in time.");
        }
    }
}

/// The fleet's part of `/readyz` (see [`Fleet::readiness`]).
#[derive(Clone)]
pub struct Readiness(Arc<Shared>);

impl Readiness {
    /// `Err` naming the partitions still loading.
    ///
    /// # Errors
    /// Some assigned partition has not reached its end yet.
    pub fn check(&self) -> Result<(), String> {
        let loading = self.0.state.lock().expect("fleet state").loading();
        if loading.is_empty() {
            Ok(())
        } else {
            Err(format!("targets partitions {loading:?} still loading"))
        }
    }
}
