//! Where the time goes: `perf record -e cpu-clock` (a software clock, since this machine's
//! virtual CPUs expose no hardware counters) on separate, unmeasured runs:
//! - the checker at the CPU comparison's probe rate;
//! - the sink draining the pre-filled topic, with PostgreSQL and the broker recorded at the
//!   same time, each process separately.
//!
//! The flat profiles (self time by shared object and symbol) go into BENCHMARKS.md; the
//! `perf.data` files stay in the work directory for `perf report -i`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::Command;

use crate::procs;
use crate::setup;
use crate::Ctx;

/// Whether `perf record -e cpu-clock` works here.
pub async fn perf_works(work: &Path) -> bool {
    let out = work.join("perf-check.data");
    let ok = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-o"])
        .arg(&out)
        .args(["--", "true"])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_file(out);
    ok
}

async fn record(ctx: &Ctx, name: &str, pids: &[u32], secs: u64, call_graph: bool) -> anyhow::Result<procs::Proc> {
    let out = ctx.b.work.join(format!("{name}.perf.data"));
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-q", "-e", "cpu-clock", "-F", "999"]);
    if call_graph {
        cmd.arg("-g");
    }
    cmd.arg("-o")
        .arg(&out)
        .arg("-p")
        .arg(pids.join(","))
        .args(["--", "sleep", &secs.to_string()]);
    ctx.b.spawn(&format!("perf-{name}"), &mut cmd)
}

/// `perf report --children` lines of user-space symbols (the system-call wrappers), with the
/// kernel time spent under each.
async fn inclusive_syscalls(file: &Path) -> String {
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--children",
            "-g",
            "none",
            "--percent-limit",
            "1",
            "--sort",
            "dso,sym",
            "-i",
        ])
        .arg(file)
        .output()
        .await;
    let Ok(o) = out else {
        return "(perf report failed)".into();
    };
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let body: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("libc.so") && l.contains("[.]"))
        .take(12)
        .map(str::trim_end)
        .collect();
    format!("```\n{}\n```\n", body.join("\n"))
}

/// The first `lines` lines of a flat `perf report` sorted by `sort`.
async fn report(file: &Path, sort: &str, lines: usize) -> String {
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "--percent-limit",
            "0.5",
            "--sort",
            sort,
            "-i",
        ])
        .arg(file)
        .output()
        .await;
    let text = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        Err(e) => return format!("(perf report failed: {e})"),
    };
    let body: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(lines)
        .map(|l| l.trim_end().chars().take(160).collect())
        .collect();
    format!("```\n{}\n```\n", body.join("\n"))
}

fn data(ctx: &Ctx, name: &str) -> PathBuf {
    ctx.b.work.join(format!("{name}.perf.data"))
}

/// Records and summarises the profiles.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    if !perf_works(&ctx.b.work).await {
        ctx.report.profiles.push((
            "Profiles".into(),
            "`perf record -e cpu-clock` does not work on this machine, so no profile was recorded; \
             `valgrind --tool=callgrind` on a shorter run is the fallback."
                .into(),
        ));
        return Ok(());
    }
    checker(ctx).await.context("checker profile")?;
    if ctx.sink_topic.is_some() {
        sink(ctx).await.context("sink profile")?;
    }
    Ok(())
}

async fn checker(ctx: &mut Ctx) -> anyhow::Result<()> {
    let rate = ctx.cpu_rate.unwrap_or(3_200.0);
    let targets = ((rate * 0.1).round() as usize).max(1);
    let topic = ctx.b.name("profile");
    ctx.topics.push(topic.clone());
    let checker = setup::start_checker(&ctx.b, "checker-profile", targets, "100ms", &ctx.nginx.url(), &topic).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secs = 10;
    let perf = record(ctx, "checker", &[checker.proc.pid()], secs, true).await?;
    perf.wait(Duration::from_secs(secs + 30)).await;
    checker.stop(Duration::from_secs(10)).await;
    let f = data(ctx, "checker");
    let body = format!(
        "{targets} targets every 100 ms ({} probes/s), {secs} s, `perf record -e cpu-clock -F 999 -g -p <checker>`; \
         self time.\n\nBy thread (tokio workers vs librdkafka threads):\n\n{}\nBy shared object:\n\n{}\nBy symbol:\n\n{}\n\
         Inclusive time of the C library's system-call wrappers (kernel call chains are complete; the release \
         binary has no frame pointers, so Rust callers are not):\n\n{}",
        targets * 10,
        report(&f, "comm", 12).await,
        report(&f, "dso", 12).await,
        report(&f, "dso,sym", 40).await,
        inclusive_syscalls(&f).await,
    );
    ctx.report.profiles.push(("Profile: checker".into(), body));
    Ok(())
}

async fn sink(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (topic, n) = ctx.sink_topic.clone().expect("checked");
    let db = ctx.b.name("profile");
    ctx.pg.create_db(&db, Some(&ctx.template)).await?;
    let group = format!("{topic}_profile");
    let sink = setup::start_sink(&ctx.b, &ctx.pg, "sink-profile", &db, &topic, &group, &[]).await?;
    // Start recording once rows flow.
    for _ in 0..300 {
        if sink.scrape().await?.sum("healthcheck_sink_rows_inserted_total") > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = if n >= 500_000 { 6 } else { 2 };
    let mut pg_pids: Vec<u32> = ctx.pg.postmaster.map(procs::children_of).unwrap_or_default();
    pg_pids.extend(ctx.pg.postmaster);
    let mut runs = vec![("sink", record(ctx, "sink", &[sink.proc.pid()], secs, true).await?)];
    if !pg_pids.is_empty() {
        runs.push(("postgres", record(ctx, "postgres", &pg_pids, secs, true).await?));
    }
    if let Some(p) = ctx.b.broker_pid {
        runs.push(("broker", record(ctx, "broker", &[p], secs, false).await?));
    }
    for (_, p) in runs {
        p.wait(Duration::from_secs(secs + 30)).await;
    }
    sink.stop(Duration::from_secs(30)).await;
    ctx.pg.drop_db(&db).await?;
    let mut body = format!(
        "The sink draining the pre-filled topic (fresh group and database, default batch settings), {secs} s from its first \
         inserted row; the sink, every PostgreSQL process and the broker recorded at once, each on its own.\n\n"
    );
    for name in ["sink", "postgres", "broker"] {
        let f = data(ctx, name);
        if f.exists() {
            body.push_str(&format!(
                "{name}, by shared object:\n\n{}\n{name}, by symbol:\n\n{}\n",
                report(&f, "dso", 8).await,
                report(&f, "dso,sym", 30).await
            ));
        }
    }
    ctx.report
        .profiles
        .push(("Profile: sink, PostgreSQL and broker during ingestion".into(), body));
    Ok(())
}
