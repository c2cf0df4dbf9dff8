//! `outage`: the release checker through a long broker outage — its resident memory (VmRSS)
//! and CPU every `OUTAGE_SAMPLE_EVERY`, before, during and after the outage, and how long the
//! backlog takes to drain once the broker is back. Prints a Markdown table. Not a test: no
//! figure is asserted.
//!
//! Runs on its own, without `scripts/bench.sh`: the broker is librdkafka's mock cluster in this
//! process (so taking it down and back is exact, and its CPU is not the checker's), the targets
//! are one loopback HTTP server in this process answering `200 ok` on a fresh connection per
//! probe, as the checker makes them.
//!
//! ```sh
//! cargo build --release -p checker -p bench
//! target/release/outage                    # 5,000 targets every 5 s (1,000 probes/s), 10-minute outage
//! ```
//!
//! Environment: `CHECKER_BIN` (default `target/release/checker`), `OUTAGE_TARGETS` (5000),
//! `OUTAGE_INTERVAL` (`5s`), `OUTAGE_WARMUP_SECONDS` (60), `OUTAGE_SECONDS` (600),
//! `OUTAGE_AFTER_SECONDS` (120), `OUTAGE_SAMPLE_EVERY` (30, seconds), `OUTAGE_WORK_DIR`
//! (`.tmp/outage`), and any `KAFKA_CFG_*` for the checker (e.g.
//! `KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::mocking::MockCluster;
use testkit::metrics::Scrape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOPIC: &str = "healthcheck-results";
const MIB: f64 = 1024.0 * 1024.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| anyhow::anyhow!("{name}: {v:?} is not valid")),
        _ => Ok(default),
    }
}

/// A loopback HTTP server: reads a request head, answers `200 ok`, closes.
async fn target_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(answer(s));
        }
    });
    Ok(addr)
}

async fn answer(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await;
    let _ = s.shutdown().await;
}

/// `(VmRSS bytes, utime + stime seconds)` of `pid`.
fn rss_and_cpu(pid: u32) -> anyhow::Result<(u64, f64)> {
    Ok((
        testkit::procfs::rss_bytes(pid)?.0,
        testkit::procfs::cpu_seconds(pid, false)?,
    ))
}

/// What each sample reads from the checker's `/metrics`, in table order.
const SAMPLED: [&str; 4] = [
    "healthcheck_checker_results_waiting",
    "healthcheck_checker_results_dropped_total",
    "healthcheck_checker_published_total",
    "healthcheck_checker_probes_completed_total",
];

/// The sums of the [`SAMPLED`] metrics on the checker's `/metrics`; `None` for each when
/// absent or when the scrape fails.
async fn scrape(admin: SocketAddr) -> [Option<f64>; 4] {
    let m = Scrape::fetch(admin).await.ok();
    SAMPLED.map(|name| m.as_ref()?.metric(name, &[]))
}

struct Checker(Child);

impl Drop for Checker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The run's settings, from the environment (see the module doc).
struct Settings {
    bin: PathBuf,
    targets: usize,
    interval: String,
    warmup: Duration,
    outage: Duration,
    after: Duration,
    every: Duration,
    work: PathBuf,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let s = Self {
            bin: env_or("CHECKER_BIN", PathBuf::from("target/release/checker"))?,
            targets: env_or("OUTAGE_TARGETS", 5000)?,
            interval: env_or("OUTAGE_INTERVAL", "5s".to_string())?,
            warmup: Duration::from_secs(env_or("OUTAGE_WARMUP_SECONDS", 60)?),
            outage: Duration::from_secs(env_or("OUTAGE_SECONDS", 600)?),
            after: Duration::from_secs(env_or("OUTAGE_AFTER_SECONDS", 120)?),
            every: Duration::from_secs(env_or("OUTAGE_SAMPLE_EVERY", 30)?),
            work: env_or("OUTAGE_WORK_DIR", PathBuf::from(".tmp/outage"))?,
        };
        if !s.bin.exists() {
            bail!(
                "{}: no checker binary (cargo build --release -p checker)",
                s.bin.display()
            );
        }
        Ok(s)
    }
}

