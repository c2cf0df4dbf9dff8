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
//!   outside the detection window (kill → first survivor probe).
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
    let scrapes1 = scrape_all(&replicas).await;
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

    // Coverage of the grid, from the results.
    let mut slots: Vec<Vec<i64>> = vec![Vec::new(); n];
    for s in &seen {
        slots[s.target as usize].push(s.scheduled_ms);
    }
    let from = settled_at + chrono::Duration::from_std(INTERVAL)?;
    let detection_end = if first_probe_secs.is_finite() {
        kill_at + chrono::Duration::milliseconds((first_probe_secs * 1e3) as i64)
    } else {
        end_at
    };
    let mut cov = [Coverage::default(); 3];
    for (i, present) in slots.iter_mut().enumerate() {
        present.sort_unstable();
        present.dedup();
        let phase = common::slots::phase(&name(i), INTERVAL);
        let mut slot = common::slots::next_slot_after(from, INTERVAL, phase);
        while slot <= end_at {
            let ms = slot.timestamp_millis();
            let has = present.binary_search(&ms).is_ok();
            if slot <= kill_at {
                cov[0].add(has);
            }
            cov[1].add(has);
            if slot <= kill_at || slot > detection_end {
                cov[2].add(has);
            }
            slot += chrono::Duration::from_std(INTERVAL)?;
        }
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
        "fleet: coverage outside the killed replica's detection window",
        "%",
        vec![cov[2].percent()],
        Some(Goal::AtLeast(100.0)),
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
    let _ = writeln!(
        d,
        "Coverage (slots of the grid with a result, from {from} to {end_at}; {} results read back):\n\n\
         | window | expected slots | with a result | coverage |\n|---|---:|---:|---:|\n\
         | before the kill | {} | {} | {:.3} % |\n| whole run, kill included | {} | {} | {:.3} % |\n\
         | outside the detection window (kill → first survivor probe) | {} | {} | {:.3} % |",
        num(seen.len() as f64),
        num(cov[0].expected as f64),
        num(cov[0].present as f64),
        cov[0].percent(),
        num(cov[1].expected as f64),
        num(cov[1].present as f64),
        cov[1].percent(),
        num(cov[2].expected as f64),
        num(cov[2].present as f64),
        cov[2].percent()
    );
    r.details.push(("14. Fleet".into(), d));
    Ok(())
}

/// Slots expected and slots with a result.
#[derive(Clone, Copy, Default)]
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
