//! Every query of every Grafana dashboard (`deploy/grafana/dashboards/`), run against what
//! the dashboards would read: the real `checker` (fleet mode, its targets applied to a
//! targets topic with `checker targets apply`) and `sink` binaries probe loopback targets
//! (one up, one refused, one HTTPS) for about 30 s, with a checker restart in between (a
//! gap in coverage, rebalances), one undecodable message (a dead letter), a table lock past
//! the sink's statement timeout (a write retry) and a maintenance window; a real
//! Prometheus scrapes both admin servers every second. Then each PromQL query runs on
//! Prometheus' `/api/v1/query_range` and each SQL query on PostgreSQL as the read-only role
//! of `docker/grafana/reader.sql`, after Grafana's macros and template variables are
//! expanded (`macros`); an error, an empty result or a panel without a query fails the test,
//! naming dashboard, panel and query.

mod grafana;
mod macros;
mod prometheus;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use testkit::broker::{bootstrap, create_topic};
use testkit::http::http_target;
use testkit::metrics::Scrape;
use testkit::net::{free_addr, free_port};
use testkit::pg::{connect, count, database_url, fresh_database};
use testkit::process::{bin, signal, spawn, wait_exit};
use testkit::{unique, wait_until};

use grafana::{dashboard_files, datasources, repo_root, Backends};
use macros::Range;
use prometheus::{Prometheus, SCRAPE_S};

