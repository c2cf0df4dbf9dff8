//! The fleet's views against a real PostgreSQL: `slot_verdicts` (quorum over locations),
//! `coverage` and `missing_slots` (the slot grid of each target version), and the uptime
//! views built on the verdicts. Rows go in through `Store::write`, target versions through
//! `Store::write_target_changes`, as the sink writes them.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use common::result::check_id;
use common::slots::{next_slot_after, phase};
use sink::store::Store;
use sink::targets::TargetChange;

use crate::store::{migrated_store, rows, sample};

/// `target`'s result at `at` from `location`.
fn result(target: &str, location: &str, at: DateTime<Utc>, success: bool) -> common::result::ProbeResult {
    let mut r = sample(target, at, success, 0.01);
    r.location = location.into();
    r.check_id = check_id(target, location, at);
    r
}

/// A change of `name` recorded at `at`: a spec with `interval` (and `quorum`), or a tombstone.
fn change(offset: i64, name: &str, at: DateTime<Utc>, spec: Option<(Duration, Option<i32>)>) -> TargetChange {
    TargetChange {
        partition: 0,
        offset,
        name: name.into(),
        spec: spec.map(|(i, q)| serde_json::json!({"name": name, "url": "https://x.example/", "interval": humantime::format_duration(i).to_string(), "quorum": q})),
        interval: spec.map(|(i, _)| i),
        phase: spec.map(|(i, _)| phase(name, i)),
        quorum: spec.and_then(|(_, q)| q),
        failure_threshold: None,
        changed_at: at,
    }
}

async fn versions(store: &Store, changes: &[TargetChange]) {
    store.write_target_changes("targets", changes, &[]).await.unwrap();
}

/// `t` as PostgreSQL stores it (microseconds, truncated).
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(chrono::TimeDelta::microseconds(1)).unwrap()
}

/// What a location reported for a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Report {
    Up,
    Down,
    Missing,
}

/// The rule (issue #14): down when at least `q` of the `m` locations failed; up when the
/// successes make down impossible even if every missing location had failed; else unknown.
fn expected_verdict(reports: &[Report], q: usize, m: usize) -> &'static str {
    let failed = reports.iter().filter(|r| **r == Report::Down).count();
    let up = reports.iter().filter(|r| **r == Report::Up).count();
    if failed >= q {
        "down"
    } else if up > 0 && up > m - q {
        "up"
    } else {
        "unknown"
    }
}

