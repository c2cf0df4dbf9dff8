//! What the scenarios run against: the harness settings, PostgreSQL and the broker (started by
//! `scripts/bench.sh`), and the processes started here: nginx (the probe target),
//! blackbox_exporter, and the release `checker` and `sink` binaries, configured only through
//! their environment variables as in production.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

use crate::procs::{Proc, Who};
use testkit::http;
use testkit::metrics::Scrape;

/// Settings, from `BENCH_*` environment variables (see `scripts/bench.sh`).
#[derive(Debug, Clone)]
pub struct Bench {
    /// Repository root.
    pub repo: PathBuf,
    /// Where `checker` and `sink` are (`BENCH_BIN_DIR`, default `target/release`).
    pub bin_dir: PathBuf,
    /// Scratch directory for configs and logs (`BENCH_WORK_DIR`).
    pub work: PathBuf,
    /// Pids of started processes, one per line, for the shell's exit trap (`BENCH_PIDS_FILE`).
    pub pids_file: PathBuf,
    /// Broker `host:port` (`BENCH_KAFKA_BOOTSTRAP_SERVERS`).
    pub broker: String,
    /// The broker's pid, for its CPU (`BENCH_BROKER_PID`, optional).
    pub broker_pid: Option<u32>,
    /// Superuser DSN of the benchmark PostgreSQL server (`BENCH_DATABASE_URL`).
    pub db_url: String,
    /// `BENCH_QUICK=1`: one repeat, smaller sizes.
    pub quick: bool,
    /// Repeats per figure (`BENCH_REPEATS`, default 3, quick 1).
    pub repeats: usize,
    /// Scenarios to run (`BENCH_ONLY`, comma-separated), all when unset.
    pub only: Option<Vec<String>>,
    /// Run the perf profiles (`BENCH_PROFILE`: 1, 0, default 1 unless quick, when perf works).
    pub profile: bool,
    /// Report path (`BENCH_OUT`; default BENCHMARKS.md for a full run of every scenario,
    /// `<work>/BENCHMARKS.partial.md` otherwise).
    pub out: PathBuf,
    /// Messages pre-filled for the sink throughput (`BENCH_SINK_ROWS`, default 1,000,000; quick
    /// 200,000).
    pub sink_rows: usize,
    /// Image names (`CHECKER_IMAGE`, `SINK_IMAGE`).
    pub images: Vec<(String, String)>,
    /// Unique per run: prefixes topics, groups and databases.
    pub run_id: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn flag(name: &str) -> Option<bool> {
    env(name).map(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
}

impl Bench {
    /// Reads the settings.
    pub fn from_env() -> anyhow::Result<Self> {
        let repo = PathBuf::from(env("BENCH_REPO").unwrap_or_else(|| ".".into()));
        let quick = flag("BENCH_QUICK").unwrap_or(false);
        let work =
            PathBuf::from(env("BENCH_WORK_DIR").unwrap_or_else(|| repo.join(".tmp/bench").display().to_string()));
        std::fs::create_dir_all(&work)?;
        let repeats = match env("BENCH_REPEATS") {
            Some(v) => v.parse().context("BENCH_REPEATS must be a positive number")?,
            None if quick => 1,
            None => 3,
        };
        if repeats == 0 {
            bail!("BENCH_REPEATS must be positive");
        }
        let only: Option<Vec<String>> = env("BENCH_ONLY").map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
        // Only a full run of every scenario replaces the committed report.
        let out = env("BENCH_OUT").map_or_else(
            || {
                if quick || only.is_some() {
                    work.join("BENCHMARKS.partial.md")
                } else {
                    repo.join("BENCHMARKS.md")
                }
            },
            PathBuf::from,
        );
        Ok(Self {
            bin_dir: PathBuf::from(
                env("BENCH_BIN_DIR").unwrap_or_else(|| repo.join("target/release").display().to_string()),
            ),
            pids_file: PathBuf::from(env("BENCH_PIDS_FILE").unwrap_or_else(|| work.join("pids").display().to_string())),
            broker: env("BENCH_KAFKA_BOOTSTRAP_SERVERS")
                .context("BENCH_KAFKA_BOOTSTRAP_SERVERS is not set (run scripts/bench.sh)")?,
            broker_pid: env("BENCH_BROKER_PID").and_then(|p| p.trim().parse().ok()),
            db_url: env("BENCH_DATABASE_URL").context("BENCH_DATABASE_URL is not set (run scripts/bench.sh)")?,
            quick,
            repeats,
            only,
            profile: flag("BENCH_PROFILE").unwrap_or(!quick),
            out,
            sink_rows: match env("BENCH_SINK_ROWS") {
                Some(v) => v.parse().context("BENCH_SINK_ROWS must be a number")?,
                None if quick => 200_000,
                None => 1_000_000,
            },
            images: vec![
                (
                    "checker".into(),
                    env("CHECKER_IMAGE").unwrap_or_else(|| "healthcheck-pipeline/checker:local".into()),
                ),
                (
                    "sink".into(),
                    env("SINK_IMAGE").unwrap_or_else(|| "healthcheck-pipeline/sink:local".into()),
                ),
            ],
            run_id: chrono::Utc::now().format("%m%d%H%M%S").to_string(),
            work,
            repo,
        })
    }

    /// Whether scenario `name` is selected.
    pub fn wants(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|s| s == name))
    }

