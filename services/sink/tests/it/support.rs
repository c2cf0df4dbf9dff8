//! Real dependencies for the sink's tests: what every test suite uses comes from `testkit`
//! (a fresh database in the test PostgreSQL, topics on the test broker, private brokers behind
//! a cuttable forwarder, the binaries as processes, HTTP GET and parsed `/metrics`), re-exported
//! here; what only the sink's tests need is defined here: raw producers, sends spread over
//! every partition, a private PostgreSQL cluster a test may restart, CPU time of a process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

pub use testkit::broker::*;
pub use testkit::http::*;
pub use testkit::metrics::Scrape;
pub use testkit::net::*;
pub use testkit::pg::*;
pub use testkit::process::*;
pub use testkit::{unique, wait_until};

/// A producer for raw test messages.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Sends `payload` keyed by `key` and waits for the acknowledgement.
pub async fn send(p: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    p.send(
        FutureRecord::to(topic).key(key).payload(payload),
        Duration::from_secs(30),
    )
    .await
    .expect("delivered");
}

/// What [`PrivatePostgres::start_with`] adds to a fresh cluster.
#[derive(Debug, Default)]
pub struct PgSetup {
    /// `(file name, contents)` written into the data directory (mode 0600, owned by the
    /// server's user), where relative paths in `postgresql.conf` point: certificates and keys.
    pub files: Vec<(String, Vec<u8>)>,
    /// Lines appended to `postgresql.conf`, e.g. `ssl = on`.
    pub conf: Vec<String>,
    /// `pg_hba.conf` lines that come before initdb's, e.g. `hostssl all all 127.0.0.1/32 cert`.
    pub hba: Vec<String>,
}

/// A private PostgreSQL cluster (`initdb` into a temporary directory, `pg_ctl` on a free
/// loopback port) for a test that stops and restarts the server, which the shared test
/// PostgreSQL must never be. Trust authentication, a Unix socket inside the directory, small
/// `shared_buffers`; durability settings (`fsync`, `synchronous_commit`) keep their defaults,
/// so a restart is an honest one. Dropping it stops the server (`pg_ctl stop -m immediate`)
/// and deletes the directory.
pub struct PrivatePostgres {
    /// `postgres://healthcheck@127.0.0.1:<port>/healthcheck`: the `healthcheck` database,
    /// owned by the `healthcheck` bootstrap superuser.
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    socket_dir: PathBuf,
    /// Deletes the directory when dropped, after `Drop::drop` stopped the server.
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates the cluster and the `healthcheck` database, and starts the server.
    ///
    /// # Panics
    /// The server binaries are not found (`PG_BIN`, else the newest
    /// `/usr/lib/postgresql/*/bin`, as in `scripts/stack.sh`), or `initdb`/`pg_ctl` fail
    /// (the message holds their output and the server log).
    pub async fn start() -> Self {
        Self::start_with(PgSetup::default()).await
    }

