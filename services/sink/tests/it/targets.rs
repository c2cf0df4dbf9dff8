//! The sink's targets consumer against the real broker: the targets topic becomes
//! `target_changes` and the `targets` view (versions with since/until), a record the schema
//! cannot hold becomes a dead letter and later records are still written, and a topic that
//! does not exist yet is waited for.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::producer::FutureRecord;

use crate::app::start_consuming;
use crate::support::*;

/// Sends `value` (`None`: a tombstone) keyed by `key` with record timestamp `at`.
async fn publish(
    p: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
    value: Option<&str>,
    at: DateTime<Utc>,
) {
    let mut record = FutureRecord::<str, str>::to(topic)
        .key(key)
        .timestamp(at.timestamp_millis());
    if let Some(v) = value {
        record = record.payload(v);
    }
    p.send(record, Duration::from_secs(30)).await.expect("delivered");
}

/// One row of the `targets` view, numbers as PostgreSQL writes them.
type Version = (
    String,
    Option<i32>,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_targets_topic_becomes_versions_and_a_poison_record_a_dead_letter() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let (results, targets) = (unique("results"), unique("targets"));
    create_topic(&bootstrap, &results, 1).await;
    let sink = start_consuming(&url, &bootstrap, &results, &[("KAFKA_TARGETS_TOPIC", &targets)]).await;
    let db = connect(&url).await;
    wait_until(Duration::from_secs(30), "migrations", || async {
        db.query_one("SELECT count(*) FROM target_changes", &[]).await.is_ok()
    })
    .await;
    // The topic appears after the sink started: it waits, it does not stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    create_topic(&bootstrap, &targets, 2).await;

    let t0 = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    let p = producer(&bootstrap);
    publish(
        &p,
        &targets,
        "api",
        Some(r#"{"name":"api","url":"https://api.example/","interval":"10s","quorum":2}"#),
        at(0),
    )
    .await;
    publish(
        &p,
        &targets,
        "web",
        Some(r#"{"name":"web","url":"https://web.example/","interval":"1m"}"#),
        at(5),
    )
    .await;
    publish(
        &p,
        &targets,
        "api",
        Some(r#"{"name":"api","url":"https://api.example/","interval":"5s"}"#),
        at(60),
    )
    .await;
    publish(&p, &targets, "bad", Some("{not json"), at(61)).await;
    publish(
        &p,
        &targets,
        "noint",
        Some(r#"{"name":"noint","url":"https://x.example/"}"#),
        at(62),
    )
    .await;
    publish(&p, &targets, "api", None, at(120)).await;
    publish(
        &p,
        &targets,
        "late",
        Some(r#"{"name":"late","url":"https://late.example/","interval":30}"#),
        at(130),
    )
    .await;

    wait_until(Duration::from_secs(60), "5 changes and 2 dead letters", || async {
        count(&db, "target_changes").await == 5 && count(&db, "dead_letters").await == 2
    })
    .await;
    let versions: Vec<Version> = db
        .query(
            "SELECT target_name, quorum, interval_seconds::text, phase_seconds::text, since, until
             FROM targets ORDER BY target_name, since",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let phase =
        |name: &str, secs: u64| sink::targets::exact_seconds(common::slots::phase(name, Duration::from_secs(secs)));
    let v = |name: &str, quorum, secs: u64, since, until| -> Version {
        (
            name.into(),
            quorum,
            sink::targets::exact_seconds(Duration::from_secs(secs)),
            phase(name, secs),
            since,
            until,
        )
    };
    assert_eq!(
        versions,
        [
            v("api", Some(2), 10, at(0), Some(at(60))),
            v("api", None, 5, at(60), Some(at(120))),
            v("late", None, 30, at(130), None),
            v("web", None, 60, at(5), None),
        ],
        "one row per version; the tombstone ends api's second version and starts none"
    );
    let dead: Vec<(String, String, String)> = db
        .query(
            "SELECT topic, convert_from(message_key, 'UTF8'), error FROM dead_letters ORDER BY 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(dead.len(), 2);
    assert_eq!((dead[0].0.as_str(), dead[0].1.as_str()), (targets.as_str(), "bad"));
    assert!(dead[0].2.contains("not JSON"), "{}", dead[0].2);
    assert_eq!((dead[1].0.as_str(), dead[1].1.as_str()), (targets.as_str(), "noint"));
    assert!(dead[1].2.contains("no interval"), "{}", dead[1].2);
    // Counted right after the commit the rows came with.
    let outcome = |o: &str| format!("healthcheck_sink_target_records_total{{outcome=\"{o}\"}}");
    wait_until(Duration::from_secs(5), "records counted", || async {
        sink.metric(&outcome("stored")).await == 5.0 && sink.metric(&outcome("dead_letter")).await == 2.0
    })
    .await;
    assert_eq!(sink.metric(&outcome("duplicate")).await, 0.0);
    sink.stop().await;

    // A sink in a new group reads the topic from the beginning again: the replayed records
    // are absorbed, only the new tombstone is a new row.
    let before: i64 = db
        .query_one("SELECT max(id) FROM target_changes", &[])
        .await
        .unwrap()
        .get(0);
    publish(&p, &targets, "web", None, at(200)).await;
    let group = unique("group");
    let sink = start_consuming(
        &url,
        &bootstrap,
        &results,
        &[("KAFKA_TARGETS_TOPIC", &targets), ("KAFKA_GROUP_ID", &group)],
    )
    .await;
    wait_until(Duration::from_secs(60), "web removed", || async {
        db.query_one(
            "SELECT count(*) FROM targets WHERE target_name = 'web' AND until IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    })
    .await;
    let after: i64 = db
        .query_one("SELECT count(*) FROM target_changes WHERE id > $1", &[&before])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        after, 1,
        "a new group reads from the beginning; only the new record is new"
    );
    wait_until(Duration::from_secs(10), "replays counted", || async {
        sink.metric("healthcheck_sink_target_records_total{outcome=\"duplicate\"}")
            .await
            == 5.0
    })
    .await;
    sink.stop().await;
}

/// Found by the container drill: the stand-in broker forgot its log on restart, the targets
/// were applied again at offsets already stored, and `ON CONFLICT` dropped them as replays,
/// so the `targets` view stayed on the old versions. A topic deleted and created again does
/// the same on Kafka. A record at a stored offset with another timestamp is a new change; the
/// same record again is a replay.
#[tokio::test]
async fn a_reused_offset_with_a_new_timestamp_is_a_new_change() {
    let (store, db) = crate::store::migrated_store().await;
    let change = |at: &str| sink::targets::TargetChange {
        partition: 0,
        offset: 0,
        name: "api".into(),
        spec: Some(serde_json::json!({"name": "api", "url": "http://api/", "interval": "10s"})),
        interval: Some(Duration::from_secs(10)),
        phase: Some(common::slots::phase("api", Duration::from_secs(10))),
        quorum: None,
        failure_threshold: None,
        changed_at: at.parse::<DateTime<Utc>>().unwrap(),
    };
    let first = change("2026-01-01T00:00:00Z");
    assert_eq!(
        store
            .write_target_changes("t", std::slice::from_ref(&first), &[])
            .await
            .unwrap(),
        (1, 0)
    );
    assert_eq!(
        store.write_target_changes("t", &[first], &[]).await.unwrap(),
        (0, 0),
        "a replay"
    );
    let again = change("2026-01-02T00:00:00Z");
    assert_eq!(
        store.write_target_changes("t", &[again], &[]).await.unwrap(),
        (1, 0),
        "a new log"
    );
    let since: Vec<DateTime<Utc>> = db
        .query(
            "SELECT since FROM targets WHERE target_name = 'api' ORDER BY since",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(since.len(), 2, "{since:?}");
}
