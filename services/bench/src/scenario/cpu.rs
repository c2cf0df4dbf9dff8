//! Item 1: checker CPU per probe against blackbox_exporter's, at the same probe rate, on the
//! same nginx page with the same body regex.
//!
//! blackbox_exporter is driven the way Prometheus drives it: one `/probe` request per probe,
//! here from wrk with 8 connections (closed loop, as fast as it answers). Its probe rate sets
//! the checker's: `targets = rate × 0.1 s` targets every 100 ms. Each side's CPU is
//! `/proc/<pid>/stat` utime + stime over the same window length, divided by the probes
//! completed in it (nginx's request counter for blackbox_exporter, the checker's
//! `healthcheck_checker_probes_completed_total`). The checker's CPU includes encoding and
//! publishing every result to the broker (librdkafka runs in its process).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

use crate::procs::{CpuSnap, Who};
use crate::report::{num, Figure, Goal};
use crate::setup::{self, Blackbox};
use crate::Ctx;

/// One repeat's numbers.
struct Pair {
    theirs_rate: f64,
    theirs_ms: f64,
    theirs_cores: String,
    ours_targets: usize,
    ours: Checker,
    /// The checker of `BENCH_BASELINE_BIN_DIR`, at the same rate.
    baseline: Option<Checker>,
}

/// One checker run's numbers.
struct Checker {
    rate: f64,
    /// CPU ms per probe.
    ms: f64,
    success: f64,
    cores: String,
    broker_ms: f64,
}

/// Runs the comparison.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let warm = Duration::from_secs(b.pick(3, 2));
    let window = Duration::from_secs(b.pick(10, 5));
    let mut pairs = Vec::new();
    for r in 0..b.repeats {
        pairs.push(
            repeat(ctx, r, warm, window)
                .await
                .with_context(|| format!("repeat {}", r + 1))?,
        );
    }
    ctx.cpu_rate = Some(pairs.iter().map(|p| p.theirs_rate).sum::<f64>() / pairs.len() as f64);

    let col = |f: &dyn Fn(&Pair) -> f64| pairs.iter().map(f).collect::<Vec<f64>>();
    let figs = &mut ctx.report.figures;
    figs.push(Figure::new(
        "1",
        "blackbox_exporter probe rate (wrk, 8 connections)",
        "probes/s",
        col(&|p| p.theirs_rate),
        None,
    ));
    figs.push(Figure::new(
        "1",
        "checker probe rate (matched)",
        "probes/s",
        col(&|p| p.ours.rate),
        None,
    ));
    figs.push(Figure::new(
        "1",
        "blackbox_exporter CPU per probe",
        "ms",
        col(&|p| p.theirs_ms),
        None,
    ));
    figs.push(Figure::new(
        "1",
        "checker CPU per probe, publishing included",
        "ms",
        col(&|p| p.ours.ms),
        None,
    ));
    figs.push(Figure::new(
        "1",
        "CPU per probe, checker / blackbox_exporter (pair by pair)",
        "ratio",
        col(&|p| p.ours.ms / p.theirs_ms),
        Some(Goal::AtMost(0.33)),
    ));
    if pairs.iter().all(|p| p.baseline.is_some()) {
        let base = |p: &Pair| p.baseline.as_ref().map_or(f64::NAN, |c| c.ms);
        figs.push(Figure::new(
            "1",
            "checker CPU per probe — baseline (BENCH_BASELINE_BIN_DIR)",
            "ms",
            col(&base),
            None,
        ));
        figs.push(Figure::new(
            "1",
            "checker CPU per probe, this build / baseline (pair by pair)",
            "ratio",
            col(&|p| p.ours.ms / base(p)),
            None,
        ));
    }

    let mut d = String::from(
        "| repeat | blackbox probes/s | blackbox ms/probe | cores used (blackbox run) | checker targets ×100 ms | checker probes/s | success | checker ms/probe | broker ms/probe | cores used (checker run) | ratio |\n\
         |---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for (i, p) in pairs.iter().enumerate() {
        for (build, c) in std::iter::once(("", &p.ours)).chain(p.baseline.as_ref().map(|c| (" (baseline)", c))) {
            let _ = writeln!(
                d,
                "| {}{build} | {} | {} | {} | {} | {} | {:.1} % | {} | {} | {} | {} |",
                i + 1,
                num(p.theirs_rate),
                num(p.theirs_ms),
                p.theirs_cores,
                p.ours_targets,
                num(c.rate),
                c.success * 100.0,
                num(c.ms),
                num(c.broker_ms),
                c.cores,
                num(c.ms / p.theirs_ms)
            );
        }
    }
    ctx.report.details.push(("1. CPU per probe".into(), d));
    Ok(())
}

