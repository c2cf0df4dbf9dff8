//! Item 5: sink throughput against the physical limit of the same PostgreSQL server.
//!
//! A topic is pre-filled with N realistic results (distinct `check_id`s; timed on its own).
//! Each repeat then, in a fresh database with the sink's schema, runs in alternating order:
//! - the release sink with a fresh consumer group, timed from its first inserted row to its
//!   last (`healthcheck_sink_rows_inserted_total`, polled every 100 ms), then checked with
//!   `count(*)` and `count(DISTINCT check_id)`;
//! - a raw binary COPY (tokio-postgres `binary_copy`) of the same rows, already in memory,
//!   into a table with the same columns, types and defaults and no index or constraint
//!   (`CREATE TABLE ... (LIKE probe_results INCLUDING DEFAULTS)`): the limit;
//! - the same COPY into a table that also has the sink's primary key and target index
//!   (`INCLUDING CONSTRAINTS INCLUDING INDEXES`), which shows what the indexes cost.
//!
//! A `CHECKPOINT` precedes each, so neither inherits the other's dirty buffers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::Utc;
use common::result::ProbeResult;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::gen;
use crate::procs::{CpuSnap, Who};
use crate::report::{num, Figure, Goal};
use crate::setup;
use crate::Ctx;

use sink::store::COLUMNS;

const INSERTED: &str = "healthcheck_sink_rows_inserted_total";

#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Counter(Arc<Deliveries>);

impl ClientContext for Counter {}

impl ProducerContext for Counter {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let n = if r.is_ok() { &self.0.ok } else { &self.0.failed };
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one sink run measured.
pub struct SinkRun {
    /// Rows per second from the first inserted row to the last.
    pub rate: f64,
    /// Seconds from spawn to the last row.
    pub spawn_to_done: f64,
    /// CPU over the timed part.
    pub cores: String,
    /// CPU milliseconds per 1,000 rows: sink, PostgreSQL, broker.
    pub ms_per_k: [f64; 3],
    /// Mean rows per transaction.
    pub rows_per_tx: f64,
    /// Rows inserted.
    pub inserted: u64,
    /// Messages consumed.
    pub consumed: u64,
    /// Duplicates absorbed by `ON CONFLICT DO NOTHING`.
    pub duplicates: u64,
    /// Seconds the consumer held back because writes were behind (older sinks: paused).
    pub paused_s: f64,
    /// The sink's peak resident memory (`VmHWM`), MiB.
    pub hwm_mib: f64,
}

/// What the repeats measured, for the figures.
#[derive(Default)]
struct Rates {
    sink: Vec<f64>,
    copy: Vec<f64>,
    indexed: Vec<f64>,
    ratios: Vec<f64>,
    indexed_ratios: Vec<f64>,
    missed: Vec<f64>,
    mock: Vec<f64>,
    mock_ratios: Vec<f64>,
}

/// Runs the pre-fill and the repeats.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let n = b.sink_rows;
    let topic = b.name("sink");
    ctx.topics.push(topic.clone());
    setup::ensure_topic(&b, &topic).await?;

    // The rows, generated once (not timed): 1,000 targets × n/1,000 one-second slots ending now.
    let base = Utc::now() - chrono::Duration::seconds((n / gen::TARGETS) as i64 + 1);
    let rows: Arc<Vec<ProbeResult>> =
        Arc::new(tokio::task::spawn_blocking(move || (0..n).map(|i| gen::result(i, base)).collect()).await?);
    let (prefill_s, bytes, watermarks) = prefill(&b.broker, &topic, rows.clone(), None).await?;
    crate::log(&format!(
        "pre-filled {n} results in {prefill_s:.1} s; reading the topic back"
    ));
    let census = census(&b, &topic).await?;
    crate::log(&format!(
        "the topic serves {} messages, {} distinct results (read in {:.1} s)",
        census.messages, census.distinct, census.secs
    ));
    // The sink can only write what the broker serves.
    let available = census.distinct as usize;
    if available < n / 2 {
        bail!(
            "the broker serves only {} of the {n} results it acknowledged",
            census.distinct
        );
    }
    ctx.sink_topic = Some((topic.clone(), available));

