//! Fault drills against the sink app: each ends with "every message in the topic is a row or
//! a dead letter, exactly once".

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;

use crate::app::{start, start_consuming};
use crate::store::sample;
use crate::support::*;

/// What a drill produced, as the topic holds it: each result's (partition, offset, check id)
/// and each poison message's (partition, offset).
#[derive(Debug, Default, Clone)]
pub struct Produced {
    pub rows: BTreeSet<(i32, i64, uuid::Uuid)>,
    pub poison: BTreeSet<(i32, i64)>,
}

impl std::ops::Add for Produced {
    type Output = Produced;
    fn add(mut self, other: Produced) -> Produced {
        self.rows.extend(other.rows);
        self.poison.extend(other.poison);
        self
    }
}

/// Produces `n` distinct results (and every 100th message a poison one) to `topic`, spread
/// over all its `partitions` (message `i` to partition `i % partitions`, keyed by its target
/// as the checker keys them); returns what was delivered where.
pub async fn produce(bootstrap: &str, topic: &str, partitions: i32, n: usize, tag: &str) -> Produced {
    // Deliveries must outlive the longest outage drill.
    let p: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "300000")
        .create()
        .unwrap();
    let now = Utc::now();
    let mut ids = Vec::with_capacity(n);
    let payloads = (0..n)
        .map(|i| {
            let target = format!("{tag}-{}", i % 50);
            if i % 100 == 99 {
                ids.push(None);
                (target, b"\x00\x01 definitely not json".to_vec())
            } else {
                let r = sample(
                    &target,
                    now + chrono::Duration::milliseconds(i as i64),
                    i % 5 != 0,
                    0.05,
                );
                ids.push(Some(r.check_id));
                (target, serde_json::to_vec(&r).unwrap())
            }
        })
        .collect();
    let delivered = send_spread(&p, topic, partitions, payloads).await;
    let mut produced = Produced::default();
    for ((partition, offset), id) in delivered.into_iter().zip(ids) {
        match id {
            Some(id) => produced.rows.insert((partition, offset, id)),
            None => produced.poison.insert((partition, offset)),
        };
    }
    produced
}

