//! Issue #14's benchmark: a checker fleet of 3 replicas sharing 100,000 targets at a 60 s
//! interval through the targets topic's consumer group, on this machine.
//!
//! The broker is librdkafka's mock cluster, owned by this process (tansu mishandles groups of
//! 3 members and dead ones: `shared/notes/test-broker-groups.md`); the checkers are release
//! binaries connecting to it over TCP. The targets (all probing the bench's nginx) are
//! published with the real `checker targets apply` (its time is a figure too). Measured:
//! - the time from starting the 3 replicas until the group is settled: every partition held
//!   by one replica, nothing in hand-over, and the replicas' `healthcheck_checker_targets`
//!   summing to N;
//! - per replica, over one interval of steady state: RSS (`VmRSS`, and the peak `VmHWM`) and
//!   CPU (cores used);
//! - one replica SIGKILLed: the rebalance time, i.e. the first probe by a survivor of a target
//!   the killed replica probed (its slot's start) minus the kill, and the time until every
//!   such target was probed again;
//! - coverage from the results topic (read back as it is written): the share of the slots of
//!   the grid (`common::slots`) that have a result, before the kill, over the whole run, and
//!   outside the killed replica's holes. The hole is per moved target (one the victim owned
//!   at the kill), from the victim's last delivered slot to a survivor's first probed slot,
//!   both exclusive: its partition is reassigned and loaded at its own time, and the victim's
//!   last probes (in flight, or not yet delivered) die with it. Every missing slot is
//!   classified ([`Cause`]) and written to `<work>/fleet-missing.csv`, every result to
//!   `<work>/fleet-results.csv`.
//!
//! Never asserts: figures only.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::Utc;
use common::result::ProbeResult;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use testkit::metrics::Scrape;

use crate::procs::CpuSnap;
use crate::report::{num, Figure, Goal};
use crate::setup::{Service, BODY_MARKER};
use crate::{log, Ctx};

/// Every target's interval.
const INTERVAL: Duration = Duration::from_secs(60);
/// Partitions of the targets topic (README's default).
const TARGET_PARTITIONS: i32 = 6;
/// Partitions of the results topic.
const RESULT_PARTITIONS: i32 = 6;
/// `session.timeout.ms` of the replicas: how long a dead one holds its partitions.
const SESSION_TIMEOUT_MS: u64 = 6_000;
/// The replicas' `INSTANCE_ID`s (also their names in the CPU table).
const REPLICAS: [&str; 3] = ["fleet-0", "fleet-1", "fleet-2"];
/// The replica that is SIGKILLed.
const VICTIM: usize = 0;

/// One result, as small as the bench keeps it.
#[derive(Clone, Copy)]
struct Seen {
    target: u32,
    instance: u8,
    scheduled_ms: i64,
    started_ms: i64,
}