    let figs_prefill = n as f64 / prefill_s;
    let mut d = prefill_details(n, prefill_s, bytes, watermarks, &census);
    let mut rates = Rates::default();
    for r in 0..b.repeats {
        repeat(ctx, r, &topic, available, &rows, &mut rates, &mut d).await?;
    }
    // BENCH_SINK_EXTRAS=0 (experiments): the test broker's repeats alone.
    let extras = std::env::var("BENCH_SINK_EXTRAS").map_or(true, |v| v != "0");
    if extras {
        mock_cluster_repeats(ctx, &topic, &rows, &mut rates, &mut d).await?;
    }
    // Batch-size variants, once each (information, not figures).
    if !b.quick && extras {
        batch_variants(ctx, &topic, available, &mut d).await?;
    }
    push_figures(ctx, n, figs_prefill, &census, rates);
    ctx.report.details.push(("5. Sink throughput".into(), d));
    Ok(())
}

/// The details' opening paragraph (pre-fill and read-back) and the repeats' table head.
fn prefill_details(n: usize, prefill_s: f64, bytes: u64, watermarks: i64, census: &Census) -> String {
    format!(
    "Pre-fill: {} messages ({} MB of JSON, {} bytes each on average) in {:.1} s = {} messages/s, 6 partitions, keyed by target; \
     all acknowledged by the broker (acks=all). The partitions' high − low watermarks add up to {}. Read back from the \
     beginning with a plain consumer in {:.1} s ({} messages/s), the topic served {} messages holding {} distinct results{}. \
     The sink is timed to the last of those {} distinct results.\n\n\
     | repeat | order | sink rows/s | rows written / messages consumed / duplicates absorbed / missing | held back, writes behind (s) | spawn → last row (s) | rows per transaction | CPU ms per 1,000 rows: sink / PostgreSQL / broker | cores used (sink run) | sink VmHWM (MiB) | raw COPY rows/s | cores used (raw COPY; bench = the COPY client) | COPY with PK + index rows/s | ratio sink / COPY with PK + index | ratio sink / raw COPY |\n\
     |---|---|---:|---|---:|---:|---:|---|---|---:|---:|---|---:|---:|---:|\n",
    num(n as f64),
    num(bytes as f64 / 1e6),
    bytes / n as u64,
    prefill_s,
    num(n as f64 / prefill_s),
    num(watermarks as f64),
    census.secs,
    num(census.messages as f64 / census.secs),
    num(census.messages as f64),
    num(census.distinct as f64),
    if census.distinct == n as u64 && census.messages == n as u64 {
        String::new()
    } else {
        format!(
            " (**{} acknowledged results are missing and {} served twice**: a broker defect, see the notes)",
            num((n as u64).saturating_sub(census.distinct) as f64),
            num(census.messages.saturating_sub(census.distinct) as f64)
        )
    },
    num(census.distinct as f64)
)
}

/// `SELECT count(*), count(DISTINCT check_id)` of `db`'s probe_results, then drops `db`.
async fn count_and_drop(ctx: &Ctx, db: &str) -> anyhow::Result<(i64, i64)> {
    let client = ctx.pg.db(db).await?;
    let row = client
        .query_one("SELECT count(*), count(DISTINCT check_id) FROM probe_results", &[])
        .await?;
    drop(client);
    ctx.pg.drop_db(db).await?;
    Ok((row.get(0), row.get(1)))
}