#[tokio::test]
async fn verdicts_follow_the_quorum_for_every_combination_of_three_locations() {
    let (store, db) = migrated_store().await;
    let locations = ["a", "b", "c"];
    let interval = Duration::from_secs(10);
    let start = Utc::now() - chrono::Duration::hours(2);
    let mut results = Vec::new();
    let mut cases = Vec::new();
    let mut changes = Vec::new();
    for q in 1..=3usize {
        let target = format!("quorum-{q}");
        let p = phase(&target, interval);
        let first = next_slot_after(start, interval, p);
        let slot = |i: i64| first + chrono::Duration::seconds(10 * i);
        // One version holding exactly the 27 slots, then removed.
        let n = changes.len() as i64;
        changes.push(change(
            n,
            &target,
            first - chrono::Duration::seconds(1),
            Some((interval, Some(q as i32))),
        ));
        changes.push(change(n + 1, &target, slot(26) + chrono::Duration::seconds(1), None));
        for i in 0..27i64 {
            let reports: Vec<Report> = (0..3)
                .map(|j| [Report::Up, Report::Down, Report::Missing][(i as usize / 3usize.pow(j)) % 3])
                .collect();
            for (l, r) in locations.iter().zip(&reports) {
                if *r != Report::Missing {
                    results.push(result(&target, l, slot(i), *r == Report::Up));
                }
            }
            cases.push((
                target.clone(),
                slot(i),
                reports.clone(),
                expected_verdict(&reports, q, 3),
                q,
            ));
        }
    }
    versions(&store, &changes).await;
    store.write(&rows(results), &[]).await.unwrap();

    let got = db
        .query(
            "SELECT target_name, scheduled_at, locations_probed, locations_failed, quorum, verdict
             FROM slot_verdicts WHERE target_name LIKE 'quorum-%' ORDER BY target_name, scheduled_at",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 81, "27 slots per target, the all-missing one from the grid");
    for (row, (target, slot, reports, verdict, q)) in got.iter().zip(&cases) {
        let pick = |want: &[Report]| -> Vec<String> {
            locations
                .iter()
                .zip(reports)
                .filter(|(_, r)| want.contains(r))
                .map(|(l, _)| l.to_string())
                .collect()
        };
        assert_eq!(
            (
                row.get::<_, String>(0),
                row.get::<_, DateTime<Utc>>(1),
                row.get::<_, Vec<String>>(2),
                row.get::<_, Vec<String>>(3),
                row.get::<_, i32>(4),
                row.get::<_, String>(5),
            ),
            (
                target.clone(),
                micros(*slot),
                pick(&[Report::Up, Report::Down]),
                pick(&[Report::Down]),
                *q as i32,
                verdict.to_string(),
            ),
            "{reports:?} with quorum {q}"
        );
    }
    // Every verdict occurs (the cases cover the rule's three outcomes at each quorum but 3's
    // "up with a missing location" and 1's "unknown with a failure").
    for q in 1..=3 {
        let (up, down, unknown) = ["up", "down", "unknown"]
            .map(|v| cases.iter().filter(|c| c.4 == q && c.3 == v).count() as i64)
            .into();
        let r = db
            .query_one(
                "SELECT sum(up_slots)::bigint, sum(down_slots)::bigint, sum(unknown_slots)::bigint,
                        sum(up_slots)::float8 / nullif(sum(up_slots + down_slots), 0)
                 FROM target_uptime_hourly WHERE target_name = $1",
                &[&format!("quorum-{q}")],
            )
            .await
            .unwrap();
        assert_eq!(
            (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
            (up, down, unknown),
            "quorum {q}"
        );
        assert!(unknown > 0, "the all-missing slot is unknown, never up");
    }
    // The default quorum is a strict majority of the known locations: 2 of 3.
    let t = Utc::now().duration_trunc(chrono::TimeDelta::seconds(1)).unwrap() - chrono::Duration::minutes(1);
    store
        .write(
            &rows(vec![result("static", "a", t, false), result("static", "b", t, false)]),
            &[],
        )
        .await
        .unwrap();
    let (q, verdict): (i32, String) = db
        .query_one(
            "SELECT quorum, verdict FROM slot_verdicts WHERE target_name = 'static'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((q, verdict.as_str()), (2, "down"));
}

#[tokio::test]
async fn coverage_counts_the_grid_of_each_version_and_lists_the_holes() {
    let (store, db) = migrated_store().await;
    let target = "cov";
    let hour = Utc::now().duration_trunc(chrono::TimeDelta::hours(1)).unwrap() - chrono::Duration::hours(3);
    let half = hour + chrono::Duration::minutes(30);
    let end = hour + chrono::Duration::hours(1);
    let (ten, five) = (Duration::from_secs(10), Duration::from_secs(5));
    // 10 s until half past, then 5 s, removed at the end of the hour.
    versions(
        &store,
        &[
            change(0, target, hour, Some((ten, None))),
            change(1, target, half, Some((five, None))),
            change(2, target, end, None),
        ],
    )
    .await;
    let grid = |interval: Duration, from: DateTime<Utc>, to: DateTime<Utc>| {
        let p = phase(target, interval);
        let mut s = next_slot_after(from - chrono::Duration::nanoseconds(1), interval, p);
        let mut out = Vec::new();
        while s < to {
            out.push(s);
            s = next_slot_after(s, interval, p);
        }
        out
    };
    let old = grid(ten, hour, half);
    let new = grid(five, half, end);
    assert_eq!((old.len(), new.len()), (180, 360));
    let holes = [old[1], old[100], old[179], new[0], new[200]];
    let mut results: Vec<_> = old
        .iter()
        .chain(&new)
        .filter(|s| !holes.contains(s))
        .map(|s| result(target, "a", *s, true))
        .collect();
    // The 10 s grid is part of the 5 s one (same name, phase modulo 5 s), so a late probe
    // on the old grid is a present slot of the new one; a probe off the grid (a checker with
    // another interval) is no slot at all, and a hole stays a hole.
    results.push(result(target, "a", grid(ten, half, end)[3], true));
    results.push(result(target, "a", new[199] + chrono::Duration::milliseconds(1), true));
    // Slot times have nanoseconds (the phase does); PostgreSQL keeps microseconds, and the
    // views' grid must meet them exactly.
    assert!(results
        .iter()
        .any(|r| r.scheduled_at.timestamp_subsec_nanos() % 1000 != 0));
    store.write(&rows(results), &[]).await.unwrap();

    let r = db
        .query_one(
            "SELECT expected_slots, present_slots, missing_slots FROM coverage
             WHERE target_name = $1 AND location = 'a' AND hour = $2",
            &[&target, &hour],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
        (540, 535, 5)
    );
    // The same over an arbitrary window (a drill's): the last 20 minutes hold new[120..] with
    // one hole (new[200]) and the off-grid probe.
    let r = db
        .query_one(
            "SELECT expected_slots, present_slots, missing_slots FROM coverage_between($1, $2)
             WHERE target_name = 'cov' AND location = 'a'",
            &[&new[120], &(end + chrono::Duration::hours(1))],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
        (240, 239, 1)
    );
    let rows_per_hour: i64 = db
        .query_one("SELECT count(*) FROM coverage WHERE target_name = $1", &[&target])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows_per_hour, 1,
        "the version ended with the hour: no later hour is expected"
    );

    let missing: Vec<DateTime<Utc>> = db
        .query(
            "SELECT scheduled_at FROM missing_slots($1, 'a', $2, $3)",
            &[&target, &hour, &end],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected: Vec<DateTime<Utc>> = holes.iter().map(|h| micros(*h)).collect();
    expected.sort();
    assert_eq!(missing, expected);
    // A location first seen later is expected only from then on.
    let late = new[300];
    store
        .write(&rows(vec![result(target, "b", late, true)]), &[])
        .await
        .unwrap();
    let r = db
        .query_one(
            "SELECT expected_slots, present_slots FROM coverage WHERE target_name = $1 AND location = 'b'",
            &[&target],
        )
        .await
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (60, 1));

    // Both read probe_results through its (target_name, location, scheduled_at) index, one
    // range or point per piece. With this few rows the planner would rather scan, so the
    // check disables sequential scans: it proves the index serves the query. Plan (abridged):
    //   GroupAggregate -> Nested Loop -> ... -> Aggregate
    //     -> Append -> Index Only Scan using probe_results_..._target_name_location_sched..._idx
    //          Index Cond: (target_name = p.target_name) AND (location = p.location)
    //                      AND (scheduled_at >= p.piece_from) AND (scheduled_at < p.piece_to)
    db.batch_execute("SET enable_seqscan = off").await.unwrap();
    let plan: Vec<String> = db
        .query("EXPLAIN SELECT * FROM coverage WHERE target_name = 'cov'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index") && plan.contains("scheduled_at >= ") && !plan.contains("Seq Scan on probe_results"),
        "{plan}"
    );
}
