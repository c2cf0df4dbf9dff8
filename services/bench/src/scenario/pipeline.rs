//! Items 3 and 6: scheduling precision and end-to-end latency, from one run of the whole
//! pipeline: 1,000 targets every 1 s → checker → broker → sink → PostgreSQL.
//!
//! Every row carries the checker's `lateness_seconds` (probe start − scheduled slot) and the
//! sink's `inserted_at` (`now()` of the inserting transaction), so PostgreSQL computes both
//! distributions exactly with `percentile_cont` over the probes started inside the window:
//! lateness, and `inserted_at − (started_at + duration_seconds)`, probe completed → row
//! inserted. `now()` is the transaction's start; its commit follows within the transaction
//! time that the details show (`healthcheck_sink_transaction_duration_seconds`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::procs::CpuSnap;
use crate::report::{num, Figure, Goal};
use crate::setup;
use crate::Ctx;

struct Run {
    rows: i64,
    rate: f64,
    late: [f64; 3],
    /// min and p1 of lateness.
    late_low: [f64; 2],
    e2e: [f64; 3],
    tx_mean_ms: f64,
    cores: String,
    /// The machine's own wake-up latency in the same window: cyclictest's p50, p99 and max
    /// (seconds), when it is installed.
    floor: Option<[f64; 3]>,
}

/// The real-time priority of the variant measured with `REALTIME_PRIORITY` (and of the
/// cyclictest thread beside it).
const REALTIME_PRIORITY: u8 = 50;

/// Which checker a run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// This build, as configured by default.
    Default,
    /// This build with `REALTIME_PRIORITY` ([`REALTIME_PRIORITY`]).
    Realtime,
    /// The checker in `BENCH_BASELINE_BIN_DIR`.
    Baseline,
}

/// Whether this process holds `CAP_SYS_NICE` (bit 23 of `CapEff`, `capabilities(7)`), which
/// the checkers it starts inherit: the real-time variant needs it.
fn may_use_realtime() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 23) != 0)
}

/// Runs the pipeline once per repeat and variant.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    // BENCH_BASELINE_BIN_DIR: another checker in the same repeats, side by side (this
    // build's sink for both), for its lateness.
    let baseline = std::env::var_os("BENCH_BASELINE_BIN_DIR").filter(|d| !d.is_empty());
    let mut variants = vec![Variant::Default];
    if may_use_realtime() {
        variants.push(Variant::Realtime);
    }
    if baseline.is_some() {
        variants.push(Variant::Baseline);
    }
    let (mut runs, mut rt_runs, mut base_runs) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..b.repeats {
        let window = Duration::from_secs(b.pick(30, 10));
        // A rotating order, so that no variant always runs on the warmer machine.
        for i in 0..variants.len() {
            let v = variants[(i + r) % variants.len()];
            let (env, dir, runs) = match v {
                Variant::Default => (vec![], None, &mut runs),
                Variant::Realtime => (
                    vec![("REALTIME_PRIORITY", REALTIME_PRIORITY.to_string())],
                    None,
                    &mut rt_runs,
                ),
                Variant::Baseline => (vec![], baseline.as_deref().map(std::path::Path::new), &mut base_runs),
            };
            let label = match v {
                Variant::Default => "",
                Variant::Realtime => " (REALTIME_PRIORITY)",
                Variant::Baseline => " (baseline)",
            };
            runs.push(
                repeat(ctx, r, &[], &env, window, dir)
                    .await
                    .with_context(|| format!("repeat {}{label}", r + 1))?,
            );
        }
    }
    push_figures(ctx, &runs, "", true);
    let rt_suffix = format!(" — REALTIME_PRIORITY={REALTIME_PRIORITY}");
    if !rt_runs.is_empty() {
        push_figures(ctx, &rt_runs, &rt_suffix, true);
    }
    if !base_runs.is_empty() {
        push_figures(ctx, &base_runs, " — baseline (BENCH_BASELINE_BIN_DIR)", false);
    }
    let mut d = runs_table(&runs);
    if rt_runs.is_empty() {
        d.push_str("\nNot measured with `REALTIME_PRIORITY`: this harness lacks `CAP_SYS_NICE`.\n");
    } else {
        let _ = write!(
            d,
            "\nThe same repeats with `REALTIME_PRIORITY={REALTIME_PRIORITY}` (every thread of the checker under `SCHED_FIFO`; \
             the machine's wake-up latency beside it is cyclictest's thread under `SCHED_FIFO` at the same priority):\n\n{}",
            runs_table(&rt_runs)
        );
    }
    if let Some(dir) = &baseline {
        let _ = write!(
            d,
            "\nThe same repeats with the checker in `{}` (this build's sink):\n\n{}",
            std::path::Path::new(dir).display(),
            runs_table(&base_runs)
        );
    }
    // Where the end-to-end time goes: the consumer's fetch long-poll (the sink's
    // fetch.wait.max.ms, 50 ms) against a broker that answers a waiting fetch only at its
    // deadline, then BATCH_LINGER (20 ms). One run with 10 ms, as information.
    if !b.quick {
        let env = [("KAFKA_CFG_FETCH_WAIT_MAX_MS", "10".to_string())];
        match repeat(ctx, b.repeats, &env, &[], Duration::from_secs(15), None).await {
            Ok(r) => {
                let _ = writeln!(
                    d,
                    "\nThe same with the sink's `KAFKA_CFG_FETCH_WAIT_MAX_MS=10` (one 15 s run): lateness p50 / p99 / max \
                     {} ms, end-to-end p50 / p99 / max {} ms; cores used: {}.",
                    ms(&r.late),
                    ms(&r.e2e),
                    r.cores
                );
            }
            Err(e) => {
                let _ = writeln!(d, "\nThe run with `KAFKA_CFG_FETCH_WAIT_MAX_MS=10` failed: {e:#}");
            }
        }
    }
    ctx.report
        .details
        .push(("3 and 6. Precision and end-to-end latency".into(), d));
    Ok(())
}