/// Writes the targets file (all on `server`) and starts the checker publishing to `mock`;
/// returns it and its admin address.
fn start_checker(
    cfg: &Settings,
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    server: SocketAddr,
) -> anyhow::Result<(Checker, SocketAddr)> {
    let targets: Vec<_> = (0..cfg.targets)
        .map(|i| serde_json::json!({"name": format!("t{i:05}"), "url": format!("http://{server}/"), "interval": cfg.interval, "timeout": "1s"}))
        .collect();
    let targets_file = cfg.work.join("targets.json");
    std::fs::write(&targets_file, serde_json::to_string(&targets)?)?;
    let admin: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let log = std::fs::File::create(cfg.work.join("checker.log"))?;
    let mut cmd = Command::new(&cfg.bin);
    cmd.env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", mock.bootstrap_servers())
        .env("KAFKA_TOPIC", TOPIC)
        .env("KAFKA_CREATE_TOPIC", "false")
        .env("TARGETS_FILE", &targets_file)
        .env("ADMIN_ADDR", admin.to_string())
        .env("PROBE_CONCURRENCY", "2048")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("KAFKA_CFG_")) {
        cmd.env(k, v);
    }
    let checker = Checker(cmd.spawn().with_context(|| format!("start {}", cfg.bin.display()))?);
    Ok((checker, admin))
}

/// The table being written: one row per sample, CPU measured since the previous one.
struct Table {
    pid: u32,
    t0: Instant,
    last_t: Instant,
    last_cpu: f64,
    text: String,
}

impl Table {
    fn new(pid: u32) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        Ok(Self {
            pid,
            t0,
            last_t: t0,
            last_cpu: rss_and_cpu(pid)?.1,
            text: String::from(
                "| t (s) | phase | VmRSS (MiB) | CPU over the last sample (% of a core) | results waiting | dropped (total) | published (total) | probes completed (total) |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
            ),
        })
    }

    /// Reads memory and CPU now, and adds the row of `phase` with the metrics `m`.
    fn record(&mut self, phase: &str, m: [Option<f64>; 4]) -> anyhow::Result<()> {
        let (rss, cpu) = rss_and_cpu(self.pid)?;
        let now = Instant::now();
        let pct = 100.0 * (cpu - self.last_cpu) / now.duration_since(self.last_t).as_secs_f64();
        (self.last_t, self.last_cpu) = (now, cpu);
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let line = format!(
            "| {} | {} | {:.1} | {:.0} | {} | {} | {} | {} |",
            now.duration_since(self.t0).as_secs(),
            phase,
            rss as f64 / MIB,
            pct,
            f(m[0]),
            f(m[1]),
            f(m[2]),
            f(m[3])
        );
        eprintln!("{line}");
        let _ = writeln!(self.text, "{line}");
        Ok(())
    }
}

/// Runs the three phases (broker up, down, back), sampling into `table`; returns how long
/// after the broker came back the backlog fell under 1,000 results waiting, if it did.
async fn run_phases(
    cfg: &Settings,
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    admin: SocketAddr,
    table: &mut Table,
) -> anyhow::Result<Option<Duration>> {
    let phases: [(&'static str, Duration); 3] = [
        ("broker up", cfg.warmup),
        ("broker down", cfg.outage),
        ("broker back", cfg.after),
    ];
    let mut drained_after = None;
    for (phase, length) in phases {
        match phase {
            "broker down" => mock.broker_down(1)?,
            "broker back" => mock.broker_up(1)?,
            _ => {}
        }
        let start = Instant::now();
        while start.elapsed() < length {
            // After the outage, sample every 5 s until the backlog is gone, to time the drain.
            let step = if phase == "broker back" && drained_after.is_none() {
                Duration::from_secs(5)
            } else {
                cfg.every
            };
            tokio::time::sleep(step.min(length.saturating_sub(start.elapsed()))).await;
            let m = scrape(admin).await;
            if phase == "broker back" && drained_after.is_none() && m[0].is_some_and(|w| w < 1000.0) {
                drained_after = Some(start.elapsed());
            }
            table.record(phase, m)?;
        }
    }
    Ok(drained_after)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cfg = Settings::from_env()?;
    std::fs::create_dir_all(&cfg.work)?;
    let mock = MockCluster::new(1)?;
    mock.create_topic(TOPIC, 6, 1)?;
    let server = target_server().await?;
    let (checker, admin) = start_checker(&cfg, &mock, server)?;
    let pid = checker.0.id();
    eprintln!(
        "outage: {} ({pid}), {} targets every {}, admin {admin}; warm-up {:?}, outage {:?}, after {:?}",
        cfg.bin.display(),
        cfg.targets,
        cfg.interval,
        cfg.warmup,
        cfg.outage,
        cfg.after
    );

    let mut table = Table::new(pid)?;
    let drained_after = run_phases(&cfg, &mock, admin, &mut table).await?;
    let pub_end = scrape(admin).await;
    drop(checker);
    println!("{}", table.text);
    match drained_after {
        Some(d) => println!(
            "Backlog drained (fewer than 1,000 results waiting) {:.0} s after the broker came back.",
            d.as_secs_f64()
        ),
        None => println!(
            "The backlog did not drain within {:?} (or the checker has no results_waiting gauge).",
            cfg.after
        ),
    }
    println!("At the end: published {:?}, dropped {:?}.", pub_end[2], pub_end[1]);
    Ok(())
}
