//! Consumer-group membership on the test broker, with the sink as two processes in one group:
//! a sink killed with SIGKILL (so it never sends LeaveGroup) loses its partitions once its
//! session times out, and the other sink consumes them, with either assignor.
//!
//! tansu 0.6.0 unpatched never reassigned them (`scripts/tansu/README.md`): with the range
//! assignor the survivor kept only its own partitions, with cooperative-sticky it lost its own
//! too. Two members only: tansu has no join barrier, and with three or more cooperative members
//! partitions were owned twice for a while, so exclusive ownership is not asserted here.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::store::sample;
use crate::support::*;

const PARTITIONS: i32 = 6;
/// librdkafka's `session.timeout.ms` for both sinks: a dead member is expired after it.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// A sink process, killed when the test ends (even when it panics).
struct SinkProcess {
    child: Child,
    admin: std::net::SocketAddr,
}

impl SinkProcess {
    fn spawn(env: &[(&str, String)], log: &Path) -> Self {
        let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sink"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STATUS_ADDR", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("ADMIN_ADDR", admin.to_string())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the sink binary");
        Self { child, admin }
    }

    /// `healthcheck_sink_messages_consumed_total`; 0 while the admin server is not up yet.
    async fn consumed(&self) -> f64 {
        Scrape::fetch(self.admin)
            .await
            .map_or(0.0, |m| m.sum("healthcheck_sink_messages_consumed_total"))
    }

    /// SIGKILL: no LeaveGroup, no commit; the broker only notices the missing heartbeats.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the sink");
        self.child.wait().expect("reap the sink");
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produces `per_partition` results to every partition of `topic`, those for partition `p`
/// with target `{tag}-p{p}`, and waits for every acknowledgement.
async fn produce_to_every_partition(bootstrap: &str, topic: &str, tag: &str, per_partition: usize) {
    let p = producer(bootstrap);
    let now = Utc::now();
    let mut sends = Vec::new();
    for partition in 0..PARTITIONS {
        for i in 0..per_partition {
            let target = format!("{tag}-p{partition}");
            let r = sample(&target, now + chrono::Duration::milliseconds(i as i64), true, 0.05);
            let payload = serde_json::to_vec(&r).unwrap();
            let (p, topic) = (p.clone(), topic.to_string());
            sends.push(tokio::spawn(async move {
                p.send(
                    rdkafka::producer::FutureRecord::to(&topic)
                        .key(&target)
                        .partition(partition)
                        .payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
            }));
        }
    }
    for s in sends {
        s.await.unwrap();
    }
}

/// Rows per partition of the results tagged `tag` (targets `{tag}-p<partition>`); none while
/// the sinks have not created the table yet.
async fn rows_per_partition(db: &tokio_postgres::Client, tag: &str) -> BTreeMap<i32, i64> {
    let rows = match db
        .query(
            "SELECT target_name, count(*) FROM probe_results WHERE target_name LIKE $1 GROUP BY 1",
            &[&format!("{tag}-p%")],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(e) => panic!("count rows: {e}"),
    };
    let mut per: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for r in rows {
        let name: String = r.get(0);
        let p: i32 = name.rsplit_once("-p").unwrap().1.parse().unwrap();
        per.insert(p, r.get(1));
    }
    per
}

/// Waits until the results tagged `tag` are rows, `per_partition` for every partition;
/// panics naming the partitions that fell short.
async fn wait_for_every_partition(db: &tokio_postgres::Client, tag: &str, per_partition: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let per = rows_per_partition(db, tag).await;
        if per.values().all(|&n| n == per_partition) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {timeout:?}, rows per partition of the results tagged {tag} \
             ({per_partition} produced to each): {per:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rounds of one result per partition, each waited for, until one round was consumed by
/// every sink in `sinks` (`healthcheck_sink_messages_consumed_total` grew for each): then
/// each of them owns partitions. Panics after 90 s.
async fn until_each_consumes(db: &tokio_postgres::Client, bootstrap: &str, topic: &str, sinks: &[&SinkProcess]) {
    let started = Instant::now();
    for round in 0.. {
        let mut before = Vec::new();
        for s in sinks {
            before.push(s.consumed().await);
        }
        let tag = format!("round{}-{round}", sinks.len());
        produce_to_every_partition(bootstrap, topic, &tag, 1).await;
        wait_for_every_partition(db, &tag, 1, Duration::from_secs(60)).await;
        let mut after = Vec::new();
        for s in sinks {
            after.push(s.consumed().await);
        }
        if after.iter().zip(&before).all(|(a, b)| a > b) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{} sinks never shared the partitions within 90 s (consumed before/after the last round: {before:?} {after:?})",
            sinks.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Two sinks in one group on a 6-partition topic, the one that joined first (the group's
/// leader on tansu) SIGKILLed once both consume. Results produced to every partition right
/// after the kill must all become rows, written by the survivor, and so must results produced
/// three session timeouts later (the group must stay settled, not just take over once).
async fn survivor_takes_over_a_killed_members_partitions(assignor: &str) {
    let (url, bootstrap) = (fresh_database().await, bootstrap());
    let topic = unique("takeover");
    create_topic(&bootstrap, &topic, PARTITIONS).await;
    let group = unique("group");
    // Logs are kept for a failing run; the path is printed.
    let dir = std::env::temp_dir().join(unique("groups"));
    std::fs::create_dir_all(&dir).unwrap();
    println!("sink logs in {}", dir.display());
    let env = |client_id: &str| {
        vec![
            ("DATABASE_URL", url.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_GROUP_ID", group.clone()),
            ("KAFKA_CFG_CLIENT_ID", client_id.to_string()),
            ("KAFKA_CFG_PARTITION_ASSIGNMENT_STRATEGY", assignor.to_string()),
            ("KAFKA_CFG_SESSION_TIMEOUT_MS", SESSION_TIMEOUT.as_millis().to_string()),
            ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "1000".to_string()),
            ("BATCH_LINGER", "50ms".to_string()),
            ("LOG_FORMAT", "json".to_string()),
            ("RUST_LOG", "info".to_string()),
        ]
    };
    let db = connect(&url).await;
    let mut doomed = SinkProcess::spawn(&env("doomed"), &dir.join("doomed.log"));
    until_each_consumes(&db, &bootstrap, &topic, &[&doomed]).await;
    let survivor = SinkProcess::spawn(&env("survivor"), &dir.join("survivor.log"));
    until_each_consumes(&db, &bootstrap, &topic, &[&doomed, &survivor]).await;

    doomed.kill();
    let killed = Instant::now();
    produce_to_every_partition(&bootstrap, &topic, "after", 20).await;
    // Takeover needs the session timeout plus a rebalance; 15 session timeouts is generous for
    // a loaded machine, and far less than "never".
    wait_for_every_partition(&db, "after", 20, SESSION_TIMEOUT * 15).await;
    println!(
        "{assignor}: every partition's results written {:.1} s after the SIGKILL",
        killed.elapsed().as_secs_f64()
    );
    tokio::time::sleep(SESSION_TIMEOUT * 3).await;
    produce_to_every_partition(&bootstrap, &topic, "later", 20).await;
    wait_for_every_partition(&db, "later", 20, SESSION_TIMEOUT * 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_members_partitions_go_to_the_survivor_range() {
    survivor_takes_over_a_killed_members_partitions("range").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_members_partitions_go_to_the_survivor_cooperative_sticky() {
    survivor_takes_over_a_killed_members_partitions("cooperative-sticky").await;
}
