//! The test broker (`TEST_KAFKA_BOOTSTRAP_SERVERS`), topics on it, and private tansu brokers
//! (in memory) behind a [`Forwarder`] for tests that cut the broker off or restart it. Never
//! deletes a topic: tests use unique names ([`crate::unique`]).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use tokio::net::TcpStream;

use crate::net::{free_port, Forwarder};
use crate::wait_until;

/// The test broker (exported by `make test`).
pub fn bootstrap() -> String {
    std::env::var("TEST_KAFKA_BOOTSTRAP_SERVERS")
        .expect("TEST_KAFKA_BOOTSTRAP_SERVERS is not set: run the tests with `make test`")
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let res = admin
        .create_topics(
            [&NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    for r in res {
        r.expect("topic created");
    }
}

/// A private tansu broker whose clients all go through a [`Forwarder`] (it advertises the
/// forwarder's address), so a test can cut the broker off without losing its in-memory data.
pub struct PrivateBroker {
    child: Child,
    broker_port: u16,
    /// The forwarder clients use.
    pub forwarder: Forwarder,
}

impl PrivateBroker {
    /// Starts tansu on a free port behind a forwarder.
    pub async fn start() -> Self {
        let broker_port = free_port();
        let front_port = free_port();
        let child = spawn_tansu(broker_port, &format!("127.0.0.1:{front_port}"));
        let upstream: SocketAddr = format!("127.0.0.1:{broker_port}").parse().unwrap();
        wait_until(Duration::from_secs(20), "the private broker to listen", || async move {
            TcpStream::connect(upstream).await.is_ok()
        })
        .await;
        let forwarder = Forwarder::start(upstream, Some(front_port)).await;
        Self {
            child,
            broker_port,
            forwarder,
        }
    }

    /// Kills the broker and starts it again, empty (in-memory storage), on the same port: it
    /// has forgotten topics, offsets and producer ids, as the compose stand-in does.
    pub async fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_tansu(self.broker_port, &self.forwarder.addr.to_string());
        let upstream: SocketAddr = format!("127.0.0.1:{}", self.broker_port).parse().unwrap();
        wait_until(
            Duration::from_secs(20),
            "the private broker to listen again",
            || async move { TcpStream::connect(upstream).await.is_ok() },
        )
        .await;
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.forwarder.addr.to_string()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts tansu (in memory) listening on `127.0.0.1:<port>` and advertising `advertised`
/// (`host:port`), where a test's forwarder or TLS terminator will listen.
pub fn spawn_tansu(port: u16, advertised: &str) -> Child {
    Command::new(which_tansu())
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://{advertised}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu")
}

/// The tansu binary private brokers run: `TANSU_BIN` (as in `scripts/stack.sh`; `TANSU` is
/// still read), else `$CARGO_HOME/bin/tansu`, else `tansu` on `PATH`.
fn which_tansu() -> String {
    if let Ok(p) = std::env::var("TANSU_BIN").or_else(|_| std::env::var("TANSU")) {
        return p;
    }
    let home =
        std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let p = format!("{home}/bin/tansu");
    if std::path::Path::new(&p).exists() {
        p
    } else {
        "tansu".to_string()
    }
}
