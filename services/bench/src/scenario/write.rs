//! Item 5, the database half alone: the sink's write path (`sink::store::Store::write`, the
//! code the consume loop calls) fed from memory, next to a raw binary COPY of the same rows
//! into the same server in the same repeat. No broker is involved, so this shows what the
//! PostgreSQL side can take whatever broker feeds the sink (the test broker, tansu, serves
//! fewer messages per second than the sink writes).
//!
//! Each repeat, in a fresh database holding the sink's schema: the rows in batches of
//! `BATCH_MAX_ROWS` (20,000, the sink's default) with 1 and with 2 batches in flight (the
//! sink's `WRITE_CONCURRENCY` default), then the raw COPY; a `CHECKPOINT` precedes each.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use chrono::Utc;
use common::result::ProbeResult;
use futures::StreamExt;
use sink::store::{Row, Store};

use crate::gen;
use crate::procs::{CpuSnap, Who};
use crate::report::{num, Figure};
use crate::scenario::sink::copy;
use crate::Ctx;

/// Rows per transaction, the sink's default `BATCH_MAX_ROWS`.
const BATCH: usize = 20_000;

/// Runs the scenario and adds its figures.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let n = b.sink_rows.min(500_000);
    let base = Utc::now() - chrono::Duration::seconds((n / gen::TARGETS) as i64 + 1);
    let results: Vec<ProbeResult> =
        tokio::task::spawn_blocking(move || (0..n).map(|i| gen::result(i, base)).collect()).await?;
    let rows: Arc<Vec<Row>> = Arc::new(
        results
            .iter()
            .enumerate()
            .map(|(i, r)| Row {
                result: r.clone(),
                partition: (i % 6) as i32,
                offset: (i / 6) as i64,
                key: None,
                payload: None,
            })
            .collect(),
    );
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut copies = Vec::new();
    let mut ratios = Vec::new();
    let mut d = format!(
        "{} rows in transactions of {} rows, fed from memory to `sink::store::Store::write` (no broker).\n\n\
         | repeat | 1 in flight rows/s | 2 in flight rows/s | cores used (2 in flight; bench = the sink code) | raw COPY rows/s | 2 in flight / raw COPY |\n\
         |---|---:|---:|---|---:|---:|\n",
        num(n as f64),
        num(BATCH as f64)
    );
    for r in 0..b.repeats {
        let mut line = vec![(r + 1).to_string()];
        let mut cores = String::new();
        for (slot, concurrency) in [1usize, 2].into_iter().enumerate() {
            let db = b.name(&format!("write{r}c{concurrency}"));
            ctx.pg.create_db(&db, Some(&ctx.template)).await?;
            ctx.pg.db(&db).await?.batch_execute("CHECKPOINT").await?;
            let store = Store::new(&ctx.pg.url(&db), concurrency + 1, "bench").map_err(anyhow::Error::msg)?;
            let mut list: Vec<(&'static str, Who)> = vec![("bench", Who::Pid(std::process::id()))];
            list.extend(ctx.pg.who());
            let (t0, s0) = (Instant::now(), CpuSnap::take(&list));
            let chunks: Vec<std::ops::Range<usize>> = (0..n).step_by(BATCH).map(|i| i..(i + BATCH).min(n)).collect();
            let mut writes = futures::stream::iter(chunks)
                .map(|range| {
                    let (store, rows) = (store.clone(), rows.clone());
                    async move { store.write(&rows[range], &[]).await }
                })
                .buffer_unordered(concurrency);
            let mut inserted = 0;
            while let Some(outcome) = writes.next().await {
                inserted += outcome.map_err(|e| anyhow::anyhow!("write: {e}"))?.inserted;
            }
            drop(writes);
            let (secs, s1) = (t0.elapsed().as_secs_f64(), CpuSnap::take(&list));
            drop(store);
            if inserted != n as u64 {
                bail!("repeat {}: {inserted} rows inserted of {n}", r + 1);
            }
            rates[slot].push(n as f64 / secs);
            line.push(num(n as f64 / secs));
            if concurrency == 2 {
                cores = s0.delta(&s1).cores();
            }
            ctx.pg.drop_db(&db).await?;
        }
        let c = copy_rate(ctx, r, &results).await?;
        copies.push(c);
        let ratio = rates[1].last().copied().unwrap_or(f64::NAN) / c;
        ratios.push(ratio);
        line.extend([cores, num(c), format!("{ratio:.2}")]);
        let _ = writeln!(d, "| {} |", line.join(" | "));
    }
    push_figures(ctx, rates, copies, ratios);
    ctx.report
        .details
        .push(("5. Sink write path without a broker".into(), d));
    Ok(())
}

/// Rows per second of a raw binary COPY of `results` into a fresh database (repeat `r`).
async fn copy_rate(ctx: &Ctx, r: usize, results: &[ProbeResult]) -> anyhow::Result<f64> {
    let db = ctx.b.name(&format!("write{r}copy"));
    ctx.pg.create_db(&db, Some(&ctx.template)).await?;
    let (c, _) = copy(ctx, &db, "raw_copy", "INCLUDING DEFAULTS", results).await?;
    ctx.pg.drop_db(&db).await?;
    Ok(c)
}

/// The section's figures: write-path rates with 1 and 2 transactions in flight, raw COPY, ratio.
fn push_figures(ctx: &mut Ctx, rates: [Vec<f64>; 2], copies: Vec<f64>, ratios: Vec<f64>) {
    let [one, two] = rates;
    let figs = &mut ctx.report.figures;
    figs.push(Figure::new(
        "5",
        "sink write path, 1 transaction in flight (no broker)",
        "rows/s",
        one,
        None,
    ));
    figs.push(Figure::new(
        "5",
        "sink write path, 2 in flight (no broker)",
        "rows/s",
        two,
        None,
    ));
    figs.push(Figure::new(
        "5",
        "raw binary COPY (write-path runs)",
        "rows/s",
        copies,
        None,
    ));
    figs.push(Figure::new(
        "5",
        "write path, 2 in flight / raw COPY",
        "ratio",
        ratios,
        None,
    ));
}
