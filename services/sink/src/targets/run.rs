//! The targets consumer's loop: wait for the topic, subscribe, gather records into batches,
//! write each batch in one transaction (retrying transient failures), then store its offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::decode::{decode, TargetChange};
use crate::metrics::Metrics;
use crate::retry::{self, GaveUp};
use crate::store::{DeadLetter, Store, StoreError};

/// The targets consumer's librdkafka properties (besides `group.id` and
/// `bootstrap.servers`); the user's `KAFKA_CFG_*` apply too, but never `group.id` or
/// `group.instance.id` (the results consumer's).
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "healthcheck-sink-targets"),
    ("enable.auto.offset.store", "false"),
    ("enable.auto.commit", "true"),
    ("auto.commit.interval.ms", "1000"),
    ("auto.offset.reset", "earliest"),
    ("isolation.level", "read_committed"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("fetch.wait.max.ms", "100"),
];

/// Records in one transaction at most.
const BATCH_MAX: usize = 500;
/// How long a non-empty batch waits for more records.
const LINGER: Duration = Duration::from_millis(100);
/// How often a missing topic is looked for again.
const TOPIC_RETRY: Duration = Duration::from_secs(2);

/// The targets consumer of `settings` in group `group` (see [`super::group_id`]).
///
/// # Errors
/// librdkafka rejects a property.
pub fn consumer(
    settings: &common::kafka::KafkaSettings,
    group: &str,
) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let mut cfg = settings.client_config(CONSUMER_DEFAULTS);
    cfg.set("group.id", group);
    cfg.remove("group.instance.id");
    cfg.create()
}

/// Consumes `topic` into `target_changes` until `stop` is cancelled: waits for the topic to
/// exist (every 2 s), subscribes, and writes batches of up to 500 records (after a 100 ms
/// linger), storing their offsets once committed.
///
/// # Errors
/// A fatal database error (the caller reports it), or a subscription librdkafka refuses.
pub async fn run(
    consumer: Arc<StreamConsumer>,
    store: Store,
    topic: String,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<(), String> {
    if !wait_for_topic(&consumer, &topic, &stop).await {
        return Ok(());
    }
    consumer.subscribe(&[&topic]).map_err(|e| e.to_string())?;
    tracing::info!(topic = %topic, "Consuming the targets topic.");
    loop {
        let mut changes: Vec<TargetChange> = Vec::new();
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        // The first record waits as long as it takes; the others at most LINGER.
        let first = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = common::kafka::recv(&consumer) => m,
        };
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Ok(m) => {
                    last.insert(m.partition(), m.offset());
                    match decode_message(&topic, &m) {
                        Ok(c) => changes.push(c),
                        Err(d) => dead.push(d),
                    }
                }
                Err(e) => tracing::warn!(error = %e, topic = %topic, "Targets consumer error; going on."),
            }
            if changes.len() + dead.len() >= BATCH_MAX {
                break;
            }
            next = tokio::time::timeout_at(deadline, common::kafka::recv(&consumer))
                .await
                .ok();
        }
        if last.is_empty() {
            continue;
        }
        let written = write(&store, &topic, &changes, &dead, &stop)
            .await
            .map_err(|e| e.to_string())?;
        let Some((inserted, dead_inserted)) = written else {
            return Ok(());
        };
        let count = |outcome: &str, n: u64| metrics.target_records.with_label_values(&[outcome]).inc_by(n);
        count("stored", inserted);
        count("duplicate", changes.len() as u64 - inserted);
        count("dead_letter", dead_inserted);
        store_offsets(&consumer, &topic, &last);
    }
}

/// Whether the topic exists (`false`: stopped while waiting).
async fn wait_for_topic(consumer: &Arc<StreamConsumer>, topic: &str, stop: &CancellationToken) -> bool {
    let mut warned = false;
    loop {
        let (c, t) = (consumer.clone(), topic.to_string());
        // A blocking metadata request, off the runtime's threads.
        let found = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), Duration::from_secs(3)).is_ok_and(|md| {
                md.topics()
                    .iter()
                    .any(|x| x.name() == t && x.error().is_none() && !x.partitions().is_empty())
            })
        })
        .await
        .unwrap_or(false);
        if found {
            return true;
        }
        if !warned {
            tracing::warn!(topic = %topic, "The targets topic does not exist yet; waiting for it.");
            warned = true;
        }
        if common::shutdown::until_cancelled(stop, tokio::time::sleep(TOPIC_RETRY))
            .await
            .is_none()
        {
            return false;
        }
    }
}

fn decode_message(topic: &str, m: &BorrowedMessage<'_>) -> Result<TargetChange, DeadLetter> {
    let changed_at = m
        .timestamp()
        .to_millis()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    decode(topic, m.partition(), m.offset(), m.key(), m.payload(), changed_at)
}

/// Writes one batch, retrying transient failures until they pass (the new changes and dead
/// letters) or `stop` is cancelled (`None`: the batch is replayed by the next run).
async fn write(
    store: &Store,
    topic: &str,
    changes: &[TargetChange],
    dead: &[DeadLetter],
    stop: &CancellationToken,
) -> Result<Option<(u64, u64)>, StoreError> {
    let attempt = || store.write_target_changes(topic, changes, dead);
    let on_retry = |e: &StoreError, wait: Duration| {
        tracing::warn!(code = %e.code, error = %e.message, retry_in_ms = wait.as_millis() as u64, "Targets write failed; retrying.");
    };
    match retry::until_stopped(retry::WRITE, stop, Some(store), attempt, on_retry).await {
        Ok(n) => Ok(Some(n)),
        Err(GaveUp::Fatal(e)) => Err(e),
        Err(GaveUp::Stopped(_)) => Ok(None),
    }
}

/// Stores the offset after each partition's last written record; a partition revoked
/// meanwhile is refused by librdkafka, and its new owner's replay is absorbed.
fn store_offsets(consumer: &StreamConsumer, topic: &str, last: &BTreeMap<i32, i64>) {
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in last {
        if tpl.add_partition_offset(topic, p, Offset::Offset(o + 1)).is_err() {
            return;
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(error = %e, "Could not store targets offsets (revoked partition); the new owner replays them.");
    }
}
