//! `sink::store` against a real PostgreSQL: idempotent writes, data errors isolated,
//! partitions created ahead and dropped by retention, views.

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use common::result::{check_id, Phases, ProbeResult, TlsInfo};
use sink::store::{DeadLetter, DeadLetterClass, ErrorClass, ErrorCode, Row, Store, WriteMethod};
use tokio_postgres::error::SqlState;

use crate::support::{connect, count, fresh_database};

/// A realistic result for `target` at `at`.
pub fn sample(target: &str, at: DateTime<Utc>, success: bool, duration: f64) -> ProbeResult {
    ProbeResult {
        schema_version: 2,
        check_id: check_id(target, common::result::DEFAULT_LOCATION, at),
        instance_id: "test".into(),
        location: common::result::DEFAULT_LOCATION.into(),
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

pub fn rows(results: Vec<ProbeResult>) -> Vec<Row> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, result)| Row {
            partition: 0,
            offset: i as i64,
            key: Some(result.target.as_bytes().to_vec()),
            payload: Some(serde_json::to_vec(&result).unwrap()),
            result,
        })
        .collect()
}

pub async fn migrated_store() -> (Store, tokio_postgres::Client) {
    let url = fresh_database().await;
    let store = Store::new(&url, 2, "topic").unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.expect("migrations are idempotent");
    store.maintain_partitions(Utc::now(), 2, None).await.unwrap();
    (store, connect(&url).await)
}

