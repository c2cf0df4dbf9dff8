//! Real dependencies for the sink's tests: a fresh database per test in the test PostgreSQL,
//! private topics on the test broker, a private broker when a test needs to cut it off, a
//! private PostgreSQL cluster when a test needs to restart it, a TCP forwarder that simulates
//! outages, and a loopback HTTP target.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The test PostgreSQL's URL (exported by `make test`).
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL is not set: run the tests with `make test`")
}

/// The test broker (exported by `make test`).
pub fn bootstrap() -> String {
    std::env::var("TEST_KAFKA_BOOTSTRAP_SERVERS")
        .expect("TEST_KAFKA_BOOTSTRAP_SERVERS is not set: run the tests with `make test`")
}

/// A unique name for topics, groups and databases.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A fresh, empty database; returns its URL.
pub async fn fresh_database() -> String {
    let admin = database_url();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to TEST_DATABASE_URL");
    tokio::spawn(conn);
    let name = unique("t");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

/// The `host:port` of a PostgreSQL URL.
pub fn pg_addr(url: &str) -> SocketAddr {
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        _ => panic!("TCP host expected"),
    };
    format!("{host}:{}", cfg.get_ports()[0]).parse().unwrap()
}

/// A client of the database at `url`.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// `SELECT count(*)` of `table`.
pub async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A producer for raw test messages.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
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

/// Sends `payload` keyed by `key` and waits for the acknowledgement.
pub async fn send(p: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    p.send(
        FutureRecord::to(topic).key(key).payload(payload),
        Duration::from_secs(30),
    )
    .await
    .expect("delivered");
}

/// GET `path` on `addr`: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect admin");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "test")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A TCP forwarder from a local port to `upstream` that a test can cut and restore: a real
/// outage of a real dependency. A cut closes every connection and the listening socket, so new
/// connections are refused, as they are by a host whose service is down. (Accepting and then
/// closing them instead looks like a broker that does not speak the protocol, and librdkafka
/// reacts to that differently.) Restoring binds the same port again.
///
/// A black hole ([`Forwarder::black_hole`]) instead stops forwarding bytes in both directions
/// and closes nothing: connections stay open and new ones are accepted, but no answer comes,
/// as from a host that vanished from the network without a reset. What was sent meanwhile is
/// held and forwarded, in order, after [`Forwarder::resume`]. (The kernel still acknowledges
/// the bytes on loopback, so this is noticed by application timeouts, not by TCP's.)
pub struct Forwarder {
    /// Where clients connect.
    pub addr: SocketAddr,
    upstream: SocketAddr,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// `true` while black-holed.
    hole: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Forwarder {
    /// Starts forwarding from a free port (or `port` when given) to `upstream`.
    pub async fn start(upstream: SocketAddr, port: Option<u16>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
            .await
            .expect("bind forwarder");
        let addr = listener.local_addr().unwrap();
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let hole = Arc::new(tokio::sync::watch::channel(false).0);
        let accept = Self::serve(listener, upstream, conns.clone(), hole.clone());
        Self {
            addr,
            upstream,
            conns,
            accept: std::sync::Mutex::new(Some(accept)),
            hole,
        }
    }

    fn serve(
        listener: TcpListener,
        upstream: SocketAddr,
        conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
        hole: Arc<tokio::sync::watch::Sender<bool>>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let hole = hole.clone();
                let conn = tokio::spawn(async move {
                    if hole.subscribe().wait_for(|holed| !*holed).await.is_err() {
                        return;
                    }
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            pump(in_read, out_write, hole.subscribe()),
                            pump(out_read, in_write, hole.subscribe())
                        );
                    }
                });
                let mut c = conns.lock().unwrap();
                c.retain(|h| !h.is_finished());
                c.push(conn);
            }
        })
    }

    /// Closes the listening socket and every open connection.
    pub async fn cut(&self) {
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        let conns: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        for c in conns {
            c.abort();
            let _ = c.await;
        }
    }

    /// Listens on the same port again.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("rebind the forwarder on {}: {e}", self.addr));
        let accept = Self::serve(listener, self.upstream, self.conns.clone(), self.hole.clone());
        *self.accept.lock().unwrap() = Some(accept);
    }

    /// Stops forwarding without closing anything (see the type's doc).
    pub fn black_hole(&self) {
        self.hole.send_replace(true);
    }

    /// Forwards again, the held bytes first.
    pub fn resume(&self) {
        self.hole.send_replace(false);
    }
}

/// Copies `from` to `to` until either closes, holding the bytes while `hole` is `true`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hole: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if hole.wait_for(|holed| !*holed).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Not even the close goes through a black hole.
    let _ = hole.wait_for(|holed| !*holed).await;
    let _ = to.shutdown().await;
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
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

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback HTTP target answering `body` with 200 to every request.
pub async fn http_target(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(body.as_bytes()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
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

/// A workspace binary next to this crate's (`cargo nextest run --workspace` builds them all).
pub fn bin(name: &str) -> PathBuf {
    let sink = PathBuf::from(env!("CARGO_BIN_EXE_sink"));
    let p = sink.with_file_name(name);
    assert!(
        p.exists(),
        "{} not built: run the tests for the whole workspace (make test)",
        p.display()
    );
    p
}

/// A child process that is killed when the test ends, even when it panics.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts the workspace binary `name` with only `env` (and `PATH`), its stderr appended to `log`.
pub fn spawn(name: &str, env: &[(&str, String)], log: &Path) -> Proc {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(bin(name))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc(child)
}

/// CPU time (user + system, all threads) that process `pid` has used so far, seconds: fields
/// 14 and 15 (`utime`, `stime`) of `/proc/<pid>/stat`, in clock ticks (`getconf CLK_TCK`);
/// see proc_pid_stat(5).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is fields[n - 3].
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
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

/// Everything `topic` holds, read back with a consumer outside any group (every partition
/// assigned from its low to its high watermark): (partition, offset, payload), in partition
/// and offset order.
pub async fn read_topic(bootstrap: &str, topic: &str) -> Vec<(i32, i64, Option<Vec<u8>>)> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::Message;
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader consumer");
        let timeout = Duration::from_secs(10);
        let md = c.fetch_metadata(Some(&topic), timeout).expect("metadata");
        let mut ends = std::collections::BTreeMap::new();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            let (low, high) = c.fetch_watermarks(&topic, p.id(), timeout).expect("watermarks");
            if high > low {
                ends.insert(p.id(), high);
                tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Offset(low))
                    .unwrap();
            }
        }
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ends.is_empty() {
            assert!(
                Instant::now() < deadline,
                "reading {topic} back timed out; still to read: {ends:?}"
            );
            let Some(m) = c.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.expect("read the topic");
            out.push((m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec)));
            if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                ends.remove(&m.partition());
            }
        }
        out.sort_by_key(|(p, o, _)| (*p, *o));
        out
    })
    .await
    .unwrap()
}