/// The results topic read from its beginning on a thread, until stopped.
struct Reader {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(bootstrap: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "bench-fleet-reader")
            .set("enable.auto.commit", "false")
            .set("log_level", "3")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..RESULT_PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let seen = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let Some(r) = m.payload().and_then(|p| serde_json::from_slice::<ProbeResult>(p).ok()) else {
                    continue;
                };
                let (Some(target), Some(instance)) = (
                    r.target.strip_prefix("fleet-").and_then(|n| n.parse().ok()),
                    REPLICAS.iter().position(|x| *x == r.instance_id),
                ) else {
                    continue;
                };
                s.lock().expect("lock").push(Seen {
                    target,
                    instance: instance as u8,
                    scheduled_ms: r.scheduled_at.timestamp_millis(),
                    started_ms: r.started_at.timestamp_millis(),
                });
            }
        });
        Ok(Self {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

/// The target name of index `i`.
fn name(i: usize) -> String {
    format!("fleet-{i:06}")
}

/// Runs the scenario once (it is expensive: about 6 minutes).
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let n: usize = std::env::var("BENCH_FLEET_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(b.pick(100_000, 20_000));
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1)?;
    let bootstrap = mock.bootstrap_servers();
    let targets_topic = b.name("fleet_targets");
    let results_topic = b.name("fleet_results");
    mock.create_topic(&targets_topic, TARGET_PARTITIONS, 1)?;
    mock.create_topic(&results_topic, RESULT_PARTITIONS, 1)?;

    // The targets, published by `checker targets apply`.
    let specs: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"name": name(i), "url": ctx.nginx.url(), "regex": BODY_MARKER, "interval": "1m"}))
        .collect();
    let file = b.work.join("fleet-targets.json");
    std::fs::write(&file, serde_json::to_vec(&specs)?)?;
    let applied = Instant::now();
    let out = tokio::process::Command::new(b.bin_dir.join("checker"))
        .args(["targets", "apply"])
        .arg(&file)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("KAFKA_TARGETS_TOPIC", &targets_topic)
        .env("KAFKA_CREATE_TOPIC", "false")
        .output()
        .await
        .context("run checker targets apply")?;
    let apply_secs = applied.elapsed().as_secs_f64();
    std::fs::write(b.work.join("fleet-apply.out"), &out.stdout)?;
    if !out.status.success() {
        bail!(
            "checker targets apply exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    log(&format!("fleet: applied {n} targets in {apply_secs:.1} s"));

    let reader = Reader::start(&bootstrap, &results_topic)?;
    let vars = |id: &str| -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("KAFKA_TOPIC", results_topic.clone()),
            ("KAFKA_TARGETS_TOPIC", targets_topic.clone()),
            ("KAFKA_CREATE_TOPIC", "false".into()),
            ("LOCATION", "bench".into()),
            ("INSTANCE_ID", id.to_string()),
            ("KAFKA_CFG_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string()),
            ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "1000".into()),
        ]
    };
    let started = Instant::now();
    let mut replicas: Vec<Option<Service>> = Vec::new();
    for id in REPLICAS {
        replicas.push(Some(Service::start(&b, "checker", id, &vars(id), false).await?));
    }
    let all: Vec<usize> = (0..REPLICAS.len()).collect();
    settle(&replicas, &all, n, Duration::from_secs(600)).await?;
    let schedule_secs = started.elapsed().as_secs_f64();
    let settled_at = Utc::now();
    log(&format!(
        "fleet: {n} targets scheduled over 3 replicas in {schedule_secs:.1} s"
    ));

    // Steady state: one interval for every first slot to pass, then one measured interval.
    tokio::time::sleep(INTERVAL).await;
    let who: Vec<(&str, crate::procs::Who)> = replicas
        .iter()
        .zip(REPLICAS)
        .filter_map(|(s, id)| Some(s.as_ref()?.who(id)))
        .collect();
    let c0 = CpuSnap::take(&who);
    let scrapes0 = scrape_all(&replicas).await;
    tokio::time::sleep(INTERVAL).await;
    let c1 = CpuSnap::take(&who);
    let mut scrapes1 = scrape_all(&replicas).await;
    let cpu = c0.delta(&c1);
    let mut rss = Vec::new();
    let mut per_replica = String::from(
        "| replica | partitions | targets | RSS MiB | peak RSS MiB | cores used | probes/s |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, s) in replicas.iter().enumerate() {
        let s = s.as_ref().expect("running");
        let (now, peak) = testkit::procfs::rss_bytes(s.proc.pid())?;
        let mib = |x: u64| x as f64 / (1u64 << 20) as f64;
        rss.push(mib(now));
        let m = |sc: &Option<Scrape>, name: &str| sc.as_ref().map_or(f64::NAN, |s| s.sum(name));
        let probes = (m(&scrapes1[i], "healthcheck_checker_probes_completed_total")
            - m(&scrapes0[i], "healthcheck_checker_probes_completed_total"))
            / cpu.seconds;
        let _ = writeln!(
            per_replica,
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {} |",
            REPLICAS[i],
            m(&scrapes1[i], "healthcheck_checker_assigned_partitions"),
            num(m(&scrapes1[i], "healthcheck_checker_targets")),
            mib(now),
            mib(peak),
            cpu.of(REPLICAS[i]) / cpu.seconds,
            num(probes)
        );
    }
    let cores: Vec<f64> = REPLICAS.iter().map(|id| cpu.of(id) / cpu.seconds).collect();

    // SIGKILL one replica.
    let kill_at = Utc::now();
    let victim = replicas[VICTIM].take().expect("running");
    crate::procs::signal(victim.proc.pid(), "KILL");
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..REPLICAS.len()).filter(|i| *i != VICTIM).collect();
    settle(&replicas, &survivors, n, Duration::from_secs(300)).await?;
    let group_settled_secs = killed.elapsed().as_secs_f64();
    log(&format!(
        "fleet: 2 survivors hold every partition {group_settled_secs:.1} s after the kill"
    ));
    // Every moved target's next slot, and a margin for the results to arrive.
    tokio::time::sleep(INTERVAL + Duration::from_secs(10)).await;
    let end_at = Utc::now() - chrono::Duration::seconds(5);
    let mut counters = scrape_all(&replicas).await;
    counters[VICTIM] = scrapes1[VICTIM].take();
    for s in replicas.iter_mut().filter_map(Option::take) {
        s.stop(Duration::from_secs(20)).await;
    }
    drop(victim);
    tokio::time::sleep(Duration::from_secs(2)).await;
    log(&format!("fleet: {} results read back", reader.count()));
    let seen = reader.finish();

    // Rebalance: the targets the victim probed in the interval before the kill.
    let kill_ms = kill_at.timestamp_millis();
    let interval_ms = INTERVAL.as_millis() as i64;
    let moved: HashSet<u32> = seen
        .iter()
        .filter(|s| {
            s.instance as usize == VICTIM && s.scheduled_ms > kill_ms - interval_ms && s.scheduled_ms <= kill_ms
        })
        .map(|s| s.target)
        .collect();
    let mut first_after = vec![i64::MAX; n];
    for s in &seen {
        if s.instance as usize != VICTIM && s.started_ms > kill_ms && moved.contains(&s.target) {
            let f = &mut first_after[s.target as usize];
            *f = (*f).min(s.started_ms);
        }
    }
    let firsts: Vec<i64> = moved
        .iter()
        .map(|t| first_after[*t as usize])
        .filter(|f| *f != i64::MAX)
        .collect();
    let first_probe_secs = firsts.iter().min().map_or(f64::NAN, |f| (f - kill_ms) as f64 / 1e3);
    let all_probed_secs = if firsts.len() == moved.len() {
        firsts.iter().max().map_or(f64::NAN, |f| (f - kill_ms) as f64 / 1e3)
    } else {
        f64::NAN
    };

    // Coverage of the grid, from the results, and why each missing slot is missing.
    let from = settled_at + chrono::Duration::from_std(INTERVAL)?;
    let a = analyse(&seen, n, INTERVAL, from, end_at, kill_ms, VICTIM as u8)?;
    dump(&b.work, &seen, &a, kill_ms)?;
    let mut spans: Vec<f64> = a
        .holes
        .iter()
        .filter_map(|h| Some((h.first_ms? - h.last_ms) as f64 / 1e3))
        .collect();
    spans.sort_unstable_by(f64::total_cmp);
    let unclosed = a.holes.iter().filter(|h| h.first_ms.is_none()).count();
    let mut takeovers: Vec<f64> = a
        .holes
        .iter()
        .filter_map(|h| Some((h.first_ms? - kill_ms) as f64 / 1e3))
        .collect();
    takeovers.sort_unstable_by(f64::total_cmp);
    let mut causes: std::collections::BTreeMap<Cause, usize> = std::collections::BTreeMap::new();
    for m in &a.missing {
        *causes.entry(m.cause).or_default() += 1;
    }
    let r = &mut ctx.report;
    r.figures.push(Figure::new(
        "14",
        format!(
            "fleet: `checker targets apply` of {} targets to an empty topic",
            num(n as f64)
        ),
        "s",
        vec![apply_secs],
        None,
    ));
    r.figures.push(Figure::new(
        "14",
        format!(
            "fleet: {} targets every 60 s, 3 replicas started → all scheduled",
            num(n as f64)
        ),
        "s",
        vec![schedule_secs],
        None,
    ));
    r.figures.push(Figure::new(
        "14",
        "fleet: RSS per replica (samples: the 3 replicas)",
        "MiB",
        rss,
        None,
    ));
    r.figures.push(Figure::new(
        "14",
        "fleet: CPU per replica (samples: the 3 replicas)",
        "cores",
        cores,
        None,
    ));
    r.figures.push(Figure::new(
        "14",
        format!(
            "fleet: one replica SIGKILLed (session timeout {} s) → first probe of a moved target by a survivor",
            SESSION_TIMEOUT_MS / 1000
        ),
        "s",
        vec![first_probe_secs],
        Some(Goal::AtMost(
            (SESSION_TIMEOUT_MS as f64 / 1e3) * 2.0 + INTERVAL.as_secs_f64(),
        )),
    ));
    r.figures.push(Figure::new(
        "14",
        "fleet: SIGKILL → every moved target probed again",
        "s",
        vec![all_probed_secs],
        None,
    ));
    r.figures.push(Figure::new(
        "14",
        "fleet: coverage outside the killed replica's holes (per moved target: its last delivered slot → a survivor's first slot)",
        "%",
        vec![a.outside_holes.percent()],
        Some(Goal::AtLeast(100.0)),
    ));
    r.figures.push(Figure::new(
        "14",
        format!(
            "fleet: hole per moved target, last delivered slot → survivor's first slot (samples: the {} holes; session timeout + interval = {} s)",
            num(spans.len() as f64),
            SESSION_TIMEOUT_MS / 1000 + INTERVAL.as_secs()
        ),
        "s",
        spans.clone(),
        None,
    ));
    let mut d = String::new();
    let _ = writeln!(
        d,
        "{} targets (each `{{url: nginx, regex, interval: 1m}}`) on a {TARGET_PARTITIONS}-partition targets topic of \
         librdkafka's mock cluster (in the bench process), published by `checker targets apply` in {apply_secs:.1} s; \
         3 release checkers in group `checker-bench` (`KAFKA_CFG_SESSION_TIMEOUT_MS={SESSION_TIMEOUT_MS}`, heartbeat 1 s). \
         All scheduled {schedule_secs:.1} s after start. Steady state over {:.0} s:\n",
        num(n as f64),
        cpu.seconds
    );
    d.push_str(&per_replica);
    let _ = writeln!(
        d,
        "\n{} SIGKILLed at {kill_at}: it had probed {} targets in the interval before; survivors held every partition \
         after {group_settled_secs:.1} s (group view); first survivor probe of one of them after {first_probe_secs:.1} s, \
         all of them probed again after {all_probed_secs:.1} s ({} of {} seen).\n",
        REPLICAS[VICTIM],
        num(moved.len() as f64),
        num(firsts.len() as f64),
        num(moved.len() as f64)
    );
    let pct = |v: &[f64]| {
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1}",
            quantile(v, 0.0),
            quantile(v, 0.5),
            quantile(v, 0.99),
            quantile(v, 1.0)
        )
    };
    let _ = writeln!(
        d,
        "Coverage (slots of the grid with a result, from {from} to {end_at}; {} results read back). A moved target \
         (owned by {victim} at the kill: its last result at or before the kill is {victim}'s) has a hole from {victim}'s \
         last delivered slot to a survivor's first probed slot, both exclusive:\n\n\
         | window | expected slots | with a result | coverage |\n|---|---:|---:|---:|\n\
         | before the kill | {} | {} | {:.3} % |\n| whole run, kill included | {} | {} | {:.3} % |\n\
         | outside the holes of the {} moved targets | {} | {} | {:.3} % |\n\n\
         Holes (min / median / p99 / max; {unclosed} not closed before the end), next to session timeout + interval = {} s:\n\n\
         | per moved target | s |\n|---|---:|\n\
         | last delivered slot → survivor's first slot | {} |\n| kill → survivor's first slot | {} |\n\n\
         A hole's ends are consecutive results, so every slot inside one is missing: the coverage goal says that \
         every missing slot is in a hole, and the holes' lengths (a span of k intervals is k − 1 missing slots) say \
         how much the kill cost.\n",
        num(seen.len() as f64),
        num(a.before_kill.expected as f64),
        num(a.before_kill.present as f64),
        a.before_kill.percent(),
        num(a.whole.expected as f64),
        num(a.whole.present as f64),
        a.whole.percent(),
        num(a.holes.len() as f64),
        num(a.outside_holes.expected as f64),
        num(a.outside_holes.present as f64),
        a.outside_holes.percent(),
        SESSION_TIMEOUT_MS / 1000 + INTERVAL.as_secs(),
        pct(&spans),
        pct(&takeovers),
        victim = REPLICAS[VICTIM],
    );
    d.push_str("Missing slots by cause (all listed in `fleet-missing.csv`, results in `fleet-results.csv`):\n\n| cause | slots |\n|---|---:|\n");
    for (c, k) in &causes {
        let _ = writeln!(d, "| {} | {k} |", c.describe());
    }
    let outside: Vec<&Missing> = a.missing.iter().filter(|m| !m.cause.in_hole()).collect();
    if !outside.is_empty() {
        d.push_str(
            "\nMissing outside the holes (first 40): target, cause, slot − kill, slot − start of the window:\n\n",
        );
        for m in outside.iter().take(40) {
            let _ = writeln!(
                d,
                "- {} {:?} {:+.1} s, {:+.1} s",
                name(m.target as usize),
                m.cause,
                (m.slot_ms - kill_ms) as f64 / 1e3,
                (m.slot_ms - from.timestamp_millis()) as f64 / 1e3
            );
        }
    }
    d.push_str("\nCounters (the victim's just before the kill, the survivors' at the end):\n\n| replica | skipped slots | results dropped | publish failures | results waiting | probes in flight |\n|---|---:|---:|---:|---:|---:|\n");
    for (i, sc) in counters.iter().enumerate() {
        let m = |name: &str| sc.as_ref().map_or(f64::NAN, |s| s.sum(name));
        let _ = writeln!(
            d,
            "| {} | {} | {} | {} | {} | {} |",
            REPLICAS[i],
            m("healthcheck_checker_skipped_slots_total"),
            m("healthcheck_checker_results_dropped_total"),
            m("healthcheck_checker_publish_failures_total"),
            m("healthcheck_checker_results_waiting"),
            m("healthcheck_checker_probes_in_flight"),
        );
    }
    r.details.push(("14. Fleet".into(), d));
    Ok(())
}

