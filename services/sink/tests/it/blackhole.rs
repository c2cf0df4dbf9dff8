//! A database host that vanishes without a reset (a network black hole): the sink notices in
//! seconds, not after the kernel's retransmission timeout, and loses nothing.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::app::{start, start_consuming};
use crate::store::sample;
use crate::support::*;

/// Produces `n` distinct results over every partition; returns `n`.
async fn produce(bootstrap: &str, topic: &str, n: usize, tag: &str) -> i64 {
    let p = producer(bootstrap);
    let now = Utc::now();
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let (p, topic) = (p.clone(), topic.to_string());
            let r = sample(
                &format!("{tag}-{}", i % 30),
                now + chrono::Duration::milliseconds(i as i64),
                true,
                0.01,
            );
            tokio::spawn(async move { send(&p, &topic, &r.target, &serde_json::to_vec(&r).unwrap()).await })
        })
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    n as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_database_is_noticed_in_seconds_and_nothing_is_lost() {
    let url = fresh_database().await;
    let pg = Forwarder::start(pg_addr(&url), None).await;
    let via = url.replace(&pg_addr(&url).to_string(), &pg.addr.to_string());
    let bootstrap = bootstrap();
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 3).await;
    let sink = start_consuming(
        &via,
        &bootstrap,
        &topic,
        &[("BATCH_MAX_ROWS", "200"), ("DB_STATEMENT_TIMEOUT", "2s")],
    )
    .await;
    let db = connect(&url).await;
    let before = produce(&bootstrap, &topic, 600, "before").await;
    wait_until(Duration::from_secs(60), "the first rows", || async {
        count(&db, "probe_results").await == before
    })
    .await;
    wait_until(Duration::from_secs(30), "ready", || async {
        http_get(sink.admin, "/readyz").await.0 == 200
    })
    .await;

    pg.black_hole();
    let cut = Instant::now();
    let during = produce(&bootstrap, &topic, 600, "during").await;
    wait_until(Duration::from_secs(90), "/readyz to blame PostgreSQL", || async {
        let (status, body) = http_get(sink.admin, "/readyz").await;
        status == 503 && body.contains("PostgreSQL")
    })
    .await;
    let unready_after = cut.elapsed();
    wait_until(
        Duration::from_secs(90),
        "a write given up for want of an answer",
        || async {
            sink.metric("healthcheck_sink_write_retries_total{class=\"timeout\"}")
                .await
                > 0.0
        },
    )
    .await;
    let write_given_up_after = cut.elapsed();
    eprintln!(
        "black hole noticed: /readyz 503 after {unready_after:?}, first write given up after {write_given_up_after:?}"
    );
    assert_eq!(
        http_get(sink.admin, "/healthz").await.0,
        200,
        "a black hole never fails liveness"
    );
    assert_eq!(
        count(&db, "probe_results").await,
        before,
        "nothing got through the black hole"
    );

    pg.resume();
    let resumed = Instant::now();
    wait_until(Duration::from_secs(120), "every row after the black hole", || async {
        count(&db, "probe_results").await == before + during
    })
    .await;
    eprintln!("all rows written {:?} after the black hole ended", resumed.elapsed());
    wait_until(Duration::from_secs(30), "ready again", || async {
        http_get(sink.admin, "/readyz").await.0 == 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&db, "probe_results").await, before + during);
    assert_eq!(count(&db, "dead_letters").await, 0);
    sink.stop().await;
}

/// The network namespace of process `pid` (`/proc/<pid>/ns/net`, e.g. `net:[4026531840]`).
fn netns(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// `iptables` in this test's own network namespace.
fn iptables(args: &str) {
    let status = std::process::Command::new("iptables")
        .args(args.split(' '))
        .status()
        .expect("run iptables");
    assert!(status.success(), "iptables {args}");
}

/// The same black hole one layer down: the kernel drops every packet to and from
/// PostgreSQL's port, so nothing is acknowledged (the forwarder above cannot do that on
/// loopback). What notices it is TCP itself: `TCP_USER_TIMEOUT` closes a connection whose sent
/// data stays unacknowledged (the client-side deadline is set far beyond, at
/// `DB_STATEMENT_TIMEOUT` + 5 s = 65 s).
///
/// Needs root and firewall rules, so it runs only in a private network namespace, with a
/// private PostgreSQL and broker inside:
/// `unshare -n sh -c 'ip link set lo up && cargo nextest run -p sink --run-ignored only -E "test(network_black_hole)" --no-capture'`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root in a private network namespace (unshare -n): see the doc comment"]
async fn a_network_black_hole_is_noticed_by_tcp_in_seconds() {
    assert_ne!(
        netns("self"),
        netns("1"),
        "refusing to change the firewall of the host's network namespace: run under `unshare -n`"
    );
    let pg = PrivatePostgres::start().await;
    let broker = PrivateBroker::start().await;
    let topic = unique("results");
    create_topic(&broker.bootstrap(), &topic, 3).await;
    let sink = start(vec![
        ("DATABASE_URL", pg.url.clone()),
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("BATCH_MAX_ROWS", "200".to_string()),
        ("DB_STATEMENT_TIMEOUT", "60s".to_string()),
    ])
    .await;
    let db = connect(&pg.url).await;
    let before = produce(&broker.bootstrap(), &topic, 600, "before").await;
    wait_until(Duration::from_secs(60), "the first rows", || async {
        count(&db, "probe_results").await == before
    })
    .await;

    let port = pg_addr(&pg.url).port();
    let rules = [
        format!("INPUT -p tcp --dport {port} -j DROP"),
        format!("INPUT -p tcp --sport {port} -j DROP"),
    ];
    for r in &rules {
        iptables(&format!("-I {r}"));
    }
    let cut = Instant::now();
    let during = produce(&broker.bootstrap(), &topic, 600, "during").await;
    wait_until(Duration::from_secs(60), "/readyz to blame PostgreSQL", || async {
        let (status, body) = http_get(sink.admin, "/readyz").await;
        status == 503 && body.contains("PostgreSQL")
    })
    .await;
    let unready_after = cut.elapsed();
    wait_until(Duration::from_secs(60), "a write failed by the kernel", || async {
        sink.metric("healthcheck_sink_write_retries_total{class=\"io\"}").await > 0.0
    })
    .await;
    let io_after = cut.elapsed();
    eprintln!(
        "network black hole noticed: /readyz 503 after {unready_after:?}, a write failed (io) after {io_after:?}"
    );
    let deadline_hits = sink
        .metric("healthcheck_sink_write_retries_total{class=\"timeout\"}")
        .await;
    assert!(
        deadline_hits.is_nan() || deadline_hits == 0.0,
        "TCP noticed before the client-side deadline: {deadline_hits}"
    );

    for r in &rules {
        iptables(&format!("-D {r}"));
    }
    let resumed = Instant::now();
    wait_until(Duration::from_secs(120), "every row after the black hole", || async {
        count(&db, "probe_results").await == before + during
    })
    .await;
    eprintln!("all rows written {:?} after the black hole ended", resumed.elapsed());
    assert_eq!(count(&db, "dead_letters").await, 0);
    sink.stop().await;
}