    /// As [`PrivatePostgres::start`], with `setup`'s files in the data directory, its lines
    /// appended to `postgresql.conf` and its `pg_hba.conf` lines put before initdb's (trust
    /// for every local and loopback connection), so they take precedence. The database is
    /// created over the Unix socket, which no added `host*` line affects.
    pub async fn start_with(setup: PgSetup) -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("sink-private-pg-")
            .tempdir()
            .expect("temporary directory");
        let (data, sock, log) = (
            dir.path().join("data"),
            dir.path().join("run"),
            dir.path().join("postgres.log"),
        );
        std::fs::create_dir(&sock).expect("socket directory");
        if is_root() {
            // initdb and postgres refuse to run as root: the postgres user owns the cluster.
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(status.success(), "chown -R postgres: {}", dir.path().display());
        }
        let port = free_port();
        let mut initdb = as_pg(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "healthcheck", "--auth=trust", "-E", "UTF8", "--no-locale"]);
        run(initdb, "initdb", None).await;
        for (name, contents) in &setup.files {
            let path = data.join(name);
            std::fs::write(&path, contents).expect("write a setup file");
            // PostgreSQL refuses a key file others can read.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            if is_root() {
                let ok = Command::new("chown")
                    .arg("postgres:")
                    .arg(&path)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "chown postgres: {}", path.display());
            }
        }
        if !setup.hba.is_empty() {
            let hba = data.join("pg_hba.conf");
            let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            std::fs::write(&hba, format!("{}\n{old}", setup.hba.join("\n"))).expect("write pg_hba.conf");
        }
        let conf = format!(
            "\n# Private test cluster (sink tests, support.rs).\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             shared_buffers = 16MB\n\
             max_connections = 30\n{}\n",
            sock.display(),
            setup.conf.join("\n"),
        );
        let mut conf_file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut conf_file, conf.as_bytes()).expect("write postgresql.conf");
        let pg = Self {
            url: format!("postgres://healthcheck@127.0.0.1:{port}/healthcheck"),
            bin,
            data,
            log,
            socket_dir: sock.clone(),
            _dir: dir,
        };
        pg.start_again().await;
        connect(&pg.socket_dsn("postgres"))
            .await
            .batch_execute("CREATE DATABASE healthcheck OWNER healthcheck")
            .await
            .expect("create database healthcheck");
        pg
    }

    /// Stops the server with `pg_ctl stop -m fast` and waits until it is down: sessions are
    /// terminated (SQLSTATE 57P01), open transactions roll back, a shutdown checkpoint runs.
    pub async fn stop(&self) {
        let mut stop = self.pg_ctl();
        stop.args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run(stop, "pg_ctl stop", Some(&self.log)).await;
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub async fn start_again(&self) {
        let mut start = self.pg_ctl();
        start.arg("-l").arg(&self.log).args(["-w", "-t", "60", "start"]);
        // pg_ctl's own output is not captured: the server could inherit the pipes and keep
        // them open, and the server log says more anyway.
        start.stdout(Stdio::null()).stderr(Stdio::null());
        run(start, "pg_ctl start", Some(&self.log)).await;
    }

    /// A `key=value` DSN of `dbname` as the `healthcheck` superuser over the Unix socket: no
    /// TLS, and no `host*` line of `pg_hba.conf` applies.
    pub fn socket_dsn(&self, dbname: &str) -> String {
        let port = pg_addr(&self.url).port();
        format!(
            "host={} port={port} user=healthcheck dbname={dbname}",
            self.socket_dir.display()
        )
    }

    /// The server log (`pg_ctl -l`) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pg_ctl(&self) -> Command {
        let mut c = as_pg(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(&self.data);
        c
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The directory holding `initdb` and `pg_ctl`: `PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin` (as `scripts/stack.sh` finds them).
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return dir.into();
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
        .expect("PostgreSQL server binaries not found: set PG_BIN or run scripts/stack.sh install")
}

/// `program`, run as the `postgres` OS user when we are root (`as_pg` in `scripts/stack.sh`),
/// its output captured.
fn as_pg(program: &Path) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    // The postgres user may not be allowed into our working directory.
    c.current_dir("/").stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Runs `cmd` to completion without blocking the runtime; panics with its output (unless
/// `cmd` redirects it) and the server log, when given, if it fails.
async fn run(mut cmd: Command, what: &str, log: Option<&Path>) {
    cmd.stdin(Stdio::null());
    let out = tokio::process::Command::from(cmd)
        .spawn()
        .unwrap_or_else(|e| panic!("run {what}: {e}"))
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("wait for {what}: {e}"));
    if !out.status.success() {
        let log = log.and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default();
        panic!(
            "{what} failed ({}):\n{}{}\nserver log:\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

/// CPU time (user + system, all threads) that process `pid` has used so far, seconds
/// (`testkit::procfs::cpu_seconds`).
///
/// # Panics
/// When the process is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    testkit::procfs::cpu_seconds(pid, false).expect("read /proc/<pid>/stat")
}

/// Per-partition sends of `payloads` to `topic` (message `i` to partition `i % partitions`,
/// keyed `key(i)`), all in flight at once; returns each message's (partition, offset) in order.
/// Panics unless every partition got at least one message, so a drill really spans the topic.
pub async fn send_spread(
    p: &FutureProducer,
    topic: &str,
    partitions: i32,
    payloads: Vec<(String, Vec<u8>)>,
) -> Vec<(i32, i64)> {
    let sends: Vec<_> = payloads
        .into_iter()
        .enumerate()
        .map(|(i, (key, payload))| {
            let (p, topic) = (p.clone(), topic.to_string());
            tokio::spawn(async move {
                let d = p
                    .send(
                        FutureRecord::to(&topic)
                            .partition(i as i32 % partitions)
                            .key(&key)
                            .payload(&payload),
                        Duration::from_secs(120),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("delivered");
                (d.partition, d.offset)
            })
        })
        .collect();
    let mut delivered = Vec::with_capacity(sends.len());
    for s in sends {
        delivered.push(s.await.unwrap());
    }
    let used: std::collections::BTreeSet<i32> = delivered.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        used.len() as i32,
        partitions,
        "messages reached partitions {used:?} of {partitions}"
    );
    delivered
}
