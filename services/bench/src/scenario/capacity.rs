//! Item 2: the highest probe rate the checker sustains on this machine's 2 cores with p99
//! scheduling lateness under 10 ms.
//!
//! A step at rate R runs a fresh checker with R targets every 1 s against nginx (publishing to
//! the broker) and reads its `/metrics` twice, a window apart, after a warm-up. The step
//! passes when, within the window: at least 99 % of the lateness histogram's observations are
//! in the `le="0.01"` bucket (p99 < 10 ms), the completed rate is at least 97 % of R, no slot
//! was skipped, at least 97 % of the completed probes were delivered to the broker and at least
//! 99 % succeeded. Rates grow ×1.5 from 4,000/s until a step fails, then are bisected between
//! the last pass and the first failure until they are within 10 %.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;

use crate::histogram::{bucket_delta, fraction_at_most, histogram_quantile};
use crate::procs::CpuSnap;
use crate::report::{num, Figure, Goal};
use crate::setup;
use crate::Ctx;

const LATENESS: &str = "healthcheck_checker_scheduling_lateness_seconds";
const COMPLETED: &str = "healthcheck_checker_probes_completed_total";

struct Step {
    rate: usize,
    achieved: f64,
    p99_ms: f64,
    within_10ms: f64,
    skipped: f64,
    delivered: f64,
    success: f64,
    cores: String,
    pass: bool,
}

/// Runs the search, once per repeat.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let mut found = Vec::new();
    let mut d = String::from(
        "| repeat | offered probes/s | completed probes/s | lateness p99 (histogram) | ≤ 10 ms | skipped slots | delivered | success | cores used | pass |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in 0..b.repeats {
        let topic = b.name(&format!("cap{r}"));
        ctx.topics.push(topic.clone());
        let (mut pass, mut fail): (Option<usize>, Option<usize>) = (None, None);
        let mut rate = 4_000usize;
        for _ in 0..b.pick(10, 6) {
            let s = step(ctx, r, rate, &topic)
                .await
                .with_context(|| format!("repeat {}, {rate}/s", r + 1))?;
            let _ = writeln!(
                d,
                "| {} | {} | {} | {} ms | {:.2} % | {} | {:.1} % | {:.2} % | {} | {} |",
                r + 1,
                num(s.rate as f64),
                num(s.achieved),
                num(s.p99_ms),
                s.within_10ms * 100.0,
                s.skipped,
                s.delivered * 100.0,
                s.success * 100.0,
                s.cores,
                if s.pass { "yes" } else { "no" }
            );
            if s.pass {
                pass = Some(rate);
            } else {
                fail = Some(rate);
            }
            rate = match (pass, fail) {
                (_, None) => rate * 3 / 2,
                (p, Some(f)) => {
                    let p = p.unwrap_or(0);
                    if f <= p + p / 10 || f < 200 {
                        break;
                    }
                    ((p + f) / 2).div_ceil(100) * 100
                }
            };
            if rate > 60_000 {
                break;
            }
        }
        found.push(pass.map_or(0.0, |p| p as f64));
    }
    ctx.report.figures.push(Figure::new(
        "2",
        "capacity: highest probe rate with p99 lateness < 10 ms",
        "probes/s",
        found,
        Some(Goal::AtLeast(10_000.0)),
    ));
    ctx.report.details.push(("2. Capacity steps".into(), d));
    Ok(())
}

async fn step(ctx: &mut Ctx, r: usize, rate: usize, topic: &str) -> anyhow::Result<Step> {
    let b = &ctx.b;
    let warm = Duration::from_secs(b.pick(3, 2));
    let window = Duration::from_secs(b.pick(6, 4));
    let checker = setup::start_checker(
        b,
        &format!("checker-cap-{r}-{rate}"),
        rate,
        "1s",
        &ctx.nginx.url(),
        topic,
    )
    .await?;
    tokio::time::sleep(warm).await;
    let mut list = vec![checker.who("checker"), ctx.nginx.who()];
    list.extend(b.broker_who());
    let (s0, m0) = (CpuSnap::take(&list), checker.scrape().await?);
    tokio::time::sleep(window).await;
    let (s1, m1) = (CpuSnap::take(&list), checker.scrape().await?);
    checker.stop(Duration::from_secs(10)).await;
    let d = s0.delta(&s1);
    let diff = |name: &str| m1.sum(name) - m0.sum(name);
    let completed = diff(COMPLETED);
    let hist = bucket_delta(&m0.buckets(LATENESS, &[]), &m1.buckets(LATENESS, &[]));
    let within = fraction_at_most(0.01, &hist).unwrap_or(0.0);
    let success = if completed > 0.0 {
        (m1.metric(COMPLETED, &[("outcome", "success")]).unwrap_or(0.0)
            - m0.metric(COMPLETED, &[("outcome", "success")]).unwrap_or(0.0))
            / completed
    } else {
        0.0
    };
    let delivered = if completed > 0.0 {
        diff("healthcheck_checker_published_total") / completed
    } else {
        0.0
    };
    let skipped = diff("healthcheck_checker_skipped_slots_total");
    let achieved = completed / d.seconds;
    let pass =
        within >= 0.99 && achieved >= 0.97 * rate as f64 && skipped == 0.0 && delivered >= 0.97 && success >= 0.99;
    Ok(Step {
        rate,
        achieved,
        p99_ms: histogram_quantile(0.99, &hist).unwrap_or(f64::NAN) * 1e3,
        within_10ms: within,
        skipped,
        delivered,
        success,
        cores: d.cores(),
        pass,
    })
}