    /// `full` in a full run, `quick` in a quick one.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// A topic, group or database name unique to this run.
    pub fn name(&self, what: &str) -> String {
        format!("bench_{}_{what}", self.run_id)
    }

    /// Starts a process whose output goes to `<work>/<name>.log`.
    pub fn spawn(&self, name: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
        Proc::spawn(name, cmd, &self.work, &self.pids_file)
    }

    /// The broker as a CPU source, when its pid is known.
    pub fn broker_who(&self) -> Vec<(&'static str, Who)> {
        self.broker_pid.map(|p| ("broker", Who::Pid(p))).into_iter().collect()
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The benchmark PostgreSQL server.
pub struct Pg {
    /// Connection to the maintenance database.
    pub client: tokio_postgres::Client,
    base: String,
    /// The postmaster's pid, for CPU accounting.
    pub postmaster: Option<u32>,
    /// `SELECT version()`.
    pub version: String,
}

impl Pg {
    /// Connects with the superuser DSN.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = connect(url).await?;
        let dir: String = client.query_one("SHOW data_directory", &[]).await?.get(0);
        let postmaster = std::fs::read_to_string(Path::new(&dir).join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok());
        let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        Ok(Self {
            client,
            base: url.to_string(),
            postmaster,
            version,
        })
    }

    /// The DSN of database `db` on the same server.
    pub fn url(&self, db: &str) -> String {
        match self.base.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{db}"),
            None => self.base.clone(),
        }
    }

