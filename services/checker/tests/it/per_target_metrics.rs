//! `/metrics` over HTTP with the per-target `probe_*` series on (the default) and off
//! (`PER_TARGET_METRICS=off`): two whole apps probing the same loopback targets, publishing
//! to librdkafka's mock cluster.

use std::time::Duration;

use checker::app::App;
use checker::config::Config;
use common::config::Env;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use testkit::http::http_get;
use testkit::metrics::Scrape;
use testkit::wait_until;
use tokio_util::sync::CancellationToken;

use crate::support::{serve, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_the_probe_series_leave_and_the_totals_stay() {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("results", 1, 1).expect("topic");
    let server = serve(|_| async { text(200, "ok") }).await;
    let targets = serde_json::json!([
        {"name": "t0", "url": server.url("/"), "interval": "250ms"},
        {"name": "t1", "url": server.url("/"), "interval": "250ms"},
    ])
    .to_string();
    let stop = CancellationToken::new();
    let mut admins = Vec::new();
    for setting in [None, Some("off")] {
        let mut pairs = vec![
            ("ADMIN_ADDR", "127.0.0.1:0".to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers()),
            ("KAFKA_TOPIC", "results".into()),
            ("KAFKA_CREATE_TOPIC", "false".into()),
            ("TARGETS", targets.clone()),
        ];
        if let Some(v) = setting {
            pairs.push(("PER_TARGET_METRICS", v.into()));
        }
        let app = App::build(Config::from_env(&Env::from_pairs(pairs)).unwrap())
            .await
            .unwrap();
        admins.push(app.admin_addr());
        tokio::spawn(app.run_until_stopped(stop.clone()));
    }
    let completed = |admin| async move {
        Scrape::get(admin)
            .await
            .metric("healthcheck_checker_probes_completed_total", &[("outcome", "success")])
            .unwrap_or(0.0)
    };
    for &admin in &admins {
        wait_until(Duration::from_secs(30), "both targets probed twice", || async move {
            completed(admin).await >= 4.0
        })
        .await;
    }

    let (on, off) = (
        http_get(admins[0], "/metrics").await.1,
        http_get(admins[1], "/metrics").await.1,
    );
    let scrape = Scrape::parse(&on);
    for t in ["t0", "t1"] {
        assert_eq!(scrape.metric("probe_success", &[("target", t)]), Some(1.0), "{on}");
        assert_eq!(scrape.metric("probe_http_status_code", &[("target", t)]), Some(200.0));
        let transfer = scrape.metric("probe_http_duration_seconds", &[("target", t), ("phase", "transfer")]);
        assert!(transfer.is_some_and(|s| s >= 0.0), "{on}");
    }
    assert!(!off.contains("probe_"), "no probe_* family: {off}");
    let scrape = Scrape::parse(&off);
    assert_eq!(scrape.metric("healthcheck_checker_targets", &[]), Some(2.0));
    assert!(completed(admins[1]).await >= 4.0);
    stop.cancel();
}