/// Slots expected and slots with a result.
#[derive(Clone, Copy, Debug, Default)]
struct Coverage {
    expected: u64,
    present: u64,
}

impl Coverage {
    fn add(&mut self, has: bool) {
        self.expected += 1;
        self.present += u64::from(has);
    }

    fn percent(&self) -> f64 {
        if self.expected == 0 {
            f64::NAN
        } else {
            self.present as f64 * 100.0 / self.expected as f64
        }
    }
}

/// Why a slot of the grid has no result (see [`analyse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// A target the victim owned at the kill, slot at or before the kill, after the victim's
    /// last delivered slot: lost with the victim (probe in flight or result not yet delivered).
    HoleBeforeKill,
    /// A target the victim owned, slot after the kill, before the survivor's first slot:
    /// detection (session timeout) + reassignment + load + the wait for the next slot.
    HoleAfterKill,
    /// The victim's target, slot before its last delivered one (a slot the victim skipped).
    VictimEarlier,
    /// The victim's target, slot after the survivor's first one.
    MovedLater,
    /// A survivor's own target, slot at or before the kill.
    SurvivorBeforeKill,
    /// A survivor's own target, slot after the kill.
    SurvivorAfterKill,
    /// A target with no result before the kill at all (owner unknown).
    NoOwner,
}