/// Repeat `r` against the test broker: the sink and the raw COPY of the same rows (in an
/// order that alternates), the table row in `d`, the figures in `rates`.
async fn repeat(
    ctx: &mut Ctx,
    r: usize,
    topic: &str,
    available: usize,
    rows: &[ProbeResult],
    rates: &mut Rates,
    d: &mut String,
) -> anyhow::Result<()> {
    let db = ctx.b.name(&format!("sink{r}"));
    ctx.pg.create_db(&db, Some(&ctx.template)).await?;
    let sink_first = r.is_multiple_of(2);
    let (mut s, mut c, mut ci) = (None, None, None);
    for phase in 0..2 {
        if (phase == 0) == sink_first {
            s = Some(
                sink_run(ctx, &db, topic, &format!("{topic}_g{r}"), &[], available, None)
                    .await
                    .with_context(|| format!("repeat {}: sink", r + 1))?,
            );
        } else {
            c = Some(copy(ctx, &db, "raw_copy", "INCLUDING DEFAULTS", rows).await?);
            // The fair comparison: a COPY that maintains the same primary key and index.
            let like = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES";
            ci = Some(copy(ctx, &db, "copy_indexed", like, rows).await?.0);
        }
    }
    let (s, (c, c_cores), ci) = (s.expect("ran"), c.expect("ran"), ci.expect("ran"));
    // Every row is there once.
    let (count, distinct) = count_and_drop(ctx, &db).await?;
    if count != distinct || count as u64 != s.inserted {
        bail!(
            "repeat {}: probe_results holds {count} rows ({distinct} distinct) but the sink counted {} inserts",
            r + 1,
            s.inserted
        );
    }
    let missing = available as u64 - s.inserted;
    rates.missed.push(missing as f64);
    let _ = writeln!(
        *d,
        "| {} | {} | {} | {} / {} / {} / {} | {:.1} | {:.1} | {} | {} / {} / {} | {} | {:.0} | {} | {} | {} | {:.2} | {:.2} |",
        r + 1,
        if sink_first { "sink, COPY" } else { "COPY, sink" },
        num(s.rate),
        num(s.inserted as f64),
        num(s.consumed as f64),
        num(s.duplicates as f64),
        num(missing as f64),
        s.paused_s,
        s.spawn_to_done,
        num(s.rows_per_tx),
        num(s.ms_per_k[0]),
        num(s.ms_per_k[1]),
        num(s.ms_per_k[2]),
        s.cores,
        s.hwm_mib,
        num(c),
        c_cores,
        num(ci),
        s.rate / ci,
        s.rate / c
    );
    rates.sink.push(s.rate);
    rates.copy.push(c);
    rates.indexed.push(ci);
    rates.ratios.push(s.rate / c);
    rates.indexed_ratios.push(s.rate / ci);
    Ok(())
}

