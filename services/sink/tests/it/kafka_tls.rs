//! Kafka over mutual TLS, end to end: both binaries, configured only through
//! `KAFKA_CFG_SECURITY_PROTOCOL=ssl` and `KAFKA_CFG_SSL_*` (librdkafka properties, built with
//! OpenSSL), reach a private tansu broker only through a TLS terminator that demands a
//! client certificate ([`TlsBroker`]). A probe result goes checker → TLS → broker → TLS →
//! sink → PostgreSQL; a wrong or missing client certificate makes `/readyz` say 503.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use crate::tls_support::*;

/// The `KAFKA_CFG_*` variables for mutual TLS with `broker`, presenting `client` (or no
/// certificate).
fn tls_env(broker: &TlsBroker, client: Option<&Issued>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap()),
        ("KAFKA_CFG_SECURITY_PROTOCOL", "ssl".to_string()),
        ("KAFKA_CFG_SSL_CA_LOCATION", broker.ca.ca_path().display().to_string()),
        // librdkafka's default since 2.0, spelled out: the broker's name must be in its certificate.
        ("KAFKA_CFG_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https".to_string()),
    ];
    if let Some(c) = client {
        env.push(("KAFKA_CFG_SSL_CERTIFICATE_LOCATION", c.cert_path.display().to_string()));
        env.push(("KAFKA_CFG_SSL_KEY_LOCATION", c.key_path.display().to_string()));
    }
    env
}

