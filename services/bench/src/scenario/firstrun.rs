//! Item 10 (issue #15, goal 6): a new user's first `make demo` and first `make test`, each
//! whole, from a fresh clone with nothing built and no test broker installed
//! (`scripts/first-run.sh`). Once per run, not repeated: a repeat would no longer be a first
//! run without rebuilding everything again, and one costs about half an hour of both cores.
//! Not in a quick run (`BENCH_ONLY=firstrun` runs it anyway).

use std::fmt::Write as _;
use std::process::Stdio;

use anyhow::{bail, Context as _};

use crate::report::{num, Figure, Goal};
use crate::Ctx;

/// The script's figures, `key=value` seconds, read from its stdout.
fn figure(out: &str, key: &str) -> Option<f64> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// Runs `scripts/first-run.sh demo test` and reports its figures in minutes.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    if ctx.b.quick && !ctx.b.only.as_ref().is_some_and(|o| o.iter().any(|s| s == "firstrun")) {
        return Ok(());
    }
    // BENCH_FIRST_RUN_STEPS=demo: the demo alone (6 minutes instead of 30).
    let steps = std::env::var("BENCH_FIRST_RUN_STEPS").unwrap_or_else(|_| "demo test".into());
    // tokio's `output()` pipes stderr whatever is configured: its tail goes into the error.
    let out = tokio::process::Command::new("scripts/first-run.sh")
        .args(steps.split([' ', ',']).filter(|s| !s.is_empty()))
        .stdin(Stdio::null())
        .output()
        .await
        .context("running scripts/first-run.sh")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    crate::log(&format!("first-run.sh:\n{stderr}"));
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        bail!(
            "scripts/first-run.sh failed ({}); it printed: {stdout}; its last lines on stderr:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let get = |key: &str| figure(&stdout, key);
    let figs = &mut ctx.report.figures;
    let min = |s: f64| vec![s / 60.0];
    let mut d = String::from(
        "One run (`scripts/first-run.sh`): a fresh clone of the commit, `CARGO_TARGET_DIR` unset so that its \
         `target/` is empty, tansu built into the clone (`TANSU_BUILD_DIR`, `TANSU_BIN`), ports of its own. Not \
         fresh: the Rust toolchain, Debian's packages (PostgreSQL, promtool) and cargo's package cache, which a \
         new machine fills from the crate registry first (not timed).\n\n\
         | step | seconds |\n|---|---:|\n",
    );
    if let (Some(demo), Some(again)) = (get("demo_s"), get("demo_again_s")) {
        figs.push(Figure::new(
            "10",
            "first `make demo` from a fresh clone, whole",
            "min",
            min(demo),
            Some(Goal::AtMost(8.0)),
        ));
        figs.push(Figure::new("10", "`make demo` again", "s", vec![again], None));
        let _ = writeln!(
            d,
            "| first `make demo` (mock broker, `DEMO_SECONDS=20`) | {} |",
            num(demo)
        );
        if let Some(b) = get("demo_build_s") {
            let _ = writeln!(
                d,
                "| of which the release build of checker, sink and mock-broker | {} |",
                num(b)
            );
        }
        let _ = writeln!(d, "| `make demo` again | {} |", num(again));
    }
    if let (Some(broker), Some(test)) = (get("broker_build_s"), get("test_s")) {
        figs.push(Figure::new(
            "10",
            "first `make test` from a fresh clone, whole (test broker built)",
            "min",
            min(test),
            Some(Goal::AtMost(12.0)),
        ));
        figs.push(Figure::new(
            "10",
            "of which the test broker's build",
            "min",
            min(broker),
            None,
        ));
        let _ = write!(
            d,
            "| test broker (tansu, `scripts/stack.sh install`) | {} |\n\
             | first `make test` after it (test build and run) | {} |\n\
             | first `make test`, whole | {} |\n",
            num(broker),
            num(test - broker),
            num(test)
        );
    }
    if figs.iter().all(|f| f.item != "10") {
        bail!("first-run.sh printed no figure: {stdout}");
    }
    ctx.report.details.push(("10. First run".into(), d));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::figure;

    #[test]
    fn figures_are_read_by_key() {
        let out = "demo_s=312.4\ndemo_build_s=290\nnoise\ntest_s=1500.0\n";
        assert_eq!(figure(out, "demo_s"), Some(312.4));
        assert_eq!(figure(out, "demo_build_s"), Some(290.0));
        assert_eq!(figure(out, "test_s"), Some(1500.0));
        assert_eq!(figure(out, "demo_again_s"), None);
    }
}
