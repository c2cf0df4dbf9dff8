//! The status page's read API (`sink::store::status`) against a real PostgreSQL: rows go in
//! through `Store::write` (which leaves the rollup marks), target versions through
//! `Store::write_target_changes`, the rollup job runs (`Store::rollup_once`), and the
//! overview, a target's detail, incidents and maintenance windows are read back and compared
//! with what the rows say.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use common::result::check_id;
use common::slots::{next_slot_after, phase};
use sink::store::status::{BucketWidth, IncidentQuery, NewMaintenance, PageRequest, State, BUCKETS};
use sink::store::{Row, Store, ROLLUP_LOCK};
use sink::targets::TargetChange;

use crate::store::{migrated_store, sample};

/// `target`'s result at `at` from `location`, lasting `duration` seconds.
fn result(
    target: &str,
    location: &str,
    at: DateTime<Utc>,
    success: bool,
    duration: f64,
) -> common::result::ProbeResult {
    let mut r = sample(target, at, success, duration);
    r.location = location.into();
    r.check_id = check_id(target, location, at);
    r
}

/// Rows at distinct offsets starting at `first`.
fn rows_from(first: i64, results: Vec<common::result::ProbeResult>) -> Vec<Row> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, result)| Row {
            partition: 0,
            offset: first + i as i64,
            key: Some(result.target.as_bytes().to_vec()),
            payload: None,
            result,
        })
        .collect()
}

/// A version of `name` with `interval` (and `failure_threshold`) recorded at `at`.
fn version(offset: i64, name: &str, at: DateTime<Utc>, interval: Duration, k: Option<i32>) -> TargetChange {
    TargetChange {
        partition: 0,
        offset,
        name: name.into(),
        spec: Some(
            serde_json::json!({"name": name, "url": format!("https://{name}.example/health"),
                                      "interval": humantime::format_duration(interval).to_string()}),
        ),
        interval: Some(interval),
        phase: Some(phase(name, interval)),
        quorum: None,
        failure_threshold: k,
        changed_at: at,
    }
}

/// A minute-aligned time `minutes` ago... `hours` whole hours back, at minute `minute`.
fn at(hours_back: i64, minute: i64) -> DateTime<Utc> {
    Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap() - TimeDelta::hours(hours_back) + TimeDelta::minutes(minute)
}

/// Writes `pattern` ('u' up, 'd' down, '.' no row) as one slot a minute from `start`.
async fn write_pattern(store: &Store, target: &str, location: &str, start: DateTime<Utc>, pattern: &str, offset: i64) {
    let results: Vec<_> = pattern
        .chars()
        .enumerate()
        .filter(|(_, c)| *c != '.')
        .map(|(i, c)| {
            result(
                target,
                location,
                start + TimeDelta::minutes(i as i64),
                c == 'u',
                0.010 * (1 + i % 10) as f64,
            )
        })
        .collect();
    store.write(&rows_from(offset, results), &[]).await.unwrap();
}