fn admin(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Polls `/readyz` on `port` every 250 ms until `done` holds or `limit` passes; the last answer.
async fn readyz_until(port: u16, limit: Duration, done: impl Fn(&(u16, String)) -> bool) -> (u16, String) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        // Until the service has bound its admin port, a refused connection is not an answer.
        let last = if tokio::net::TcpStream::connect(admin(port)).await.is_ok() {
            http_get(admin(port), "/readyz").await
        } else {
            (0, "admin port not listening yet".to_string())
        };
        if done(&last) || std::time::Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn log_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    println!("logs in {}", dir.display());
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_result_travels_over_mutual_tls() {
    let broker = TlsBroker::start().await;
    let client = broker.ca.client("client", "healthcheck-pipeline");
    let (url, topic, target) = (
        fresh_database().await,
        unique("tls_results"),
        http_target("tls ok").await,
    );
    let dir = log_dir("kafka-tls");
    let (sink_admin, checker_admin) = (free_port(), free_port());
    let mut sink_env = tls_env(&broker, Some(&client));
    sink_env.extend([
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_TOPIC_PARTITIONS", "2".to_string()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("DATABASE_URL", url.clone()),
        ("ADMIN_ADDR", admin(sink_admin).to_string()),
        ("BATCH_LINGER", "50ms".to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ]);
    let mut checker_env = tls_env(&broker, Some(&client));
    let targets = serde_json::json!([
        {"name": "over-tls", "url": format!("http://{target}/"), "regex": "tls ok", "interval": "500ms", "timeout": "400ms"},
    ]);
    checker_env.extend([
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_TOPIC_PARTITIONS", "2".to_string()),
        ("TARGETS", targets.to_string()),
        ("ADMIN_ADDR", admin(checker_admin).to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ]);
    // The sink creates the topic over TLS (the admin client has the same properties).
    let _sink = spawn("sink", &sink_env, &dir.join("sink.log"));
    let _checker = spawn("checker", &checker_env, &dir.join("checker.log"));

    let db = connect(&url).await;
    wait_until(Duration::from_secs(90), "a result of over-tls in PostgreSQL", || {
        let db = &db;
        async move {
            db.query_opt(
                "SELECT 1 FROM probe_results WHERE target_name = 'over-tls' LIMIT 1",
                &[],
            )
            .await
            .is_ok_and(|r| r.is_some())
        }
    })
    .await;
    let row = db
        .query_one(
            "SELECT success, status_code, regex_matched, url FROM probe_results WHERE target_name = 'over-tls' ORDER BY scheduled_at LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (success, status, matched, probed): (bool, Option<i32>, Option<bool>, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (success, status, matched, probed),
        (true, Some(200), Some(true), format!("http://{target}/"))
    );
    for (name, port) in [("sink", sink_admin), ("checker", checker_admin)] {
        let last = readyz_until(port, Duration::from_secs(30), |(status, _)| *status == 200).await;
        assert_eq!(last.0, 200, "{name}: {}", last.1);
    }
    assert!(
        broker.terminator.accepted.load(Ordering::Relaxed) >= 2,
        "both services went through the TLS terminator"
    );
    assert_eq!(broker.terminator.refused.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_client_certificate_makes_readiness_fail() {
    let broker = TlsBroker::start().await;
    let stranger_ca = TestCa::new("a CA the broker does not trust");
    let stranger = stranger_ca.client("client", "healthcheck-pipeline");
    let (url, topic) = (fresh_database().await, unique("tls_refused"));
    let dir = log_dir("kafka-tls-refused");
    let (sink_admin, checker_admin) = (free_port(), free_port());
    // The sink presents a certificate from another CA; the checker presents none.
    let mut sink_env = tls_env(&broker, Some(&stranger));
    sink_env.extend([
        ("KAFKA_TOPIC", topic.clone()),
        ("KAFKA_GROUP_ID", unique("group")),
        ("DATABASE_URL", url.clone()),
        ("ADMIN_ADDR", admin(sink_admin).to_string()),
    ]);
    let mut checker_env = tls_env(&broker, None);
    checker_env.extend([
        ("KAFKA_TOPIC", topic.clone()),
        ("TARGET", "http://127.0.0.1:9/".to_string()),
        ("INTERVAL", "1".to_string()),
        ("ADMIN_ADDR", admin(checker_admin).to_string()),
    ]);
    let _sink = spawn("sink", &sink_env, &dir.join("sink.log"));
    let _checker = spawn("checker", &checker_env, &dir.join("checker.log"));

    for (name, port) in [("sink", sink_admin), ("checker", checker_admin)] {
        // Readiness is computed every 2 s from a metadata request bounded by 3 s; allow many rounds.
        let last = readyz_until(port, Duration::from_secs(60), |(_, body)| {
            body.starts_with("not ready: Kafka:")
        })
        .await;
        assert_eq!(last.0, 503, "{name}: {}", last.1);
        // Alive, and answering: a refused handshake is an outage, not a hang or a crash.
        assert_eq!(http_get(admin(port), "/healthz").await.0, 200, "{name} /healthz");
    }
    assert!(
        broker.terminator.refused.load(Ordering::Relaxed) >= 2,
        "both services' handshakes were refused by the terminator"
    );
}

/// An unreadable certificate file stops either service at start-up: exit 2 naming the
/// variable (librdkafka itself would only say `ssl.certificate.location failed: ... system lib`).
#[test]
fn unreadable_client_certificate_exits_2_naming_the_variable() {
    let ca = TestCa::new("kafka test CA");
    let client = ca.client("client", "healthcheck-pipeline");
    let missing = ca.dir().join("missing.pem").display().to_string();
    for name in ["sink", "checker"] {
        let out = Command::new(bin(name))
            .env_clear()
            .envs([
                ("DATABASE_URL", "postgres://sink@127.0.0.1:1/healthcheck"),
                ("TARGET", "http://127.0.0.1:9/"),
                ("KAFKA_CFG_SECURITY_PROTOCOL", "ssl"),
                ("KAFKA_CFG_SSL_CA_LOCATION", &ca.ca_path().display().to_string()),
                ("KAFKA_CFG_SSL_CERTIFICATE_LOCATION", &missing),
                ("KAFKA_CFG_SSL_KEY_LOCATION", &client.key_path.display().to_string()),
                ("LOG_FORMAT", "text"),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("KAFKA_CFG_SSL_CERTIFICATE_LOCATION"),
            "{name}: {stderr}"
        );
    }
}