/// The same rows served by librdkafka's mock cluster (`rdkafka::mocking`, in this process):
/// a broker that is not the bottleneck, so the figure shows what the sink itself does. One
/// repeat per COPY-with-PK-and-index figure, each divided by it.
async fn mock_cluster_repeats(
    ctx: &mut Ctx,
    topic: &str,
    rows: &Arc<Vec<ProbeResult>>,
    rates: &mut Rates,
    d: &mut String,
) -> anyhow::Result<()> {
    let n = rows.len();
    let mock = rdkafka::mocking::MockCluster::new(1)?;
    let partitions = mock_partitions(n);
    mock.create_topic(topic, partitions, 1)?;
    let bootstrap = mock.bootstrap_servers();
    let (fill_s, _, _) = prefill(&bootstrap, topic, rows.clone(), Some(partitions)).await?;
    check_nothing_evicted(&bootstrap, topic, partitions).await?;
    crate::log(&format!("pre-filled the mock cluster in {fill_s:.1} s"));
    let _ = writeln!(
        *d,
        "\nThe same {} results pre-filled into librdkafka's mock cluster (`rdkafka::mocking`, one broker, \
         running inside the bench process, so its CPU is not in the broker column; {} partitions, because the mock keeps at most \
         5 MB per partition and drops older messages), then consumed by the sink exactly as \
         above (fresh database and group each repeat). The ratio divides by the COPY with the sink's primary key and index of the same repeat above.\n\n\
         | repeat | sink rows/s | rows written / consumed / duplicates | held back (s) | rows per transaction | CPU ms per 1,000 rows: sink / PostgreSQL | cores used | ratio sink / COPY with PK + index |\n\
         |---|---:|---|---:|---:|---|---|---:|",
        num(n as f64),
        mock_partitions(n)
    );
    for (r, copy_rate) in rates.indexed.clone().iter().enumerate() {
        let db = ctx.b.name(&format!("sinkm{r}"));
        ctx.pg.create_db(&db, Some(&ctx.template)).await?;
        let extra = [("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone())];
        let s = sink_run(ctx, &db, topic, &format!("{topic}_m{r}"), &extra, n, None)
            .await
            .with_context(|| format!("repeat {}: sink against the mock cluster", r + 1))?;
        let (count, distinct) = count_and_drop(ctx, &db).await?;
        if count != distinct || count as usize != n {
            bail!(
                "repeat {} (mock cluster): probe_results holds {count} rows ({distinct} distinct) of {n}",
                r + 1
            );
        }
        let ratio = s.rate / copy_rate;
        let _ = writeln!(
            d,
            "| {} | {} | {} / {} / {} | {:.1} | {} | {} / {} | {} | {:.2} |",
            r + 1,
            num(s.rate),
            num(s.inserted as f64),
            num(s.consumed as f64),
            num(s.duplicates as f64),
            s.paused_s,
            num(s.rows_per_tx),
            num(s.ms_per_k[0]),
            num(s.ms_per_k[1]),
            s.cores,
            ratio
        );
        rates.mock.push(s.rate);
        rates.mock_ratios.push(ratio);
    }
    Ok(())
}

/// Batch-size variants, one run each, timed over the first 20 s of inserts: rows in `d`.
async fn batch_variants(ctx: &mut Ctx, topic: &str, available: usize, d: &mut String) -> anyhow::Result<()> {
    d.push_str(
        "\nBatch size variants (one run each, fresh database and group, timed over the first 20 s of inserts; \
         1,000,000 rows means a batch is never full, so the consumer never holds back; `missing` is not known for a \
         partial run):\n\n\
         | BATCH_MAX_ROWS | BATCH_MAX_BYTES | sink rows/s | rows per transaction | written / consumed / duplicates / missing | held back (s) | cores used | sink VmHWM (MiB) |\n\
         |---:|---:|---:|---:|---|---:|---|---:|\n",
    );
    let variant_window = Duration::from_secs(20);
    for (i, (max_rows, max_bytes)) in [
        (1_000usize, 64usize << 20),
        (5_000, 8 << 20),
        (20_000, 16 << 20),
        (30_000, 24 << 20),
        (40_000, 32 << 20),
        (50_000, 64 << 20),
        (1_000_000, 1 << 30),
    ]
    .into_iter()
    .enumerate()
    {
        let db = ctx.b.name(&format!("sinkv{i}"));
        ctx.pg.create_db(&db, Some(&ctx.template)).await?;
        let extra = [
            ("BATCH_MAX_ROWS", max_rows.to_string()),
            ("BATCH_MAX_BYTES", max_bytes.to_string()),
        ];
        let s = sink_run(
            ctx,
            &db,
            topic,
            &format!("{topic}_v{i}"),
            &extra,
            available,
            Some(variant_window),
        )
        .await;
        ctx.pg.drop_db(&db).await?;
        match s {
            Ok(s) => {
                let _ = writeln!(
                    *d,
                    "| {max_rows} | {max_bytes} | {} | {} | {} / {} / {} / – | {:.1} | {} | {:.0} |",
                    num(s.rate),
                    num(s.rows_per_tx),
                    num(s.inserted as f64),
                    num(s.consumed as f64),
                    num(s.duplicates as f64),
                    s.paused_s,
                    s.cores,
                    s.hwm_mib
                );
            }
            Err(e) => {
                let _ = writeln!(*d, "| {max_rows} | {max_bytes} | failed: {e} | | | | | |");
            }
        }
    }
    Ok(())
}

/// The section's figures, from what the repeats measured.
fn push_figures(ctx: &mut Ctx, n: usize, figs_prefill: f64, census: &Census, rates: Rates) {
    let figs = &mut ctx.report.figures;
    figs.push(Figure::new(
        "5",
        format!("topic pre-fill ({} messages, timed apart)", num(n as f64)),
        "msgs/s",
        vec![figs_prefill],
        None,
    ));
    figs.push(Figure::new(
        "5",
        "sink throughput, deduplicating insert",
        "rows/s",
        rates.sink,
        Some(Goal::AtLeast(100_000.0)),
    ));
    figs.push(Figure::new(
        "5",
        "raw binary COPY, same rows, no index (the limit)",
        "rows/s",
        rates.copy,
        None,
    ));
    figs.push(Figure::new(
        "5",
        "binary COPY into a table with the sink's PK + index",
        "rows/s",
        rates.indexed,
        None,
    ));
    figs.push(Figure::new(
        "5",
        "sink / COPY with the same PK + index (pair by pair)",
        "ratio",
        rates.indexed_ratios,
        Some(Goal::AtLeast(0.8)),
    ));
    figs.push(Figure::new(
        "5",
        "sink / raw COPY (pair by pair)",
        "ratio",
        rates.ratios,
        None,
    ));
    if !rates.mock.is_empty() {
        figs.push(Figure::new(
            "5",
            "sink throughput, mock-cluster broker (not the bottleneck)",
            "rows/s",
            rates.mock,
            Some(Goal::AtLeast(100_000.0)),
        ));
        figs.push(Figure::new(
            "5",
            "sink (mock-cluster broker) / COPY with the same PK + index",
            "ratio",
            rates.mock_ratios,
            None,
        ));
    }
    figs.push(Figure::new(
        "5",
        "results the sink never wrote (of those the broker serves)",
        "rows",
        rates.missed,
        Some(Goal::AtMost(0.0)),
    ));
    figs.push(Figure::new(
        "5",
        "broker read-back, plain consumer (bounds any consumer)",
        "msgs/s",
        vec![census.messages as f64 / census.secs],
        None,
    ));
}

/// Partitions for `n` results in librdkafka's mock cluster, which keeps at most 5 MB (or
/// 100,000 messages) per partition and silently drops the oldest beyond that
/// (`rdkafka_mock.c`): about 10,000 lz4-compressed results fill one, so results are spread
/// evenly, 5,000 per partition.
pub fn mock_partitions(n: usize) -> i32 {
    i32::try_from(n.div_ceil(5_000).max(6)).unwrap_or(i32::MAX)
}

/// Fails when any partition of `topic` lost messages (a low watermark above 0).
async fn check_nothing_evicted(broker: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (broker, topic) = (broker.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &broker).create()?;
        for p in 0..partitions {
            let (lo, _) = c.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            if lo > 0 {
                bail!("the mock cluster dropped the first {lo} messages of partition {p}: use more partitions");
            }
        }
        Ok(())
    })
    .await?
}