    /// Creates database `db` (dropping any of that name), optionally from a template.
    pub async fn create_db(&self, db: &str, template: Option<&str>) -> anyhow::Result<()> {
        self.drop_db(db).await?;
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {db} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {db}"),
        };
        self.client.batch_execute(&sql).await.with_context(|| sql.clone())?;
        Ok(())
    }

    /// Drops database `db`, closing its connections.
    pub async fn drop_db(&self, db: &str) -> anyhow::Result<()> {
        self.client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await?;
        Ok(())
    }

    /// A new connection to database `db`.
    pub async fn db(&self, db: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url(db)).await
    }

    /// Who to read PostgreSQL's CPU from.
    pub fn who(&self) -> Vec<(&'static str, Who)> {
        self.postmaster
            .map(|p| ("postgres", Who::Tree(p)))
            .into_iter()
            .collect()
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({})", url.rsplit('@').next().unwrap_or("")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The text every probe's body regex looks for.
pub const BODY_MARKER: &str = "status: healthy";

/// A ~2.7 KB HTML health page, the marker near its end (so the regex scans the whole body).
pub fn page() -> String {
    let mut rows = String::new();
    let mut i = 0;
    while rows.len() < 2_250 {
        rows.push_str(&format!(
            "      <tr><td>component-{i:02}</td><td>ok</td><td>{}.{:02} ms</td></tr>\n",
            1 + i % 7,
            (i * 37) % 100
        ));
        i += 1;
    }
    format!(
        "<!doctype html>\n<html lang=\"en\">\n  <head><meta charset=\"utf-8\"><title>Service health</title></head>\n  <body>\n    <h1>Service health</h1>\n    <table>\n{rows}    </table>\n    <p id=\"summary\">{BODY_MARKER}</p>\n  </body>\n</html>\n"
    )
}

/// nginx from Debian, serving [`page`] at `/health.html`, with `stub_status` at `/nginx_status`.
pub struct Nginx {
    proc: Proc,
    /// Listening address.
    pub addr: SocketAddr,
    /// Bytes of the page.
    pub page_bytes: usize,
}

impl Nginx {
    /// Writes a config under the work directory and starts nginx in the foreground (master and
    /// one worker per core), not the system service.
    pub async fn start(b: &Bench) -> anyhow::Result<Self> {
        let dir = b.work.join("nginx");
        let www = dir.join("www");
        std::fs::create_dir_all(&www)?;
        let page = page();
        std::fs::write(www.join("health.html"), &page)?;
        let port = free_port()?;
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 16384; multi_accept on; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n  \
             fastcgi_temp_path {d}/tmp-fastcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n  \
             server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    root {www};\n    \
             location = /nginx_status {{ stub_status; }}\n  }}\n}}\n",
            www = www.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let nginx = which("nginx", &["/usr/sbin/nginx"])?;
        let proc = b.spawn(
            "nginx",
            Command::new(nginx).arg("-c").arg(&conf_path).arg("-p").arg(&dir),
        )?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut n = Self {
            proc,
            addr,
            page_bytes: page.len(),
        };
        http::wait_for_200(addr, "/health.html", Duration::from_millis(50), Duration::from_secs(10)).await?;
        n.proc.ensure_running()?;
        Ok(n)
    }

    /// The probed URL.
    pub fn url(&self) -> String {
        format!("http://{}/health.html", self.addr)
    }

    /// Requests served so far (`stub_status`), including the status requests themselves.
    pub async fn requests(&self) -> anyhow::Result<f64> {
        let (_, body) = http::try_http_get(self.addr, "/nginx_status").await?;
        body.lines()
            .nth(2)
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .context("unexpected stub_status output")
    }

    /// nginx as a CPU source (master and workers).
    pub fn who(&self) -> (&'static str, Who) {
        ("nginx", Who::Tree(self.proc.pid()))
    }

    /// Stops nginx.
    pub async fn stop(self) {
        self.proc.stop(Duration::from_secs(5)).await;
    }
}

/// Finds a program on `PATH` or at one of `fallbacks`.
pub fn which(name: &str, fallbacks: &[&str]) -> anyhow::Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found (scripts/bench.sh installs it)"))
}

/// Prometheus' blackbox_exporter (Debian's `prometheus-blackbox-exporter`) with one HTTP module
/// equivalent to the checker's targets: GET, IPv4, body regex, 5 s timeout.
pub struct Blackbox {
    /// The process.
    pub proc: Proc,
    /// Listening address.
    pub addr: SocketAddr,
}

