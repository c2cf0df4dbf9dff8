//! The sink app in-process against the real broker and PostgreSQL.

use std::time::Duration;

use chrono::Utc;
use common::config::Env;
use sink::app::App;
use sink::config::Config;
use tokio_util::sync::CancellationToken;

use crate::faults::{assert_exactly_once, lock_results, produce};
use crate::store::sample;
use crate::support::*;

pub struct Running {
    pub admin: std::net::SocketAddr,
    /// The status page and JSON API (`STATUS_ADDR`, port 0 unless a test sets it).
    pub status: Option<std::net::SocketAddr>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// [`start`] consuming `topic` on `bootstrap` into the database at `database_url`, in a
/// consumer group of its own, with `extra` variables (e.g. `("BATCH_MAX_ROWS", "200")`).
pub async fn start_consuming(database_url: &str, bootstrap: &str, topic: &str, extra: &[(&str, &str)]) -> Running {
    let mut pairs = vec![
        ("DATABASE_URL", database_url.to_string()),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_string()),
        ("KAFKA_TOPIC", topic.to_string()),
        ("KAFKA_GROUP_ID", unique("group")),
    ];
    pairs.extend(extra.iter().map(|&(k, v)| (k, v.to_string())));
    start(pairs).await
}

pub async fn start(pairs: Vec<(&str, String)>) -> Running {
    let mut all: Vec<(String, String)> = vec![
        ("ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        ("STATUS_ADDR".into(), "127.0.0.1:0".into()),
        ("BATCH_LINGER".into(), "20ms".into()),
        ("SHUTDOWN_GRACE_PERIOD".into(), "10s".into()),
    ];
    all.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
    let config = Config::from_env(&Env::from_pairs(all)).expect("valid config");
    // Logs go to stderr when a test is run with RUST_LOG set (e.g. RUST_LOG=sink=debug).
    if let Ok(filter) = std::env::var("RUST_LOG") {
        common::telemetry::init(
            common::telemetry::LogFormat::Text,
            common::telemetry::filter(Some(&filter)).expect("RUST_LOG parses"),
        );
    }
    let app = App::build(config).await.expect("app builds");
    let admin = app.admin_addr();
    let status = app.status_addr();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    Running {
        admin,
        status,
        stop,
        task,
    }
}

impl Running {
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("stops within the grace period")
            .unwrap()
            .unwrap();
    }

    /// The value of series `selector` (`name` or `name{key="value"}`) on `/metrics`; NaN
    /// when absent, so that no comparison with it holds.
    pub async fn metric(&self, selector: &str) -> f64 {
        Scrape::get(self.admin).await.select(selector).unwrap_or(f64::NAN)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_dead_letters_poison_and_resumes_from_committed_offsets() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let (topic, group) = (unique("results"), unique("group"));
    create_topic(&bootstrap, &topic, 3).await;
    let p = producer(&bootstrap);
    let now = Utc::now();
    for i in 0..50 {
        let r = sample(&format!("t{}", i % 7), now + chrono::Duration::seconds(i), true, 0.01);
        send(&p, &topic, &r.target, &serde_json::to_vec(&r).unwrap()).await;
    }
    send(&p, &topic, "t0", b"{\"this is\": not json").await;
    let after = sample("t0", now + chrono::Duration::hours(1), true, 0.01);
    send(&p, &topic, "t0", &serde_json::to_vec(&after).unwrap()).await;

    let env = || {
        vec![
            ("DATABASE_URL", url.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_GROUP_ID", group.clone()),
        ]
    };
    let sink = start(env()).await;
    let db = connect(&url).await;
    wait_until(Duration::from_secs(30), "51 rows and 1 dead letter", || {
        let db = &db;
        async move { count(db, "probe_results").await == 51 && count(db, "dead_letters").await == 1 }
    })
    .await;
    let dl = db
        .query_one("SELECT topic, payload, error_class, message_key FROM dead_letters", &[])
        .await
        .unwrap();
    assert_eq!(dl.get::<_, String>(0), topic);
    assert_eq!(dl.get::<_, Vec<u8>>(1), b"{\"this is\": not json".to_vec());
    assert_eq!(dl.get::<_, String>(2), "decode");
    assert_eq!(dl.get::<_, Vec<u8>>(3), b"t0".to_vec());
    wait_until(Duration::from_secs(10), "readiness", || async {
        http_get(sink.admin, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(sink.metric("healthcheck_sink_messages_consumed_total").await, 52.0);
    assert_eq!(sink.metric("healthcheck_sink_rows_inserted_total").await, 51.0);
    assert_eq!(
        sink.metric("healthcheck_sink_dead_letters_total{class=\"decode\"}")
            .await,
        1.0
    );
    sink.stop().await;

    // Restart with the same group: nothing is replayed, new messages are consumed.
    for i in 0..10 {
        let r = sample("late", now + chrono::Duration::seconds(i), false, 0.2);
        send(&p, &topic, &r.target, &serde_json::to_vec(&r).unwrap()).await;
    }
    let sink = start(env()).await;
    wait_until(Duration::from_secs(30), "61 rows", || {
        let db = &db;
        async move { count(db, "probe_results").await == 61 }
    })
    .await;
    assert_eq!(
        sink.metric("healthcheck_sink_messages_consumed_total").await,
        10.0,
        "offsets were committed at shutdown"
    );
    assert_eq!(sink.metric("healthcheck_sink_duplicates_total").await, 0.0);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_dependencies_and_writes_resume_after_an_outage() {
    let url = fresh_database().await;
    let pg_addr = pg_addr(&url);
    let pg = Forwarder::start(pg_addr, None).await;
    let via_forwarder = url.replace(&pg_addr.to_string(), &pg.addr.to_string());
    let broker = PrivateBroker::start().await;
    let topic = unique("results");
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let sink = start(vec![
        ("DATABASE_URL", via_forwarder),
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
    ])
    .await;
    let ready = |want: u16| {
        let admin = sink.admin;
        move || async move { http_get(admin, "/readyz").await.0 == want }
    };
    wait_until(Duration::from_secs(30), "ready", ready(200)).await;

    // PostgreSQL outage: unready, still live; a message sent meanwhile is written afterwards.
    pg.cut().await;
    wait_until(
        Duration::from_secs(15),
        "unready while PostgreSQL is cut off",
        ready(503),
    )
    .await;
    assert_eq!(
        http_get(sink.admin, "/healthz").await.0,
        200,
        "liveness never depends on PostgreSQL"
    );
    let p = producer(&broker.bootstrap());
    let r = sample("during-outage", Utc::now(), true, 0.1);
    send(&p, &topic, &r.target, &serde_json::to_vec(&r).unwrap()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.restore().await;
    wait_until(Duration::from_secs(30), "ready after PostgreSQL returns", ready(200)).await;
    let db = connect(&url).await;
    wait_until(Duration::from_secs(30), "the message sent during the outage", || {
        let db = &db;
        async move { count(db, "probe_results").await == 1 }
    })
    .await;

    // Broker outage: unready, still live, ready again afterwards.
    broker.forwarder.cut().await;
    wait_until(
        Duration::from_secs(20),
        "unready while the broker is cut off",
        ready(503),
    )
    .await;
    assert_eq!(
        http_get(sink.admin, "/healthz").await.0,
        200,
        "liveness never depends on the broker"
    );
    broker.forwarder.restore().await;
    wait_until(Duration::from_secs(60), "ready after the broker returns", ready(200)).await;
    let r = sample("after-broker-outage", Utc::now(), true, 0.1);
    send(&p, &topic, &r.target, &serde_json::to_vec(&r).unwrap()).await;
    wait_until(Duration::from_secs(30), "a message after the broker outage", || {
        let db = &db;
        async move { count(db, "probe_results").await == 2 }
    })
    .await;
    sink.stop().await;
}

/// `time() - healthcheck_sink_last_progress_timestamp_seconds`: seconds without progress.
async fn seconds_without_progress(sink: &Running) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    now - sink.metric("healthcheck_sink_last_progress_timestamp_seconds").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_writes_are_stuck_while_messages_wait_is_not_ready() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 2).await;
    let sink = start_consuming(&url, &bootstrap, &topic, &[("STALL_TIMEOUT", "4s")]).await;
    let db = connect(&url).await;
    let first = produce(&bootstrap, &topic, 2, 20, "first").await;
    assert_exactly_once(&db, &first).await;
    wait_until(Duration::from_secs(30), "ready", || async {
        http_get(sink.admin, "/readyz").await.0 == 200
    })
    .await;
    assert!(seconds_without_progress(&sink).await < 10.0);
    assert_eq!(sink.metric("healthcheck_sink_partitions_assigned").await, 2.0);

    // Both dependencies answer (PostgreSQL pings, the broker knows the topic), but no write
    // can commit while messages keep arriving.
    let locker = lock_results(&url).await;
    let stuck = produce(&bootstrap, &topic, 2, 20, "stuck").await;
    wait_until(Duration::from_secs(30), "unready, with the reason", || async {
        let (status, body) = http_get(sink.admin, "/readyz").await;
        status == 503 && body.contains("stalled: no progress") && body.contains("messages waiting")
    })
    .await;
    let stalled_for = seconds_without_progress(&sink).await;
    assert!(stalled_for >= 4.0, "the metric shows the stall: {stalled_for}s");
    assert_eq!(
        http_get(sink.admin, "/healthz").await.0,
        200,
        "a stall is not a liveness failure"
    );

    drop(locker);
    assert_exactly_once(&db, &(first + stuck)).await;
    wait_until(Duration::from_secs(30), "ready again once writes commit", || async {
        http_get(sink.admin, "/readyz").await.0 == 200
    })
    .await;
    assert!(seconds_without_progress(&sink).await < 10.0);
    sink.stop().await;
}

/// A plain consumer in the group that takes partitions and never commits: the member that
/// owns the partitions and makes no progress, whatever the reason. Dropping it closes it
/// (it leaves the group).
struct Holder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    assigned: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Holder {
    fn start(bootstrap: &str, topic: &str, group: &str) -> Self {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let assigned = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("client.id", "holder")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("holder consumer");
        consumer.subscribe(&[topic]).unwrap();
        let thread = {
            let (stop, assigned) = (stop.clone(), assigned.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = consumer.poll(Duration::from_millis(100));
                    let n = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                    assigned.store(n, std::sync::atomic::Ordering::Relaxed);
                }
                consumer.unsubscribe();
                let _ = consumer.poll(Duration::from_millis(500));
            })
        };
        Self {
            stop,
            assigned,
            thread: Some(thread),
        }
    }

    fn assigned(&self) -> usize {
        self.assigned.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_owns_no_partition_while_messages_pile_up_is_not_ready() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let (topic, group) = (unique("results"), unique("group"));
    create_topic(&bootstrap, &topic, 1).await;
    let holder = Holder::start(&bootstrap, &topic, &group);
    wait_until(Duration::from_secs(30), "the holder owns the partition", || async {
        holder.assigned() == 1
    })
    .await;
    let sink = start(vec![
        ("DATABASE_URL", url.clone()),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", group.clone()),
        ("STALL_TIMEOUT", "4s".to_string()),
    ])
    .await;
    // Nothing waits: a member without partitions is ready.
    wait_until(Duration::from_secs(30), "ready", || async {
        http_get(sink.admin, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(
        holder.assigned(),
        1,
        "the sticky assignment left the partition with the holder"
    );

    let produced = produce(&bootstrap, &topic, 1, 20, "waiting").await;
    wait_until(Duration::from_secs(30), "unready, with the reason", || async {
        let (status, body) = http_get(sink.admin, "/readyz").await;
        status == 503 && body.contains("owns no partition") && body.contains("messages waiting")
    })
    .await;
    assert_eq!(sink.metric("healthcheck_sink_partitions_assigned").await, 0.0);
    assert!(seconds_without_progress(&sink).await >= 4.0);

    // The holder leaves: the sink takes the partition over, writes everything, is ready.
    drop(holder);
    let db = connect(&url).await;
    assert_exactly_once(&db, &produced).await;
    wait_until(
        Duration::from_secs(30),
        "ready once the group makes progress",
        || async { http_get(sink.admin, "/readyz").await.0 == 200 },
    )
    .await;
    assert_eq!(sink.metric("healthcheck_sink_partitions_assigned").await, 1.0);
    sink.stop().await;
}
