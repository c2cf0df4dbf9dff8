//! `topic-ids`: prints the `check_id` of every probe result a topic holds, one per line, read
//! from the beginning of every partition to its end. `make e2e` compares this with the rows in
//! PostgreSQL: what the topic holds is the truth the sink must store, not what a log says.
//!
//! ```sh
//! target/debug/topic-ids 127.0.0.1:29092 healthcheck-results > ids.txt
//! ```
//!
//! The end of a partition is librdkafka's end-of-partition event (`enable.partition.eof`), i.e.
//! the high watermark of the Fetch response, not ListOffsets, which the tansu test broker
//! answers wrongly (see `shared/notes/test-broker-groups.md`). Messages that are not probe
//! results are counted on stderr and skipped. Exit 1 when the broker does not answer or the
//! ends are not reached within `TOPIC_IDS_TIMEOUT_SECONDS` (default 30).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(bootstrap), Some(topic)) = (args.next(), args.next()) else {
        bail!("usage: topic-ids BOOTSTRAP_SERVERS TOPIC");
    };
    let timeout = Duration::from_secs(
        std::env::var("TOPIC_IDS_TIMEOUT_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("topic-ids-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("log_level", "3")
        .create()
        .context("create consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), timeout)
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
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let mut open: BTreeSet<i32> = partitions.into_iter().collect();
    let (mut printed, mut skipped) = (0u64, 0u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while !open.is_empty() {
        if Instant::now() > deadline {
            bail!("partitions {open:?} of {topic} did not reach their end within {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => eprintln!("topic-ids: {e}"),
            Some(Ok(m)) => {
                let id = m
                    .payload()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v.get("check_id")?.as_str().map(str::to_owned));
                match id {
                    Some(id) => {
                        use std::io::Write as _;
                        writeln!(out, "{id}")?;
                        printed += 1;
                    }
                    None => skipped += 1,
                }
            }
        }
    }
    eprintln!("topic-ids: {printed} results, {skipped} other messages");
    Ok(())
}