/// Pre-fills `topic` at `broker` with `n` generated results ending now.
pub async fn prefill_generated(broker: &str, topic: &str, n: usize) -> anyhow::Result<()> {
    let base = Utc::now() - chrono::Duration::seconds((n / gen::TARGETS) as i64 + 1);
    let rows = Arc::new((0..n).map(|i| gen::result(i, base)).collect::<Vec<_>>());
    prefill(broker, topic, rows, Some(mock_partitions(n))).await.map(|_| ())
}

/// Produces `rows` to `topic` as the checker would (JSON, keyed by target, timestamped with
/// the slot); returns the seconds it took, the payload bytes and the sum of the partitions'
/// high − low watermarks.
///
/// `spread`: put result `i` in partition `i % spread` instead of partitioning by key (for the
/// mock cluster, whose partitions hold only 5 MB each).
async fn prefill(
    broker: &str,
    topic: &str,
    rows: Arc<Vec<ProbeResult>>,
    spread: Option<i32>,
) -> anyhow::Result<(f64, u64, i64)> {
    let (broker, topic) = (broker.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, u64, i64)> {
        let counts = Arc::new(Deliveries::default());
        let config = ClientConfig::new()
            .set("bootstrap.servers", &broker)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "20")
            .set("compression.type", "lz4")
            .set("batch.num.messages", "10000")
            .set("batch.size", "524288")
            .set("queue.buffering.max.messages", "200000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", "300000")
            .clone();
        // Overrides for experiments: BENCH_PREFILL_CFG="linger.ms=5,batch.size=65536".
        let mut config = config;
        for kv in std::env::var("BENCH_PREFILL_CFG").unwrap_or_default().split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                config.set(k.trim(), v.trim());
            }
        }
        let producer: ThreadedProducer<Counter> = config.create_with_context(Counter(counts.clone()))?;
        let t0 = Instant::now();
        let mut bytes = 0u64;
        for (i, r) in rows.iter().enumerate() {
            let payload = serde_json::to_vec(r)?;
            bytes += payload.len() as u64;
            let mut rec = BaseRecord::to(&topic)
                .key(r.target.as_bytes())
                .payload(&payload)
                .timestamp(r.scheduled_at.timestamp_millis());
            if let Some(p) = spread {
                rec = rec.partition((i % p as usize) as i32);
            }
            let mut tries = 0;
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) if tries < 60_000 => {
                        rec = back;
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => bail!("producing to {topic}: {e}"),
                }
            }
        }
        producer.flush(Duration::from_secs(300))?;
        let secs = t0.elapsed().as_secs_f64();
        let (ok, failed) = (counts.ok.load(Ordering::Relaxed), counts.failed.load(Ordering::Relaxed));
        if failed > 0 || ok != rows.len() as u64 {
            bail!("pre-fill: {ok} delivered, {failed} failed, of {}", rows.len());
        }
        let mut stored = 0;
        let partitions = producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))?
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        for p in 0..partitions {
            let (lo, hi) = producer.client().fetch_watermarks(&topic, p, Duration::from_secs(10))?;
            stored += hi - lo;
        }
        Ok((secs, bytes, stored))
    })
    .await?
}

