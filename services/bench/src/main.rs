//! `bench`: the benchmark harness behind `make bench`.
//!
//! `scripts/bench.sh` installs what is missing, builds the release binaries, starts a
//! PostgreSQL server and a broker of its own (other ports than the test stack) and runs this
//! program, which starts everything else (nginx, blackbox_exporter, wrk, the checker and the
//! sink), measures the issue's seven figures (median, min and max over repeats), prints the
//! table and writes BENCHMARKS.md. Nothing here is part of `make test`, and no test asserts a
//! timing.
//!
//! Scenarios (`BENCH_ONLY` picks some): `images`, `cpu`, `capacity`, `precision` (items 3 and
//! 6), `memory`, `startup`, `sink`, `write`, `profile`, and issue #14's `fleet` (3 replicas
//! sharing 100,000 targets through the targets topic on librdkafka's mock cluster), and issue
//! #10's `status` (the status page's p95 page times on a 10 M-row history), and issue #15's
//! `firstrun` (a fresh clone's first `make demo` and `make test`, full runs only).

mod gen;
mod histogram;
mod procs;
mod report;
mod setup;
mod scenario {
    pub mod capacity;
    pub mod cpu;
    pub mod firstrun;
    pub mod fleet;
    pub mod memory;
    pub mod pipeline;
    pub mod profile;
    pub mod sink;
    pub mod startup;
    pub mod status;
    pub mod write;
}

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use report::Report;
use setup::{Bench, Nginx, Pg};

/// What the scenarios share.
pub struct Ctx {
    /// Settings.
    pub b: Bench,
    /// The benchmark PostgreSQL server.
    pub pg: Pg,
    /// The probe target.
    pub nginx: Nginx,
    /// Findings.
    pub report: Report,
    /// A database holding the sink's schema, copied for each run (`CREATE DATABASE ... TEMPLATE`).
    pub template: String,
    /// The pre-filled topic and its size, once the sink scenario made it.
    pub sink_topic: Option<(String, usize)>,
    /// blackbox_exporter's probe rate, once the CPU scenario measured it.
    pub cpu_rate: Option<f64>,
    /// Topics to delete at the end.
    pub topics: Vec<String>,
    /// `/proc/loadavg` when the run started.
    pub load_at_start: String,
}

const SCENARIOS: [&str; 12] = [
    "images",
    "cpu",
    "capacity",
    "precision",
    "memory",
    "startup",
    "sink",
    "write",
    "profile",
    "fleet",
    "status",
    "firstrun",
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A progress line on stderr.
pub fn log(msg: &str) {
    eprintln!("[bench {}] {msg}", chrono::Local::now().format("%H:%M:%S"));
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `bench mock-broker TOPIC N`: a librdkafka mock cluster holding N generated results in
    // TOPIC, serving until killed (a diagnostic for sink runs by hand).
    if args.get(1).map(String::as_str) == Some("mock-broker") {
        return mock_broker(&args).await;
    }
    // `bench status-load DATABASE_URL [TARGETS] [DAYS]`: the status scenario's history loaded
    // into an existing database, left there (for query plans by hand).
    if args.get(1).map(String::as_str) == Some("status-load") {
        return scenario::status::load_command(&args).await;
    }
    // `bench status-rollup DATABASE_URL`: migrates such a database and runs the rollup backfill.
    if args.get(1).map(String::as_str) == Some("status-rollup") {
        return scenario::status::rollup_command(&args).await;
    }
    let b = Bench::from_env()?;
    // `bench census TOPIC`: read a topic back and count its messages (a diagnostic).
    if args.get(1).map(String::as_str) == Some("census") {
        let topic = args.get(2).context("usage: bench census TOPIC")?;
        let c = scenario::sink::census(&b, topic).await?;
        println!(
            "{topic}: {} messages, {} distinct check_ids, read in {:.1} s",
            c.messages, c.distinct, c.secs
        );
        return Ok(());
    }
    if let Some(only) = &b.only {
        if let Some(bad) = only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
            bail!("BENCH_ONLY: unknown scenario {bad:?}; known: {}", SCENARIOS.join(", "));
        }
    }
    let started = Instant::now();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    log(&format!(
        "{} mode, {} repeat(s), run id {}, load average {}",
        if b.quick { "quick" } else { "full" },
        b.repeats,
        b.run_id,
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    ));
    let pg = Pg::connect(&b.db_url).await?;
    let nginx = Nginx::start(&b).await?;
    let mut ctx = Ctx {
        template: b.name("schema"),
        b,
        pg,
        nginx,
        report: Report::default(),
        sink_topic: None,
        cpu_rate: None,
        topics: Vec::new(),
        load_at_start: loadavg.clone(),
    };
    let needs_db = ["precision", "startup", "sink", "write", "profile"]
        .iter()
        .any(|s| ctx.b.wants(s));
    if needs_db {
        make_template(&mut ctx).await.context("preparing the schema template")?;
    }

    for name in SCENARIOS {
        run_scenario(&mut ctx, name).await;
    }

    clean_up(&mut ctx, needs_db).await;

    let elapsed = started.elapsed();
    let header = header(&ctx, elapsed).await;
    let method = method(&ctx);
    let footer = footer();
    println!("\n{}", ctx.report.table());
    for (n, e) in &ctx.report.failures {
        println!("FAILED {n}: {e}");
    }
    ctx.report.write(&ctx.b.out, &header, &method, &footer)?;
    log(&format!(
        "wrote {} ({:.1} min in all)",
        ctx.b.out.display(),
        elapsed.as_secs_f64() / 60.0
    ));
    let Ctx { nginx, .. } = ctx;
    nginx.stop().await;
    Ok(())
}

