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
        let Ok(m) = tokio::time::timeout(Duration::from_secs(10), c.recv()).await else {
            break; // nothing more comes: the assertion below says what is missing
        };
        seen.push(m.unwrap().offset());
        if seen.len() % every == 0 {
            c.pause(&tpl).unwrap();
            if let Ok(m) = tokio::time::timeout(Duration::from_millis(30), c.recv()).await {
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
        let m = tokio::time::timeout(Duration::from_secs(10), c.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing received when assigned at offset {start}"))
            .unwrap();
        assert_eq!(m.offset(), start, "first message when assigned at offset {start}");
    }
}