/// The figures of sections 3 and 6, one value per run; `suffix` names the build, and only
/// this build's figures carry the goals.
fn push_figures(ctx: &mut Ctx, runs: &[Run], suffix: &str, goals: bool) {
    let col = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let goal = |g: Goal| goals.then_some(g);
    let figs = &mut ctx.report.figures;
    figs.push(Figure::new(
        "3",
        format!("scheduling lateness p50 (1,000 targets × 1 s){suffix}"),
        "ms",
        col(&|r| r.late[0] * 1e3),
        None,
    ));
    figs.push(Figure::new(
        "3",
        format!("scheduling lateness p99{suffix}"),
        "ms",
        col(&|r| r.late[1] * 1e3),
        goal(Goal::Below(0.5)),
    ));
    figs.push(Figure::new(
        "3",
        format!("scheduling lateness max{suffix}"),
        "ms",
        col(&|r| r.late[2] * 1e3),
        goal(Goal::Below(2.0)),
    ));
    if runs.iter().all(|r| r.floor.is_some()) {
        let floor = |i: usize| col(&|r: &Run| r.floor.map_or(f64::NAN, |f| f[i]) * 1e3);
        figs.push(Figure::new(
            "3",
            format!("machine wake-up latency p99 (cyclictest beside the checker){suffix}"),
            "ms",
            floor(1),
            None,
        ));
        figs.push(Figure::new(
            "3",
            format!("machine wake-up latency max (cyclictest beside the checker){suffix}"),
            "ms",
            floor(2),
            None,
        ));
    }
    figs.push(Figure::new(
        "6",
        format!("end-to-end latency p50 (probe done → row inserted){suffix}"),
        "ms",
        col(&|r| r.e2e[0] * 1e3),
        None,
    ));
    figs.push(Figure::new(
        "6",
        format!("end-to-end latency p99{suffix}"),
        "ms",
        col(&|r| r.e2e[1] * 1e3),
        goal(Goal::Below(250.0)),
    ));
}