/// Every message `produced` is in PostgreSQL exactly once: each result is the row of its
/// (partition, offset), each poison message the dead letter of its (partition, offset), and
/// nothing else is there (also 2 s later).
pub async fn assert_exactly_once(db: &tokio_postgres::Client, produced: &Produced) {
    let (rows, dead) = (produced.rows.len() as i64, produced.poison.len() as i64);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (r, d) = (count(db, "probe_results").await, count(db, "dead_letters").await);
        if (r, d) == (rows, dead) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 90 s: {r} rows (want {rows}), {d} dead letters (want {dead})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored: BTreeSet<(i32, i64, uuid::Uuid)> = db
        .query("SELECT kafka_partition, kafka_offset, check_id FROM probe_results", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let dead_letters: BTreeSet<(i32, i64)> = db
        .query("SELECT kafka_partition, kafka_offset FROM dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(count(db, "probe_results").await, rows);
    assert_eq!(count(db, "dead_letters").await, dead);
    let missing: Vec<_> = produced.rows.difference(&stored).take(5).collect();
    let extra: Vec<_> = stored.difference(&produced.rows).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "rows differ from the topic: missing {missing:?}, not produced {extra:?}"
    );
    assert_eq!(
        dead_letters, produced.poison,
        "dead letters differ from the poison messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_terminated_mid_batch() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 3).await;
    let sink = start_consuming(&url, &bootstrap, &topic, &[("BATCH_MAX_ROWS", "200")]).await;
    let db = connect(&url).await;
    // Every migration applied (a backend killed mid-migration would leave the drill's window
    // to the migration's retries, and no write would fail).
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count() as i64;
    wait_until(Duration::from_secs(30), "migrations", || async {
        db.query_one("SELECT count(*) FROM refinery_schema_history", &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == migrations)
    })
    .await;

    // Kill the sink's backends every 150 ms while 6,000 messages stream in.
    let killer = {
        let admin = connect(&database_url()).await;
        let dbname = url.rsplit('/').next().unwrap().to_string();
        tokio::spawn(async move {
            let mut killed = 0u64;
            for _ in 0..60 {
                let n = admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = $1 AND application_name = 'healthcheck-sink'",
                        &[&dbname],
                    )
                    .await
                    .map(|r| r.len() as u64)
                    .unwrap_or(0);
                killed += n;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            killed
        })
    };
    let produced = produce(&bootstrap, &topic, 3, 6000, "term").await;
    let killed = killer.await.unwrap();
    assert!(killed > 0, "the drill terminated no backend");
    assert_exactly_once(&db, &produced).await;
    // The drill failed writes (not only idle connections), and the retries replayed nothing
    // into a second row: every replayed row is counted as a duplicate.
    let (retries, series) = write_retries(&sink).await;
    let replayed = sink.metric("healthcheck_sink_duplicates_total").await;
    eprintln!("{killed} backends terminated, {retries} write retries ({series:?}), {replayed} rows replayed");
    assert!(retries > 0.0, "no write failed: the drill tested nothing ({series:?})");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_stream() {
    let url = fresh_database().await;
    let pg = Forwarder::start(pg_addr(&url), None).await;
    let via = url.replace(&pg_addr(&url).to_string(), &pg.addr.to_string());
    let bootstrap = bootstrap();
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 3).await;
    let sink = start_consuming(&via, &bootstrap, &topic, &[("BATCH_MAX_ROWS", "300")]).await;
    let db = connect(&url).await;
    let a = produce(&bootstrap, &topic, 3, 2000, "before").await;
    pg.cut().await;
    let b = produce(&bootstrap, &topic, 3, 2000, "during").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(http_get(sink.admin, "/healthz").await.0, 200);
    pg.restore().await;
    assert_exactly_once(&db, &(a + b)).await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_of_a_minute() {
    let url = fresh_database().await;
    let broker = PrivateBroker::start().await;
    let topic = unique("results");
    create_topic(&broker.bootstrap(), &topic, 2).await;
    let sink = start(vec![
        ("DATABASE_URL", url.clone()),
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
    ])
    .await;
    let db = connect(&url).await;
    let a = produce(&broker.bootstrap(), &topic, 2, 1000, "before").await;
    broker.forwarder.cut().await;
    // Produce during the outage too: the producer buffers and delivers after it.
    let late = {
        let (b, t) = (broker.bootstrap(), topic.clone());
        tokio::spawn(async move { produce(&b, &t, 2, 1000, "during").await })
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        http_get(sink.admin, "/healthz").await.0,
        200,
        "a broker outage never fails liveness"
    );
    assert_eq!(http_get(sink.admin, "/readyz").await.0, 503);
    broker.forwarder.restore().await;
    eprintln!("restored at {:?}", std::time::SystemTime::now());
    let b = tokio::time::timeout(Duration::from_secs(90), late)
        .await
        .expect("the messages produced during the outage are delivered within 90 s of its end")
        .unwrap();
    eprintln!("late delivered at {:?}", std::time::SystemTime::now());
    assert_exactly_once(&db, &(a + b)).await;
    sink.stop().await;
}

/// A sink stopped while the broker is unreachable stops within its grace period (librdkafka's
/// consumer close waits for the group coordinator: on a runtime worker it held the shutdown
/// for more than 40 s), and the sink started after it in the same consumer group, once the
/// broker is back, stores every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_stopped_during_a_broker_outage_stops_within_its_grace_period() {
    const GRACE: Duration = Duration::from_secs(4);
    let url = fresh_database().await;
    let broker = PrivateBroker::start().await;
    let (topic, group) = (unique("results"), unique("group"));
    create_topic(&broker.bootstrap(), &topic, 2).await;
    let env = || {
        vec![
            ("DATABASE_URL", url.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_GROUP_ID", group.clone()),
            ("SHUTDOWN_GRACE_PERIOD", format!("{}s", GRACE.as_secs())),
        ]
    };
    let sink = start(env()).await;
    let db = connect(&url).await;
    let a = produce(&broker.bootstrap(), &topic, 2, 1000, "before").await;
    assert_exactly_once(&db, &a).await;

    broker.forwarder.cut().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stopping = std::time::Instant::now();
    sink.stop().await;
    let took = stopping.elapsed();
    assert!(
        took < GRACE + Duration::from_secs(2),
        "stopped {took:?} after the signal, grace period {GRACE:?}"
    );

    broker.forwarder.restore().await;
    let sink = start(env()).await;
    let b = produce(&broker.bootstrap(), &topic, 2, 1000, "after").await;
    assert_exactly_once(&db, &(a + b)).await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_schema_error_stops_consuming_without_storing_offsets() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let (topic, group) = (unique("results"), unique("group"));
    create_topic(&bootstrap, &topic, 1).await;
    let env = || {
        vec![
            ("DATABASE_URL", url.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_GROUP_ID", group.clone()),
        ]
    };
    let sink = start(env()).await;
    let db = connect(&url).await;
    let rows = produce(&bootstrap, &topic, 1, 10, "first").await.rows.len() as i64;
    wait_until(Duration::from_secs(30), "the first rows", || async {
        count(&db, "probe_results").await == rows
    })
    .await;

    // An operator mistake: the table disappears (SQLSTATE 42P01, a fatal class).
    db.batch_execute("ALTER TABLE probe_results RENAME TO probe_results_moved")
        .await
        .unwrap();
    let more = produce(&bootstrap, &topic, 1, 10, "second").await.rows.len() as i64;
    wait_until(Duration::from_secs(20), "unready with the reason", || async {
        let (status, body) = http_get(sink.admin, "/readyz").await;
        status == 503 && body.contains("42P01")
    })
    .await;
    assert_eq!(
        http_get(sink.admin, "/healthz").await.0,
        200,
        "a fatal error is not a liveness failure"
    );
    sink.stop().await;

    // Fixed and restarted: the messages that failed were not skipped.
    db.batch_execute("ALTER TABLE probe_results_moved RENAME TO probe_results")
        .await
        .unwrap();
    let sink = start(env()).await;
    wait_until(Duration::from_secs(30), "the second rows after the fix", || async {
        count(&db, "probe_results").await == rows + more
    })
    .await;
    sink.stop().await;
}

/// The sum of every `healthcheck_sink_write_retries_total` series, and the series themselves.
async fn write_retries(sink: &crate::app::Running) -> (f64, Vec<String>) {
    let m = Scrape::get(sink.admin).await;
    let name = "healthcheck_sink_write_retries_total";
    (m.sum(name), m.describe(name))
}

/// A real restart of PostgreSQL (a private cluster: `pg_ctl stop -m fast`, a few seconds
/// down, `pg_ctl start`) while results stream in: the server terminates the sink's sessions
/// (57P01), refuses connections while down, and comes back with none of the old connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream() {
    let pg = PrivatePostgres::start().await;
    let bootstrap = bootstrap();
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 3).await;
    let sink = start(vec![
        ("DATABASE_URL", pg.url.clone()),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("BATCH_MAX_ROWS", "200".to_string()),
    ])
    .await;

    // Stop the server once the sink has written some of the first messages.
    let before = {
        let (b, t) = (bootstrap.clone(), topic.clone());
        tokio::spawn(async move { produce(&b, &t, 3, 4000, "before").await })
    };
    let db = connect(&pg.url).await;
    wait_until(Duration::from_secs(60), "the first rows", || async {
        count(&db, "probe_results").await > 0
    })
    .await;
    let rows_at_stop = count(&db, "probe_results").await;
    pg.stop().await;
    let down = std::time::Instant::now();
    let a = before.await.unwrap();
    eprintln!("stopped PostgreSQL at about {rows_at_stop} of {} rows", a.rows.len());

    // While it is down, more messages arrive; the sink stays alive but unready.
    let b = produce(&bootstrap, &topic, 3, 2000, "during").await;
    wait_until(Duration::from_secs(20), "/readyz to blame PostgreSQL", || async {
        let (status, body) = http_get(sink.admin, "/readyz").await;
        status == 503 && body.contains("PostgreSQL")
    })
    .await;
    assert_eq!(
        http_get(sink.admin, "/healthz").await.0,
        200,
        "a database restart never fails liveness"
    );
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down.elapsed())).await;
    assert_eq!(http_get(sink.admin, "/healthz").await.0, 200);
    assert_eq!(http_get(sink.admin, "/readyz").await.0, 503);
    let (retries, series) = write_retries(&sink).await;
    assert!(retries > 0.0, "no write failed while PostgreSQL was down: {series:?}");

    pg.start_again().await;
    let up = std::time::Instant::now();
    eprintln!("PostgreSQL down for {:?}", up - down);
    wait_until(Duration::from_secs(30), "ready again after the restart", || async {
        http_get(sink.admin, "/readyz").await.0 == 200
    })
    .await;
    eprintln!("ready {:?} after PostgreSQL accepted connections again", up.elapsed());

    let c = produce(&bootstrap, &topic, 3, 1000, "after").await;
    // What the server told the sink's sessions, shown when the assertion fails.
    for line in pg.log().lines().filter(|l| l.contains("FATAL") || l.contains("ERROR")) {
        eprintln!("server: {line}");
    }
    let db = connect(&pg.url).await;
    assert_exactly_once(&db, &(a + b + c)).await;
    eprintln!(
        "all written {:?} after the restart; {:?}",
        up.elapsed(),
        write_retries(&sink).await.1
    );
    sink.stop().await;
}