impl Cause {
    fn describe(self) -> &'static str {
        match self {
            Self::HoleBeforeKill => "victim's target, at/before the kill, after its last delivered slot (lost with it)",
            Self::HoleAfterKill => "victim's target, after the kill, before the survivor's first slot (takeover)",
            Self::VictimEarlier => "victim's target, before its last delivered slot",
            Self::MovedLater => "victim's target, after the survivor's first slot",
            Self::SurvivorBeforeKill => "survivor's own target, at/before the kill",
            Self::SurvivorAfterKill => "survivor's own target, after the kill",
            Self::NoOwner => "target without any result before the kill",
        }
    }

    fn in_hole(self) -> bool {
        matches!(self, Self::HoleBeforeKill | Self::HoleAfterKill)
    }
}

/// One slot of the grid without a result.
#[derive(Clone, Copy, Debug)]
struct Missing {
    target: u32,
    slot_ms: i64,
    cause: Cause,
}

/// The killed replica's hole in one moved target's history: from its last delivered slot
/// (exclusive) to a survivor's first probed slot (exclusive); `first_ms` is `None` when no
/// survivor probed it before the end.
#[derive(Clone, Copy, Debug)]
struct Hole {
    last_ms: i64,
    first_ms: Option<i64>,
}

/// Coverage of the grid, with every missing slot and its cause.
#[derive(Debug, Default)]
struct Analysis {
    /// Slots at or before the kill.
    before_kill: Coverage,
    /// Every slot.
    whole: Coverage,
    /// Slots outside the holes of the moved targets.
    outside_holes: Coverage,
    /// Per moved target (owned by the victim at the kill).
    holes: Vec<Hole>,
    missing: Vec<Missing>,
}

