//! `sink::store` against a real PostgreSQL: idempotent writes, data errors isolated,
//! partitions created ahead and dropped by retention, views.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::result::{check_id, Phases, ProbeResult, TlsInfo};
use sink::store::{DeadLetter, Row, Store, WriteMethod};

use crate::support::{connect, count, fresh_database};

/// A realistic result for `target` at `at`.
pub fn sample(target: &str, at: DateTime<Utc>, success: bool, duration: f64) -> ProbeResult {
    ProbeResult {
        schema_version: 2,
        check_id: check_id(target, at),
        instance_id: "test".into(),
        target: target.into(),
        url: format!("https://{target}.example/health"),
        scheduled_at: at,
        started_at: at + chrono::Duration::milliseconds(1),
        lateness_seconds: 0.001,
        timeout_seconds: 5.0,
        duration_seconds: duration,
        success,
        error_kind: (!success).then(|| "status".to_string()),
        error: (!success).then(|| "status 503 is not one of the expected codes".to_string()),
        status_code: Some(if success { 200 } else { 503 }),
        first_status_code: Some(301),
        redirects: 1,
        final_url: Some(format!("https://{target}.example/health/")),
        http_version: Some("HTTP/2".into()),
        ip_address: Some("2001:db8::1".into()),
        ip_family: Some("ipv6".into()),
        regex_matched: Some(success),
        body_bytes: Some(1234),
        content_length: None,
        phases: Phases {
            resolve: Some(0.001),
            connect: Some(0.002),
            tls: Some(0.003),
            processing: Some(0.004),
            transfer: Some(0.005),
        },
        tls: Some(TlsInfo {
            version: Some("TLSv1_3".into()),
            cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
            leaf_not_after: Some(Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()),
            earliest_not_after: Some(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()),
            leaf_subject: Some("CN=api.example".into()),
            ..TlsInfo::default()
        }),
    }
}

fn rows(results: Vec<ProbeResult>) -> Vec<Row> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, result)| Row {
            result,
            partition: 0,
            offset: i as i64,
        })
        .collect()
}

async fn migrated_store() -> (Store, tokio_postgres::Client) {
    let url = fresh_database().await;
    let store = Store::new(&url, 2, "topic").unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.expect("migrations are idempotent");
    store.maintain_partitions(Utc::now(), 2, None).await.unwrap();
    (store, connect(&url).await)
}

#[tokio::test]
async fn writes_every_field_and_absorbs_replays() {
    let (store, db) = migrated_store().await;
    let now = Utc::now();
    let batch = rows(
        (0..100)
            .map(|i| {
                sample(
                    &format!("t{}", i % 10),
                    now + chrono::Duration::seconds(i / 10),
                    i % 3 != 0,
                    0.1,
                )
            })
            .collect(),
    );

    let out = store.write(&batch, &[]).await.unwrap();
    assert_eq!((out.offered, out.inserted), (100, 100));
    let again = store.write(&batch, &[]).await.unwrap();
    assert_eq!(
        (again.offered, again.inserted),
        (100, 0),
        "a replayed batch inserts nothing"
    );
    assert_eq!(count(&db, "probe_results").await, 100);

    let r = &batch[6].result;
    let row = db
        .query_one(
            "SELECT target_name, success, status_code, first_status_code, redirects, http_version, host(ip_address), ip_family,
                    regex_matched, body_bytes, content_length, resolve_seconds, transfer_seconds, tls_version,
                    tls_earliest_not_after, kafka_offset, error_kind
             FROM probe_results WHERE check_id = $1",
            &[&r.check_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), r.target);
    assert_eq!(row.get::<_, bool>(1), r.success);
    assert_eq!(row.get::<_, Option<i32>>(2), Some(503));
    assert_eq!(row.get::<_, Option<i32>>(3), Some(301));
    assert_eq!(row.get::<_, i32>(4), 1);
    assert_eq!(row.get::<_, Option<String>>(5).as_deref(), Some("HTTP/2"));
    assert_eq!(row.get::<_, Option<String>>(6).as_deref(), Some("2001:db8::1"));
    assert_eq!(row.get::<_, Option<String>>(7).as_deref(), Some("ipv6"));
    assert_eq!(row.get::<_, Option<bool>>(8), Some(false));
    assert_eq!(row.get::<_, Option<i64>>(9), Some(1234));
    assert_eq!(row.get::<_, Option<i64>>(10), None);
    assert_eq!(row.get::<_, Option<f64>>(11), Some(0.001));
    assert_eq!(row.get::<_, Option<f64>>(12), Some(0.005));
    assert_eq!(row.get::<_, Option<String>>(13).as_deref(), Some("TLSv1_3"));
    assert_eq!(
        row.get::<_, Option<DateTime<Utc>>>(14),
        r.tls.as_ref().unwrap().earliest_not_after
    );
    assert_eq!(row.get::<_, Option<i64>>(15), Some(6));
    assert_eq!(row.get::<_, Option<String>>(16).as_deref(), Some("status"));
}