/// Seconds as milliseconds, `a / b / c`.
fn ms(seconds: &[f64]) -> String {
    seconds.iter().map(|v| num(v * 1e3)).collect::<Vec<_>>().join(" / ")
}

/// The details' table: one row per run.
fn runs_table(runs: &[Run]) -> String {
    let mut d = String::from(
        "| repeat | rows in window | results/s | lateness min / p1 / p50 / p99 / max (ms) | machine wake-up p50 / p99 / max (ms) | end-to-end p50 / p99 / max (ms) | sink transaction mean (ms) | cores used |\n\
         |---|---:|---:|---|---|---|---:|---|\n",
    );
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            d,
            "| {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            i + 1,
            r.rows,
            num(r.rate),
            ms(&r.late_low),
            ms(&r.late),
            r.floor.map_or_else(|| "—".to_string(), |f| ms(&f)),
            ms(&r.e2e),
            num(r.tx_mean_ms),
            r.cores
        );
    }
    d
}

/// One run of the pipeline; `checker_env` are extra variables of the checker, `checker_dir`
/// holds another checker binary to run instead of this build's.
async fn repeat(
    ctx: &mut Ctx,
    r: usize,
    sink_env: &[(&str, String)],
    checker_env: &[(&str, String)],
    window: Duration,
    checker_dir: Option<&std::path::Path>,
) -> anyhow::Result<Run> {
    let mut checker_bench = ctx.b.clone();
    if let Some(dir) = checker_dir {
        checker_bench.bin_dir = dir.to_path_buf();
    }
    let b = &ctx.b;
    let pg = &ctx.pg;
    let which = match (checker_dir, checker_env.is_empty()) {
        (Some(_), _) => "b",
        (None, false) => "x",
        (None, true) => "",
    };
    let realtime = checker_env
        .iter()
        .find(|(k, _)| *k == "REALTIME_PRIORITY")
        .map(|(_, v)| v.clone());
    let db = b.name(&format!("e2e{r}{which}"));
    let topic = b.name(&format!("e2e{r}{which}"));
    ctx.topics.push(topic.clone());
    pg.create_db(&db, Some(&ctx.template)).await?;
    let sink = setup::start_sink(b, pg, &format!("sink-e2e-{r}"), &db, &topic, &topic, sink_env).await?;
    let checker = setup::start_checker_with(
        &checker_bench,
        &format!("checker-e2e-{r}{which}"),
        1_000,
        "1s",
        &ctx.nginx.url(),
        &topic,
        checker_env,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(b.pick(5, 3))).await;
    let mut list = vec![checker.who("checker"), sink.who("sink"), ctx.nginx.who()];
    list.extend(b.broker_who());
    list.extend(pg.who());
    let (t0, s0) = (chrono::Utc::now(), CpuSnap::take(&list));
    let floor = cyclictest(window, realtime.as_deref());
    tokio::time::sleep(window).await;
    let (t1, s1) = (chrono::Utc::now(), CpuSnap::take(&list));
    let floor = floor.await;
    checker.stop(Duration::from_secs(30)).await;

    // Let the sink write everything the checker published.
    let inserted = "healthcheck_sink_rows_inserted_total";
    let (mut last, mut since) = (-1.0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let n = sink.scrape().await?.sum(inserted);
        if n != last {
            (last, since) = (n, Instant::now());
        } else if since.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = sink.scrape().await?;
    let tx_mean_ms = m.sum("healthcheck_sink_transaction_duration_seconds_sum")
        / m.sum("healthcheck_sink_transaction_duration_seconds_count").max(1.0)
        * 1e3;
    sink.stop(Duration::from_secs(30)).await;

    let client = pg.db(&db).await?;
    let row = client
        .query_one(
            "SELECT count(*),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY lateness_seconds),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY lateness_seconds),
                    max(lateness_seconds),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY e2e),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY e2e),
                    max(e2e),
                    min(lateness_seconds),
                    percentile_cont(0.01) WITHIN GROUP (ORDER BY lateness_seconds)
             FROM (SELECT lateness_seconds,
                          extract(epoch FROM inserted_at - started_at)::float8 - duration_seconds AS e2e
                   FROM probe_results WHERE started_at >= $1 AND started_at < $2) w",
            &[&t0, &t1],
        )
        .await?;
    drop(client);
    pg.drop_db(&db).await?;
    let rows: i64 = row.get(0);
    if rows == 0 {
        bail!("no row was written in the window");
    }
    let f = |i: usize| row.get::<_, Option<f64>>(i).unwrap_or(f64::NAN);
    Ok(Run {
        rows,
        rate: rows as f64 / (t1 - t0).num_milliseconds() as f64 * 1e3,
        late: [f(1), f(2), f(3)],
        e2e: [f(4), f(5), f(6)],
        late_low: [f(7), f(8)],
        tx_mean_ms,
        cores: s0.delta(&s1).cores(),
        floor,
    })
}