/// The grid's slots `from < slot <= end` of targets `0..n` (interval `interval`, phase from
/// their name), checked against the results `seen`; `victim` is the killed replica's index,
/// killed at `kill_ms`. A target's owner at the kill is the replica of its last result
/// scheduled at or before the kill.
fn analyse(
    seen: &[Seen],
    n: usize,
    interval: Duration,
    from: chrono::DateTime<Utc>,
    end: chrono::DateTime<Utc>,
    kill_ms: i64,
    victim: u8,
) -> anyhow::Result<Analysis> {
    let mut by_target: Vec<Vec<(i64, u8)>> = vec![Vec::new(); n];
    for s in seen {
        if let Some(v) = by_target.get_mut(s.target as usize) {
            v.push((s.scheduled_ms, s.instance));
        }
    }
    let step = chrono::Duration::from_std(interval)?;
    let mut a = Analysis::default();
    for (i, results) in by_target.iter_mut().enumerate() {
        results.sort_unstable();
        let owner = results.iter().rev().find(|(ms, _)| *ms <= kill_ms).map(|(_, who)| *who);
        let hole = (owner == Some(victim)).then(|| {
            let last_ms = results
                .iter()
                .filter(|(_, who)| *who == victim)
                .map(|(ms, _)| *ms)
                .max()
                .expect("the owner has a result");
            let first_ms = results
                .iter()
                .find(|(ms, who)| *who != victim && *ms > last_ms)
                .map(|(ms, _)| *ms);
            Hole { last_ms, first_ms }
        });
        if let Some(h) = hole {
            a.holes.push(h);
        }
        let phase = common::slots::phase(&name(i), interval);
        let mut slot = common::slots::next_slot_after(from, interval, phase);
        while slot <= end {
            let ms = slot.timestamp_millis();
            let has = results.binary_search_by(|(m, _)| m.cmp(&ms)).is_ok();
            let cause = match (owner, hole) {
                (None, _) => Cause::NoOwner,
                (Some(_), Some(h)) if ms > h.last_ms && h.first_ms.is_none_or(|f| ms < f) => {
                    if ms <= kill_ms {
                        Cause::HoleBeforeKill
                    } else {
                        Cause::HoleAfterKill
                    }
                }
                (Some(_), Some(h)) if ms <= h.last_ms => Cause::VictimEarlier,
                (Some(_), Some(_)) => Cause::MovedLater,
                (Some(_), None) if ms <= kill_ms => Cause::SurvivorBeforeKill,
                (Some(_), None) => Cause::SurvivorAfterKill,
            };
            if ms <= kill_ms {
                a.before_kill.add(has);
            }
            a.whole.add(has);
            if !cause.in_hole() {
                a.outside_holes.add(has);
            }
            if !has {
                a.missing.push(Missing {
                    target: i as u32,
                    slot_ms: ms,
                    cause,
                });
            }
            slot += step;
        }
    }
    Ok(a)
}