#[tokio::test]
async fn a_row_postgres_rejects_is_dead_lettered_and_the_rest_written() {
    let (store, db) = migrated_store().await;
    let now = Utc::now();
    let mut results: Vec<ProbeResult> = (0..9).map(|i| sample(&format!("ok{i}"), now, true, 0.1)).collect();
    // Smallest input PostgreSQL rejects (SQLSTATE 22021): a NUL character in text.
    results.insert(4, sample("bad\u{0}name", now, true, 0.1));
    let batch = rows(results);
    let decode_failure = DeadLetter {
        topic: "topic".into(),
        partition: 0,
        offset: 99,
        key: Some(b"k".to_vec()),
        payload: Some(b"{not json".to_vec()),
        error_class: "decode".into(),
        error: "not a probe result".into(),
    };

    let out = store
        .write(&batch, std::slice::from_ref(&decode_failure))
        .await
        .unwrap();
    assert_eq!(out.inserted, 9);
    assert_eq!(out.rejected_rows, 1);
    assert_eq!(count(&db, "probe_results").await, 9);
    let dead = db
        .query(
            "SELECT kafka_offset, error_class, error FROM dead_letters ORDER BY kafka_offset",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        (dead[0].get::<_, i64>(0), dead[0].get::<_, String>(1)),
        (4, "data".to_string())
    );
    assert!(
        dead[0].get::<_, String>(2).contains("22021"),
        "{}",
        dead[0].get::<_, String>(2)
    );
    assert_eq!(
        (dead[1].get::<_, i64>(0), dead[1].get::<_, String>(1)),
        (99, "decode".to_string())
    );

    // Replaying the same batch changes nothing.
    store.write(&batch, &[decode_failure]).await.unwrap();
    assert_eq!(count(&db, "probe_results").await, 9);
    assert_eq!(count(&db, "dead_letters").await, 2);
}

#[tokio::test]
async fn partitions_are_created_ahead_and_dropped_by_retention() {
    let url = fresh_database().await;
    let store = Store::new(&url, 2, "topic").unwrap();
    store.migrate().await.unwrap();
    let db = connect(&url).await;
    let long_ago = Utc.with_ymd_and_hms(2024, 3, 15, 0, 0, 0).unwrap();
    store.maintain_partitions(long_ago, 1, None).await.unwrap();
    store
        .write(&rows(vec![sample("old", long_ago, true, 0.1)]), &[])
        .await
        .unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 15, 0, 0, 0).unwrap();
    store.maintain_partitions(now, 2, None).await.unwrap();
    let before = partitions(&db).await;
    for p in [
        "probe_results_y2024m02",
        "probe_results_y2024m04",
        "probe_results_y2026m10",
        "probe_results_y2026m11",
        "probe_results_y2027m01",
        "probe_results_default",
    ] {
        assert!(before.contains(&p.to_string()), "{p} missing from {before:?}");
    }
    assert_eq!(
        count(&db, "probe_results_y2024m03").await,
        1,
        "the row went to its month's partition"
    );

    store
        .maintain_partitions(now, 2, Some(Duration::from_secs(400 * 86_400)))
        .await
        .unwrap();
    let after = partitions(&db).await;
    assert!(!after.iter().any(|p| p.starts_with("probe_results_y2024")), "{after:?}");
    assert!(after.contains(&"probe_results_y2026m10".to_string()));
    assert_eq!(count(&db, "probe_results").await, 0);
}

async fn partitions(db: &tokio_postgres::Client) -> Vec<String> {
    let q = "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'probe_results'::regclass ORDER BY 1";
    db.query(q, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test]
async fn views_report_uptime_percentiles_and_latest() {
    let (store, db) = migrated_store().await;
    let hour = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let mut results = Vec::new();
    for i in 0..100i64 {
        // 1..=100 ms, every 4th a failure: uptime 0.75.
        results.push(sample(
            "api",
            hour + chrono::Duration::seconds(i),
            i % 4 != 0,
            (i + 1) as f64 / 1000.0,
        ));
    }
    results.push(sample("web", hour + chrono::Duration::seconds(5), true, 0.5));
    store.write(&rows(results), &[]).await.unwrap();

    let r = db
        .query_one(
            "SELECT probes, uptime_ratio, p50_seconds, p99_seconds FROM target_uptime_hourly WHERE target_name = 'api'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 100);
    assert!((r.get::<_, f64>(1) - 0.75).abs() < 1e-9);
    assert!((r.get::<_, f64>(2) - 0.0505).abs() < 1e-9, "p50 {}", r.get::<_, f64>(2));
    assert!(
        (r.get::<_, f64>(3) - 0.09901).abs() < 1e-6,
        "p99 {}",
        r.get::<_, f64>(3)
    );
    let daily: i64 = db
        .query_one("SELECT sum(probes)::bigint FROM target_uptime_daily", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(daily, 101);
    let latest = db
        .query(
            "SELECT target_name, scheduled_at FROM probe_results_latest ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(latest.len(), 2);
    assert_eq!(
        latest[0].get::<_, DateTime<Utc>>(1),
        hour + chrono::Duration::seconds(99)
    );
    assert_eq!(latest[1].get::<_, String>(0), "web");
}

#[tokio::test]
async fn both_write_methods_store_identical_rows() {
    let now = Utc::now();
    let batch = rows(
        (0..60)
            .map(|i| {
                sample(
                    &format!("t{}", i % 7),
                    now + chrono::Duration::seconds(i),
                    i % 4 != 0,
                    0.2,
                )
            })
            .collect(),
    );
    let mut tables = Vec::new();
    for method in [WriteMethod::Copy, WriteMethod::Unnest] {
        let (store, db) = migrated_store().await;
        let store = store.with_method(method);
        let out = store.write(&batch, &[]).await.unwrap();
        assert_eq!((out.offered, out.inserted), (60, 60), "{method:?}");
        let again = store.write(&batch, &[]).await.unwrap();
        assert_eq!(again.inserted, 0, "{method:?} absorbs a replay");
        let rows: Vec<String> = db
            .query(
                "SELECT (to_jsonb(p) - 'inserted_at')::text FROM probe_results p ORDER BY check_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        tables.push(rows);
    }
    assert_eq!(tables[0].len(), 60);
    assert_eq!(tables[0], tables[1], "COPY and UNNEST store the same values");
}
