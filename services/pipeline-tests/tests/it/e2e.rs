//! Both binaries as processes against the real broker, PostgreSQL and loopback targets: the
//! pipeline judged by what the topic holds compared with the table, readiness and liveness
//! over HTTP, metrics parsed from `/metrics`, exit codes for bad configuration.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::result::ProbeResult;
use testkit::broker::{bootstrap, create_topic, PrivateBroker};
use testkit::http::{http_get, http_target, try_http_get};
use testkit::metrics::Scrape;
use testkit::net::{free_addr, free_port};
use testkit::pg::{connect, count, fresh_database};
use testkit::process::{bin, signal, spawn, wait_exit};
use testkit::topic::read_topic;
use testkit::{unique, wait_until};

/// A loopback server that accepts connections and never answers.
async fn hanging_target() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Environments of the two processes of [`pipeline_end_to_end_survives_sink_sigkill_and_sigterm`]:
/// four targets (healthy, regex mismatch, refused, hanging) probed every 250 ms, a 3-partition
/// topic, a fresh database.
struct Pipeline {
    url: String,
    bootstrap: String,
    topic: String,
    sink_env: Vec<(&'static str, String)>,
    checker_env: Vec<(&'static str, String)>,
    sink_admin: SocketAddr,
    checker_admin: SocketAddr,
}

impl Pipeline {
    async fn new() -> Self {
        let (url, bootstrap) = (fresh_database().await, bootstrap());
        let topic = unique("results");
        create_topic(&bootstrap, &topic, 3).await;
        let good = http_target("<html>all systems healthy</html>").await;
        let hang = hanging_target().await;
        let refused = free_port();
        let targets = serde_json::json!([
            {"name": "good", "url": format!("http://{good}/"), "regex": "healthy", "interval": "250ms", "timeout": "200ms"},
            {"name": "nomatch", "url": format!("http://{good}/"), "regex": "absent", "interval": "250ms", "timeout": "200ms"},
            {"name": "refused", "url": format!("http://127.0.0.1:{refused}/"), "interval": "250ms", "timeout": "200ms"},
            {"name": "hang", "url": format!("http://{hang}/"), "interval": "250ms", "timeout": "200ms"},
        ]);
        let (sink_admin, checker_admin) = (free_addr(), free_addr());
        let common = |admin: SocketAddr| {
            vec![
                ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
                ("KAFKA_TOPIC", topic.clone()),
                ("ADMIN_ADDR", admin.to_string()),
                ("LOG_FORMAT", "json".to_string()),
                ("RUST_LOG", "info".to_string()),
                ("SHUTDOWN_GRACE_PERIOD", "10s".to_string()),
            ]
        };
        let mut sink_env = common(sink_admin);
        sink_env.extend([
            ("DATABASE_URL", url.clone()),
            ("KAFKA_GROUP_ID", unique("group")),
            ("BATCH_LINGER", "50ms".to_string()),
            // The SIGKILLed member stays in the group until its session times out; keep that
            // short (this also exercises the KAFKA_CFG_* pass-through).
            ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000".to_string()),
            ("KAFKA_GROUP_INSTANCE_ID", "sink-0".to_string()),
        ]);
        let mut checker_env = common(checker_admin);
        checker_env.push(("TARGETS", targets.to_string()));
        Self {
            url,
            bootstrap,
            topic,
            sink_env,
            checker_env,
            sink_admin,
            checker_admin,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_end_to_end_survives_sink_sigkill_and_sigterm() {
    let p = Pipeline::new().await;
    // Logs are kept for a failing run; the path is printed.
    let dir = std::env::temp_dir().join(unique("e2e"));
    std::fs::create_dir_all(&dir).unwrap();
    println!("logs in {}", dir.display());
    let (checker_log, sink_log) = (dir.join("checker.log"), dir.join("sink.log"));

    let mut sink = spawn("sink", &p.sink_env, &sink_log);
    let mut checker = spawn("checker", &p.checker_env, &checker_log);
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&sink, "-KILL");
    wait_exit(&mut sink, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sink = spawn("sink", &p.sink_env, &sink_log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_admin_endpoints(p.checker_admin, p.sink_admin).await;

    signal(&checker, "-TERM");
    assert_eq!(
        wait_exit(&mut checker, Duration::from_secs(12)),
        0,
        "checker exits 0 on SIGTERM"
    );
    let in_topic = published(&p.bootstrap, &p.topic).await;
    assert!(
        in_topic.len() >= 4 * 12,
        "about 4 targets × 4 per second × 6.5 s expected, got {}",
        in_topic.len()
    );

    let db = connect(&p.url).await;
    let n = in_topic.len() as i64;
    wait_until(Duration::from_secs(60), "every published result in PostgreSQL", || {
        let db = &db;
        async move { count(db, "probe_results").await >= n }
    })
    .await;
    signal(&sink, "-TERM");
    assert_eq!(
        wait_exit(&mut sink, Duration::from_secs(12)),
        0,
        "sink exits 0 on SIGTERM"
    );

    let rows = db
        .query("SELECT check_id::text, target_name, success, status_code, error_kind, regex_matched, lateness_seconds FROM probe_results", &[])
        .await
        .unwrap();
    assert_rows_are_the_topic(&rows, &in_topic);
    assert_eq!(count(&db, "dead_letters").await, 0);
    assert_outcomes_per_target(&rows);
}

/// Liveness, readiness and `/metrics` of both processes: promtool accepts the exposition,
/// the checker's probe metrics show each target's outcome, the sink's counters exist.
async fn assert_admin_endpoints(checker: SocketAddr, sink: SocketAddr) {
    for (name, addr) in [("checker", checker), ("sink", sink)] {
        assert_eq!(http_get(addr, "/healthz").await.0, 200, "{name} /healthz");
        assert_eq!(http_get(addr, "/readyz").await.0, 200, "{name} /readyz");
        let (status, exposition) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        promtool_check(&exposition);
        let m = Scrape::parse(&exposition);
        if name == "checker" {
            assert_eq!(
                m.metric("probe_success", &[("target", "good")]),
                Some(1.0),
                "{exposition}"
            );
            assert_eq!(
                m.metric("probe_failed_due_to_regex", &[("target", "nomatch")]),
                Some(1.0),
                "{exposition}"
            );
            let timeouts = m.metric("healthcheck_checker_probes_completed_total", &[("outcome", "timeout")]);
            assert!(timeouts.is_some_and(|n| n >= 1.0), "{exposition}");
        } else {
            // The restarted sink may still be joining the group: the counter exists, maybe at 0.
            let inserted = m.metric("healthcheck_sink_rows_inserted_total", &[]);
            assert!(inserted.is_some(), "{exposition}");
        }
    }
}

/// What the topic holds, by `check_id`: every result the checker published. Panics when a
/// message is not a probe result or a slot was published twice.
async fn published(bootstrap: &str, topic: &str) -> HashMap<String, ProbeResult> {
    let messages = read_topic(bootstrap, topic).await;
    let in_topic: HashMap<String, ProbeResult> = messages
        .iter()
        .map(|m| {
            let r: ProbeResult = serde_json::from_slice(m.payload.as_deref().unwrap_or_default())
                .unwrap_or_else(|e| panic!("message {}/{} is not a probe result: {e}", m.partition, m.offset));
            (r.check_id.to_string(), r)
        })
        .collect();
    assert_eq!(in_topic.len(), messages.len(), "the checker published a slot twice");
    in_topic
}

/// Exactly once: the table holds every result of the topic and nothing else, each row as
/// published (the primary key rules out a duplicate row; a lost or invented one shows here).
/// `rows`: check_id, target_name, success, status_code, error_kind, regex_matched,
/// lateness_seconds.
fn assert_rows_are_the_topic(rows: &[tokio_postgres::Row], in_topic: &HashMap<String, ProbeResult>) {
    for r in rows {
        let id: String = r.get(0);
        let published = in_topic
            .get(&id)
            .unwrap_or_else(|| panic!("stored but not in the topic: {id}"));
        assert_eq!(r.get::<_, String>(1), published.target, "{id}: target");
        assert_eq!(r.get::<_, bool>(2), published.success, "{id}: success");
        assert_eq!(
            r.get::<_, Option<i32>>(3),
            published.status_code.map(i32::from),
            "{id}: status code"
        );
        assert_eq!(r.get::<_, f64>(6), published.lateness_seconds, "{id}: lateness");
    }
    assert_eq!(rows.len(), in_topic.len(), "rows stored vs results in the topic");
}

/// Each target's rows show its outcome, every target kept its rate (the hanging one delays
/// none), and no probe started late. `rows` as for [`assert_rows_are_the_topic`].
fn assert_outcomes_per_target(rows: &[tokio_postgres::Row]) {
    let mut by_target: BTreeMap<String, Vec<&tokio_postgres::Row>> = BTreeMap::new();
    for r in rows {
        by_target.entry(r.get(1)).or_default().push(r);
    }
    for r in &by_target["good"] {
        assert!(r.get::<_, bool>(2));
        assert_eq!(r.get::<_, Option<i32>>(3), Some(200));
        assert_eq!(r.get::<_, Option<bool>>(5), Some(true));
    }
    for r in &by_target["nomatch"] {
        assert!(!r.get::<_, bool>(2));
        assert_eq!(r.get::<_, Option<String>>(4).as_deref(), Some("regex"));
        assert_eq!(r.get::<_, Option<bool>>(5), Some(false));
    }
    for r in &by_target["refused"] {
        assert_eq!(r.get::<_, Option<String>>(4).as_deref(), Some("connect"));
        assert_eq!(r.get::<_, Option<i32>>(3), None);
    }
    for r in &by_target["hang"] {
        assert_eq!(r.get::<_, Option<String>>(4).as_deref(), Some("timeout"));
    }
    // The hanging target never delays the others: every target keeps its rate.
    let good_n = by_target["good"].len();
    for (t, rs) in &by_target {
        assert!(
            rs.len() + 2 >= good_n && rs.len() <= good_n + 2,
            "{t}: {} results vs good's {good_n}",
            rs.len()
        );
    }
    let max_lateness = rows.iter().map(|r| r.get::<_, f64>(6)).fold(0.0, f64::max);
    assert!(max_lateness < 0.2, "a probe started {max_lateness}s late");
}

/// `promtool check metrics` (Debian's prometheus package) accepts the exposition.
fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: `scripts/stack.sh install` installs Debian's prometheus package");
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn invalid_environment_exits_2_naming_the_variable() {
    // (binary, environment, the variable the error must name)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "checker",
            &[("TARGET", "http://127.0.0.1:1/"), ("INTERVAL", "abc")],
            "INTERVAL",
        ),
        ("checker", &[("TARGET", "example.com/health")], "TARGET"),
        (
            "checker",
            &[("TARGETS", "[{\"url\":\"http://a/\",\"timeout\":\"-1s\"}]")],
            "TARGETS[0].timeout",
        ),
        (
            "checker",
            &[
                ("TARGET", "http://127.0.0.1:1/"),
                ("KAFKA_BOOTSTRAP_SERVERS", "nohostport"),
            ],
            "KAFKA_BOOTSTRAP_SERVERS",
        ),
        (
            "checker",
            &[
                ("TARGET", "http://127.0.0.1:1/"),
                ("KAFKA_CFG_ENABLE_IDEMPOTENCE", "false"),
            ],
            "KAFKA_CFG_ENABLE_IDEMPOTENCE",
        ),
        (
            "checker",
            &[("TARGET", "http://127.0.0.1:1/"), ("KAFKA_CFG_ACKS", "1")],
            "KAFKA_CFG_ACKS",
        ),
        ("sink", &[], "DATABASE_URL"),
        (
            "sink",
            &[
                ("DATABASE_URL", "postgres://u@h/d"),
                ("KAFKA_CFG_ENABLE_AUTO_OFFSET_STORE", "true"),
            ],
            "KAFKA_CFG_ENABLE_AUTO_OFFSET_STORE",
        ),
        (
            "sink",
            &[
                ("DATABASE_URL", "postgres://u@h/d"),
                ("KAFKA_CFG_ENABLE_AUTO_COMMIT", "false"),
            ],
            "KAFKA_CFG_ENABLE_AUTO_COMMIT",
        ),
        (
            "sink",
            &[
                ("DATABASE_URL", "postgres://u@h/d"),
                ("KAFKA_CFG_NO_SUCH_PROPERTY", "1"),
            ],
            "KAFKA_CFG_NO_SUCH_PROPERTY",
        ),
        (
            "sink",
            &[("DATABASE_URL", "postgres://u:hunter2@h:99999999/d")],
            "DATABASE_URL",
        ),
        (
            "sink",
            &[("DATABASE_URL", "postgres://u@h/d"), ("BATCH_MAX_ROWS", "lots")],
            "BATCH_MAX_ROWS",
        ),
    ];
    for (name, env, var) in cases {
        let out = Command::new(bin(name))
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {env:?}: {stderr}");
        assert!(stderr.contains(var), "{name} {env:?} should name {var}: {stderr}");
        assert!(
            stderr.contains("example:"),
            "{name} should show a valid example: {stderr}"
        );
        assert!(!stderr.contains("panicked") && !stderr.contains("hunter2"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_readiness_follows_the_broker_and_liveness_does_not() {
    let broker = PrivateBroker::start().await;
    let target = http_target("ok").await;
    let admin = free_port();
    let dir = std::env::temp_dir().join(unique("checker-ready"));
    std::fs::create_dir_all(&dir).unwrap();
    let env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap()),
        ("KAFKA_TOPIC", unique("results")),
        ("ADMIN_ADDR", format!("127.0.0.1:{admin}")),
        ("TARGET", format!("http://{target}/")),
        ("INTERVAL", "1".to_string()),
    ];
    let _checker = spawn("checker", &env, &dir.join("checker.log"));
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));
    // 0 while the admin server does not answer.
    let status = |path: &'static str| async move { try_http_get(addr, path).await.map_or(0, |(s, _)| s) };
    wait_until(Duration::from_secs(30), "checker ready", || async {
        status("/readyz").await == 200
    })
    .await;
    broker.forwarder.cut().await;
    wait_until(
        Duration::from_secs(20),
        "checker unready without the broker",
        || async { status("/readyz").await == 503 },
    )
    .await;
    assert_eq!(status("/healthz").await, 200, "liveness never depends on the broker");
    broker.forwarder.restore().await;
    wait_until(Duration::from_secs(60), "checker ready again", || async {
        status("/readyz").await == 200
    })
    .await;
}

/// A broker that comes back without the producer's state (here: restarted empty) answers every
/// produce with UNKNOWN_PRODUCER_ID, which librdkafka retries for ever: the checker must
/// notice that nothing is delivered while the broker answers, replace its producer, and get
/// its results onto the topic again (before the fix none arrived after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_delivers_again_after_the_broker_forgets_its_producer_id() {
    let mut broker = PrivateBroker::start().await;
    let bootstrap = broker.bootstrap();
    let topic = unique("results");
    create_topic(&bootstrap, &topic, 2).await;
    let good = http_target("<html>all systems healthy</html>").await;
    let targets = serde_json::json!([
        {"name": "a", "url": format!("http://{good}/"), "interval": "250ms", "timeout": "200ms"},
        {"name": "b", "url": format!("http://{good}/"), "interval": "250ms", "timeout": "200ms"},
    ]);
    let dir = std::env::temp_dir().join(unique("producer-id"));
    std::fs::create_dir_all(&dir).unwrap();
    let admin = free_port();
    let env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_CREATE_TOPIC", "false".to_string()),
        ("ADMIN_ADDR", format!("127.0.0.1:{admin}")),
        ("TARGETS", targets.to_string()),
        ("DELIVERY_STALL_TIMEOUT", "3s".to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ];
    let _checker = spawn("checker", &env, &dir.join("checker.log"));
    wait_until(Duration::from_secs(30), "results on the topic", || {
        let (b, t) = (bootstrap.clone(), topic.clone());
        async move { !read_topic(&b, &t).await.is_empty() }
    })
    .await;

    broker.restart_empty().await;
    create_topic(&bootstrap, &topic, 2).await;
    wait_until(Duration::from_secs(90), "results on the new broker's topic", || {
        let (b, t) = (bootstrap.clone(), topic.clone());
        async move { read_topic(&b, &t).await.len() >= 8 }
    })
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let m = Scrape::get(addr).await;
    let replaced = m.sum("healthcheck_checker_producer_stall_replacements_total")
        + m.sum("healthcheck_checker_producer_fatal_errors_total");
    assert!(replaced >= 1.0, "the producer was never replaced: {m:?}");
    wait_until(Duration::from_secs(30), "the checker ready again", || async move {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;
}
