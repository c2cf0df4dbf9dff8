//! The targets topic (`KAFKA_TARGETS_TOPIC`): target specs as data in Kafka.
//!
//! Key = target name (UTF-8), value = the target's spec as canonical JSON (one entry of the
//! targets file, `name` equal to the key, `interval` always present, object keys sorted),
//! tombstone (no value) = removal. The topic is compacted (`cleanup.policy=compact`), but
//! its state is always computed here as the last value per key, tombstones removing, which is
//! right with or without compaction (the tansu test broker never compacts).
//!
//! What is here: the topic's creation ([`ensure_topic`]), reading its state from the
//! beginning ([`read_state`], [`read_partitions`]), the canonical value of a target
//! ([`topic_value`]), the writer `checker targets apply` uses ([`publish`]) and the difference
//! between a file and the topic ([`diff`]). This module never commits an offset and never
//! joins a consumer group: reading the state is a plain assignment from the beginning, so it
//! disturbs no group (the fleet's `checker-<LOCATION>` ones included).

pub mod diff;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::kafka::{KafkaSettings, Protected};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::target::Target;

/// The last value of one key of the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The value parsed as JSON; `None` when it is not JSON (written by another tool).
    pub spec: Option<Value>,
    /// The value's bytes as stored.
    pub value: Vec<u8>,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// The record's timestamp (producer create time or broker append time), when it has one.
    pub timestamp: Option<DateTime<Utc>>,
}

/// The topic's state: target name → its last value. Removed names are absent.
pub type State = BTreeMap<String, Entry>;

/// Why the topic could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// librdkafka's error (broker unreachable, request failed).
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    /// The topic does not exist on the cluster.
    #[error("topic {0} does not exist")]
    Missing(String),
    /// The broker's metadata named an error for the topic.
    #[error("topic {topic}: {code:?}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The error code in the metadata response.
        code: RDKafkaErrorCode,
    },
    /// Not every partition reached its end in time.
    #[error("partitions {open:?} of {topic} did not reach their end within {timeout:?}")]
    Timeout {
        /// The topic.
        topic: String,
        /// The partitions still being read.
        open: Vec<i32>,
        /// The bound.
        timeout: Duration,
    },
}

/// The properties of the apply producer its guarantees rest on: every change durable
/// (`acks=all`), written once (`enable.idempotence`), and in the partition every Kafka tool
/// computes for the name (`partitioner=murmur2_random`, the Java client's partitioner).
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
    // A broker that does not take the change within 30 s is a failure (exit 1), not a wait.
    ("message.timeout.ms", "30000"),
];

/// The [`PRODUCER_DEFAULTS`] `KAFKA_CFG_*` may not change.
pub const PROTECTED: &[Protected] = &[
    Protected {
        name: "enable.idempotence",
        aliases: &[],
        why: "each change is written once",
    },
    Protected {
        name: "acks",
        aliases: &["request.required.acks"],
        why: "a published change is durable",
    },
    Protected {
        name: "partitioner",
        aliases: &[],
        why: "a name's partition is the one every Kafka client computes",
    },
];

/// Creates the targets topic when missing ([`KafkaSettings::ensure_targets_topic`]).
///
/// # Errors
/// The broker's error.
pub async fn ensure_topic(settings: &KafkaSettings) -> Result<(), KafkaError> {
    settings.ensure_targets_topic().await
}

/// The value published for `target`, written in the file as `spec`: `spec` with `name` set to
/// the target's name (the record's key) and `interval` set to the target's interval in
/// humantime's form (`"30s"`, `"1m 30s"`), so the applying environment's `DEFAULT_INTERVAL`
/// is fixed in the topic, and object keys sorted.
pub fn topic_value(target: &Target, spec: &Value) -> Value {
    let mut v = spec.clone();
    if let Value::Object(map) = &mut v {
        map.insert("name".into(), Value::String(target.name.clone()));
        map.insert(
            "interval".into(),
            Value::String(humantime::format_duration(target.interval).to_string()),
        );
    }
    canonical(&v)
}

/// `v` with every object's keys in sorted order (whatever `serde_json`'s map keeps).
pub fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), canonical(&map[k]))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The topic's whole state: every partition read from its beginning ([`read_partitions`]).
/// Blocks the thread up to `timeout`.
///
/// # Errors
/// [`TopicError::Missing`] when the topic does not exist; the broker's error; a timeout.
pub fn read_state(settings: &KafkaSettings, timeout: Duration) -> Result<State, TopicError> {
    read_partitions(settings, None, timeout)
}