/// What the topic really serves, read back once from the beginning of every partition.
pub struct Census {
    /// Messages read.
    pub messages: u64,
    /// Distinct `check_id`s among them.
    pub distinct: u64,
    /// Seconds the read took.
    pub secs: f64,
}

#[derive(serde::Deserialize)]
struct IdOnly {
    check_id: uuid::Uuid,
}

/// Reads every partition of `topic` to its end with a plain consumer, counting messages and
/// distinct `check_id`s (the broker may serve fewer or more than were acknowledged).
pub async fn census(b: &setup::Bench, topic: &str) -> anyhow::Result<Census> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let (broker, topic) = (b.broker.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || -> anyhow::Result<Census> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker)
            .set("group.id", format!("{topic}_census"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..6 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let t0 = Instant::now();
        let (mut messages, mut ids, mut eof) =
            (0u64, std::collections::HashSet::new(), std::collections::HashSet::new());
        while eof.len() < 6 {
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("reading {topic} back took over 600 s ({messages} messages so far)");
            }
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    messages += 1;
                    if let Some(Ok(id)) = m.payload().map(serde_json::from_slice::<IdOnly>) {
                        ids.insert(id.check_id);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => bail!("reading {topic} back: {e}"),
                None => {}
            }
        }
        Ok(Census {
            messages,
            distinct: ids.len() as u64,
            secs: t0.elapsed().as_secs_f64(),
        })
    })
    .await?
}

