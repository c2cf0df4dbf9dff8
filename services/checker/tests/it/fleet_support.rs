//! The process-test harness of fleet mode: librdkafka's mock cluster owned by the test (the
//! note `shared/notes/test-broker-groups.md` says why not tansu: its groups mishandle 3
//! members and dead ones), `checker` child processes joining one group over TCP, targets on a
//! loopback HTTP server produced into the mock's targets topic, and every result read back
//! from the mock's results topic as it arrives. Tests judge the data (who probed which slot),
//! never logs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::result::ProbeResult;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use testkit::metrics::Scrape;
use testkit::process::{self, Proc};

/// Partitions of the targets topic.
pub const TARGET_PARTITIONS: i32 = 6;
/// Partitions of the results topic.
const RESULT_PARTITIONS: i32 = 3;
/// `session.timeout.ms` of the checkers: the mock expires a dead member after it.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Every target's interval.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// `HANDOVER_PERIOD` of the checkers: 2 × the session timeout (the mock's cooperative rounds
/// take about `session.timeout.ms − 1 s` each, per the note).
pub const HANDOVER: &str = "12s";

/// One probe result as the test sees it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Target name.
    pub target: String,
    /// The checker that probed it (`INSTANCE_ID`).
    pub instance: String,
    /// The slot.
    pub scheduled_at: DateTime<Utc>,
}

/// The mock cluster, its topics, the target server and the results read so far.
pub struct Cluster {
    pub mock: MockCluster<'static, DefaultProducerContext>,
    pub targets_topic: String,
    pub results_topic: String,
    pub location: String,
    pub server: SocketAddr,
    producer: ThreadedProducer<DefaultProducerContext>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    logs: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A `checker` process of the fleet and its admin address.
pub struct Checker {
    pub id: String,
    pub admin: SocketAddr,
    pub proc: Proc,
}

impl Checker {
    /// A metric of this checker (`None` when it does not answer or has no such series).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        Scrape::fetch(self.admin).await.ok()?.metric(name, &[])
    }
}

impl Cluster {
    /// A mock cluster with the two topics, a loopback target server, and a reader of the
    /// results topic running.
    pub async fn start() -> Self {
        let mock = MockCluster::new(1).expect("mock cluster");
        let targets_topic = testkit::unique("targets");
        let results_topic = testkit::unique("results");
        mock.create_topic(&targets_topic, TARGET_PARTITIONS, 1)
            .expect("targets topic");
        mock.create_topic(&results_topic, RESULT_PARTITIONS, 1)
            .expect("results topic");
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("partitioner", "murmur2_random")
            .create()
            .expect("targets producer");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        read_results(&mock.bootstrap_servers(), &results_topic, seen.clone(), stop.clone());
        let logs = std::env::temp_dir().join(testkit::unique("fleet-logs"));
        std::fs::create_dir_all(&logs).unwrap();
        Self {
            targets_topic,
            results_topic,
            location: testkit::unique("loc"),
            server: testkit::http::http_target("ok").await,
            mock,
            producer,
            seen,
            stop,
            logs,
        }
    }