/// `bench mock-broker TOPIC N`: a librdkafka mock cluster holding N generated results in
/// TOPIC, serving until killed (a diagnostic for sink runs by hand).
async fn mock_broker(args: &[String]) -> anyhow::Result<()> {
    let topic = args.get(2).context("usage: bench mock-broker TOPIC N")?;
    let n: usize = args.get(3).context("usage: bench mock-broker TOPIC N")?.parse()?;
    let mock = rdkafka::mocking::MockCluster::new(3)?;
    mock.create_topic(topic, scenario::sink::mock_partitions(n), 1)?;
    scenario::sink::prefill_generated(&mock.bootstrap_servers(), topic, n).await?;
    println!("{}", mock.bootstrap_servers());
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// Runs scenario `name` when it is wanted, recording a failure in the report.
async fn run_scenario(ctx: &mut Ctx, name: &str) {
    if !ctx.b.wants(name) {
        return;
    }
    if name == "profile" && !ctx.b.profile {
        return;
    }
    log(&format!("scenario {name}"));
    let t = Instant::now();
    let result = match name {
        "images" => scenario::startup::images(ctx).await,
        "cpu" => scenario::cpu::run(ctx).await,
        "capacity" => scenario::capacity::run(ctx).await,
        "precision" => scenario::pipeline::run(ctx).await,
        "memory" => scenario::memory::run(ctx).await,
        "startup" => scenario::startup::run(ctx).await,
        "sink" => scenario::sink::run(ctx).await,
        "write" => scenario::write::run(ctx).await,
        "profile" => scenario::profile::run(ctx).await,
        "fleet" => scenario::fleet::run(ctx).await,
        "status" => scenario::status::run(ctx).await,
        "firstrun" => scenario::firstrun::run(ctx).await,
        _ => unreachable!(),
    };
    match result {
        Ok(()) => log(&format!("scenario {name} done in {:.0} s", t.elapsed().as_secs_f64())),
        Err(e) => {
            log(&format!("scenario {name} failed: {e:#}"));
            ctx.report.failures.push((name.to_string(), format!("{e:#}")));
        }
    }
}

/// Deletes what the run left in the servers: its topics (unless `BENCH_KEEP_TOPICS`) and the
/// schema template.
async fn clean_up(ctx: &mut Ctx, needs_db: bool) {
    let topics: Vec<String> = std::mem::take(&mut ctx.topics);
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    if !refs.is_empty() && std::env::var_os("BENCH_KEEP_TOPICS").is_none() {
        setup::delete_topics(&ctx.b, &refs).await;
    }
    if needs_db {
        let _ = ctx.pg.drop_db(&ctx.template).await;
    }
}

/// Starts a sink once against an empty database so that it migrates it, and waits for the
/// partitions it creates at start-up.
async fn make_template(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (b, pg) = (&ctx.b, &ctx.pg);
    pg.create_db(&ctx.template, None).await?;
    let topic = b.name("schema");
    ctx.topics.push(topic.clone());
    let sink = setup::start_sink(b, pg, "sink-schema", &ctx.template, &topic, &topic, &[]).await?;
    let client = pg.db(&ctx.template).await?;
    let mut ok = false;
    for _ in 0..200 {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass('probe_results')",
                &[],
            )
            .await?
            .get(0);
        if n >= 2 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    sink.stop(Duration::from_secs(20)).await;
    if !ok {
        bail!("the sink did not create probe_results and its partitions within 20 s");
    }
    Ok(())
}

async fn command_line(prog: &str, args: &[&str]) -> String {
    match tokio::process::Command::new(prog).args(args).output().await {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(_) => "not found".into(),
    }
}

/// The opt-level the `tansu` on `PATH` was built with, from the `<binary>.opt-level` file
/// `scripts/stack.sh` writes beside it (none: a build from before it recorded one, 3).
async fn tansu_opt_level() -> String {
    let Ok(o) = tokio::process::Command::new("sh")
        .args(["-c", "command -v tansu"])
        .output()
        .await
    else {
        return "unknown".into();
    };
    let bin = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if bin.is_empty() {
        return "unknown".into();
    }
    std::fs::read_to_string(format!("{bin}.opt-level")).map_or_else(|_| "3".into(), |l| l.trim().to_string())
}

/// The report's "Machine" section: load, CPU, memory, kernel and the tools' versions.
async fn machine(ctx: &Ctx) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut s = String::from("## Machine\n\n");
    let nice: i32 = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| {
            t.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(16)?.parse().ok())
        })
        .unwrap_or(0);
    let load = |t: &str| t.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let _ = writeln!(
        s,
        "- Load average (1, 5, 15 min) at the start: {}, at the end: {}{}",
        load(&ctx.load_at_start),
        load(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default()),
        if nice != 0 {
            format!(
                "; everything measured (services, nginx, blackbox_exporter, wrk, PostgreSQL, the broker) ran at nice {nice} \
                 (`BENCH_NICE`), so that other work on this shared machine skewed it less"
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "- CPU: {model}, {cores} cores (virtual), {mem_gib:.0} GiB memory, Linux {}",
        kernel.trim()
    );
    let _ = writeln!(
        s,
        "- Everything runs on these 2 cores at once: the service under test, its load (nginx, wrk), the broker and \
         PostgreSQL. The details give each process's share (`cores used`: CPU seconds per second), and `other` is the \
         machine's remaining busy time (other work on the machine, and this harness)."
    );
    let _ = writeln!(s, "- PostgreSQL {} (Debian, stack defaults from `scripts/stack.sh`: fsync on, synchronous_commit on, shared_buffers 128 MB)", ctx.pg.version);
    let _ = writeln!(
        s,
        "- Broker: {} (in-memory storage), built at opt-level {}",
        command_line("tansu", &["--version"]).await,
        tansu_opt_level().await
    );
    let _ = writeln!(
        s,
        "- Target: {} serving a {} byte page",
        command_line("nginx", &["-v"]).await,
        ctx.nginx.page_bytes
    );
    let _ = writeln!(
        s,
        "- Reference: {}",
        command_line("prometheus-blackbox-exporter", &["--version"]).await
    );
    let _ = writeln!(s, "- Load generator: {}", command_line("wrk", &["-v"]).await);
    let _ = writeln!(s, "- Built with {}", command_line("rustc", &["-V"]).await);
    s
}

async fn header(ctx: &Ctx, elapsed: Duration) -> String {
    let b = &ctx.b;
    let rev = command_line(
        "git",
        &["-C", &b.repo.display().to_string(), "rev-parse", "--short=12", "HEAD"],
    )
    .await;
    let mut s = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        s,
        "Written by `make bench` ({}; `scripts/bench.sh` → `services/bench`) on {} at commit `{rev}`: \
         {} repeat(s) per figure, {:.1} minutes in all. Every figure is the median of the repeats, with min and max; \
         ratios are computed pair by pair (each repeat measures both sides back to back) and then summarised.\n",
        if b.quick { "quick mode" } else { "full mode" },
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        b.repeats,
        elapsed.as_secs_f64() / 60.0
    );
    s.push_str(&machine(ctx).await);
    s
}