/// Runs a sink with a fresh group over the pre-filled topic until it has inserted `n` rows
/// (or, with `window`, for that long after its first row).
pub async fn sink_run(
    ctx: &Ctx,
    db: &str,
    topic: &str,
    group: &str,
    extra: &[(&str, String)],
    n: usize,
    window: Option<Duration>,
) -> anyhow::Result<SinkRun> {
    let (b, pg) = (&ctx.b, &ctx.pg);
    pg.client.batch_execute("CHECKPOINT").await?;
    // Overrides for experiments: BENCH_SINK_ENV="WRITE_CONCURRENCY=4,DB_POOL_SIZE=6".
    let overrides = std::env::var("BENCH_SINK_ENV").unwrap_or_default();
    let mut vars: Vec<(&str, String)> = extra.to_vec();
    vars.extend(
        overrides
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().to_string())),
    );
    let spawned = Instant::now();
    let mut sink = setup::start_sink(b, pg, &format!("sink-{group}"), db, topic, group, &vars).await?;
    let mut list = vec![sink.who("sink")];
    list.extend(pg.who());
    list.extend(b.broker_who());
    let limit = Duration::from_secs(120 + n as u64 / 5_000);
    let mut first: Option<(Instant, f64, CpuSnap)> = None;
    // The last change of (inserted, consumed): when the sink stops short of `n` (it missed
    // messages), it is done once nothing changed for 5 s, and is timed to that last change.
    let mut last = (0.0, 0.0, Instant::now(), CpuSnap::take(&list));
    let consumed = "healthcheck_sink_messages_consumed_total";
    let m = loop {
        let m = sink.scrape().await?;
        let (v, c) = (m.sum(INSERTED), m.sum(consumed));
        if first.is_none() && v > 0.0 {
            first = Some((Instant::now(), v, CpuSnap::take(&list)));
        }
        if (v, c) != (last.0, last.1) {
            last = (v, c, Instant::now(), CpuSnap::take(&list));
        }
        if v >= n as f64 || (first.is_some() && last.2.elapsed() > Duration::from_secs(5)) {
            break m;
        }
        if let (Some(w), Some((t, _, _))) = (window, &first) {
            if t.elapsed() >= w {
                last = (v, c, Instant::now(), CpuSnap::take(&list));
                break m;
            }
        }
        if spawned.elapsed() > limit {
            bail!("the sink inserted {v} of {n} rows in {limit:?}");
        }
        sink.proc.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spawn_to_done = last.2.duration_since(spawned).as_secs_f64();
    let hwm_mib = crate::procs::rss_bytes(sink.proc.pid())?.1 as f64 / (1024.0 * 1024.0);
    sink.stop(Duration::from_secs(30)).await;
    let (t0, n0, s0) = first.expect("set before done");
    let (inserted, consumed, t1, s1) = last;
    let rows = inserted - n0;
    let d = s0.delta(&s1);
    let per_k = |who: &str| d.of(who) / rows * 1e6;
    let txs = m.sum("healthcheck_sink_transaction_duration_seconds_count");
    Ok(SinkRun {
        rate: rows / t1.duration_since(t0).as_secs_f64(),
        spawn_to_done,
        cores: d.cores(),
        ms_per_k: [per_k("sink"), per_k("postgres"), per_k("broker")],
        rows_per_tx: m.sum("healthcheck_sink_batch_rows_sum") / txs.max(1.0),
        inserted: inserted as u64,
        consumed: consumed as u64,
        duplicates: m.sum("healthcheck_sink_duplicates_total") as u64,
        paused_s: m.sum("healthcheck_sink_backpressure_seconds_total") + m.sum("healthcheck_sink_paused_seconds_total"),
        hwm_mib,
    })
}

/// Binary COPY of `rows` into a new table `table` created `LIKE probe_results <like>`;
/// returns rows per second and the cores used (this process encodes, PostgreSQL stores).
pub async fn copy(ctx: &Ctx, db: &str, table: &str, like: &str, rows: &[ProbeResult]) -> anyhow::Result<(f64, String)> {
    let client = ctx.pg.db(db).await?;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (LIKE probe_results {like}); CHECKPOINT"
        ))
        .await?;
    let mut list: Vec<(&'static str, Who)> = vec![("bench", Who::Pid(std::process::id()))];
    list.extend(ctx.pg.who());
    let (t0, s0) = (Instant::now(), CpuSnap::take(&list));
    let sink = client
        .copy_in(&format!("COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"))
        .await?;
    // The sink's own row encoder: the same columns, types and values.
    let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, &sink::store::COPY_TYPES);
    let mut writer = std::pin::pin!(writer);
    for (i, r) in rows.iter().enumerate() {
        sink::store::copy_row(writer.as_mut(), r, (i % 6) as i32, (i / 6) as i64).await?;
    }
    let written = writer.as_mut().finish().await?;
    let (secs, s1) = (t0.elapsed().as_secs_f64(), CpuSnap::take(&list));
    if written != rows.len() as u64 {
        bail!("COPY wrote {written} rows, expected {}", rows.len());
    }
    client.batch_execute(&format!("DROP TABLE {table}")).await?;
    Ok((rows.len() as f64 / secs, s0.delta(&s1).cores()))
}