/// The `q`-quantile (0..=1, nearest rank) of sorted `v`; NaN when empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Writes the results (`fleet-results.csv`) and the missing slots (`fleet-missing.csv`) to
/// `work`, times in Unix milliseconds and relative to the kill.
fn dump(work: &std::path::Path, seen: &[Seen], a: &Analysis, kill_ms: i64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(work.join("fleet-results.csv"))?);
    writeln!(f, "target,instance,scheduled_ms,started_ms")?;
    for s in seen {
        writeln!(
            f,
            "{},{},{},{}",
            s.target, REPLICAS[s.instance as usize], s.scheduled_ms, s.started_ms
        )?;
    }
    f.flush()?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(work.join("fleet-missing.csv"))?);
    writeln!(f, "target,slot_ms,slot_minus_kill_s,cause")?;
    for m in &a.missing {
        writeln!(
            f,
            "{},{},{:.3},{:?}",
            m.target,
            m.slot_ms,
            (m.slot_ms - kill_ms) as f64 / 1e3,
            m.cause
        )?;
    }
    f.flush()?;
    Ok(())
}

async fn scrape_all(replicas: &[Option<Service>]) -> Vec<Option<Scrape>> {
    let mut out = Vec::new();
    for s in replicas {
        out.push(match s {
            Some(s) => s.scrape().await.ok(),
            None => None,
        });
    }
    out
}