#[tokio::test]
async fn status_incidents_open_at_k_down_slots_and_close_at_the_first_up() {
    let (store, db) = migrated_store().await;
    let start = at(2, 0);
    // Slots 0..: a lone failure (below K = 2), then a run of 3 down slots, up again.
    // Slot 2 fails alone, slots 4..=7 fail (4 slots), up at 8, no row at 9, down at 10.
    write_pattern(&store, "api", "default", start, "uududdddu.d", 0).await;
    let report = store.rollup_once().await.unwrap();
    assert_eq!((report.hours, report.targets), (1, 1));
    assert_eq!(sink_count(&db, "rollup_marks").await, 0, "the pass took its marks");

    let incidents = store.incidents(&IncidentQuery::default()).await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = &incidents[0];
    assert_eq!(i.target_name, "api");
    assert_eq!(i.started_at, start + TimeDelta::minutes(4));
    assert_eq!(i.ended_at, Some(start + TimeDelta::minutes(8)));
    assert_eq!(i.duration_seconds, 240.0);
    assert_eq!(i.down_slots, 4);
    assert_eq!(i.failing_locations, vec!["default".to_string()]);
    assert_eq!(i.first_error_kind.as_deref(), Some("status"));
    assert!(i.first_error.as_deref().unwrap().contains("503"));
    assert!(!i.planned);

    let o = store.overview(BucketWidth::Hour, PageRequest::default()).await.unwrap();
    assert_eq!(o.bucket_seconds, 3600);
    assert_eq!(o.locations, vec!["default".to_string()]);
    assert_eq!(o.targets.len(), 1);
    let t = &o.targets[0];
    assert_eq!(t.name, "api");
    assert_eq!(t.url, "https://api.example/health");
    assert_eq!(t.state, State::Down, "the latest slot (10) failed");
    assert_eq!(t.state_since, Some(start + TimeDelta::minutes(10)));
    assert_eq!(t.last_error_kind.as_deref(), Some("status"));
    assert_eq!(t.last_error_at, Some(start + TimeDelta::minutes(10)));
    assert_eq!(t.locations.len(), 1);
    assert_eq!(t.locations[0].scheduled_at, start + TimeDelta::minutes(10));
    assert!(!t.locations[0].success);
    // Static target (no version): only the probed slots count.
    assert_eq!(
        (
            t.uptime_24h.up_slots,
            t.uptime_24h.down_slots,
            t.uptime_24h.unknown_slots
        ),
        (4, 6, 0)
    );
    assert_eq!(t.uptime_24h.ratio, Some(0.4));
    assert_eq!(t.uptime_24h.coverage_ratio, Some(1.0));
    assert_eq!(t.uptime_7d, t.uptime_24h);
    assert_eq!(t.uptime_30d, t.uptime_24h);
    // Durations 10, 10, 20, ..., 90 ms: the p50 within a histogram bin of the exact 40-50 ms.
    let p50 = t.latency_p50_seconds.unwrap();
    assert!((0.033..0.06).contains(&p50), "p50 {p50}");
    assert!(t.latency_p95_seconds.unwrap() > p50);
    assert_eq!(t.buckets.len(), BUCKETS);
    let bar: Vec<(DateTime<Utc>, State, i64)> = t.buckets.iter().map(|b| (b.start, b.state, b.up_slots)).collect();
    assert_eq!(bar[BUCKETS - 3], (start, State::Down, 4), "the hour of the rows");
    assert_eq!(bar[BUCKETS - 1].1, State::Unknown, "no slot: unknown");
    assert_eq!(bar[BUCKETS - 1].0, at(0, 0));
    assert!(t.open_incident.is_none(), "slot 10 alone is below K");

    // One more failure: K = 2 reached, an incident opens and is open now.
    write_pattern(&store, "api", "default", start + TimeDelta::minutes(11), "d", 100).await;
    store.rollup_once().await.unwrap();
    let open = store
        .incidents(&IncidentQuery {
            open: Some(true),
            ..IncidentQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].started_at, open[0].ended_at),
        (start + TimeDelta::minutes(10), None)
    );
    let first_id = incidents[0].id;
    let o = store.overview(BucketWidth::Hour, PageRequest::default()).await.unwrap();
    assert_eq!(o.targets[0].open_incident.as_ref().map(|i| i.id), Some(open[0].id));
    let closed = store
        .incidents(&IncidentQuery {
            open: Some(false),
            target: Some("api".into()),
            ..IncidentQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        closed.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![first_id],
        "ids stay when recomputed"
    );
    let none = store
        .incidents(&IncidentQuery {
            target: Some("other".into()),
            ..IncidentQuery::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let since = store
        .incidents(&IncidentQuery {
            since: Some(start + TimeDelta::minutes(5)),
            limit: 10,
            ..IncidentQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), 1);

    // A late result fills slot 9 as down: the closed incident's end is unchanged (slot 8
    // up), but slots 9..=11 now make the open one start at 9.
    write_pattern(&store, "api", "default", start + TimeDelta::minutes(9), "d", 200).await;
    let _ = store.rollup_once().await.unwrap();
    let all = store.incidents(&IncidentQuery::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|i| (i.started_at, i.ended_at)).collect::<Vec<_>>(),
        vec![
            (start + TimeDelta::minutes(9), None),
            (start + TimeDelta::minutes(4), Some(start + TimeDelta::minutes(8)))
        ]
    );
    assert_eq!(
        sink_count(&db, "incidents").await,
        2,
        "the replaced open incident is gone"
    );
}

async fn sink_count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn status_missing_slots_of_a_versioned_target_are_unknown_and_k_comes_from_the_version() {
    let (store, _db) = migrated_store().await;
    let interval = Duration::from_secs(60);
    let since = at(3, 0) - TimeDelta::seconds(30);
    store
        .write_target_changes("targets", &[version(0, "grid", since, interval, Some(3))], &[])
        .await
        .unwrap();
    let p = phase("grid", interval);
    // As PostgreSQL stores it (microseconds).
    let first = next_slot_after(since, interval, p)
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap();
    // Rows only in the first 30 slots; then the checker went away for hours.
    let results: Vec<_> = (0..30)
        .map(|i| {
            let down = (10..12).contains(&i) || (20..23).contains(&i);
            result("grid", "default", first + TimeDelta::minutes(i), !down, 0.02)
        })
        .collect();
    store.write(&rows_from(0, results), &[]).await.unwrap();
    store.rollup_once().await.unwrap();

    let o = store.overview(BucketWidth::Hour, PageRequest::default()).await.unwrap();
    let t = &o.targets[0];
    let now = o.generated_at;
    let expected_slots = (now - first).num_seconds() / 60 + 1;
    let u = &t.uptime_24h;
    assert_eq!((u.up_slots, u.down_slots), (25, 5));
    assert!(
        (expected_slots - 1..=expected_slots).contains(&(u.up_slots + u.down_slots + u.unknown_slots)),
        "every slot of the grid since the version is counted: {u:?}, {expected_slots}"
    );
    assert!(u.coverage_ratio.unwrap() < 0.2);
    // An hour with no row at all is unknown, with its 60 slots.
    let empty = &t.buckets[BUCKETS - 2];
    assert_eq!(
        (empty.state, empty.unknown_slots, empty.up_slots),
        (State::Unknown, 60, 0)
    );
    // K = 3 from the version: 2 down slots open nothing, 3 do.
    let incidents = store.incidents(&IncidentQuery::default()).await.unwrap();
    assert_eq!(
        incidents
            .iter()
            .map(|i| (i.started_at, i.ended_at, i.down_slots))
            .collect::<Vec<_>>(),
        vec![(first + TimeDelta::minutes(20), Some(first + TimeDelta::minutes(23)), 3)]
    );
    assert_eq!(t.state, State::Up, "the latest slot with a verdict was up");
}

#[tokio::test]
async fn status_maintenance_windows_are_excluded_from_uptime_and_make_incidents_planned() {
    let (store, _db) = migrated_store().await;
    let start = at(2, 0);
    write_pattern(&store, "db", "default", start, "uuuddddduu", 0).await;
    write_pattern(&store, "web", "default", start, "uuuuuuuuuu", 100).await;
    store.rollup_once().await.unwrap();
    let before = store.incidents(&IncidentQuery::default()).await.unwrap();
    assert_eq!(before.len(), 1);
    assert!(!before[0].planned);

    // Bad input first: an empty window is refused, and nothing is stored.
    let bad = store
        .add_maintenance(&NewMaintenance {
            target_name: Some("db".into()),
            starts_at: start,
            ends_at: start,
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("end after it starts"), "{bad}");
    assert!(store.maintenance_windows(true).await.unwrap().is_empty());

    let w = store
        .add_maintenance(&NewMaintenance {
            target_name: Some("db".into()),
            starts_at: start + TimeDelta::minutes(3),
            ends_at: start + TimeDelta::minutes(6),
            reason: "failover drill".into(),
        })
        .await
        .unwrap();
    let everyone = store
        .add_maintenance(&NewMaintenance {
            target_name: None,
            starts_at: Utc::now() + TimeDelta::hours(1),
            ends_at: Utc::now() + TimeDelta::hours(2),
            reason: "upgrade".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        (w.target_name.as_deref(), w.reason.as_str()),
        (Some("db"), "failover drill")
    );
    store.rollup_once().await.unwrap();

    let after = store.incidents(&IncidentQuery::default()).await.unwrap();
    assert_eq!(after.len(), 1);
    assert!(after[0].planned, "overlaps the window");
    assert_eq!(after[0].id, before[0].id);
    let o = store.overview(BucketWidth::Day, PageRequest::default()).await.unwrap();
    assert_eq!(o.bucket_seconds, 86_400);
    let db = o.targets.iter().find(|t| t.name == "db").unwrap();
    let u = &db.uptime_24h;
    assert_eq!((u.up_slots, u.down_slots, u.maintenance_slots), (5, 2, 3));
    assert_eq!(u.ratio, Some(5.0 / 7.0));
    let web = o.targets.iter().find(|t| t.name == "web").unwrap();
    assert_eq!(
        (web.uptime_7d.up_slots, web.uptime_7d.maintenance_slots),
        (10, 0),
        "another target's window"
    );

    // Not ended: the future one; with the past: both, by start; the detail lists the windows
    // not ended that apply to the target.
    let ids = |v: Vec<sink::store::status::MaintenanceWindow>| v.iter().map(|w| w.id).collect::<Vec<_>>();
    assert_eq!(ids(store.maintenance_windows(false).await.unwrap()), vec![everyone.id]);
    assert_eq!(
        ids(store.maintenance_windows(true).await.unwrap()),
        vec![w.id, everyone.id]
    );
    let detail = store.target_detail("web", BucketWidth::Hour).await.unwrap().unwrap();
    assert_eq!(
        detail.maintenance.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![everyone.id]
    );

    assert!(store.delete_maintenance(w.id).await.unwrap());
    assert!(!store.delete_maintenance(w.id).await.unwrap(), "already gone");
    store.rollup_once().await.unwrap();
    let again = store.incidents(&IncidentQuery::default()).await.unwrap();
    assert!(!again[0].planned, "the window was deleted");
    let o = store.overview(BucketWidth::Hour, PageRequest::default()).await.unwrap();
    let db = o.targets.iter().find(|t| t.name == "db").unwrap();
    assert_eq!((db.uptime_24h.down_slots, db.uptime_24h.maintenance_slots), (5, 0));
}

#[tokio::test]
async fn status_a_target_in_a_window_now_is_in_maintenance() {
    let (store, _db) = migrated_store().await;
    let first = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap() - TimeDelta::minutes(3);
    write_pattern(&store, "svc", "default", first, "ddd", 0).await;
    let from = Utc::now() - TimeDelta::minutes(10);
    store
        .add_maintenance(&NewMaintenance {
            target_name: None,
            starts_at: from,
            ends_at: Utc::now() + TimeDelta::minutes(10),
            reason: "now".into(),
        })
        .await
        .unwrap();
    store.rollup_once().await.unwrap();
    let o = store.overview(BucketWidth::Hour, PageRequest::default()).await.unwrap();
    let t = &o.targets[0];
    assert_eq!(t.state, State::Maintenance);
    assert_eq!(t.uptime_24h.maintenance_slots, 3);
    assert_eq!((t.uptime_24h.down_slots, t.uptime_24h.ratio), (0, None));
    let last = t
        .buckets
        .iter()
        .find(|b| {
            b.start
                == first.duration_trunc(TimeDelta::hours(1)).unwrap()
                    + TimeDelta::hours(
                        if (first + TimeDelta::minutes(2))
                            .duration_trunc(TimeDelta::hours(1))
                            .unwrap()
                            > first
                        {
                            1
                        } else {
                            0
                        },
                    )
        })
        .unwrap();
    assert_eq!(last.state, State::Maintenance, "the bucket of the latest row");
    assert!(t.open_incident.as_ref().unwrap().planned);
}

#[tokio::test]
async fn status_target_detail_has_latency_by_phase_slots_failures_and_tls() {
    let (store, _db) = migrated_store().await;
    let start = at(1, 0);
    // Two locations (M = 2, default quorum 2): slot 3 fails in 'b' only (up: the success
    // makes down impossible), slot 4 in both (down), slot 5 in 'a' with no row from 'b'
    // (unknown).
    write_pattern(&store, "api", "a", start, "uuuudd", 0).await;
    write_pattern(&store, "api", "b", start, "uuudd.", 100).await;
    store.rollup_once().await.unwrap();
    assert!(store.target_detail("nope", BucketWidth::Hour).await.unwrap().is_none());
    let d = store.target_detail("api", BucketWidth::Hour).await.unwrap().unwrap();
    assert_eq!(
        d.summary
            .locations
            .iter()
            .map(|l| l.location.as_str())
            .collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    let states: Vec<State> = d.slots.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        vec![State::Up, State::Up, State::Up, State::Up, State::Down, State::Unknown]
    );
    assert_eq!(d.slots[4].locations_failed, vec!["a".to_string(), "b".to_string()]);
    // The rollup judges the same slots by the same rule.
    let u = &d.summary.uptime_24h;
    assert_eq!((u.up_slots, u.down_slots, u.unknown_slots), (4, 1, 1));
    assert_eq!(d.slots[0].scheduled_at, start);
    assert_eq!(
        d.failures
            .iter()
            .map(|f| (f.scheduled_at, f.location.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (start + TimeDelta::minutes(5), "a"),
            (start + TimeDelta::minutes(4), "a"),
            (start + TimeDelta::minutes(4), "b"),
            (start + TimeDelta::minutes(3), "b")
        ],
        "newest first"
    );
    assert_eq!(d.failures[0].status_code, Some(503));
    assert!(d.failures[0].error.as_deref().unwrap().contains("503"));
    let tls = d.tls.unwrap();
    assert_eq!(tls.version.as_deref(), Some("TLSv1_3"));
    assert_eq!(tls.observed_at, start + TimeDelta::minutes(5));
    assert!(tls.earliest_not_after.is_some());
    assert_eq!(d.latency.len(), BUCKETS);
    let hour = d.latency.iter().find(|p| p.start == start).unwrap();
    assert_eq!(hour.probes, 11);
    assert!((hour.resolve_seconds.unwrap() - 0.001).abs() < 1e-9);
    assert!((hour.transfer_seconds.unwrap() - 0.005).abs() < 1e-9);
    assert!(hour.p95_seconds.unwrap() > 0.04);
    assert!(d
        .latency
        .iter()
        .filter(|p| p.start != start)
        .all(|p| p.probes == 0 && p.p95_seconds.is_none()));
    // Down slot 4 alone (the unknown slot 5 adds nothing): below K = 2, no incident.
    assert!(d.incidents.is_empty());
    assert_eq!(d.summary.state, State::Down, "slot 4 is the latest with a verdict");
}

#[tokio::test]
async fn status_one_rollup_pass_at_a_time_and_marks_wait_for_it() {
    let (store, db) = migrated_store().await;
    write_pattern(&store, "api", "default", at(1, 0), "uu", 0).await;
    assert_eq!(
        sink_count(&db, "rollup_marks").await,
        1,
        "one mark per target and hour of a batch"
    );
    db.query_one("SELECT pg_advisory_lock($1)", &[&ROLLUP_LOCK])
        .await
        .unwrap();
    let r = store.rollup_once().await.unwrap();
    assert_eq!((r.hours, r.targets), (0, 0), "another replica holds the lock");
    assert_eq!(sink_count(&db, "rollup_marks").await, 1);
    db.query_one("SELECT pg_advisory_unlock($1)", &[&ROLLUP_LOCK])
        .await
        .unwrap();
    let r = store.rollup_once().await.unwrap();
    assert_eq!((r.hours, r.targets), (1, 1));
    assert_eq!(sink_count(&db, "rollup_hourly").await, 1);
    assert_eq!(sink_count(&db, "rollup_daily").await, 1);
    let r = store.rollup_once().await.unwrap();
    assert_eq!(r.hours, 0, "nothing new");
}

/// Runs `sink args...` with `DATABASE_URL=url` alone: exit code, stdout, stderr.
fn sink_cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sink"))
        .env_clear()
        .env("DATABASE_URL", url)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn status_maintenance_cli_adds_lists_and_deletes_windows() {
    let url = crate::support::fresh_database().await;
    let store = Store::new(&url, 2, "t").unwrap();
    store.migrate().await.unwrap();
    let m = |args: &[&str]| {
        let mut all = vec!["maintenance"];
        all.extend_from_slice(args);
        sink_cli(&url, &all)
    };
    let (code, out, err) = m(&[
        "add",
        "--target",
        "api",
        "--from",
        "2030-01-01T22:00:00Z",
        "--for",
        "2h",
        "--reason",
        "DB failover",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2030-01-02T00:00:00Z"), "{out}");
    let end = (Utc::now() + TimeDelta::hours(1)).to_rfc3339();
    let (code, _, err) = m(&["add", "--all", "--from", "now", "--to", &end, "--reason", "network"]);
    assert_eq!(code, 0, "{err}");
    let stored = store.maintenance_windows(true).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|w| (w.target_name.clone(), w.reason.as_str(), w.ends_at - w.starts_at))
            .collect::<Vec<_>>()[1],
        (Some("api".to_string()), "DB failover", TimeDelta::hours(2))
    );
    assert_eq!(stored[0].target_name, None);
    let (code, out, _) = m(&["list", "--all", "--json"]);
    assert_eq!(code, 0);
    let listed: Vec<sink::store::status::MaintenanceWindow> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed, stored);
    let (_, out, _) = m(&["list"]);
    assert_eq!(out.lines().count(), 2, "{out}");

    // Invalid input: exit 2, nothing stored.
    for bad in [
        &[
            "add",
            "--target",
            "api",
            "--from",
            "2030-01-01T22:00:00Z",
            "--to",
            "2030-01-01T21:00:00Z",
            "--reason",
            "x",
        ][..],
        &[
            "add", "--target", "api", "--from", "tomorrow", "--for", "1h", "--reason", "x",
        ],
        &[
            "add", "--target", "api", "--all", "--from", "now", "--for", "1h", "--reason", "x",
        ],
        &[
            "add", "--target", "api", "--from", "now", "--for", "0s", "--reason", "x",
        ],
        &["add", "--target", "api", "--from", "now", "--reason", "x"],
        &["delete", "seven"],
    ] {
        let (code, _, err) = m(bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(!err.is_empty());
    }
    assert_eq!(store.maintenance_windows(true).await.unwrap().len(), 2);

    let id = stored[1].id.to_string();
    assert_eq!(m(&["delete", &id]).0, 0);
    let (code, _, err) = m(&["delete", &id]);
    assert_eq!(code, 1, "already deleted: {err}");
    assert_eq!(store.maintenance_windows(true).await.unwrap().len(), 1);

    // The database unreachable: 3; DATABASE_URL unusable: 2, naming the variable.
    let (code, _, _) = sink_cli("postgres://u:p@127.0.0.1:1/db", &["maintenance", "list"]);
    assert_eq!(code, 3);
    let (code, _, err) = sink_cli("postgres://u:p@127.0.0.1:1/db?sslmode=bogus", &["maintenance", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("DATABASE_URL"), "{err}");
}
