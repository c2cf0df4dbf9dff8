//! Item 4: the checker's resident memory with 10,000 targets (every 10 s, so 1,000 probes/s
//! against nginx, publishing), read from `/proc/<pid>/status` (`VmRSS`, and `VmHWM` = peak)
//! after a minute of steady state, `/metrics` scraped every 10 s as Prometheus would; and the
//! memory per target: that RSS minus a 1-target checker's, over 9,999.
//!
//! With `BENCH_BASELINE_BIN_DIR` (a directory with another build's `checker`, e.g. `main`'s),
//! each repeat measures that build too, in alternating order, so that the two are compared
//! side by side on the same broker and machine load.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::procs::rss_bytes;
use crate::report::{num, Figure, Goal};
use crate::setup::{self, Bench};
use crate::Ctx;

const MIB: f64 = 1024.0 * 1024.0;
const TARGETS: usize = 10_000;

/// One checker's figures.
struct Run {
    rate: f64,
    samples: Vec<f64>,
    rss: f64,
    hwm: f64,
}

/// Runs a checker of `n` targets for `steady`, scraping and sampling its RSS every 10 s.
async fn measure(ctx: &mut Ctx, b: &Bench, name: &str, n: usize, steady: Duration) -> anyhow::Result<Run> {
    let topic = b.name(name);
    ctx.topics.push(topic.clone());
    let checker = setup::start_checker(b, &format!("checker-{name}"), n, "10s", &ctx.nginx.url(), &topic).await?;
    let pid = checker.proc.pid();
    let m0 = checker.scrape().await?;
    let t0 = std::time::Instant::now();
    let mut samples = Vec::new();
    while t0.elapsed() < steady {
        tokio::time::sleep(Duration::from_secs(10).min(steady.saturating_sub(t0.elapsed()))).await;
        checker.scrape().await?;
        samples.push(rss_bytes(pid)?.0 as f64 / MIB);
    }
    let (rss, hwm) = rss_bytes(pid)?;
    let m1 = checker.scrape().await?;
    let completed = "healthcheck_checker_probes_completed_total";
    let rate = (m1.sum(completed) - m0.sum(completed)) / t0.elapsed().as_secs_f64();
    checker.stop(Duration::from_secs(15)).await;
    Ok(Run {
        rate,
        samples,
        rss: rss as f64 / MIB,
        hwm: hwm as f64 / MIB,
    })
}

/// One build's figures over the repeats.
#[derive(Default)]
struct Build {
    rss: Vec<f64>,
    hwm: Vec<f64>,
    per_target: Vec<f64>,
}

/// Runs once per repeat.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let steady = Duration::from_secs(b.pick(60, 20));
    let mut builds: Vec<(&str, Bench, Build)> = vec![("this build", b.clone(), Build::default())];
    if let Some(dir) = std::env::var_os("BENCH_BASELINE_BIN_DIR").filter(|d| !d.is_empty()) {
        let mut base = b.clone();
        base.bin_dir = PathBuf::from(dir);
        builds.push(("baseline", base, Build::default()));
    }
    let mut d = String::from(
        "| build | repeat | probes/s | VmRSS samples every 10 s, each after a scrape (MiB) | VmRSS at end (MiB) | VmHWM (MiB) | VmRSS, 1 target (MiB) | bytes per target |\n|---|---|---:|---|---:|---:|---:|---:|\n",
    );
    for r in 0..b.repeats {
        let n = builds.len();
        for i in 0..n {
            // Alternating order: neither build always runs first.
            let i = (i + r) % n;
            let (label, bb, _) = &builds[i];
            let (label, bb) = (*label, bb.clone());
            let tag = if i == 0 { "" } else { "base-" };
            let big = measure(ctx, &bb, &format!("mem{tag}{r}"), TARGETS, steady)
                .await
                .with_context(|| format!("{label}, repeat {}", r + 1))?;
            let one = measure(
                ctx,
                &bb,
                &format!("mem1{tag}{r}"),
                1,
                Duration::from_secs(b.pick(30, 10)),
            )
            .await
            .with_context(|| format!("{label}, 1 target, repeat {}", r + 1))?;
            let per_target = (big.rss - one.rss) * MIB / (TARGETS - 1) as f64;
            let _ = writeln!(
                d,
                "| {label} | {} | {} | {} | {} | {} | {} | {} |",
                r + 1,
                num(big.rate),
                big.samples
                    .iter()
                    .map(|s| format!("{s:.1}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                num(big.rss),
                num(big.hwm),
                num(one.rss),
                num(per_target)
            );
            let figs = &mut builds[i].2;
            figs.rss.push(big.rss);
            figs.hwm.push(big.hwm);
            figs.per_target.push(per_target);
        }
    }
    let base_dir = builds.get(1).map(|(_, bb, _)| bb.bin_dir.display().to_string());
    for (label, _, figs) in builds {
        let (suffix, goal) = match label {
            "baseline" => (" — baseline (BENCH_BASELINE_BIN_DIR)", None),
            _ => ("", Some(Goal::Below(64.0))),
        };
        let all = &mut ctx.report.figures;
        all.push(Figure::new(
            "4",
            format!("checker RSS, 10,000 targets, after steady state{suffix}"),
            "MiB",
            figs.rss,
            goal,
        ));
        all.push(Figure::new(
            "4",
            format!("checker peak RSS (VmHWM), 10,000 targets{suffix}"),
            "MiB",
            figs.hwm,
            None,
        ));
        all.push(Figure::new(
            "4",
            format!("checker memory per target (RSS at 10,000 targets minus at 1){suffix}"),
            "bytes",
            figs.per_target,
            None,
        ));
    }
    if let Some(dir) = base_dir {
        let _ = writeln!(d, "\nBaseline: the `checker` in `{dir}`.");
    }
    ctx.report.details.push(("4. Memory".into(), d));
    Ok(())
}