/// The machine's wake-up latency over `window`, beside whatever runs: rt-tests' cyclictest,
/// one thread at the harness's priority (`SCHED_OTHER`, `BENCH_NICE`; or `SCHED_FIFO` at
/// `realtime`, as the checker it runs beside) sleeping 1 ms at a time, measuring how late each
/// sleep ends. p50, p99 and max in seconds from its microsecond histogram; `None` when
/// cyclictest is not installed or failed. Started at once; the future resolves when it ends
/// (after `window`).
fn cyclictest(window: Duration, realtime: Option<&str>) -> impl std::future::Future<Output = Option<[f64; 3]>> {
    let mut cmd = tokio::process::Command::new("cyclictest");
    match realtime {
        Some(priority) => cmd.args(["--policy=fifo", "-p", priority]),
        None => cmd.arg("--policy=other"),
    };
    let child = cmd
        // --laptop: leave /dev/cpu_dma_latency alone (the machine as the checker has it).
        .args(["--laptop", "-t1", "-i", "1000", "-q", "-h", "20000", "-D"])
        .arg(format!("{}s", window.as_secs().max(1)))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    async move {
        let out = child.await.ok().filter(|o| o.status.success())?;
        histogram_quantiles(&String::from_utf8_lossy(&out.stdout))
    }
}

/// p50, p99 and max (seconds) of cyclictest's histogram output: `<µs> <count>` lines, `#`
/// comments (its `# Max Latencies:` line is the exact max, also past the histogram's end).
fn histogram_quantiles(text: &str) -> Option<[f64; 3]> {
    let mut buckets = Vec::new();
    let mut max = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("# Max Latencies:") {
            max = v.split_whitespace().next().and_then(|v| v.parse::<f64>().ok());
            continue;
        }
        let mut f = line.split_whitespace();
        if let (Some(us), Some(n)) = (
            f.next().and_then(|v| v.parse::<u64>().ok()),
            f.next().and_then(|v| v.parse::<u64>().ok()),
        ) {
            if n > 0 {
                buckets.push((us, n));
            }
        }
    }
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let quantile = |q: f64| {
        let mut seen = 0;
        buckets
            .iter()
            .find(|(_, n)| {
                seen += n;
                seen as f64 >= q * total as f64
            })
            .map_or(f64::NAN, |(us, _)| *us as f64)
    };
    let max = max.unwrap_or_else(|| buckets.last().map_or(f64::NAN, |(us, _)| *us as f64));
    Some([quantile(0.5) / 1e6, quantile(0.99) / 1e6, max / 1e6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_cyclictest_histogram() {
        let text = "# /dev/cpu_dma_latency set to 0us\n000070 49\n000074 46\n000500 4\n002000 1\n                    # Total: 000000100\n# Min Latencies: 00060\n# Max Latencies: 03260\n";
        let [p50, p99, max] = histogram_quantiles(text).expect("a histogram");
        assert_eq!((p50 * 1e6, p99 * 1e6, max * 1e6), (74.0, 500.0, 3260.0));
        assert!(histogram_quantiles("# nothing\n").is_none());
    }
}
