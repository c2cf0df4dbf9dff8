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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .context("VmRSS")?
        * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok((rss, ticks / 100.0))
}

/// The sum of every series of `name` on the checker's `/metrics`; `None` when absent.
async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: checker\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    let values: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

struct Checker(Child);

impl Drop for Checker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bin: PathBuf = env_or("CHECKER_BIN", PathBuf::from("target/release/checker"))?;
    let n: usize = env_or("OUTAGE_TARGETS", 5000)?;
    let interval: String = env_or("OUTAGE_INTERVAL", "5s".to_string())?;
    let warmup = Duration::from_secs(env_or("OUTAGE_WARMUP_SECONDS", 60)?);
    let outage = Duration::from_secs(env_or("OUTAGE_SECONDS", 600)?);
    let after = Duration::from_secs(env_or("OUTAGE_AFTER_SECONDS", 120)?);
    let every = Duration::from_secs(env_or("OUTAGE_SAMPLE_EVERY", 30)?);
    let work: PathBuf = env_or("OUTAGE_WORK_DIR", PathBuf::from(".tmp/outage"))?;
    if !bin.exists() {
        bail!(
            "{}: no checker binary (cargo build --release -p checker)",
            bin.display()
        );
    }
    std::fs::create_dir_all(&work)?;

    let mock = MockCluster::new(1)?;
    mock.create_topic(TOPIC, 6, 1)?;
    let server = target_server().await?;
    let targets: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"name": format!("t{i:05}"), "url": format!("http://{server}/"), "interval": interval, "timeout": "1s"}))
        .collect();
    let targets_file = work.join("targets.json");
    std::fs::write(&targets_file, serde_json::to_string(&targets)?)?;
    let admin: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let log = std::fs::File::create(work.join("checker.log"))?;
    let mut cmd = Command::new(&bin);
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
    let checker = Checker(cmd.spawn().with_context(|| format!("start {}", bin.display()))?);
    let pid = checker.0.id();
    eprintln!(
        "outage: {} ({pid}), {n} targets every {interval}, admin {admin}; warm-up {warmup:?}, outage {outage:?}, after {after:?}",
        bin.display()
    );

    let mut table = String::from(
        "| t (s) | phase | VmRSS (MiB) | CPU over the last sample (% of a core) | results waiting | dropped (total) | published (total) | probes completed (total) |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let t0 = Instant::now();
    let (mut last_t, mut last_cpu) = (t0, rss_and_cpu(pid)?.1);
    let mut sample = |phase: &'static str| {
        let (rss, cpu) = rss_and_cpu(pid)?;
        let now = Instant::now();
        let pct = 100.0 * (cpu - last_cpu) / now.duration_since(last_t).as_secs_f64();
        (last_t, last_cpu) = (now, cpu);
        anyhow::Ok((now.duration_since(t0).as_secs(), phase, rss as f64 / MIB, pct))
    };
    let record = |table: &mut String, s: (u64, &str, f64, f64), m: [Option<f64>; 4]| {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let line = format!(
            "| {} | {} | {:.1} | {:.0} | {} | {} | {} | {} |",
            s.0,
            s.1,
            s.2,
            s.3,
            f(m[0]),
            f(m[1]),
            f(m[2]),
            f(m[3])
        );
        eprintln!("{line}");
        let _ = writeln!(table, "{line}");
    };
    let scrape = || async {
        [
            metric(admin, "healthcheck_checker_results_waiting").await,
            metric(admin, "healthcheck_checker_results_dropped_total").await,
            metric(admin, "healthcheck_checker_published_total").await,
            metric(admin, "healthcheck_checker_probes_completed_total").await,
        ]
    };

    let phases: [(&'static str, Duration); 3] =
        [("broker up", warmup), ("broker down", outage), ("broker back", after)];
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
                every
            };
            tokio::time::sleep(step.min(length.saturating_sub(start.elapsed()))).await;
            let s = sample(phase)?;
            let m = scrape().await;
            if phase == "broker back" && drained_after.is_none() && m[0].is_some_and(|w| w < 1000.0) {
                drained_after = Some(start.elapsed());
            }
            record(&mut table, s, m);
        }
    }
    let pub_end = scrape().await;
    drop(checker);
    println!("{table}");
    match drained_after {
        Some(d) => println!(
            "Backlog drained (fewer than 1,000 results waiting) {:.0} s after the broker came back.",
            d.as_secs_f64()
        ),
        None => println!("The backlog did not drain within {after:?} (or the checker has no results_waiting gauge)."),
    }
    println!("At the end: published {:?}, dropped {:?}.", pub_end[2], pub_end[1]);
    Ok(())
}