/// The state held by `partitions` of the targets topic (all of them when `None`): each read
/// from its beginning until librdkafka's end-of-partition event (`enable.partition.eof`,
/// i.e. the high watermark of the Fetch response), never until ListOffsets' end, which the
/// tansu test broker reports too low. ListOffsets only tells which partitions are empty (an
/// empty partition sends no end-of-partition event on tansu). The last value per key wins,
/// a tombstone removes; a record without a key is skipped. A name found in two partitions
/// (the topic was resized) keeps the later record. Blocks the thread up to `timeout`; joins
/// no group and commits nothing.
///
/// # Errors
/// As [`read_state`].
pub fn read_partitions(
    settings: &KafkaSettings,
    partitions: Option<&[i32]>,
    timeout: Duration,
) -> Result<State, TopicError> {
    let deadline = Instant::now() + timeout;
    let topic = settings.targets_topic.as_str();
    let consumer: BaseConsumer = settings
        .client_config(&[
            // Required by librdkafka for a consumer; never joined (assign only), never committed.
            ("group.id", "healthcheck-targets-reader"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "true"),
            ("allow.auto.create.topics", "false"),
        ])
        .create()?;
    let all = topic_partition_ids(&consumer, topic, timeout)?;
    let wanted: Vec<i32> = match partitions {
        Some(p) => all.into_iter().filter(|id| p.contains(id)).collect(),
        None => all,
    };
    let mut tpl = TopicPartitionList::new();
    let mut open = Vec::new();
    for p in wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        let (low, high) = consumer.fetch_watermarks(topic, p, left)?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            open.push(p);
        }
    }
    let mut state = State::new();
    if open.is_empty() {
        return Ok(state);
    }
    consumer.assign(&tpl)?;
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(TopicError::Timeout {
                topic: topic.to_string(),
                open,
                timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => open.retain(|o| *o != p),
            Some(Err(e)) => tracing::warn!(topic, error = %e, "Reading the targets topic."),
            Some(Ok(m)) => {
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    tracing::warn!(
                        topic,
                        partition = m.partition(),
                        offset = m.offset(),
                        "Skipped a record without a UTF-8 key."
                    );
                    continue;
                };
                let timestamp = m.timestamp().to_millis().and_then(DateTime::from_timestamp_millis);
                fold(&mut state, key, m.payload(), m.partition(), m.offset(), timestamp);
            }
        }
    }
    Ok(state)
}

/// Applies one record to `state`: a value replaces the key's entry, a tombstone (`None`)
/// removes it. A record of another partition older than the entry it would replace is
/// ignored (the topic was resized: the newer record is the truth).
pub fn fold(
    state: &mut State,
    key: &str,
    payload: Option<&[u8]>,
    partition: i32,
    offset: i64,
    timestamp: Option<DateTime<Utc>>,
) {
    if let Some(old) = state.get(key) {
        if old.partition != partition && old.timestamp > timestamp {
            return;
        }
    }
    match payload {
        None => {
            state.remove(key);
        }
        Some(value) => {
            state.insert(
                key.to_string(),
                Entry {
                    spec: serde_json::from_slice(value).ok(),
                    value: value.to_vec(),
                    partition,
                    offset,
                    timestamp,
                },
            );
        }
    }
}

/// The partition ids of `topic` from a metadata request.
fn topic_partition_ids(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Vec<i32>, TopicError> {
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(TopicError::Missing(topic.to_string()));
    };
    match t.error().map(RDKafkaErrorCode::from) {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Err(TopicError::Missing(topic.to_string())),
        Some(code) => Err(TopicError::Metadata {
            topic: topic.to_string(),
            code,
        }),
        None if t.partitions().is_empty() => Err(TopicError::Missing(topic.to_string())),
        None => Ok(t.partitions().iter().map(|p| p.id()).collect()),
    }
}

/// Publishes `changes` to the targets topic: `(name, Some(value))` sets a target,
/// `(name, None)` writes its tombstone. Key = name. Uses an idempotent producer with
/// [`PRODUCER_DEFAULTS`] (`KAFKA_CFG_*` applied, [`PROTECTED`] ones checked by the caller)
/// and returns once every change has its delivery report.
///
/// # Errors
/// The first failed delivery (after librdkafka's retries, within `message.timeout.ms`), or the
/// producer's creation error. Changes before it may have been written.
pub async fn publish(settings: &KafkaSettings, changes: &[(String, Option<Vec<u8>>)]) -> Result<(), KafkaError> {
    let producer: FutureProducer = settings.client_config(PRODUCER_DEFAULTS).create()?;
    let topic = settings.targets_topic.as_str();
    let mut deliveries = Vec::with_capacity(changes.len());
    for (name, value) in changes {
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(name.as_str());
        if let Some(v) = value {
            record = record.payload(v.as_slice());
        }
        // Enqueue everything first (librdkafka batches), then wait for every report; a full
        // queue (`queue.buffering.max.messages`, 100,000 by default) empties as reports come.
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_value_per_key_wins_and_tombstones_remove() {
        let mut s = State::new();
        let t = |ms| DateTime::from_timestamp_millis(ms);
        fold(&mut s, "a", Some(br#"{"url":"http://a/"}"#), 0, 0, t(1));
        fold(&mut s, "b", Some(b"not json"), 1, 0, t(2));
        fold(&mut s, "a", Some(br#"{"url":"http://a2/"}"#), 0, 1, t(3));
        fold(&mut s, "c", Some(b"{}"), 2, 0, t(4));
        fold(&mut s, "c", None, 2, 1, t(5));
        assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(s["a"].spec, Some(serde_json::json!({"url": "http://a2/"})));
        assert_eq!((s["a"].offset, s["b"].spec.clone()), (1, None));
        // An older record of another partition does not replace a newer one.
        fold(&mut s, "a", None, 5, 9, t(2));
        assert!(s.contains_key("a"));
    }

    #[test]
    fn canonical_values_have_sorted_keys() {
        let v: Value = serde_json::from_str(r#"{"z":1,"a":{"y":[{"q":1,"b":2}],"c":3}}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&canonical(&v)).unwrap(),
            r#"{"a":{"c":3,"y":[{"b":2,"q":1}]},"z":1}"#
        );
    }
}