/// A loopback HTTPS/1.1 target with a self-signed certificate for 127.0.0.1, answering 200.
async fn https_target() -> SocketAddr {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("self-signed certificate");
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key.into())
        .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                // One request per connection (the checker sends one and closes).
                if tls.read(&mut buf).await.unwrap_or(0) > 0 {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure")
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

fn apply_targets(bootstrap: &str, topic: &str, yaml: &str) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    let out = std::process::Command::new(bin("checker"))
        .args(["targets", "apply", f.path().to_str().unwrap()])
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_TARGETS_TOPIC", topic)
        .output()
        .expect("run checker targets apply");
    assert!(
        out.status.success(),
        "apply failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates the datasource's read-only role with `docker/grafana/reader.sql` (as compose's
/// `grafana-db-user` does, through psql) and returns a client logged in as it.
async fn reader_client(url: &str, role: &str) -> tokio_postgres::Client {
    let script = repo_root().join("docker/grafana/reader.sql");
    let out = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("reader={role}"))
        .args(["-v", "password=reader-secret", "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "reader.sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cfg: tokio_postgres::Config = url.parse().unwrap();
    cfg.user(role).password("reader-secret");
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect as the reader role");
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_query_returns_data() {
    let t0 = Utc::now() - chrono::Duration::seconds(2);
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let (results, targets) = (unique("results"), unique("targets"));
    create_topic(&bootstrap, &results, 3).await;
    let up = http_target("<html>all systems healthy</html>").await;
    let tls = https_target().await;
    let refused = free_port();
    apply_targets(
        &bootstrap,
        &targets,
        &format!(
            "- {{name: up, url: 'http://{up}/', regex: healthy, interval: 1s, timeout: 500ms}}\n\
             - {{name: down, url: 'http://127.0.0.1:{refused}/', interval: 1s, timeout: 500ms}}\n\
             - {{name: secure, url: 'https://{tls}/', interval: 1s, timeout: 500ms, tls: {{insecure_skip_verify: true}}}}\n"
        ),
    );

    let (sink_admin, checker_admin) = (free_addr(), free_addr());
    let prom = Prometheus::start(&[("checker", checker_admin), ("sink", sink_admin)]).await;
    let dir = std::env::temp_dir().join(unique("dashboards"));
    std::fs::create_dir_all(&dir).unwrap();
    println!("logs in {}", dir.display());
    let base = |admin: SocketAddr| {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("KAFKA_TOPIC", results.clone()),
            ("KAFKA_TARGETS_TOPIC", targets.clone()),
            ("ADMIN_ADDR", admin.to_string()),
            ("LOG_FORMAT", "json".to_string()),
            ("RUST_LOG", "info".to_string()),
        ]
    };
    let mut sink_env = base(sink_admin);
    sink_env.extend([
        ("DATABASE_URL", url.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("BATCH_LINGER", "50ms".to_string()),
        ("DB_STATEMENT_TIMEOUT", "1s".to_string()),
        ("ROLLUP_INTERVAL", "1s".to_string()),
    ]);
    let mut checker_env = base(checker_admin);
    checker_env.extend([
        ("LOCATION", "loopback".to_string()),
        ("INSTANCE_ID", "checker-0".to_string()),
        ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000".to_string()),
        ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "1000".to_string()),
        ("HANDOVER_PERIOD", "1s".to_string()),
        ("SHUTDOWN_GRACE_PERIOD", "5s".to_string()),
    ]);
    let _sink = spawn("sink", &sink_env, &dir.join("sink.log"));
    let mut checker = spawn("checker", &checker_env, &dir.join("checker.log"));
    let scheduled = |n: f64| {
        move || async move {
            Scrape::fetch(checker_admin)
                .await
                .ok()
                .and_then(|s| s.metric("healthcheck_checker_targets", &[]))
                == Some(n)
        }
    };
    wait_until(Duration::from_secs(60), "the three targets scheduled", scheduled(3.0)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    // A gap in coverage and a round of rebalances: the checker stops and comes back.
    signal(&checker, "-TERM");
    assert_eq!(
        wait_exit(&mut checker, Duration::from_secs(10)),
        0,
        "checker exits 0 on SIGTERM"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _checker = spawn("checker", &checker_env, &dir.join("checker.log"));
    wait_until(
        Duration::from_secs(60),
        "the three targets scheduled again",
        scheduled(3.0),
    )
    .await;

    // One message that is not a probe result: a dead letter of class decode.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&results)
                .key("garbage")
                .payload("this is not a probe result"),
            Duration::from_secs(10),
        )
        .await
        .expect("deliver the undecodable message");

    let db = connect(&url).await;
    // A maintenance window on the failing target (so its incident is planned), added as an
    // operator adds one.
    let out = std::process::Command::new(bin("sink"))
        .args([
            "maintenance",
            "add",
            "--target",
            "down",
            "--from",
            "now",
            "--for",
            "1h",
            "--reason",
            "dashboard drill",
        ])
        .env_clear()
        .env("DATABASE_URL", &url)
        .output()
        .expect("run sink maintenance add");
    assert!(
        out.status.success(),
        "sink maintenance add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A table lock held well past the sink's statement timeout: its writes are cancelled
    // (SQLSTATE 57014), the batch is split down to single rows and the canary write is
    // cancelled too, so the error is judged not the rows' and retried: the retry counter gets
    // a series. (A lock of 3 s sometimes ended before the canary, which then passed: no retry.)
    db.batch_execute("BEGIN; LOCK TABLE probe_results IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(8); COMMIT")
        .await
        .expect("hold the lock");
    wait_until(Duration::from_secs(30), "a write retry counted", || async move {
        Scrape::fetch(sink_admin)
            .await
            .ok()
            .and_then(|s| s.metric("healthcheck_sink_write_retries_total", &[]))
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;

    wait_until(Duration::from_secs(30), "the dead letter stored", || {
        let db = &db;
        async move { count(db, "dead_letters").await >= 1 }
    })
    .await;
    // Leave the last slots out: their results may still be on their way.
    let to = Utc::now() - chrono::Duration::seconds(2);
    wait_until(Duration::from_secs(30), "an incident of the failing target", || {
        let db = &db;
        async move { count(db, "incidents WHERE target_name = 'down'").await >= 1 }
    })
    .await;
    let missing: i64 = db
        .query_one(
            "SELECT coalesce(sum(missing_slots), 0)::bigint FROM coverage_between($1, $2)",
            &[&t0, &to],
        )
        .await
        .unwrap()
        .get(0);
    assert!(missing > 0, "the checker restart left no missing slot to show");

    let role = unique("grafana_reader");
    let reader = reader_client(&url, &role).await;
    let datasources = datasources();
    let backends = Backends {
        prometheus: &prom,
        pg: &reader,
        datasources: &datasources,
        range: Range {
            from: t0,
            to,
            interval_s: SCRAPE_S,
            scrape_s: SCRAPE_S,
        },
    };
    let files = dashboard_files();
    assert!(
        files.len() >= 2,
        "dashboards expected in deploy/grafana/dashboards, found {files:?}"
    );
    let (mut ran, mut problems) = (Vec::new(), Vec::new());
    for path in &files {
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        let (r, p) = backends.run_dashboard(&dashboard).await;
        ran.extend(r);
        problems.extend(p);
    }
    drop(reader);
    // Roles are cluster-wide: drop this one (its database goes with the test stack's).
    let admin = connect(&database_url()).await;
    let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await;

    for r in &ran {
        println!("ok {:4} {}", r.results, r.what);
    }
    assert!(
        problems.is_empty(),
        "{} dashboard queries failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(ran.len() >= 40, "only {} queries ran", ran.len());
}
