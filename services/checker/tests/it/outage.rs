//! The checker against a broker that goes away, takes no results, or makes the idempotent
//! producer fail fatally: the whole app (`App::build` / `run_until_stopped`) on loopback
//! targets, publishing to librdkafka's mock cluster (where brokers can be taken down and
//! errors injected), with the topic read back at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use checker::app::App;
use checker::config::Config;
use checker::metrics::Metrics;
use common::config::Env;
use common::result::ProbeResult;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use testkit::http::http_get;
use testkit::metrics::Scrape;
use testkit::wait_until;
use tokio_util::sync::CancellationToken;

use crate::support::{serve, text, Server};

const TOPIC: &str = "results";
const PARTITIONS: i32 = 3;

/// A checker app running on its own task.
struct Running {
    admin: SocketAddr,
    metrics: Metrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(pairs: Vec<(&str, String)>) -> Self {
        let mut pairs = pairs;
        pairs.push(("ADMIN_ADDR", "127.0.0.1:0".into()));
        pairs.push(("KAFKA_TOPIC", TOPIC.into()));
        pairs.push(("KAFKA_CREATE_TOPIC", "false".into()));
        pairs.push(("INSTANCE_ID", "it".into()));
        let config = Config::from_env(&Env::from_pairs(pairs)).expect("valid configuration");
        let app = App::build(config).await.expect("app builds");
        let (admin, metrics) = (app.admin_addr(), app.metrics());
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            admin,
            metrics,
            stop,
            task,
        }
    }

    /// Stops it as SIGTERM would and waits until it has delivered what it holds.
    async fn stop(self) -> Metrics {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the checker stops within its grace period")
            .unwrap()
            .expect("the checker stops cleanly");
        self.metrics
    }

    /// `(status, body)` of a GET on the admin server.
    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// The value of one series on `/metrics`, e.g.
    /// `metric("x_total", &[("reason", "a")])`; panics when it is absent.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        value(&Scrape::get(self.admin).await, name, labels)
    }
}

/// The value of series `name` with `labels` in a scrape; panics when it is absent.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .metric(name, labels)
        .unwrap_or_else(|| panic!("series {name} {labels:?} not on /metrics"))
}

/// What `/metrics` would show of `metrics`, parsed.
fn exposition(metrics: &Metrics) -> Scrape {
    Scrape::parse(&metrics.text())
}

/// `n` targets on `server`, each probed every `interval`.
fn targets(server: &Server, n: usize, interval: &str) -> String {
    let list: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"name": format!("t{i}"), "url": server.url("/"), "interval": interval, "timeout": "200ms"}))
        .collect();
    serde_json::Value::Array(list).to_string()
}

fn mock_cluster() -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    mock
}