/// Waits until replicas `which` together hold every partition (each at least one), none
/// hands over a revoked target, and their `healthcheck_checker_targets` sum to `n`.
async fn settle(replicas: &[Option<Service>], which: &[usize], n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let mut ok = true;
        let (mut partitions, mut targets) = (0.0, 0.0);
        for i in which {
            let Some(s) = replicas[*i].as_ref() else {
                bail!("replica {i} is not running");
            };
            let Ok(m) = s.scrape().await else {
                ok = false;
                break;
            };
            let assigned = m.metric("healthcheck_checker_assigned_partitions", &[]).unwrap_or(0.0);
            let handover = m.metric("healthcheck_checker_handover_targets", &[]).unwrap_or(0.0);
            ok &= assigned >= 1.0 && handover == 0.0;
            partitions += assigned;
            targets += m.metric("healthcheck_checker_targets", &[]).unwrap_or(0.0);
        }
        if ok && partitions == f64::from(TARGET_PARTITIONS) && targets == n as f64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not settled within {limit:?}: {partitions} partitions, {targets} targets of {n}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first `k` slots of target `i` after `from`, in Unix milliseconds.
    fn slots(i: usize, from: chrono::DateTime<Utc>, k: usize) -> Vec<i64> {
        let first = common::slots::next_slot_after(from, INTERVAL, common::slots::phase(&name(i), INTERVAL));
        (0..k as i32)
            .map(|j| (first + chrono::Duration::seconds(60 * i64::from(j))).timestamp_millis())
            .collect()
    }

    fn seen(target: u32, instance: u8, scheduled_ms: i64) -> Seen {
        Seen {
            target,
            instance,
            scheduled_ms,
            started_ms: scheduled_ms,
        }
    }

    #[test]
    fn missing_slots_are_split_into_the_victims_hole_and_the_rest() {
        let from = chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (t0, t1) = (slots(0, from, 8), slots(1, from, 8));
        // Target 0 is the victim's (replica 0): its 3rd slot is lost with it, its 4th falls in
        // the takeover, replica 1 probes it from the 5th on. Target 1 is replica 2's and misses
        // its 1st slot, and its 5th (after the kill).
        let kill_ms = t0[2] + 1;
        let end = chrono::DateTime::from_timestamp_millis(t0[5]).unwrap();
        let mut r = vec![
            seen(0, 0, t0[0]),
            seen(0, 0, t0[1]),
            seen(0, 1, t0[4]),
            seen(0, 1, t0[5]),
        ];
        r.extend(
            t1.iter()
                .enumerate()
                .filter(|(j, ms)| *j != 0 && *j != 4 && **ms <= t0[5])
                .map(|(_, ms)| seen(1, 2, *ms)),
        );
        let a = analyse(&r, 2, INTERVAL, from, end, kill_ms, 0).unwrap();
        let causes: Vec<(u32, i64, Cause)> = a.missing.iter().map(|m| (m.target, m.slot_ms, m.cause)).collect();
        let want = vec![
            (0, t0[2], Cause::HoleBeforeKill),
            (0, t0[3], Cause::HoleAfterKill),
            (1, t1[0], Cause::SurvivorBeforeKill),
            (1, t1[4], Cause::SurvivorAfterKill),
        ];
        assert_eq!(causes, want);
        assert_eq!(a.holes.len(), 1);
        assert_eq!((a.holes[0].last_ms, a.holes[0].first_ms), (t0[1], Some(t0[4])));
        assert_eq!(a.whole.expected - a.whole.present, want.len() as u64);
        assert_eq!(a.outside_holes.expected, a.whole.expected - 2);
        assert_eq!(a.outside_holes.present, a.whole.present);
        assert_eq!(a.before_kill.expected - a.before_kill.present, 2);
    }
}
