//! Locations (issue #14): every row keeps the location that probed it, a version-2 message is
//! stored as `default`, location is part of the deduplication key, and the sink keeps the
//! `locations` table.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use common::result::check_id;

use crate::app::start_consuming;
use crate::store::{migrated_store, rows, sample};
use crate::support::*;

/// `sample` probed from `location` (schema version 4, its own check_id).
fn from(location: &str, target: &str, at: DateTime<Utc>, success: bool) -> common::result::ProbeResult {
    let mut r = sample(target, at, success, 0.01);
    r.schema_version = common::result::SCHEMA_VERSION;
    r.location = location.into();
    r.check_id = check_id(target, location, at);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_message_is_stored_as_location_default_and_locations_are_kept() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 2).await;
    let sink = start_consuming(&url, &bootstrap, &topic, &[]).await;
    let db = connect(&url).await;
    let slot = Utc::now().trunc_subsecs(3) - chrono::Duration::seconds(30);

    // A version-2 message as an older checker wrote it: no `location` field at all.
    let old = sample("api", slot, true, 0.01);
    let mut v2 = serde_json::to_value(&old).unwrap();
    v2.as_object_mut().unwrap().remove("location");
    v2["schema_version"] = 2.into();
    let p = producer(&bootstrap);
    send(&p, &topic, "api", &serde_json::to_vec(&v2).unwrap()).await;
    // The same target and slot from another location: a second row, not a replay.
    let eu = from("eu-west", "api", slot, false);
    send(&p, &topic, "api", &serde_json::to_vec(&eu).unwrap()).await;
    // Its replay, and a later slot: one more row.
    send(&p, &topic, "api", &serde_json::to_vec(&eu).unwrap()).await;
    let later = from("eu-west", "api", slot + chrono::Duration::seconds(10), true);
    send(&p, &topic, "api", &serde_json::to_vec(&later).unwrap()).await;

    wait_until(Duration::from_secs(30), "3 rows", || async {
        count(&db, "probe_results").await == 3
    })
    .await;
    let stored: Vec<(String, DateTime<Utc>, bool, i32)> = db
        .query(
            "SELECT location, scheduled_at, success, schema_version FROM probe_results ORDER BY scheduled_at, location",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        stored,
        [
            ("default".to_string(), slot, true, 2),
            ("eu-west".to_string(), slot, false, 4),
            ("eu-west".to_string(), slot + chrono::Duration::seconds(10), true, 4),
        ]
    );
    let locations: Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = db
        .query("SELECT name, first_seen, retired_at FROM locations ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        locations,
        [("default".to_string(), slot, None), ("eu-west".to_string(), slot, None)],
        "first_seen is the earliest slot of the batch that first held the location"
    );
    let latest: Vec<(String, String, DateTime<Utc>)> = db
        .query(
            "SELECT target_name, location, scheduled_at FROM probe_results_latest ORDER BY 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        latest,
        [
            ("api".to_string(), "default".to_string(), slot),
            (
                "api".to_string(),
                "eu-west".to_string(),
                slot + chrono::Duration::seconds(10)
            ),
        ],
        "latest per target and location"
    );
    sink.stop().await;
}

#[tokio::test]
async fn a_location_is_added_once_per_process_and_a_new_one_later() {
    let (store, db) = migrated_store().await;
    let t0 = Utc::now().trunc_subsecs(0) - chrono::Duration::minutes(5);
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    store
        .write(
            &rows(vec![from("a", "x", at(20), true), from("a", "y", at(10), true)]),
            &[],
        )
        .await
        .unwrap();
    // An operator retires `a`; the sink knows it, so it does not touch the row again.
    db.execute("UPDATE locations SET retired_at = now() WHERE name = 'a'", &[])
        .await
        .unwrap();
    store
        .write(
            &rows(vec![from("a", "x", at(30), true), from("b", "x", at(40), false)]),
            &[],
        )
        .await
        .unwrap();
    let locations: Vec<(String, DateTime<Utc>, bool)> = db
        .query(
            "SELECT name, first_seen, retired_at IS NOT NULL FROM locations ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        locations,
        [("a".to_string(), at(10), true), ("b".to_string(), at(40), false)]
    );
}