/// Every result on the topic, in partition and offset order.
async fn read_topic(bootstrap: &str) -> Vec<ProbeResult> {
    testkit::topic::read_topic(bootstrap, TOPIC)
        .await
        .iter()
        .map(|m| serde_json::from_slice(m.payload.as_deref().expect("a payload")).expect("a probe result"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_fills_the_buffer_to_its_bound_then_the_backlog_drains() {
    const LIMIT: f64 = 100.0;
    let mock = mock_cluster();
    mock.broker_down(1).unwrap();
    let server = serve(|_| async { text(200, "ok") }).await;
    let app = Running::start(vec![
        ("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers()),
        ("TARGETS", targets(&server, 40, "250ms")),
        ("KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES", "100".into()),
    ])
    .await;
    let started_at = chrono::Utc::now();

    // 160 probes/s, none delivered: the buffer fills up to its bound and stays there, and
    // every result beyond it is counted as dropped.
    assert_eq!(
        app.metric("healthcheck_checker_results_waiting_limit", &[]).await,
        LIMIT
    );
    let mut peak = 0.0f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app
        .metric(
            "healthcheck_checker_results_dropped_total",
            &[("reason", "buffer_full")],
        )
        .await
        < 300.0
    {
        peak = peak.max(app.metric("healthcheck_checker_results_waiting", &[]).await);
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for 300 dropped results"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(peak, LIMIT, "results waiting never exceed the bound");
    assert_eq!(app.metric("healthcheck_checker_results_waiting", &[]).await, LIMIT);
    assert_eq!(app.metric("healthcheck_checker_published_total", &[]).await, 0.0);
    assert_eq!(app.get("/healthz").await.0, 200, "an outage never fails liveness");
    assert_eq!(app.get("/readyz").await.0, 503);

    // The broker is back: the backlog drains to the topic and results are kept again.
    mock.broker_up(1).unwrap();
    wait_until(Duration::from_secs(60), "the backlog delivered", || async {
        app.metric("healthcheck_checker_published_total", &[]).await >= LIMIT + 50.0
    })
    .await;
    wait_until(Duration::from_secs(30), "ready again", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    let metrics = app.stop().await;

    let m = exposition(&metrics);
    let results = read_topic(&mock.bootstrap_servers()).await;
    let ids: BTreeSet<_> = results.iter().map(|r| r.check_id).collect();
    assert_eq!(ids.len(), results.len(), "each result once");
    assert_eq!(
        results.len() as f64,
        value(&m, "healthcheck_checker_published_total", &[])
    );
    let dropped = value(
        &m,
        "healthcheck_checker_results_dropped_total",
        &[("reason", "buffer_full")],
    );
    assert_eq!(
        results.len() as f64 + dropped,
        value(&m, "healthcheck_checker_probes_started_total", &[]),
        "every probe's result is on the topic or counted as dropped"
    );
    // The results kept are the outage's first ones.
    let first = results.iter().map(|r| r.scheduled_at).min().unwrap();
    assert!(
        first < started_at + chrono::Duration::seconds(2),
        "the earliest result ({first}) is from the start of the outage ({started_at})"
    );
}

/// Reads the topic and checks that every probe's result is there at least once; returns
/// how many results appear more than once (re-sent after a fatal error).
async fn assert_every_result_delivered(bootstrap: &str, metrics: &Metrics) -> usize {
    let m = exposition(metrics);
    let results = read_topic(bootstrap).await;
    let mut per_id: BTreeMap<_, usize> = BTreeMap::new();
    for r in &results {
        *per_id.entry(r.check_id).or_default() += 1;
    }
    assert_eq!(
        per_id.len() as f64,
        value(&m, "healthcheck_checker_probes_started_total", &[]),
        "every probe's result reaches the topic"
    );
    assert_eq!(value(&m, "healthcheck_checker_results_waiting", &[]), 0.0);
    per_id.values().filter(|n| **n > 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_gets_a_new_producer_and_loses_no_result() {
    let mock = mock_cluster();
    let server = serve(|_| async { text(200, "ok") }).await;
    let app = Running::start(vec![
        ("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers()),
        ("TARGETS", targets(&server, 5, "200ms")),
    ])
    .await;
    wait_until(Duration::from_secs(30), "results delivered", || async {
        app.metric("healthcheck_checker_published_total", &[]).await >= 10.0
    })
    .await;

    // The broker answers a Produce with a sequence it cannot follow (as after losing the
    // producer's state): librdkafka raises a fatal idempotence error.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    wait_until(Duration::from_secs(30), "a fatal error", || async {
        app.metric("healthcheck_checker_producer_fatal_errors_total", &[]).await >= 1.0
    })
    .await;
    let after_fatal = app.metric("healthcheck_checker_published_total", &[]).await;
    wait_until(Duration::from_secs(30), "deliveries go on", || async {
        app.metric("healthcheck_checker_published_total", &[]).await >= after_fatal + 30.0
    })
    .await;
    wait_until(Duration::from_secs(30), "ready", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    assert_eq!(
        app.metric("healthcheck_checker_publish_failures_total", &[("reason", "enqueue")])
            .await,
        0.0
    );
    let metrics = app.stop().await;

    let resent = assert_every_result_delivered(&mock.bootstrap_servers(), &metrics).await;
    eprintln!("{resent} results were delivered twice (re-sent after the fatal error)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_takes_no_results_makes_the_checker_unready_until_it_does() {
    let mock = mock_cluster();
    let server = serve(|_| async { text(200, "ok") }).await;
    let app = Running::start(vec![
        ("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers()),
        ("TARGETS", targets(&server, 5, "200ms")),
        ("DELIVERY_STALL_TIMEOUT", "2s".into()),
    ])
    .await;
    wait_until(Duration::from_secs(30), "ready", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;

    // Metadata is still answered; every Produce fails with a retriable error.
    let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 1000];
    mock.request_errors(RDKafkaApiKey::Produce, &errors);
    wait_until(
        Duration::from_secs(30),
        "unready while nothing is delivered",
        || async {
            let (status, body) = app.get("/readyz").await;
            status == 503 && body.contains("no result delivered")
        },
    )
    .await;
    assert_eq!(app.get("/healthz").await.0, 200);

    mock.clear_request_errors(RDKafkaApiKey::Produce);
    wait_until(Duration::from_secs(60), "ready once results are delivered", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    let metrics = app.stop().await;
    assert_every_result_delivered(&mock.bootstrap_servers(), &metrics).await;
}

/// librdkafka's queue bounded by bytes to about two results: the results it refuses, and
/// every one after them, wait in the publish loop (probe tasks enqueue their own results only
/// while nothing waits there), through an outage as well, and reach the topic once each and
/// in order per target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_a_full_producer_queue_refuses_wait_in_order_and_none_is_lost() {
    let mock = mock_cluster();
    let server = serve(|_| async { text(200, "ok") }).await;
    let app = Running::start(vec![
        ("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers()),
        ("TARGETS", targets(&server, 10, "200ms")),
        ("KAFKA_CFG_QUEUE_BUFFERING_MAX_KBYTES", "2".into()),
    ])
    .await;
    wait_until(Duration::from_secs(30), "results delivered", || async {
        app.metric("healthcheck_checker_published_total", &[]).await >= 50.0
    })
    .await;

    // 50 results/s, none delivered: they wait, far more than librdkafka's queue holds.
    mock.broker_down(1).unwrap();
    wait_until(Duration::from_secs(30), "results wait in the loop", || async {
        let scrape = Scrape::get(app.admin).await;
        value(&scrape, "healthcheck_checker_results_waiting", &[]) >= 100.0
            && value(&scrape, "healthcheck_checker_producer_queue_messages", &[]) <= 5.0
    })
    .await;
    mock.broker_up(1).unwrap();
    let backlog_end = app.metric("healthcheck_checker_probes_started_total", &[]).await;
    wait_until(Duration::from_secs(60), "the backlog delivered", || async {
        app.metric("healthcheck_checker_published_total", &[]).await >= backlog_end + 50.0
    })
    .await;
    let metrics = app.stop().await;

    let m = exposition(&metrics);
    assert_eq!(
        value(
            &m,
            "healthcheck_checker_results_dropped_total",
            &[("reason", "buffer_full")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "healthcheck_checker_publish_failures_total",
            &[("reason", "enqueue")]
        ),
        0.0
    );
    assert_eq!(
        assert_every_result_delivered(&mock.bootstrap_servers(), &metrics).await,
        0
    );
    let mut last: BTreeMap<String, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    for r in read_topic(&mock.bootstrap_servers()).await {
        if let Some(before) = last.insert(r.target.clone(), r.scheduled_at) {
            assert!(
                before < r.scheduled_at,
                "{}: {} after {before}",
                r.target,
                r.scheduled_at
            );
        }
    }
    assert_eq!(last.len(), 10);
}
