//! A topic read back whole: every message of every partition, from the beginning to the end
//! the broker reports, with a consumer outside any consumer group's work (its own group id,
//! nothing committed). What the topic holds is the truth a test compares the table with.
//!
//! The end of a partition is librdkafka's end-of-partition event (`enable.partition.eof`),
//! i.e. the high watermark of the Fetch response, not ListOffsets, which the tansu test broker
//! answers wrongly (see `shared/notes/test-broker-groups.md`); ListOffsets only tells which
//! partitions are empty, and, while a producer keeps appending (so the Fetch never reaches
//! the end), where to stop: a second after passing its end. Never commits an offset.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One message of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Partition id.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// The value bytes; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
}

/// Reads every partition of `topic` on `bootstrap` (`host:port[,…]`) from its beginning to
/// its end; returns the messages in partition and offset order. Blocks the thread: call it
/// from a blocking context (or [`read_topic`] from async code).
///
/// # Errors
/// The consumer cannot be created, the topic has no partitions, or the ends are not reached
/// within `timeout` (metadata included). Transient consumer errors are printed to stderr and
/// the read goes on.
pub fn read_all(bootstrap: &str, topic: &str, timeout: Duration) -> anyhow::Result<Vec<Record>> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", crate::unique("read-topic"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("log_level", "3")
        .create()
        .context("create the reading consumer")?;
    let (tpl, mut open) = non_empty_partitions(&consumer, topic, timeout)?;
    if open.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl)?;

    let mut out = Vec::new();
    while !open.is_empty() {
        if Instant::now() > deadline {
            let position = consumer.position().map(|p| p.to_topic_map()).unwrap_or_default();
            bail!(
                "partitions {:?} of {topic} did not reach their end within {timeout:?} \
                 (positions {position:?}, {} messages read)",
                open.keys(),
                out.len()
            );
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => eprintln!("reading {topic} back: {e}"),
            Some(Ok(m)) => {
                if let Some(end) = open.get_mut(&m.partition()) {
                    end.passed(m.offset());
                }
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().map(<[u8]>::to_vec),
                });
            }
        }
        let now = Instant::now();
        open.retain(|_, end| !matches!(end.grace_until, Some(t) if now >= t));
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// The partitions of `topic` that hold messages, assigned from their beginning, with the end
/// ListOffsets gives for each.
fn non_empty_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<(TopicPartitionList, BTreeMap<i32, End>)> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .context("fetch metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions");
    }
    // An empty partition gives no end-of-partition event on tansu; ListOffsets, wrong about
    // where a partition ends, is right about whether it holds anything (its "latest" is at
    // least the last batch's base offset + 1), so empty partitions are left out.
    let mut open = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            open.insert(
                p,
                End {
                    listed: high,
                    grace_until: None,
                },
            );
        }
    }
    Ok((tpl, open))
}

/// How long a partition is read on after passing the end ListOffsets gave at the start: the
/// rest of the last batch comes in the same Fetch response, well within it.
const PAST_LISTED_END: Duration = Duration::from_secs(1);

/// Where reading one partition stops: at its end-of-partition event, or (while a producer
/// keeps appending, so no such event comes) [`PAST_LISTED_END`] after passing the end
/// ListOffsets reported when the read began.
struct End {
    listed: i64,
    grace_until: Option<Instant>,
}

impl End {
    fn passed(&mut self, offset: i64) {
        if offset + 1 >= self.listed && self.grace_until.is_none() {
            self.grace_until = Some(Instant::now() + PAST_LISTED_END);
        }
    }
}

/// [`read_all`] for async tests, on a blocking thread, with 60 s to reach the ends.
///
/// # Panics
/// When [`read_all`] fails.
pub async fn read_topic(bootstrap: &str, topic: &str) -> Vec<Record> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_all(&bootstrap, &topic, Duration::from_secs(60)))
        .await
        .expect("the reading thread")
        .unwrap_or_else(|e| panic!("{e:#}"))
}