fn method(ctx: &Ctx) -> String {
    let b = &ctx.b;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "All figures come from the release binaries (`cargo build --release`), configured only through environment \
         variables, probing nginx on 127.0.0.1 (the {} byte page, body regex `{}`), publishing to the broker, and, where \
         a sink runs, writing to PostgreSQL. CPU is `/proc/<pid>/stat` utime + stime (all threads; for nginx and \
         PostgreSQL the whole process tree) over a fixed window.\n",
        ctx.nginx.page_bytes,
        setup::BODY_MARKER
    );
    let _ = writeln!(
        s,
        "1. **CPU per probe.** blackbox_exporter (Debian's package) with one HTTP module (GET, IPv4, the same body \
         regex, 5 s timeout) is driven through `/probe` by `wrk -t2 -c8` for {w}+ s; after a {warm} s warm-up its CPU \
         over a {w} s window is divided by the probes nginx served in it (`stub_status`). Then a checker gets \
         rate × 0.1 targets every 100 ms, i.e. the same probe rate, and its CPU over a {w} s window is divided by \
         `healthcheck_checker_probes_completed_total`'s increase. The checker's figure includes encoding and publishing \
         every result to the broker (librdkafka runs inside it); blackbox_exporter's includes serving the `/probe` \
         response that Prometheus would scrape. The broker's CPU is listed apart in the details.",
        w = b.pick(10, 5),
        warm = b.pick(3, 2)
    );
    let _ = writeln!(
        s,
        "2. **Capacity.** A fresh checker per step with R targets every 1 s; after a warm-up, a {} s window of its \
         `/metrics`. A step passes when ≥ 99 % of the window's `healthcheck_checker_scheduling_lateness_seconds` \
         observations are ≤ 10 ms (p99 < 10 ms), ≥ 97 % of R completed, no slot was skipped, ≥ 97 % were delivered to \
         the broker and ≥ 99 % succeeded. R grows ×1.5 from 4,000/s until a step fails, then is bisected to within \
         10 %. nginx and the broker share the 2 cores with the checker, so this is a lower bound for the checker alone.",
        b.pick(6, 4)
    );
    let _ = writeln!(
        s,
        "3. **Precision.** The whole pipeline with 1,000 targets every 1 s: PostgreSQL's `percentile_cont` and `max` \
         over `lateness_seconds` (probe start − scheduled slot) of every probe started in a {} s window after a \
         warm-up; exact, not bucketed. Beside it, in the same window, the machine's own wake-up latency: rt-tests' \
         `cyclictest --policy=other --laptop -t1 -i 1000` (one thread at the harness's priority sleeping 1 ms at a \
         time; how late each sleep ends, from its microsecond histogram), the floor under any timer on this \
         machine at this load (skipped when cyclictest is not installed). When the harness holds `CAP_SYS_NICE`          (as root), each repeat also runs the checker with `REALTIME_PRIORITY=50` (every thread under `SCHED_FIFO`),          with cyclictest's thread under `SCHED_FIFO` at the same priority beside it; the variants run in a rotating          order.",
        b.pick(30, 10)
    );
    let _ = writeln!(
        s,
        "4. **Memory.** A checker with 10,000 targets every 10 s (1,000 probes/s, publishing), `/metrics` \
         scraped every 10 s as Prometheus would; `VmRSS` from `/proc/<pid>/status` after {} s of steady state \
         (MiB = 2^20 bytes), and `VmHWM`, the peak. Memory per target: that `VmRSS` minus a 1-target \
         checker's after {} s, over 9,999. With `BENCH_BASELINE_BIN_DIR`, another build's checker is measured \
         in the same repeats, in alternating order.",
        b.pick(60, 20),
        b.pick(30, 10)
    );
    let _ = writeln!(
        s,
        "5. **Sink throughput.** {} realistic results (1,000 targets, half HTTPS with TLS details, ~3 % failures; \
         `services/bench/src/gen.rs`) are produced to a 6-partition topic as the checker would (timed apart). Each \
         repeat, in a fresh database holding the sink's schema, runs in alternating order (a) the release sink with a \
         fresh consumer group and default batch settings, rows/s from its first inserted row to the last \
         (`healthcheck_sink_rows_inserted_total`), then `count(*)` and `count(DISTINCT check_id)` must both equal the \
         input; (b) a binary COPY of the same rows into a table `LIKE probe_results INCLUDING DEFAULTS` (same columns \
         and types, no index, no constraint, not partitioned): the physical limit; (c) the same into a table that also \
         has the sink's primary key and target index. A `CHECKPOINT` precedes each. The goal is on (a)/(c) per \
         repeat, the same rows and indexes written by PostgreSQL's fastest path; (a)/(b) is shown beside it.",
        report::num(b.sink_rows as f64)
    );
    let _ = writeln!(
        s,
        "6. **End-to-end latency.** Same runs as 3 (1,000 results/s): `inserted_at − (started_at + duration_seconds)` \
         per row, i.e. probe completed → row inserted, where `inserted_at` is the sink transaction's `now()` (its \
         start; the commit follows within the transaction time shown in the details). One clock: same machine."
    );
    let _ = writeln!(
        s,
        "7. **Images and start-up.** `docker image inspect` sizes of the images `make images` builds (reported only \
         when present; this harness never builds them). Start → ready: spawn of the release binary until its first \
         `/readyz` 200, polled every 5 ms; the checker needs the broker's metadata for its topic, the sink PostgreSQL \
         and the broker."
    );
    let _ = writeln!(
        s,
        "8. **Fleet (issue #14).** `BENCH_FLEET_TARGETS` targets (100,000; quick 20,000) every 60 s probing nginx, \
         published to a 6-partition targets topic by `checker targets apply`, on librdkafka's mock cluster owned by \
         the bench process (tansu mishandles groups of 3 members: `shared/notes/test-broker-groups.md`). Three \
         release checkers join group `checker-bench` with a 6 s session timeout. Scheduled: start → the replicas \
         hold every partition, nothing in hand-over, and `healthcheck_checker_targets` sums to N. RSS (`VmRSS`) and \
         CPU per replica over one steady interval. Then one replica is SIGKILLed: the rebalance time is the first \
         probe (its start) by a survivor of a target the killed replica probed in the interval before, minus the \
         kill. Coverage is computed from the results topic, read back while it is written: slots of each target's \
         grid (`common::slots`) from one interval after scheduling to the end that have a result; the goal is met outside \
         the killed replica's hole, which is per moved target (owned by the killed replica at the kill): from its last \
         delivered slot to a survivor's first probed slot, both exclusive. Every missing slot is classified by cause."
    );
    let _ = writeln!(
        s,
        "9. **Status page (issue #10).** In a scratch database migrated by `Store::migrate`: `BENCH_STATUS_TARGETS` \
         targets (1,000; quick 100) × `BENCH_STATUS_DAYS` days (7) × one slot per 60 s on each target's grid, i.e. \
         10.08 M rows, loaded with binary COPY (the sink's `copy_row`, 2 streams of one-hour chunks, newest first, each in time order, \
         into `probe_results` with its indexes), each target's version in `target_changes`, ~0.5 % failures in runs \
         of 1–4 slots, one 45-slot outage under a maintenance window, one target down now, 3-hour holes in ~1 % of \
         the targets, half HTTPS with certificate expiries (`services/bench/src/scenario/status.rs`). Then the \
         rollup backfill: `Store::rollup_once` until a pass finds nothing left. Then a release sink serving the \
         status page on its `STATUS_ADDR`: after checking that the JSON API shows the loaded history, {} sequential \
         GETs of each page per repeat (after 3 warm-up GETs), one connection per GET, timed from connect to the \
         last body byte; the goal is on each page's p95.",
        b.pick(50, 20)
    );
    let _ = writeln!(
        s,
        "10. **First run (issue #15).** `scripts/first-run.sh`, once per full run: a fresh `git clone` of the \
         commit; in it, with `CARGO_TARGET_DIR` unset (an empty `target/`) and tansu's build directory and binary \
         inside the clone, `DEMO_SECONDS=20 make demo` (timed whole, then once more), then `scripts/stack.sh \
         install` (the test broker's build, `make test`'s first step) and `make test`, the two summed. The Rust \
         toolchain, Debian's packages and cargo's package cache are the machine's (a new machine downloads the \
         crates first; not timed)."
    );
    s
}

fn footer() -> String {
    "\n## Reproduce\n\n```\nmake bench                       # full run (about 20 minutes), rewrites BENCHMARKS.md\n\
     BENCH_QUICK=1 make bench         # 1 repeat, smaller sizes, report in .tmp/bench/\n\
     BENCH_ONLY=cpu,sink make bench   # some scenarios: images cpu capacity precision memory startup sink write profile fleet status firstrun\n```\n\n\
     Other knobs: `BENCH_REPEATS`, `BENCH_SINK_ROWS`, `BENCH_FLEET_TARGETS` (default 100000; quick 20000), \
     `BENCH_STATUS_TARGETS` / `BENCH_STATUS_DAYS` (default 1000 / 7; quick 100 / 7), `BENCH_KEEP_STATUS_DB=1`, `BENCH_PROFILE=0|1`, `BENCH_NICE=-10` (on a shared machine), \
     `BENCH_PG_PORT` / `BENCH_BROKER_PORT` \
     (default 54340 / 19100, apart from the test stack). Logs, configs and `perf.data` files stay in `.tmp/bench/`.\n"
        .to_string()
}