/// Holds `LOCK TABLE probe_results` (which blocks every insert) in an open transaction until
/// the returned client is dropped or its transaction ends.
pub async fn lock_results(url: &str) -> tokio_postgres::Client {
    let locker = connect(url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE probe_results IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    locker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_writes_pause_partitions_without_leaving_the_group() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 2).await;
    // A poll interval the stall below exceeds three times over.
    let sink = start_consuming(
        &url,
        &bootstrap,
        &topic,
        &[
            ("BATCH_MAX_ROWS", "100"),
            ("WRITE_CONCURRENCY", "1"),
            ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000"),
            ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "1000"),
            ("KAFKA_CFG_MAX_POLL_INTERVAL_MS", "6000"),
        ],
    )
    .await;
    let db = connect(&url).await;
    let a = produce(&bootstrap, &topic, 2, 500, "before").await;
    assert_exactly_once(&db, &a).await;
    let revokes = "healthcheck_sink_rebalances_total{kind=\"revoke\"}";
    let revokes_before = sink.metric(revokes).await;

    let locker = lock_results(&url).await;
    let b = produce(&bootstrap, &topic, 2, 3000, "stalled").await;
    wait_until(Duration::from_secs(20), "partitions paused", || async {
        sink.metric("healthcheck_sink_partitions_paused").await > 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(18)).await;
    assert_eq!(
        sink.metric("healthcheck_sink_partitions_paused").await,
        2.0,
        "still paused while the table is locked"
    );
    drop(locker);

    assert_exactly_once(&db, &(a + b)).await;
    assert_eq!(sink.metric("healthcheck_sink_partitions_paused").await, 0.0);
    assert_eq!(
        sink.metric(revokes).await,
        revokes_before,
        "max.poll.interval.ms was exceeded: the group took the partitions away"
    );
    assert_eq!(
        sink.metric("healthcheck_sink_duplicates_total").await,
        0.0,
        "nothing replayed"
    );
    assert!(sink.metric("healthcheck_sink_backpressure_seconds_total").await >= 15.0);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_waits_for_writes_in_flight_so_the_new_owner_replays_nothing() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 4).await;
    let group = unique("group");
    let settings = |id: &str| {
        vec![
            ("DATABASE_URL", url.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_GROUP_ID", group.clone()),
            ("KAFKA_CFG_CLIENT_ID", id.to_string()),
            ("BATCH_MAX_ROWS", "100".to_string()),
        ]
    };
    let first = start(settings("first")).await;
    let db = connect(&url).await;
    let a = produce(&bootstrap, &topic, 4, 400, "before").await;
    assert_exactly_once(&db, &a).await;

    // Writes of the first sink are in flight (blocked) when the second one joins.
    let locker = lock_results(&url).await;
    let b = produce(&bootstrap, &topic, 4, 1000, "in-flight").await;
    wait_until(Duration::from_secs(20), "writes blocked on the lock", || async {
        let blocked: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'healthcheck-sink'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        blocked > 0
    })
    .await;
    let second = start(settings("second")).await;
    wait_until(Duration::from_secs(30), "a revoke on the first sink", || async {
        first.metric("healthcheck_sink_rebalances_total{kind=\"revoke\"}").await >= 1.0
    })
    .await;
    // The revoke is now waiting for the blocked writes: let them commit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(locker);
    wait_until(Duration::from_secs(30), "the second sink assigned", || async {
        second
            .metric("healthcheck_sink_rebalances_total{kind=\"assign\"}")
            .await
            >= 1.0
    })
    .await;
    let c = produce(&bootstrap, &topic, 4, 400, "after").await;
    assert_exactly_once(&db, &(a + b + c)).await;
    assert!(
        second.metric("healthcheck_sink_messages_consumed_total").await > 0.0,
        "the second sink took part"
    );
    let replayed = first.metric("healthcheck_sink_duplicates_total").await
        + second.metric("healthcheck_sink_duplicates_total").await;
    assert_eq!(replayed, 0.0, "the new owner replayed rows the first sink had written");
    first.stop().await;
    second.stop().await;
}