async fn repeat(ctx: &mut Ctx, r: usize, warm: Duration, window: Duration) -> anyhow::Result<Pair> {
    let b = &ctx.b;
    let nginx = &ctx.nginx;
    let url = nginx.url();

    // blackbox_exporter, driven by wrk.
    let bb = Blackbox::start(b, &format!("blackbox-{r}")).await?;
    let probe = Blackbox::probe_path(&url);
    let (status, body) = testkit::http::try_http_get(bb.addr, &probe).await?;
    if status != 200 || !body.lines().any(|l| l.trim() == "probe_success 1") {
        bail!("blackbox_exporter's probe of {url} did not succeed (status {status}):\n{body}");
    }
    let wrk_secs = (warm + window).as_secs() + 3;
    let wrk_exe = setup::which("wrk", &["/usr/bin/wrk"])?;
    let wrk = b.spawn(
        &format!("wrk-{r}"),
        Command::new(wrk_exe)
            .args(["-t2", "-c8", "--timeout", "5s", "-d"])
            .arg(format!("{wrk_secs}s"))
            .arg(format!("http://{}{probe}", bb.addr)),
    )?;
    tokio::time::sleep(warm).await;
    let who = |extra: Vec<(&'static str, Who)>| {
        let mut v = vec![nginx.who()];
        v.extend(extra);
        v.extend(b.broker_who());
        v
    };
    let list = who(vec![
        ("blackbox", Who::Pid(bb.proc.pid())),
        ("wrk", Who::Pid(wrk.pid())),
    ]);
    let (s0, n0) = (CpuSnap::take(&list), nginx.requests().await?);
    tokio::time::sleep(window).await;
    let (s1, n1) = (CpuSnap::take(&list), nginx.requests().await?);
    wrk.stop(Duration::from_secs(5)).await;
    bb.proc.stop(Duration::from_secs(5)).await;
    let d = s0.delta(&s1);
    let probes = n1 - n0 - 1.0; // minus the status request
    if probes <= 0.0 {
        bail!("blackbox_exporter completed no probe");
    }
    let theirs_rate = probes / d.seconds;
    let theirs_ms = d.of("blackbox") / probes * 1e3;
    let theirs_cores = d.cores();

    // The checker at the same rate.
    let ours_targets = ((theirs_rate * 0.1).round() as usize).max(1);
    let ours = checker_run(ctx, &ctx.b.clone(), &format!("cpu{r}"), ours_targets, warm, window).await?;
    // BENCH_BASELINE_BIN_DIR: another checker at the same rate, right after.
    let baseline = match std::env::var_os("BENCH_BASELINE_BIN_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let mut base = ctx.b.clone();
            base.bin_dir = dir.into();
            Some(checker_run(ctx, &base, &format!("cpu{r}b"), ours_targets, warm, window).await?)
        }
        None => None,
    };
    Ok(Pair {
        theirs_rate,
        theirs_ms,
        theirs_cores,
        ours_targets,
        ours,
        baseline,
    })
}

/// A checker (of `b.bin_dir`) probing `targets` targets every 100 ms: its CPU per probe over
/// `window`, after `warm`.
async fn checker_run(
    ctx: &mut Ctx,
    b: &crate::setup::Bench,
    name: &str,
    targets: usize,
    warm: Duration,
    window: Duration,
) -> anyhow::Result<Checker> {
    let url = ctx.nginx.url();
    let topic = b.name(name);
    ctx.topics.push(topic.clone());
    let checker = setup::start_checker(b, &format!("checker-{name}"), targets, "100ms", &url, &topic).await?;
    tokio::time::sleep(warm.max(Duration::from_secs(2))).await;
    let mut list = vec![ctx.nginx.who(), checker.who("checker")];
    list.extend(b.broker_who());
    let (s0, m0) = (CpuSnap::take(&list), checker.scrape().await?);
    tokio::time::sleep(window).await;
    let (s1, m1) = (CpuSnap::take(&list), checker.scrape().await?);
    checker.stop(Duration::from_secs(10)).await;
    let d = s0.delta(&s1);
    let completed = "healthcheck_checker_probes_completed_total";
    let probes = m1.sum(completed) - m0.sum(completed);
    if probes <= 0.0 {
        bail!("the checker completed no probe");
    }
    let ok = m1.metric(completed, &[("outcome", "success")]).unwrap_or(0.0)
        - m0.metric(completed, &[("outcome", "success")]).unwrap_or(0.0);
    Ok(Checker {
        rate: probes / d.seconds,
        ms: d.of("checker") / probes * 1e3,
        success: ok / probes,
        cores: d.cores(),
        broker_ms: d.of("broker") / probes * 1e3,
    })
}