impl Blackbox {
    /// Starts it and waits until it answers.
    pub async fn start(b: &Bench, name: &str) -> anyhow::Result<Self> {
        let dir = b.work.join("blackbox");
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("blackbox.yml");
        std::fs::write(
            &conf,
            format!(
                "modules:\n  http_regex:\n    prober: http\n    timeout: 5s\n    http:\n      method: GET\n      \
                 preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n      \
                 fail_if_body_not_matches_regexp:\n        - \"{BODY_MARKER}\"\n"
            ),
        )?;
        let port = free_port()?;
        let exe = which(
            "prometheus-blackbox-exporter",
            &["/usr/bin/prometheus-blackbox-exporter"],
        )?;
        let proc = b.spawn(
            name,
            Command::new(exe)
                .arg(format!("--config.file={}", conf.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn"),
        )?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut bb = Self { proc, addr };
        http::wait_for_200(addr, "/metrics", Duration::from_millis(50), Duration::from_secs(15)).await?;
        bb.proc.ensure_running()?;
        Ok(bb)
    }

    /// The `/probe` request for `target`.
    pub fn probe_path(target: &str) -> String {
        let enc: String = target
            .bytes()
            .map(|c| match c {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (c as char).to_string(),
                _ => format!("%{c:02X}"),
            })
            .collect();
        format!("/probe?module=http_regex&target={enc}")
    }
}

/// A running `checker` or `sink` release binary.
pub struct Service {
    /// The process.
    pub proc: Proc,
    /// Its admin server.
    pub admin: SocketAddr,
}

impl Service {
    /// Starts `bin` (`checker` or `sink`) with exactly `vars` (plus `PATH`, `ADMIN_ADDR`,
    /// `LOG_FORMAT=json` and the harness's own `MIMALLOC_*`); waits for `/readyz` when `ready` is set.
    pub async fn start(b: &Bench, bin: &str, name: &str, vars: &[(&str, String)], ready: bool) -> anyhow::Result<Self> {
        let port = free_port()?;
        let admin: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = Command::new(b.bin_dir.join(bin));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ADMIN_ADDR", admin.to_string())
            // Several sinks may run at once: no shared default port (a scenario may set one).
            .env("STATUS_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("INSTANCE_ID", "bench")
            .env("KAFKA_BOOTSTRAP_SERVERS", &b.broker);
        // The allocator's own knobs pass through, for experiments (`MIMALLOC_VERBOSE=1` ...).
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("MIMALLOC_")) {
            cmd.env(k, v);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let proc = b.spawn(name, &mut cmd)?;
        let mut s = Self { proc, admin };
        if ready {
            s.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(s)
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let r = http::wait_for_200(self.admin, "/readyz", Duration::from_millis(5), limit).await;
        self.proc.ensure_running()?;
        r
    }

    /// Scrapes `/metrics`.
    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        Scrape::fetch(self.admin).await
    }

    /// The service as a CPU source.
    pub fn who(&self, name: &'static str) -> (&'static str, Who) {
        (name, Who::Pid(self.proc.pid()))
    }

    /// Graceful stop (SIGTERM) within `grace`.
    pub async fn stop(self, grace: Duration) {
        self.proc.stop(grace).await;
    }
}

/// Writes a checker target file (JSON) of `n` targets probing `url` every `interval`, each
/// with the body regex; returns its path.
pub fn write_targets(b: &Bench, file: &str, n: usize, interval: &str, url: &str) -> anyhow::Result<PathBuf> {
    let targets: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "name": format!("bench-{i:05}"),
                "url": url,
                "regex": BODY_MARKER,
                "interval": interval,
            })
        })
        .collect();
    let path = b.work.join(file);
    std::fs::write(&path, serde_json::to_vec(&targets)?)?;
    Ok(path)
}

/// Starts a checker probing `n` targets every `interval` and publishing to `topic`.
pub async fn start_checker(
    b: &Bench,
    name: &str,
    n: usize,
    interval: &str,
    url: &str,
    topic: &str,
) -> anyhow::Result<Service> {
    start_checker_with(b, name, n, interval, url, topic, &[]).await
}

/// [`start_checker`] with `extra` variables (e.g. `("REALTIME_PRIORITY", "50")`).
pub async fn start_checker_with(
    b: &Bench,
    name: &str,
    n: usize,
    interval: &str,
    url: &str,
    topic: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Service> {
    let file = write_targets(b, &format!("{name}-targets.json"), n, interval, url)?;
    let mut vars = vec![
        ("TARGETS_FILE", file.display().to_string()),
        ("KAFKA_TOPIC", topic.to_string()),
    ];
    vars.extend(extra.iter().cloned());
    Service::start(b, "checker", name, &vars, true).await
}

/// Starts a sink writing `topic` into database `db` as consumer group `group`.
pub async fn start_sink(
    b: &Bench,
    pg: &Pg,
    name: &str,
    db: &str,
    topic: &str,
    group: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Service> {
    let mut vars = vec![
        ("DATABASE_URL", pg.url(db)),
        ("KAFKA_TOPIC", topic.to_string()),
        ("KAFKA_GROUP_ID", group.to_string()),
    ];
    vars.extend(extra.iter().cloned());
    Service::start(b, "sink", name, &vars, true).await
}

/// Creates `topic` with the services' default of 6 partitions.
pub async fn ensure_topic(b: &Bench, topic: &str) -> anyhow::Result<()> {
    let env = common::config::Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", b.broker.as_str()), ("KAFKA_TOPIC", topic)]);
    let k = common::kafka::KafkaSettings::from_env(&env).map_err(|e| anyhow::anyhow!("{e}"))?;
    k.ensure_topic().await?;
    Ok(())
}

/// Deletes topics (frees the in-memory broker's memory); errors are ignored.
pub async fn delete_topics(b: &Bench, topics: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: Result<AdminClient<DefaultClientContext>, _> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &b.broker)
        .create();
    if let Ok(admin) = admin {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let _ = tokio::time::timeout(Duration::from_secs(15), admin.delete_topics(topics, &opts)).await;
    }
}