    /// Produces `t00`..`t<n-1>` (1 s interval) into the targets topic and waits for delivery.
    pub fn put_targets(&self, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("t{i:02}")).collect();
        for name in &names {
            let spec = serde_json::json!({
                "name": name,
                "url": format!("http://{}/{name}", self.server),
                "interval": "1s",
                "timeout": "500ms",
            });
            self.put(name, Some(spec.to_string().as_bytes()));
        }
        self.producer.flush(Duration::from_secs(10)).expect("targets delivered");
        names
    }

    /// One record of the targets topic (`None`: a tombstone).
    pub fn put(&self, name: &str, value: Option<&[u8]>) {
        let mut r: BaseRecord<'_, str, [u8]> = BaseRecord::to(&self.targets_topic).key(name);
        if let Some(v) = value {
            r = r.payload(v);
        }
        self.producer.send(r).map_err(|(e, _)| e).expect("enqueue a target");
    }

    /// Starts checker `id` in the fleet.
    pub fn checker(&self, id: &str) -> Checker {
        let admin = testkit::net::free_addr();
        let env = [
            ("KAFKA_BOOTSTRAP_SERVERS", self.mock.bootstrap_servers()),
            ("KAFKA_TOPIC", self.results_topic.clone()),
            ("KAFKA_TARGETS_TOPIC", self.targets_topic.clone()),
            ("KAFKA_CREATE_TOPIC", "false".into()),
            ("LOCATION", self.location.clone()),
            ("INSTANCE_ID", id.to_string()),
            ("ADMIN_ADDR", admin.to_string()),
            ("KAFKA_CFG_SESSION_TIMEOUT_MS", SESSION_TIMEOUT.as_millis().to_string()),
            ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "1000".into()),
            ("HANDOVER_PERIOD", HANDOVER.into()),
            ("SHUTDOWN_GRACE_PERIOD", "20s".into()),
            ("RUST_LOG", "info".into()),
        ];
        let log = self.logs.join(format!("{id}.log"));
        Checker {
            id: id.to_string(),
            admin,
            proc: process::spawn("checker", &env, &log),
        }
    }

    /// Waits until the group is settled: every partition held by exactly one of `checkers`
    /// (the sum of their assigned partitions is the partition count and each holds at least
    /// one), no hand-over left, and together they schedule exactly `targets` targets (the
    /// roster's gauge); then one more interval, so that every target's first slot has passed.
    pub async fn settle(&self, checkers: &[&Checker], targets: usize, limit: Duration) {
        testkit::wait_until(limit, "the group to settle", || async {
            let (mut partitions, mut scheduled) = (0.0, 0.0);
            for c in checkers {
                let Ok(s) = Scrape::fetch(c.admin).await else {
                    return false;
                };
                let assigned = s.metric("healthcheck_checker_assigned_partitions", &[]).unwrap_or(0.0);
                let handover = s.metric("healthcheck_checker_handover_targets", &[]).unwrap_or(1.0);
                if assigned < 1.0 || handover > 0.0 {
                    return false;
                }
                partitions += assigned;
                scheduled += s.metric("healthcheck_checker_targets", &[]).unwrap_or(0.0);
            }
            partitions == f64::from(TARGET_PARTITIONS) && scheduled == targets as f64
        })
        .await;
        tokio::time::sleep(INTERVAL).await;
    }

    /// Every result read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Per target, the instances that probed its slots in `[from, to]`.
    pub fn owners(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in self.seen() {
            if s.scheduled_at >= from && s.scheduled_at <= to {
                out.entry(s.target).or_default().insert(s.instance);
            }
        }
        out
    }

    /// Per target of `names`, the slots of its grid in `[from, to]` with no result.
    pub fn missing(
        &self,
        names: &[String],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> BTreeMap<String, Vec<DateTime<Utc>>> {
        let seen = self.seen();
        let mut out = BTreeMap::new();
        for name in names {
            let present: BTreeSet<DateTime<Utc>> = seen
                .iter()
                .filter(|s| &s.target == name)
                .map(|s| s.scheduled_at)
                .collect();
            let phase = common::slots::phase(name, INTERVAL);
            let mut slot = common::slots::next_slot_after(from - chrono::Duration::nanoseconds(1), INTERVAL, phase);
            let mut holes = Vec::new();
            while slot <= to {
                if !present.contains(&slot) {
                    holes.push(slot);
                }
                slot += chrono::Duration::from_std(INTERVAL).unwrap();
            }
            if !holes.is_empty() {
                out.insert(name.clone(), holes);
            }
        }
        out
    }

    /// A consumer outside the group's membership with the group's id (`checker-<LOCATION>`),
    /// for reading or writing its committed offsets.
    fn group_client(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.mock.bootstrap_servers())
            .set("group.id", format!("checker-{}", self.location))
            .set("enable.auto.commit", "false")
            .create()
            .expect("group client")
    }

    /// Commits, for the checkers' group, every targets partition's end: a group that had
    /// committed offsets (a checker must still read from the beginning).
    pub fn commit_ends(&self) {
        let c = self.group_client();
        let mut tpl = TopicPartitionList::new();
        for p in 0..TARGET_PARTITIONS {
            let (_, high) = c
                .fetch_watermarks(&self.targets_topic, p, Duration::from_secs(10))
                .unwrap();
            tpl.add_partition_offset(&self.targets_topic, p, Offset::Offset(high))
                .unwrap();
        }
        c.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .expect("commit the ends");
    }

    /// The group's committed offsets of the targets topic, by partition.
    pub fn committed(&self) -> Vec<Offset> {
        let c = self.group_client();
        let mut tpl = TopicPartitionList::new();
        for p in 0..TARGET_PARTITIONS {
            tpl.add_partition(&self.targets_topic, p);
        }
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        got.elements().iter().map(|e| e.offset()).collect()
    }

    /// Where the checkers' logs are (for a human reading a failure).
    pub fn logs(&self) -> &std::path::Path {
        &self.logs
    }
}

/// Reads the results topic from its beginning on a thread until `stop`.
fn read_results(bootstrap: &str, topic: &str, seen: Arc<Mutex<Vec<Seen>>>, stop: Arc<AtomicBool>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", testkit::unique("results-reader"))
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("results reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..RESULT_PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign the results topic");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let Some(bytes) = m.payload() else { continue };
                let r: ProbeResult = serde_json::from_slice(bytes).expect("a probe result");
                seen.lock().unwrap().push(Seen {
                    target: r.target,
                    instance: r.instance_id,
                    scheduled_at: r.scheduled_at,
                });
            }
        }
    });
}
