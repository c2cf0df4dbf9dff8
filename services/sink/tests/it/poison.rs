//! Messages that decode but that PostgreSQL cannot store, or that hold values the schema
//! cannot hold, against the sink app: each becomes a dead letter and consumption goes on.

use std::time::Duration;

use chrono::Utc;

use crate::app::start_consuming;
use crate::store::sample;
use crate::support::*;

/// `n` alphanumeric characters that compress badly (B-tree keys are stored compressed).
fn incompressible(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_producer_sends_stops_consumption() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 2).await;
    let sink = start_consuming(&url, &bootstrap, &topic, &[]).await;
    let db = connect(&url).await;
    wait_until(Duration::from_secs(30), "migrations", || async {
        count(&db, "probe_results").await == 0
    })
    .await;
    // An operator's index on the error text: a long error breaks its B-tree row size limit
    // (SQLSTATE 54000, a class that used to stop the sink at that message, after every restart).
    db.batch_execute("CREATE INDEX probe_results_error ON probe_results (error)")
        .await
        .unwrap();

    let p = producer(&bootstrap);
    let now = Utc::now();
    let good = |i: i64| sample(&format!("t{}", i % 5), now + chrono::Duration::seconds(i), true, 0.01);
    for i in 0..20 {
        let r = good(i);
        send(&p, &topic, &r.target, &serde_json::to_vec(&r).unwrap()).await;
    }
    let mut long_error = sample("t0", now + chrono::Duration::hours(1), false, 0.01);
    long_error.error = Some(incompressible(6000));
    // Not what serialising the decoded result gives back: the dead letter keeps these bytes.
    let raw = format!("  {}\n", serde_json::to_string(&long_error).unwrap()).into_bytes();
    send(&p, &topic, "k-long", &raw).await;
    let nul = sample("bad\u{0}name", now, true, 0.01);
    send(&p, &topic, "k-nul", &serde_json::to_vec(&nul).unwrap()).await;
    let huge = sample(&"n".repeat(3000), now, true, 0.01);
    send(&p, &topic, "k-huge", &serde_json::to_vec(&huge).unwrap()).await;
    for i in 20..40 {
        let r = good(i);
        send(&p, &topic, &r.target, &serde_json::to_vec(&r).unwrap()).await;
    }

    wait_until(Duration::from_secs(60), "40 rows and 3 dead letters", || async {
        count(&db, "probe_results").await == 40 && count(&db, "dead_letters").await == 3
    })
    .await;
    let dead = db
        .query(
            "SELECT convert_from(message_key, 'UTF8'), error_class, error, payload FROM dead_letters ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let dead: Vec<(String, String, String, Vec<u8>)> =
        dead.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        dead.iter().map(|d| (d.0.as_str(), d.1.as_str())).collect::<Vec<_>>(),
        [("k-huge", "decode"), ("k-long", "data"), ("k-nul", "decode")]
    );
    assert!(dead[0].2.contains("target is 3000 bytes long"), "{}", dead[0].2);
    assert!(dead[1].2.starts_with("SQLSTATE 54000"), "{}", dead[1].2);
    assert_eq!(dead[1].3, raw, "a data dead letter keeps the message's raw bytes");
    assert!(dead[2].2.contains("target holds a NUL"), "{}", dead[2].2);
    assert_eq!(
        sink.metric("healthcheck_sink_dead_letters_total{class=\"data\"}").await,
        1.0
    );
    assert_eq!(
        sink.metric("healthcheck_sink_dead_letters_total{class=\"decode\"}")
            .await,
        2.0
    );
    assert_eq!(http_get(sink.admin, "/readyz").await.0, 200, "still consuming");
    sink.stop().await;
}