/// The column table the sink writes from (`sink::store::columns`) is the migrated table,
/// in order and type: a column missing or out of order fails here, not at the first write.
#[tokio::test]
async fn the_column_table_is_the_migrated_table() {
    let (_store, db) = migrated_store().await;
    let columns: Vec<(String, String)> = db
        .query(
            "SELECT column_name::text, udt_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'probe_results' AND column_name <> 'inserted_at' \
             ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let table: Vec<(String, String)> = sink::store::columns::COLUMN_NAMES
        .iter()
        .zip(&sink::store::COPY_TYPES)
        .map(|(n, t)| ((*n).to_string(), t.name().to_string()))
        .collect();
    assert_eq!(table, columns);
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
        error_class: DeadLetterClass::Decode,
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
async fn the_direct_copy_falls_back_on_a_replay_and_resumes_after_the_pause() {
    let (store, db) = migrated_store().await;
    let now = Utc::now();
    let batch = |from: i64, to: i64| {
        rows(
            (from..to)
                .map(|i| sample(&format!("t{}", i % 5), now + chrono::Duration::seconds(i), true, 0.1))
                .collect(),
        )
    };
    let first = store.write(&batch(0, 40), &[]).await.unwrap();
    assert_eq!(
        (first.inserted, first.copied_directly),
        (40, 40),
        "new rows: the direct COPY"
    );
    // Half replayed, half new: the direct COPY meets a stored row and the batch goes
    // through the staging table, which stores the new half once.
    let mixed = store.write(&batch(20, 60), &[]).await.unwrap();
    assert_eq!((mixed.offered, mixed.inserted, mixed.copied_directly), (40, 20, 0));
    assert_eq!(count(&db, "probe_results").await, 60);
    // The next batches, new rows only, still take the staging table, then the direct COPY
    // is tried again.
    let mut direct = Vec::new();
    for k in 0..=sink::store::DIRECT_COPY_PAUSE as i64 {
        let out = store.write(&batch(100 + k, 101 + k), &[]).await.unwrap();
        assert_eq!(out.inserted, 1);
        direct.push(out.copied_directly);
    }
    let pause = sink::store::DIRECT_COPY_PAUSE as usize;
    assert_eq!(direct[..pause], vec![0; pause][..]);
    assert_eq!(direct[pause], 1);
    assert_eq!(count(&db, "probe_results").await, 60 + pause as i64 + 1);
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

/// `n` characters that compress badly (a B-tree index stores long keys compressed).
fn incompressible(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect()
}

async fn dead_letters(db: &tokio_postgres::Client) -> Vec<(i64, String, String, Option<Vec<u8>>, Option<Vec<u8>>)> {
    db.query(
        "SELECT kafka_offset, error_class, error, message_key, payload FROM dead_letters ORDER BY kafka_offset",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

/// Whatever the SQLSTATE, a row PostgreSQL refuses for its own data becomes a dead letter
/// holding the message's raw key and payload, and the rest of the batch is written: an index
/// row over the B-tree limit (54000, a class that was fatal), a timestamp outside
/// PostgreSQL's range (22008), a check constraint of the operator's (23514).
#[tokio::test]
async fn rows_postgres_refuses_for_their_data_are_dead_lettered_whatever_the_sqlstate() {
    for method in [WriteMethod::Copy, WriteMethod::Unnest] {
        let (store, db) = migrated_store().await;
        let store = store.with_method(method);
        db.batch_execute("ALTER TABLE probe_results ADD CONSTRAINT no_forbidden CHECK (target_name <> 'forbidden')")
            .await
            .unwrap();
        let now = Utc::now();
        let mut batch = rows((0..20).map(|i| sample(&format!("ok{i}"), now, true, 0.1)).collect());
        let far_past = Utc.with_ymd_and_hms(-5000, 1, 1, 0, 0, 0).unwrap();
        for (offset, result) in [
            (3, sample(&incompressible(4000), now, true, 0.1)),
            (11, sample("ancient", far_past, true, 0.1)),
            (17, sample("forbidden", now, true, 0.1)),
        ] {
            batch[offset as usize] = Row {
                result,
                partition: 0,
                offset,
                key: Some(format!("key-{offset}").into_bytes()),
                // Raw bytes as they were in the topic (re-serialising would not give them back).
                payload: Some(format!("raw payload {offset}").into_bytes()),
            };
        }

        let out = store
            .write(&batch, &[])
            .await
            .expect("refused rows never fail the batch");
        assert_eq!(
            (out.offered, out.inserted, out.rejected_rows),
            (20, 17, 3),
            "{method:?}"
        );
        assert_eq!(count(&db, "probe_results").await, 17);
        let dead = dead_letters(&db).await;
        let summary: Vec<_> = dead
            .iter()
            .map(|(o, c, _, k, p)| (*o, c.clone(), k.clone(), p.clone()))
            .collect();
        let want: Vec<_> = [3i64, 11, 17]
            .map(|o| {
                (
                    o,
                    "data".to_string(),
                    Some(format!("key-{o}").into_bytes()),
                    Some(format!("raw payload {o}").into_bytes()),
                )
            })
            .into();
        assert_eq!(summary, want, "{method:?}");
        for ((_, _, error, _, _), code) in dead.iter().zip(["54000", "22008", "23514"]) {
            assert!(error.starts_with(&format!("SQLSTATE {code}")), "{method:?}: {error}");
        }
        // A replay changes nothing.
        store.write(&batch, &[]).await.unwrap();
        assert_eq!(count(&db, "probe_results").await, 17);
        assert_eq!(count(&db, "dead_letters").await, 3);
    }
}

/// An error every row would meet (here a NOT NULL column without default that the sink does
/// not know, SQLSTATE 23502, a "data" class) is fatal: it does not depend on the rows, so
/// nothing is dead-lettered and nothing is written.
#[tokio::test]
async fn an_error_every_row_meets_is_fatal_and_dead_letters_nothing() {
    let (store, db) = migrated_store().await;
    db.batch_execute("ALTER TABLE probe_results ADD COLUMN region text NOT NULL")
        .await
        .unwrap();
    let now = Utc::now();
    let batch = rows((0..8).map(|i| sample(&format!("t{i}"), now, true, 0.1)).collect());
    let e = store
        .write(&batch, &[])
        .await
        .expect_err("a schema mismatch must stop the sink");
    assert_eq!(
        (e.class, e.code.clone()),
        (ErrorClass::Fatal, ErrorCode::Sqlstate(SqlState::NOT_NULL_VIOLATION)),
        "{e}"
    );
    assert_eq!(count(&db, "probe_results").await, 0);
    assert_eq!(count(&db, "dead_letters").await, 0);

    // The same with only dead letters: a permission taken away.
    let url = fresh_database().await;
    let store = Store::new(&url, 2, "topic").unwrap();
    store.migrate().await.unwrap();
    let db = connect(&url).await;
    db.batch_execute("ALTER TABLE dead_letters ADD COLUMN reviewer text NOT NULL")
        .await
        .unwrap();
    let letter = DeadLetter {
        topic: "topic".into(),
        partition: 0,
        offset: 1,
        key: None,
        payload: Some(b"x".to_vec()),
        error_class: DeadLetterClass::Decode,
        error: "not a probe result".into(),
    };
    let e = store.write(&[], &[letter]).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Fatal, "{e}");
}

/// A batch of dead letters PostgreSQL refuses does not stop consumption either: each is
/// stored as is when it can be, else with its error text shortened, else without key and
/// payload (the error says so).
#[tokio::test]
async fn dead_letters_postgres_refuses_are_stored_shortened_then_bare() {
    let (store, db) = migrated_store().await;
    db.batch_execute(
        "ALTER TABLE dead_letters ADD CONSTRAINT short_error CHECK (octet_length(error) <= 800), \
         ADD CONSTRAINT small_payload CHECK (payload IS NULL OR octet_length(payload) <= 100)",
    )
    .await
    .unwrap();
    let letter = |offset: i64, error: String, payload: usize| DeadLetter {
        topic: "topic".into(),
        partition: 2,
        offset,
        key: Some(b"k".to_vec()),
        payload: Some(vec![b'p'; payload]),
        error_class: DeadLetterClass::Decode,
        error,
    };
    let dead = [
        letter(1, "fits".into(), 10),
        letter(2, format!("long {}", "e".repeat(2000)), 10),
        letter(3, "large payload".into(), 500),
        letter(4, "fits too".into(), 10),
    ];

    let out = store.write(&[], &dead).await.expect("dead letters never stop the sink");
    assert_eq!(out.dead_letters, 4);
    let stored = dead_letters(&db).await;
    assert_eq!(stored.len(), 4);
    assert_eq!(
        (stored[0].2.as_str(), stored[0].4.as_ref().map(Vec::len)),
        ("fits", Some(10))
    );
    assert_eq!(
        (stored[3].2.as_str(), stored[3].4.as_ref().map(Vec::len)),
        ("fits too", Some(10))
    );
    let (_, class, error, key, payload) = &stored[1];
    assert_eq!(
        (class.as_str(), key.as_deref(), payload.as_ref().map(Vec::len)),
        ("decode", Some(&b"k"[..]), Some(10))
    );
    assert!(
        error.starts_with("long eee") && error.contains("shortened") && error.len() <= 800,
        "{error}"
    );
    let (_, _, error, key, payload) = &stored[2];
    assert_eq!((key, payload), (&None, &None));
    assert!(
        error.starts_with("large payload") && error.contains("500 bytes not stored"),
        "{error}"
    );
}

/// A statement timeout (57014) is not retried forever with the same batch: it is split like
/// any error that may come from the rows, and a row that alone exceeds the timeout becomes a
/// dead letter.
#[tokio::test]
async fn a_statement_timeout_splits_the_batch_instead_of_retrying_it() {
    let url = fresh_database().await;
    let db = connect(&url).await;
    // The database's own setting too, the same for every session.
    let name = url.rsplit('/').next().unwrap();
    db.batch_execute(&format!("ALTER DATABASE {name} SET statement_timeout = '1s'"))
        .await
        .unwrap();
    let store = Store::new(&url, 2, "topic")
        .unwrap()
        .with_statement_timeout(Duration::from_secs(1));
    store.migrate().await.unwrap();
    db.batch_execute(
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.target_name = 'slow' THEN PERFORM pg_sleep(3); END IF; RETURN NEW; END $$; \
         CREATE TRIGGER slow_row BEFORE INSERT ON probe_results FOR EACH ROW EXECUTE FUNCTION slow_row()",
    )
    .await
    .unwrap();
    let now = Utc::now();
    let mut results: Vec<ProbeResult> = (0..15).map(|i| sample(&format!("t{i}"), now, true, 0.1)).collect();
    results[9] = sample("slow", now, true, 0.1);
    let out = store
        .write(&rows(results), &[])
        .await
        .expect("split, not retried as a whole");
    assert_eq!((out.inserted, out.rejected_rows), (14, 1));
    let dead = dead_letters(&db).await;
    assert_eq!((dead.len(), dead[0].0, dead[0].1.as_str()), (1, 9, "data"));
    assert!(dead[0].2.starts_with("SQLSTATE 57014"), "{}", dead[0].2);
}

/// A lone row that timed out behind a lock is not its data's fault: once the canary passes
/// (the lock is gone) the row is written, never dead-lettered. Smallest failing input: one
/// row, a lock held a little longer than the statement timeout.
#[tokio::test]
async fn a_lone_row_that_timed_out_behind_a_lock_is_written_not_dead_lettered() {
    let url = fresh_database().await;
    let db = connect(&url).await;
    let store = Store::new(&url, 2, "topic")
        .unwrap()
        .with_statement_timeout(Duration::from_secs(1));
    store.migrate().await.unwrap();
    // Warm: the pooled connections exist and have their staging table.
    let warm = rows(
        (0..4)
            .map(|i| sample(&format!("warm{i}"), Utc::now(), true, 0.1))
            .collect(),
    );
    futures::future::try_join_all(warm.chunks(1).map(|r| store.write(r, &[])))
        .await
        .unwrap();
    let locker = connect(&url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE probe_results IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Released while the canary waits: after the row's own attempt timed out (1 s).
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        locker.batch_execute("COMMIT").await.unwrap();
    });
    let result = sample("behind-a-lock", Utc::now(), true, 0.1);
    let out = store.write(&rows(vec![result.clone()]), &[]).await;
    release.await.unwrap();
    let out = out.expect("written, or a transient error to retry");
    assert_eq!((out.inserted, out.rejected_rows), (1, 0), "{out:?}");
    assert_eq!(dead_letters(&db).await.len(), 0);
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM probe_results WHERE check_id = $1",
            &[&result.check_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
}

/// Where a row is stored: its partition's name.
async fn partition_of(db: &tokio_postgres::Client, check_id: uuid::Uuid) -> String {
    db.query_one(
        "SELECT tableoid::regclass::text FROM probe_results WHERE check_id = $1",
        &[&check_id],
    )
    .await
    .unwrap()
    .get(0)
}

/// Rows that landed in the default partition (their month had no partition yet) move into
/// the month's partition when it is created, instead of keeping it from being created; rows
/// of the default partition past retention are deleted with the partitions.
#[tokio::test]
async fn default_partition_rows_move_into_their_new_month() {
    let url = fresh_database().await;
    let store = Store::new(&url, 2, "topic").unwrap();
    store.migrate().await.unwrap();
    let db = connect(&url).await;
    let now = Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap();
    store.maintain_partitions(now, 1, None).await.unwrap();
    let later = sample("later", Utc.with_ymd_and_hms(2026, 8, 20, 12, 0, 0).unwrap(), true, 0.1);
    let ancient = sample("ancient", Utc.with_ymd_and_hms(2019, 5, 1, 0, 0, 0).unwrap(), true, 0.1);
    let current = sample("current", now, true, 0.1);
    store
        .write(&rows(vec![later.clone(), ancient.clone(), current.clone()]), &[])
        .await
        .unwrap();
    assert_eq!(count(&db, "probe_results_default").await, 2);

    store.maintain_partitions(now, 6, None).await.unwrap();
    assert_eq!(partition_of(&db, later.check_id).await, "probe_results_y2026m08");
    assert_eq!(partition_of(&db, current.check_id).await, "probe_results_y2026m03");
    assert_eq!(
        count(&db, "probe_results_default").await,
        1,
        "the 2019 row has no partition"
    );
    let indexes: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'probe_results_y2026m08'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        indexes, 3,
        "the attached partition has the primary key, the target index and the failures index (V6)"
    );
    // New rows of that month go to its partition.
    let next = sample("later", Utc.with_ymd_and_hms(2026, 8, 21, 0, 0, 0).unwrap(), true, 0.1);
    store.write(&rows(vec![next.clone()]), &[]).await.unwrap();
    assert_eq!(partition_of(&db, next.check_id).await, "probe_results_y2026m08");

    store
        .maintain_partitions(now, 6, Some(Duration::from_secs(400 * 86_400)))
        .await
        .unwrap();
    assert_eq!(count(&db, "probe_results_default").await, 0, "retention covers it too");
    assert_eq!(count(&db, "probe_results").await, 3);
}

/// Partition bounds are UTC month starts whatever the database's `TimeZone`.
#[tokio::test]
async fn partition_bounds_are_utc_whatever_the_server_time_zone() {
    for zone in ["Pacific/Kiritimati", "America/Los_Angeles"] {
        let url = fresh_database().await;
        let db = connect(&url).await;
        let name = url.rsplit('/').next().unwrap();
        db.batch_execute(&format!("ALTER DATABASE {name} SET TimeZone = '{zone}'"))
            .await
            .unwrap();
        let store = Store::new(&url, 2, "topic").unwrap();
        store.migrate().await.unwrap();
        store
            .maintain_partitions(Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 0).unwrap(), 1, None)
            .await
            .unwrap();
        let last_of_january = sample("t", Utc.with_ymd_and_hms(2026, 1, 31, 23, 30, 0).unwrap(), true, 0.1);
        let first_of_february = sample("t", Utc.with_ymd_and_hms(2026, 2, 1, 0, 30, 0).unwrap(), true, 0.1);
        store
            .write(&rows(vec![last_of_january.clone(), first_of_february.clone()]), &[])
            .await
            .unwrap();
        assert_eq!(
            partition_of(&db, last_of_january.check_id).await,
            "probe_results_y2026m01",
            "{zone}"
        );
        assert_eq!(
            partition_of(&db, first_of_february.check_id).await,
            "probe_results_y2026m02",
            "{zone}"
        );
    }
}

/// Partition DDL waiting for a lock held by a long query gives up after its `lock_timeout`
/// instead of queueing every insert behind its lock request, and succeeds at the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_maintenance_never_stalls_inserts_behind_a_long_query() {
    let url = fresh_database().await;
    let store = Store::new(&url, 2, "topic").unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
    store.maintain_partitions(now, 2, None).await.unwrap();
    let db = connect(&url).await;
    // A long report on the views: it holds ACCESS SHARE on every partition until it ends.
    let report = connect(&url).await;
    report
        .batch_execute("BEGIN; SELECT count(*) FROM target_uptime_daily")
        .await
        .unwrap();
    let maintenance = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .maintain_partitions(now, 6, Some(Duration::from_secs(40 * 86_400)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batch = rows(vec![sample("during", now, true, 0.1)]);
    let write = tokio::time::timeout(Duration::from_secs(20), store.write(&batch, &[])).await;
    assert_eq!(
        write
            .expect("an insert waited behind the partition DDL")
            .unwrap()
            .inserted,
        1
    );
    let e = tokio::time::timeout(Duration::from_secs(30), maintenance)
        .await
        .expect("the DDL gave up")
        .unwrap()
        .expect_err("the report holds the lock the DDL needs");
    assert!(e.is_lock_timeout(), "{e}");
    report.batch_execute("COMMIT").await.unwrap();
    store.maintain_partitions(now, 6, None).await.unwrap();
    let name = sink::store::partition_name(
        Utc.from_utc_datetime(&now.date_naive().with_day(1).unwrap().and_hms_opt(0, 0, 0).unwrap())
            + chrono::Months::new(6),
    );
    let created: bool = db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap()
        .get(0);
    assert!(created, "{name}");
}
