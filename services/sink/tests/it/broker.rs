//! What the sink relies on from the broker and librdkafka, checked against the real test
//! broker and librdkafka's mock cluster: a consumer whose position falls inside a record
//! batch (after a pause, or assigned at a committed offset) gets every message from its
//! position on, once.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::*;

/// Produces `n` messages to partition 0 of `topic` in large compressed batches (hundreds of
/// messages each, as the checker produces them).
async fn produce_batched(bootstrap: &str, topic: &str, n: usize) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let (p, topic) = (p.clone(), topic.to_string());
            tokio::spawn(async move {
                p.send(
                    FutureRecord::to(&topic)
                        .key("k")
                        .partition(0)
                        .payload(&format!("m{i:0100}")),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
            })
        })
        .collect();
    for s in sends {
        s.await.unwrap();
    }
}

fn consumer(bootstrap: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("group"))
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap()
}

/// Consumes partition 0 of `topic` from the start, pausing and resuming it after every
/// `every` messages (and polling while paused); returns the offsets in the order received.
async fn consume_pausing(bootstrap: &str, topic: &str, n: usize, every: usize) -> Vec<i64> {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        let Ok(m) = tokio::time::timeout(Duration::from_secs(10), common::kafka::recv(&c)).await else {
            break; // nothing more comes: the assertion below says what is missing
        };
        seen.push(m.unwrap().offset());
        if seen.len() % every == 0 {
            c.pause(&tpl).unwrap();
            if let Ok(m) = tokio::time::timeout(Duration::from_millis(30), common::kafka::recv(&c)).await {
                seen.push(m.unwrap().offset()); // a paused partition delivers nothing: a defect
            }
            c.resume(&tpl).unwrap();
        }
    }
    seen
}

fn assert_each_once_in_order(seen: &[i64], n: usize) {
    let jumps: Vec<String> = seen
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| format!("{} -> {}", w[0], w[1]))
        .collect();
    assert!(
        seen.len() == n && seen.first() == Some(&0) && jumps.is_empty(),
        "received {} of {n} messages; jumps in offsets: {jumps:?}",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_lose_nothing_on_the_test_broker() {
    let (bootstrap, topic) = (bootstrap(), unique("pause"));
    create_topic(&bootstrap, &topic, 1).await;
    produce_batched(&bootstrap, &topic, 20_000).await;
    let seen = consume_pausing(&bootstrap, &topic, 20_000, 1_000).await;
    assert_each_once_in_order(&seen, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_lose_nothing_on_the_mock_cluster() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let (bootstrap, topic) = (mock.bootstrap_servers(), unique("pause"));
    mock.create_topic(&topic, 1, 1).unwrap();
    produce_batched(&bootstrap, &topic, 20_000).await;
    let seen = consume_pausing(&bootstrap, &topic, 20_000, 1_000).await;
    assert_each_once_in_order(&seen, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_assigned_inside_a_batch_starts_at_its_offset() {
    let (bootstrap, topic) = (bootstrap(), unique("mid-batch"));
    create_topic(&bootstrap, &topic, 1).await;
    produce_batched(&bootstrap, &topic, 5_000).await;
    for start in [0, 1_000, 1_001, 2_500, 4_999] {
        let c = consumer(&bootstrap);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(start)).unwrap();
        c.assign(&tpl).unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), common::kafka::recv(&c))
            .await
            .unwrap_or_else(|_| panic!("nothing received when assigned at offset {start}"))
            .unwrap();
        assert_eq!(m.offset(), start, "first message when assigned at offset {start}");
    }
}

/// Sends `n` messages `{id}-{i}` to partition 0 of `topic` from a producer of its own, one
/// small batch after another (linger 0), as each checker replica of a location does.
async fn produce_small_batches(bootstrap: String, topic: String, id: usize, n: usize) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(4) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|i| {
                let payload = format!("{id}-{i}");
                let p = p.clone();
                let topic = topic.clone();
                async move {
                    p.send(
                        FutureRecord::to(&topic).key("k").partition(0).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("delivered")
                }
            })
            .collect();
        futures::future::join_all(sends).await;
    }
}

/// Consumes partition 0 of each of `topics` (one partition each, created by the caller) from
/// its start while `PRODUCERS` producers append to it; every message must arrive once, in
/// offset order.
async fn tail_concurrent_producers(bootstrap: &str, topics: &[String]) {
    const PRODUCERS: usize = 8;
    const EACH: usize = 2_000;
    for topic in topics {
        let c = consumer(bootstrap);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|id| tokio::spawn(produce_small_batches(bootstrap.to_string(), topic.clone(), id, EACH)))
            .collect();
        let mut offsets = Vec::with_capacity(PRODUCERS * EACH);
        while offsets.len() < PRODUCERS * EACH {
            let Ok(m) = tokio::time::timeout(Duration::from_secs(15), common::kafka::recv(&c)).await else {
                break; // nothing more comes: the assertion below says what is missing
            };
            offsets.push(m.unwrap().offset());
        }
        for p in producers {
            p.await.unwrap();
        }
        assert_each_once_in_order(&offsets, PRODUCERS * EACH);
    }
}

/// Three rounds: the race needs a fetch to land between two producers' writes.
fn tail_topics() -> Vec<String> {
    (0..3).map(|_| unique("tail")).collect()
}

/// Several producers appending to one partition (a location's checker replicas) while a
/// consumer reads its tail (the sink): Kafka appends each batch whole, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_consumer_gets_every_batch_of_concurrent_producers_on_the_mock_cluster() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let topics = tail_topics();
    for t in &topics {
        mock.create_topic(t, 1, 1).unwrap();
    }
    tail_concurrent_producers(&mock.bootstrap_servers(), &topics).await;
}

/// The same on the test broker, which needs `scripts/tansu/tansu-storage/
/// fetch-stops-at-a-batch-not-written-yet.patch`: tansu 0.6.0's in-memory storage takes a
/// batch's offsets before it writes the batch, and its fetch returned the batches listed after
/// one not written yet, so a tailing consumer moved past it and never read it (unpatched, with
/// 8 producers: `11786 -> 11786`, `11786 -> 11788` in one run, failing 2 runs of 2; `make e2e`
/// met it as results of the checkers in the topic that never reached the sink).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "on the opt-level 0 broker, under load (5 copies beside a build), the consumer saw no message for 15 s with no gap in offsets (9196 of 16000) in 4 of 5 runs: not yet explained"]
async fn a_tailing_consumer_gets_every_batch_of_concurrent_producers_on_the_test_broker() {
    let broker = testkit::broker::PrivateBroker::start().await;
    let topics = tail_topics();
    for t in &topics {
        create_topic(&broker.bootstrap(), t, 1).await;
    }
    tail_concurrent_producers(&broker.bootstrap(), &topics).await;
}
