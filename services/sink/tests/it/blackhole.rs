//! A database host that vanishes without a reset (a network black hole): the sink notices in
//! seconds, not after the kernel's retransmission timeout, and loses nothing.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::app::start;
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
    let sink = start(vec![
        ("DATABASE_URL", via),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("BATCH_MAX_ROWS", "200".to_string()),
        ("DB_STATEMENT_TIMEOUT", "2s".to_string()),
    ])
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
