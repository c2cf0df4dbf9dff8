//! Item 4: the checker's resident memory with 10,000 targets (every 10 s, so 1,000 probes/s
//! against nginx, publishing), read from `/proc/<pid>/status` (`VmRSS`, and `VmHWM` = peak)
//! after a minute of steady state.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;

use crate::procs::rss_bytes;
use crate::report::{num, Figure, Goal};
use crate::setup;
use crate::Ctx;

const MIB: f64 = 1024.0 * 1024.0;

/// Runs once per repeat.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let steady = Duration::from_secs(b.pick(60, 20));
    let (mut rss, mut hwm) = (Vec::new(), Vec::new());
    let mut d = String::from("| repeat | probes/s | VmRSS samples every 10 s (MiB) | VmRSS at end (MiB) | VmHWM (MiB) |\n|---|---:|---|---:|---:|\n");
    for r in 0..b.repeats {
        let topic = b.name(&format!("mem{r}"));
        ctx.topics.push(topic.clone());
        let checker = setup::start_checker(&b, &format!("checker-mem-{r}"), 10_000, "10s", &ctx.nginx.url(), &topic)
            .await
            .with_context(|| format!("repeat {}", r + 1))?;
        let pid = checker.proc.pid();
        let m0 = checker.scrape().await?;
        let t0 = std::time::Instant::now();
        let mut samples = Vec::new();
        while t0.elapsed() < steady {
            tokio::time::sleep(Duration::from_secs(10).min(steady.saturating_sub(t0.elapsed()))).await;
            samples.push(rss_bytes(pid)?.0 as f64 / MIB);
        }
        let (now, peak) = rss_bytes(pid)?;
        let m1 = checker.scrape().await?;
        let completed = "healthcheck_checker_probes_completed_total";
        let rate = (m1.sum(completed) - m0.sum(completed)) / t0.elapsed().as_secs_f64();
        checker.stop(Duration::from_secs(15)).await;
        let (now, peak) = (now as f64 / MIB, peak as f64 / MIB);
        let _ = writeln!(
            d,
            "| {} | {} | {} | {} | {} |",
            r + 1,
            num(rate),
            samples.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", "),
            num(now),
            num(peak)
        );
        rss.push(now);
        hwm.push(peak);
    }
    let figs = &mut ctx.report.figures;
    figs.push(Figure::new(
        "4",
        "checker RSS, 10,000 targets, after steady state",
        "MiB",
        rss,
        Some(Goal::Below(64.0)),
    ));
    figs.push(Figure::new(
        "4",
        "checker peak RSS (VmHWM), 10,000 targets",
        "MiB",
        hwm,
        None,
    ));
    ctx.report.details.push(("4. Memory".into(), d));
    Ok(())
}
