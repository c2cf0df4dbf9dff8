//! Fault drills against the sink app: each ends with "every message in the topic is a row or
//! a dead letter, exactly once".

use std::time::Duration;

use chrono::Utc;

use crate::app::start;
use crate::store::sample;
use crate::support::*;

/// Produces `n` distinct results (and every 100th message a poison one) to `topic`; returns
/// (results, poison messages).
async fn produce(bootstrap: &str, topic: &str, n: usize, tag: &str) -> (i64, i64) {
    // Deliveries must outlive the longest outage drill.
    let p: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "300000")
        .create()
        .unwrap();
    let now = Utc::now();
    let mut poison = 0;
    let mut sends = Vec::with_capacity(n);
    for i in 0..n {
        let payload = if i % 100 == 99 {
            poison += 1;
            b"\x00\x01 definitely not json".to_vec()
        } else {
            let r = sample(
                &format!("{tag}-{}", i % 50),
                now + chrono::Duration::milliseconds(i as i64),
                i % 5 != 0,
                0.05,
            );
            serde_json::to_vec(&r).unwrap()
        };
        let p = p.clone();
        let topic = topic.to_string();
        sends.push(tokio::spawn(async move {
            p.send(
                rdkafka::producer::FutureRecord::to(&topic).key("k").payload(&payload),
                Duration::from_secs(120),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    (n as i64 - poison, poison)
}

async fn assert_exactly_once(db: &tokio_postgres::Client, rows: i64, dead: i64) {
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
    // Nothing more arrives later, and nothing is there twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(db, "probe_results").await, rows);
    assert_eq!(count(db, "dead_letters").await, dead);
    let distinct: i64 = db
        .query_one("SELECT count(DISTINCT check_id) FROM probe_results", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_terminated_mid_batch() {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 3).await;
    let sink = start(vec![
        ("DATABASE_URL", url.clone()),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("BATCH_MAX_ROWS", "200".to_string()),
    ])
    .await;
    let db = connect(&url).await;
    wait_until(Duration::from_secs(30), "migrations", || async {
        count(&db, "probe_results").await == 0
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
    let (rows, dead) = produce(&bootstrap, &topic, 6000, "term").await;
    let killed = killer.await.unwrap();
    assert!(killed > 0, "the drill terminated no backend");
    assert_exactly_once(&db, rows, dead).await;
    assert!(
        sink.metric("healthcheck_sink_write_retries_total{class=\"57\"}").await
            + sink.metric("healthcheck_sink_write_retries_total{class=\"io\"}").await
            >= 0.0
    );
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
    let sink = start(vec![
        ("DATABASE_URL", via),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("BATCH_MAX_ROWS", "300".to_string()),
    ])
    .await;
    let db = connect(&url).await;
    let (a_rows, a_dead) = produce(&bootstrap, &topic, 2000, "before").await;
    pg.cut().await;
    let (b_rows, b_dead) = produce(&bootstrap, &topic, 2000, "during").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(http_get(sink.admin, "/healthz").await.0, 200);
    pg.restore().await;
    assert_exactly_once(&db, a_rows + b_rows, a_dead + b_dead).await;
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
    let (a_rows, a_dead) = produce(&broker.bootstrap(), &topic, 1000, "before").await;
    broker.forwarder.cut().await;
    // Produce during the outage too: the producer buffers and delivers after it.
    let late = {
        let (b, t) = (broker.bootstrap(), topic.clone());
        tokio::spawn(async move { produce(&b, &t, 1000, "during").await })
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
    let (b_rows, b_dead) = tokio::time::timeout(Duration::from_secs(90), late)
        .await
        .expect("the messages produced during the outage are delivered within 90 s of its end")
        .unwrap();
    eprintln!("late delivered at {:?}", std::time::SystemTime::now());
    assert_exactly_once(&db, a_rows + b_rows, a_dead + b_dead).await;
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
    let (rows, _) = produce(&bootstrap, &topic, 10, "first").await;
    wait_until(Duration::from_secs(30), "the first rows", || async {
        count(&db, "probe_results").await == rows
    })
    .await;

    // An operator mistake: the table disappears (SQLSTATE 42P01, a fatal class).
    db.batch_execute("ALTER TABLE probe_results RENAME TO probe_results_moved")
        .await
        .unwrap();
    let (more, _) = produce(&bootstrap, &topic, 10, "second").await;
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
    let (_, body) = http_get(sink.admin, "/metrics").await;
    let series: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("healthcheck_sink_write_retries_total{"))
        .map(str::to_string)
        .collect();
    let sum = series
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (sum, series)
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
        tokio::spawn(async move { produce(&b, &t, 4000, "before").await })
    };
    let db = connect(&pg.url).await;
    wait_until(Duration::from_secs(60), "the first rows", || async {
        count(&db, "probe_results").await > 0
    })
    .await;
    let rows_at_stop = count(&db, "probe_results").await;
    pg.stop().await;
    let down = std::time::Instant::now();
    let (a_rows, a_dead) = before.await.unwrap();
    eprintln!("stopped PostgreSQL at about {rows_at_stop} of {a_rows} rows");

    // While it is down, more messages arrive; the sink stays alive but unready.
    let (b_rows, b_dead) = produce(&bootstrap, &topic, 2000, "during").await;
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

    let (c_rows, c_dead) = produce(&bootstrap, &topic, 1000, "after").await;
    // What the server told the sink's sessions, shown when the assertion fails.
    for line in pg.log().lines().filter(|l| l.contains("FATAL") || l.contains("ERROR")) {
        eprintln!("server: {line}");
    }
    let db = connect(&pg.url).await;
    assert_exactly_once(&db, a_rows + b_rows + c_rows, a_dead + b_dead + c_dead).await;
    eprintln!(
        "all written {:?} after the restart; {:?}",
        up.elapsed(),
        write_retries(&sink).await.1
    );
    sink.stop().await;
}

/// Holds `LOCK TABLE probe_results` (which blocks every insert) in an open transaction until
/// the returned client is dropped or its transaction ends.
async fn lock_results(url: &str) -> tokio_postgres::Client {
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
    let sink = start(vec![
        ("DATABASE_URL", url.clone()),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("BATCH_MAX_ROWS", "100".to_string()),
        ("WRITE_CONCURRENCY", "1".to_string()),
        ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000".to_string()),
        ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "1000".to_string()),
        ("KAFKA_CFG_MAX_POLL_INTERVAL_MS", "6000".to_string()),
    ])
    .await;
    let db = connect(&url).await;
    let (a_rows, a_dead) = produce(&bootstrap, &topic, 500, "before").await;
    assert_exactly_once(&db, a_rows, a_dead).await;
    let revokes = "healthcheck_sink_rebalances_total{kind=\"revoke\"}";
    let revokes_before = sink.metric(revokes).await;

    let locker = lock_results(&url).await;
    let (b_rows, b_dead) = produce(&bootstrap, &topic, 3000, "stalled").await;
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

    assert_exactly_once(&db, a_rows + b_rows, a_dead + b_dead).await;
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
    let (a_rows, a_dead) = produce(&bootstrap, &topic, 400, "before").await;
    assert_exactly_once(&db, a_rows, a_dead).await;

    // Writes of the first sink are in flight (blocked) when the second one joins.
    let locker = lock_results(&url).await;
    let (b_rows, b_dead) = produce(&bootstrap, &topic, 1000, "in-flight").await;
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
    let (c_rows, c_dead) = produce(&bootstrap, &topic, 400, "after").await;
    assert_exactly_once(&db, a_rows + b_rows + c_rows, a_dead + b_dead + c_dead).await;
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