/// The consume loop idles while every write slot is busy and a partial batch waits past its
/// linger time (a regression: the linger timer stayed armed after its deadline and completed
/// at once on every turn, a busy loop using most of a core for as long as the write was
/// blocked, with neither back-pressure nor pauses to show for it).
///
/// The sink runs as its own process so that its CPU time can be read from
/// `/proc/<pid>/stat`. Measured on the shared 2-core machine (load average 13-17, debug
/// build): 0.002-0.003 CPU-s/s with the fix, 0.22-0.37 without (all the CPU the loop could
/// get there; a core's worth on an idle machine). The bound sits between them, low enough
/// that a busy loop exceeds it even when it gets a small share of a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_write_with_a_partial_batch_waiting_leaves_the_sink_idle() {
    const STALL: Duration = Duration::from_secs(15);
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 3).await;
    let admin = free_port();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let log = std::env::temp_dir().join(format!("{}.log", unique("sink-idle")));
    eprintln!("sink log: {}", log.display());
    let sink = spawn(
        "sink",
        &[
            ("DATABASE_URL", url.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_GROUP_ID", unique("group")),
            ("ADMIN_ADDR", admin_addr.to_string()),
            ("WRITE_CONCURRENCY", "1".to_string()),
            ("BATCH_MAX_ROWS", "100".to_string()),
            ("BATCH_LINGER", "20ms".to_string()),
        ],
        &log,
    );
    let db = connect(&url).await;
    // Consuming: the first messages are written.
    let first = produce(&bootstrap, &topic, 3, 30, "first").await;
    assert_exactly_once(&db, &first).await;

    // One write in flight, blocked by the lock; then a partial batch (well below 100 rows)
    // waits for the only write slot, its linger time long past.
    let locker = connect(&url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE probe_results IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let blocked = produce(&bootstrap, &topic, 3, 30, "blocked").await;
    wait_until(Duration::from_secs(20), "a write blocked on the lock", || async {
        blocked_writes(&db).await > 0
    })
    .await;
    let waiting = produce(&bootstrap, &topic, 3, 30, "waiting").await;
    let consumed = move || async move {
        Scrape::get(admin_addr)
            .await
            .sum("healthcheck_sink_messages_consumed_total")
    };
    wait_until(Duration::from_secs(20), "every message taken by the sink", || async {
        consumed().await == 90.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (cpu, t) = (cpu_seconds(sink.id()), std::time::Instant::now());
    tokio::time::sleep(STALL).await;
    let share = (cpu_seconds(sink.id()) - cpu) / t.elapsed().as_secs_f64();
    eprintln!("sink CPU while the write was blocked: {share:.3} CPU-s/s over {STALL:?}");
    assert!(blocked_writes(&db).await > 0, "the write is still blocked");

    drop(locker);
    assert_exactly_once(&db, &(first + blocked + waiting)).await;
    assert!(
        share < 0.05,
        "the sink used {share:.3} CPU-s per second while it had nothing to do but wait (idle: below 0.01)"
    );
}

/// The sink's sessions waiting for a lock (`pg_stat_activity`, which no table lock blocks).
async fn blocked_writes(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'healthcheck-sink'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}
