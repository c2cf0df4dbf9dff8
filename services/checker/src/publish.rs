//! Publishes probe results to Kafka with an idempotent producer and waits for each delivery
//! report, so no result is lost silently: a failed delivery is logged with its check id and
//! counted in `healthcheck_checker_publish_failures_total`.

use std::time::Duration;

use common::kafka::{KafkaSettings, Protected};
use common::result::ProbeResult;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::metrics::Metrics;

/// Producer defaults; `KAFKA_CFG_*` overrides any of them. `enable.idempotence` implies
/// `acks=all`, retries and at most 5 in-flight requests per connection (librdkafka
/// CONFIGURATION.md), so retries neither duplicate nor reorder messages within a partition.
/// `compression.type=lz4`: results are similar JSON documents, so batches shrink several-fold
/// on the wire and on the broker's disk for little CPU.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    ("compression.type", "lz4"),
    ("message.timeout.ms", "300000"),
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

/// A Kafka producer of probe results.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    metrics: Metrics,
}

impl Publisher {
    /// Creates the producer (no network traffic yet).
    ///
    /// # Errors
    /// librdkafka's error for an invalid property.
    pub fn new(kafka: &KafkaSettings, metrics: Metrics) -> Result<Self, KafkaError> {
        let producer = kafka.client_config(PRODUCER_DEFAULTS).create()?;
        Ok(Self {
            producer,
            topic: kafka.topic.clone(),
            metrics,
        })
    }

    /// The underlying producer (for metadata requests).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Publishes `result` keyed by its target name, so one target's results stay ordered in
    /// one partition, and waits for the broker's acknowledgement.
    ///
    /// Returns `true` when delivered. Failures are logged and counted here.
    pub async fn publish(&self, result: &ProbeResult) -> bool {
        let payload = match serde_json::to_vec(result) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.publish_failures.with_label_values(&["encode"]).inc();
                tracing::error!(check_id = %result.check_id, error = %e, "Could not encode a result.");
                return false;
            }
        };
        let record = FutureRecord::to(&self.topic)
            .key(result.target.as_bytes())
            .payload(&payload)
            .timestamp(result.scheduled_at.timestamp_millis());
        // Enqueue, waiting while the local queue is full (back-pressure, never a drop).
        let mut record = record;
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    self.metrics.publish_failures.with_label_values(&["enqueue"]).inc();
                    tracing::error!(check_id = %result.check_id, target_name = %result.target, error = %e, "Could not enqueue a result.");
                    return false;
                }
            }
        };
        self.metrics
            .producer_queue
            .set(i64::from(self.producer.in_flight_count()));
        match delivery.await {
            Ok(Ok(delivery)) => {
                self.metrics.published.inc();
                tracing::debug!(check_id = %result.check_id, target_name = %result.target, partition = delivery.partition, offset = delivery.offset, "Result delivered.");
                true
            }
            Ok(Err((e, _))) => {
                self.metrics.publish_failures.with_label_values(&["delivery"]).inc();
                tracing::error!(check_id = %result.check_id, target_name = %result.target, error = %e, "Result delivery failed.");
                false
            }
            Err(_canceled) => {
                self.metrics.publish_failures.with_label_values(&["delivery"]).inc();
                tracing::error!(check_id = %result.check_id, target_name = %result.target, "Result delivery was cancelled (producer closed).");
                false
            }
        }
    }

    /// Waits up to `timeout` for every queued message to be delivered.
    ///
    /// # Errors
    /// librdkafka's error when messages are still queued at the deadline.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }
}
