//! Issue #10: the status page on a big history. In a scratch database holding the sink's
//! schema (`sink::store::Store::migrate`, monthly partitions from
//! `Store::maintain_partitions`): a realistic history of `BENCH_STATUS_TARGETS` targets (default
//! 1,000; quick 100) × `BENCH_STATUS_DAYS` days (default 7) × one slot every 60 s on each
//! target's grid (`common::slots::phase`), loaded with binary COPY through the sink's own row
//! encoder (`sink::store::copy_row`), with the targets' versions in `target_changes` (written by
//! `Store::write_target_changes` from records decoded by `sink::targets::decode`, as the targets
//! consumer does) so that the grid, and with it the missing slots, is known. Then the rollup
//! backfill (`Store::rollup_once` until a pass finds nothing left), then a real sink binary
//! serving the status page (`STATUS_ADDR`) on that database, timed over N GETs per page; then
//! the database is dropped.
//!
//! What the history holds, deterministic in (target, slot):
//! - every target: a per-target base latency (10 ms to 200 ms of server time) with jitter and
//!   1 % slow probes; half HTTPS, with TLS phase and certificate expiries spread over 0–89 days
//!   (some within 7 and 21 days);
//! - failures in runs: a run starts at 0.2 % of slots and lasts 1 to 4 slots (mean 2.5, so
//!   ~0.5 % of slots fail, and most runs of ≥ 2 slots are incidents), with an error kind per run
//!   (timeout, connect, status 503, regex, TLS);
//! - [`LONG_OUTAGE`] fails 45 slots in a row on day 3; [`DOWN_NOW`] has failed its last 10
//!   slots (an incident open now);
//! - about 1 target in 97 has a 3-hour hole (no row: the checker was down), so those slots are
//!   unknown, never up;
//! - one maintenance window (2 h over [`LONG_OUTAGE`]'s outage: a planned incident).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use common::result::{check_id, Phases, ProbeResult, TlsInfo, DEFAULT_LOCATION, SCHEMA_VERSION};
use sink::store::{Store, COLUMNS, COPY_TYPES};
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use crate::report::{num, Figure, Goal};
use crate::Ctx;

/// The probe interval of every target.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Target (index) with a 45-slot outage on day 3, inside the maintenance window.
pub const LONG_OUTAGE: usize = 11;
/// Target (index) whose last [`DOWN_NOW_SLOTS`] slots failed: an incident open now.
pub const DOWN_NOW: usize = 7;
/// How many of [`DOWN_NOW`]'s last slots failed.
pub const DOWN_NOW_SLOTS: i64 = 10;
/// The page-time goal of issue #10: p95 below this, milliseconds.
pub const GOAL_MS: f64 = 200.0;
/// The targets topic named in `target_changes`.
pub const TARGETS_TOPIC: &str = "bench-targets";
/// Parallel COPY streams of the load.
const STREAMS: usize = 2;
/// Slot minutes per COPY statement (one hour: 60 × targets rows).
const CHUNK_MINUTES: i64 = 60;

/// A stable pseudo-random number for `(a, b, salt)` (splitmix64).
fn rnd(a: u64, b: u64, salt: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(salt.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform float in `[lo, hi)` for `(a, b, salt)`.
fn uniform(a: u64, b: u64, salt: u64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * (rnd(a, b, salt) >> 11) as f64 / (1u64 << 53) as f64
}

/// The name of target `t`.
pub fn target_name(t: usize) -> String {
    format!("svc-{t:04}")
}

/// What stays the same for all of one target's results.
struct Target {
    name: String,
    url: String,
    host: String,
    https: bool,
    /// The grid's phase, nanoseconds.
    phase_ns: i64,
    ip: String,
    /// Mean server time, seconds.
    processing: f64,
    /// Mean network round trip, seconds.
    rtt: f64,
    not_after: DateTime<Utc>,
    /// The minutes `[from, to)` (slot index) with no row, if any.
    hole: Option<(i64, i64)>,
}

/// The generated history: which rows exist and what they hold.
pub struct History {
    targets: Vec<Target>,
    /// First minute index (`floor(unix seconds / 60)`) of the history.
    first_minute: i64,
    /// Slots at or after this (nanoseconds since the epoch) are in the future.
    now_ns: i64,
    /// The history's start.
    pub from: DateTime<Utc>,
    /// Its end (the load's "now").
    pub now: DateTime<Utc>,
}

/// Why a slot failed: `(error_kind, error, status_code, phases done: resolve, connect, tls, processing)`.
fn failure(kind: u64, https: bool, host: &str) -> (&'static str, String, Option<u16>, usize) {
    match kind % 5 {
        0 => ("timeout", "probe timed out after 5s during processing".into(), None, 3),
        1 => (
            "connect",
            format!("connect to {host}: connection refused (os error 111)"),
            None,
            1,
        ),
        2 => (
            "status",
            "status 503 is not one of the expected codes [200..=299]".into(),
            Some(503),
            4,
        ),
        3 => (
            "regex",
            "body does not match the regex \"status: ok\"".into(),
            Some(200),
            4,
        ),
        _ if https => (
            "tls",
            format!("TLS handshake with {host}: invalid peer certificate: Expired"),
            None,
            2,
        ),
        _ => ("timeout", "probe timed out after 5s during connect".into(), None, 1),
    }
}

impl History {
    /// `targets` targets × `days` days ending at `now`.
    pub fn new(targets: usize, days: u32, now: DateTime<Utc>) -> Self {
        let from = now - chrono::Duration::days(i64::from(days));
        let first_minute = from.timestamp().div_euclid(60);
        let span_minutes = i64::from(days) * 1440;
        let targets = (0..targets)
            .map(|t| {
                let name = target_name(t);
                let https = t % 2 == 0;
                let host = format!("{name}.prod.example.com");
                let url = format!("{}://{host}/healthz", if https { "https" } else { "http" });
                let phase_ns = i64::try_from(common::slots::phase(&name, INTERVAL).as_nanos()).unwrap_or(0);
                let tu = t as u64;
                let hole = (t % 97 == 5 && span_minutes > 3 * 1440).then(|| {
                    let start = first_minute + 2 * 1440 + (t as i64 % 24) * 60;
                    (start, start + 180)
                });
                Target {
                    ip: format!("10.{}.{}.{}", t / 250, t % 250, 10 + t % 7),
                    processing: 0.01 * uniform(tu, 0, 1, 0.0, 3.0).exp(),
                    rtt: uniform(tu, 0, 2, 0.000_2, 0.03),
                    not_after: now + chrono::Duration::hours(((t * 7) % 90) as i64 * 24 + 3),
                    hole,
                    name,
                    url,
                    host,
                    https,
                    phase_ns,
                }
            })
            .collect();
        Self {
            targets,
            first_minute,
            now_ns: now.timestamp_nanos_opt().unwrap_or(i64::MAX),
            from,
            now,
        }
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Minutes (slot indices) the history spans, `[first, end)`.
    fn minutes(&self) -> (i64, i64) {
        (self.first_minute, self.now_ns.div_euclid(60_000_000_000) + 1)
    }

    /// The slot of target `t` in minute `m`, nanoseconds, when it lies in `[from, now)`.
    fn slot_ns(&self, t: usize, m: i64) -> Option<i64> {
        let ns = m * 60_000_000_000 + self.targets[t].phase_ns;
        let from_ns = self.from.timestamp_nanos_opt().unwrap_or(0);
        (ns >= from_ns && ns < self.now_ns).then_some(ns)
    }

    /// The first minute of the failure run covering `(t, m)` and its kind, if it fails.
    fn failing(&self, t: usize, m: i64) -> Option<(i64, u64)> {
        let tu = t as u64;
        let (_, end) = self.minutes();
        if t == DOWN_NOW && m >= end - DOWN_NOW_SLOTS - 1 {
            return Some((end - DOWN_NOW_SLOTS - 1, 0));
        }
        let outage = self.first_minute + 3 * 1440 + 600;
        if t == LONG_OUTAGE && (outage..outage + 45).contains(&m) {
            return Some((outage, 1));
        }
        (0..4).find_map(|back| {
            let start = m - back;
            let r = rnd(tu, start as u64, 3);
            let begins = r % 10_000 < 20;
            let len = 1 + (r >> 32) % 4;
            (begins && len > back as u64).then(|| (start, rnd(tu, start as u64, 4)))
        })
    }

    /// The maintenance window over [`LONG_OUTAGE`]'s outage: `[start, end)`.
    pub fn maintenance(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let start = self.first_minute + 3 * 1440 + 600 - 30;
        let at = |m: i64| DateTime::from_timestamp(m * 60, 0).unwrap_or(self.from);
        (at(start), at(start + 120))
    }

    /// The result of target `t` in minute `m`, if it has one.
    fn result(&self, t: usize, m: i64) -> Option<ProbeResult> {
        let tg = &self.targets[t];
        let ns = self.slot_ns(t, m)?;
        if tg.hole.is_some_and(|(a, b)| (a..b).contains(&m)) {
            return None;
        }
        let (tu, mu) = (t as u64, m as u64);
        let scheduled_at = DateTime::from_timestamp_nanos(ns);
        let lateness = uniform(tu, mu, 10, 0.000_05, 0.002);
        let started_at = scheduled_at + chrono::Duration::nanoseconds((lateness * 1e9) as i64);
        let slow = if rnd(tu, mu, 11).is_multiple_of(100) { 5.0 } else { 1.0 };
        let jitter = |salt: u64| uniform(tu, mu, salt, 0.7, 1.6);
        let resolve = 0.000_5 * jitter(12) * 3.0;
        let connect = tg.rtt * jitter(13);
        let tls = tg.https.then(|| 2.0 * tg.rtt * jitter(14) + 0.002);
        let processing = tg.processing * jitter(15) * slow;
        let transfer = 0.000_05 + tg.rtt * 0.1 * jitter(16);
        let body = 1_000 + rnd(tu, 0, 17) % 3_000;
        let mut r = ProbeResult {
            schema_version: SCHEMA_VERSION,
            check_id: check_id(&tg.name, DEFAULT_LOCATION, scheduled_at),
            instance_id: format!("checker-{}", t % 3),
            location: DEFAULT_LOCATION.into(),
            target: tg.name.clone(),
            url: tg.url.clone(),
            scheduled_at,
            started_at,
            lateness_seconds: lateness,
            timeout_seconds: 5.0,
            duration_seconds: resolve + connect + tls.unwrap_or(0.0) + processing + transfer,
            success: true,
            error_kind: None,
            error: None,
            status_code: Some(200),
            first_status_code: Some(200),
            redirects: 0,
            final_url: Some(tg.url.clone()),
            http_version: Some(if tg.https { "HTTP/2" } else { "HTTP/1.1" }.into()),
            ip_address: Some(tg.ip.clone()),
            ip_family: Some("ipv4".into()),
            regex_matched: Some(true),
            body_bytes: Some(body),
            content_length: Some(body),
            phases: Phases {
                resolve: Some(resolve),
                connect: Some(connect),
                tls,
                processing: Some(processing),
                transfer: Some(transfer),
            },
            tls: tg.https.then(|| TlsInfo {
                version: Some("TLSv1_3".into()),
                cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
                leaf_not_after: Some(tg.not_after),
                earliest_not_after: Some(tg.not_after),
                presented_earliest_not_after: Some(tg.not_after),
                leaf_subject: Some(format!("CN={}", tg.host)),
            }),
        };
        if let Some((_, kind)) = self.failing(t, m) {
            let (error_kind, error, status, done) = failure(kind, tg.https, &tg.host);
            r.success = false;
            r.error_kind = Some(error_kind.into());
            r.error = Some(error);
            r.status_code = status;
            r.first_status_code = status;
            if status.is_none() {
                r.final_url = None;
                r.http_version = None;
                r.regex_matched = None;
                r.body_bytes = None;
                r.content_length = None;
                r.phases.processing = None;
                r.phases.transfer = None;
                if done < 2 {
                    r.phases.tls = None;
                    r.tls = None;
                }
                if done < 1 {
                    r.phases.connect = None;
                }
                r.duration_seconds = if error_kind == "timeout" {
                    5.0
                } else {
                    resolve + connect
                };
            } else if error_kind == "regex" {
                r.regex_matched = Some(false);
            }
        }
        Some(r)
    }

    /// The rows of minutes `[a, b)`, minute by minute (time order, as a checker publishes).
    fn rows(&self, a: i64, b: i64) -> Vec<ProbeResult> {
        let mut out = Vec::with_capacity(((b - a) as usize) * self.targets.len());
        for m in a..b {
            for t in 0..self.targets.len() {
                if let Some(r) = self.result(t, m) {
                    out.push(r);
                }
            }
        }
        out
    }

    /// The targets topic's records of every target (interval 60 s), decoded as the sink's
    /// targets consumer does, dated an hour before the history starts.
    fn target_changes(&self) -> anyhow::Result<Vec<sink::targets::TargetChange>> {
        let at = self.from - chrono::Duration::hours(1);
        self.targets
            .iter()
            .enumerate()
            .map(|(i, tg)| {
                let spec = serde_json::json!({
                    "name": tg.name,
                    "url": tg.url,
                    "interval": "60s",
                    "regex": "status: ok",
                });
                let payload = serde_json::to_vec(&spec)?;
                sink::targets::decode(
                    TARGETS_TOPIC,
                    (i % 6) as i32,
                    (i / 6) as i64,
                    Some(tg.name.as_bytes()),
                    Some(&payload),
                    at,
                )
                .map_err(|d| anyhow::anyhow!("target spec of {}: {}", tg.name, d.error))
            })
            .collect()
    }
}

/// What [`load`] wrote.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Rows in `probe_results`.
    pub rows: u64,
    /// Failed rows among them.
    pub failures: u64,
    /// Wall time of the COPY of the rows, seconds.
    pub copy_secs: f64,
}

/// Loads `h` into the database at `url`: migrates it, creates the monthly partitions, writes
/// the locations and target versions, then COPYs the rows in [`STREAMS`] parallel streams of
/// one-hour chunks, newest first, each in time order (each chunk's transaction also writes the rollup job's marks of the
/// (target, hour) pairs it holds, as the sink's write path does, when `rollup_marks` exists),
/// then `ANALYZE`s. `progress` is called with the rows so far about every tenth of the history.
///
/// # Errors
/// A database error, or a COPY that wrote fewer rows than it sent.
pub async fn load(
    url: &str,
    h: Arc<History>,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> anyhow::Result<Loaded> {
    let store = Store::new(url, 2, TARGETS_TOPIC).map_err(anyhow::Error::msg)?;
    store.migrate().await.map_err(|e| anyhow::anyhow!("migrate: {e}"))?;
    store
        .maintain_partitions(h.now, 1, None)
        .await
        .map_err(|e| anyhow::anyhow!("partitions: {e}"))?;
    let changes = h.target_changes()?;
    store
        .write_target_changes(TARGETS_TOPIC, &changes, &[])
        .await
        .map_err(|e| anyhow::anyhow!("target_changes: {e}"))?;
    let client = connect(url).await?;
    // The rollup job's marks, when the schema has them (issue #10's V6 migration).
    let marks: bool = client
        .query_one("SELECT to_regclass('rollup_marks') IS NOT NULL", &[])
        .await?
        .get(0);
    // What the sink's write path does on a batch's first result of a location.
    client
        .execute(
            "INSERT INTO locations (name, first_seen) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET first_seen = least(locations.first_seen, excluded.first_seen)",
            &[&DEFAULT_LOCATION, &h.from],
        )
        .await?;
    let (first, end) = h.minutes();
    let mut chunks: Vec<(i64, i64)> = (first..end)
        .step_by(CHUNK_MINUTES as usize)
        .map(|a| (a, (a + CHUNK_MINUTES).min(end)))
        .collect();
    // Newest hour first: the rollup job takes marks oldest id first, so a backfill stopped
    // early has the recent hours the pages show, and each pass's incident walk (from its
    // earliest marked hour to now) stays short.
    chunks.reverse();
    let chunks = Arc::new(chunks);
    let expected = (h.len() as u64 * (end - first) as u64).max(1);
    let next = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = Arc::new(progress);
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..STREAMS {
        let (h, chunks, next, total, failures, progress) = (
            h.clone(),
            chunks.clone(),
            next.clone(),
            total.clone(),
            failures.clone(),
            progress.clone(),
        );
        let client = connect(url).await?;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(a, b)) = chunks.get(i) else { break };
                let hh = h.clone();
                let rows = tokio::task::spawn_blocking(move || hh.rows(a, b)).await?;
                client.batch_execute("BEGIN").await?;
                let sink = client
                    .copy_in(&format!("COPY probe_results ({COLUMNS}) FROM STDIN (FORMAT binary)"))
                    .await?;
                let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
                let mut writer = std::pin::pin!(writer);
                let mut failed = 0;
                for (j, r) in rows.iter().enumerate() {
                    failed += u64::from(!r.success);
                    sink::store::copy_row(writer.as_mut(), r, (j % 6) as i32, (i * 100_000 + j) as i64).await?;
                }
                let written = writer.as_mut().finish().await?;
                if written != rows.len() as u64 {
                    bail!("COPY wrote {written} rows of {}", rows.len());
                }
                if marks {
                    // What the sink's write path adds in each batch's transaction: one mark
                    // per (target, UTC hour) the batch touched, for the rollup job.
                    let names: Vec<&str> = h.targets.iter().map(|t| t.name.as_str()).collect();
                    let mut hours: Vec<DateTime<Utc>> = (a..b)
                        .filter_map(|m| DateTime::from_timestamp(m * 60 - (m * 60).rem_euclid(3600), 0))
                        .collect();
                    hours.dedup();
                    client
                        .execute(
                            "INSERT INTO rollup_marks (target_name, hour) \
                             SELECT n, h FROM unnest($1::text[]) n CROSS JOIN unnest($2::timestamptz[]) h",
                            &[&names, &hours],
                        )
                        .await?;
                }
                client.batch_execute("COMMIT").await?;
                failures.fetch_add(failed, Ordering::Relaxed);
                let so_far = total.fetch_add(written, Ordering::Relaxed) + written;
                // About every tenth of the history.
                if (so_far - written) * 10 / expected != so_far * 10 / expected {
                    progress(so_far);
                }
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let copy_secs = t0.elapsed().as_secs_f64();
    client.batch_execute("ANALYZE").await?;
    Ok(Loaded {
        rows: total.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        copy_secs,
    })
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", url.rsplit('@').next().unwrap_or("")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `bench status-load DATABASE_URL [TARGETS] [DAYS]`: loads the history into an existing
/// database (for looking at query plans by hand) and prints what it wrote.
///
/// # Errors
/// Bad arguments or a database error.
pub async fn load_command(args: &[String]) -> anyhow::Result<()> {
    const USAGE: &str = "usage: bench status-load DATABASE_URL [TARGETS (1000)] [DAYS (7)]";
    let url = args.get(2).context(USAGE)?;
    let targets: usize = args.get(3).map_or(Ok(1000), |v| v.parse()).context(USAGE)?;
    let days: u32 = args.get(4).map_or(Ok(7), |v| v.parse()).context(USAGE)?;
    let h = Arc::new(History::new(targets, days, Utc::now()));
    let started = Instant::now();
    let loaded = load(url, h.clone(), move |rows| {
        crate::log(&format!(
            "{} rows in {:.0} s",
            num(rows as f64),
            started.elapsed().as_secs_f64()
        ));
    })
    .await?;
    println!(
        "{} rows ({} failed) of {} targets from {} to {}, COPY {:.0} s ({} rows/s), {:.0} s in all; maintenance window (not written): {:?}",
        num(loaded.rows as f64),
        num(loaded.failures as f64),
        h.len(),
        h.from.to_rfc3339(),
        h.now.to_rfc3339(),
        loaded.copy_secs,
        num(loaded.rows as f64 / loaded.copy_secs),
        started.elapsed().as_secs_f64(),
        h.maintenance()
    );
    Ok(())
}

/// `bench status-rollup DATABASE_URL`: migrates a database loaded by `status-load` (to the
/// schema of this build), marks every (target, UTC hour) holding rows for the rollup job, and
/// runs `Store::rollup_once` until a pass finds nothing; prints the time.
///
/// # Errors
/// Bad arguments or a database error.
pub async fn rollup_command(args: &[String]) -> anyhow::Result<()> {
    let url = args.get(2).context("usage: bench status-rollup DATABASE_URL")?;
    let store = Store::new(url, 2, TARGETS_TOPIC)
        .map_err(anyhow::Error::msg)?
        .with_statement_timeout(Duration::from_secs(600));
    store.migrate().await.map_err(|e| anyhow::anyhow!("migrate: {e}"))?;
    let client = connect(url).await?;
    let t0 = Instant::now();
    let marked = client
        .execute(
            "INSERT INTO rollup_marks (target_name, hour) \
             SELECT DISTINCT target_name, date_trunc('hour', scheduled_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' \
             FROM probe_results",
            &[],
        )
        .await?;
    crate::log(&format!("{marked} marks in {:.1} s", t0.elapsed().as_secs_f64()));
    let t0 = Instant::now();
    let (mut passes, mut hours) = (0, 0);
    loop {
        let r = store
            .rollup_once()
            .await
            .map_err(|e| anyhow::anyhow!("rollup_once: {e}"))?;
        passes += 1;
        hours += r.hours;
        crate::log(&format!("pass {passes}: {r:?} at {:.1} s", t0.elapsed().as_secs_f64()));
        if r.hours == 0 && r.targets == 0 {
            break;
        }
    }
    println!(
        "rollup backfill: {passes} passes, {hours} target-hours, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The pages timed, in order: `(label, path)`.
fn pages(target: &str) -> Vec<(&'static str, String)> {
    let enc = percent(target);
    vec![
        ("overview `/` (page 1: 100 targets)", "/".into()),
        ("overview `/?per_page=1000` (every target)", "/?per_page=1000".into()),
        ("`/api/v1/targets` (page 1: 100 targets)", "/api/v1/targets".into()),
        (
            "`/api/v1/targets?per_page=1000`",
            "/api/v1/targets?per_page=1000".into(),
        ),
        ("target page `/targets/{name}`", format!("/targets/{enc}")),
        ("`/api/v1/targets/{name}`", format!("/api/v1/targets/{enc}")),
        ("`/api/v1/incidents`", "/api/v1/incidents".into()),
    ]
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters kept).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// The `q`-quantile (nearest rank) of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Runs the scenario and adds its figures.
pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let targets: usize = match std::env::var("BENCH_STATUS_TARGETS").ok().filter(|v| !v.is_empty()) {
        Some(v) => v.parse().context("BENCH_STATUS_TARGETS must be a positive number")?,
        None => b.pick(1000, 100),
    };
    let days: u32 = match std::env::var("BENCH_STATUS_DAYS").ok().filter(|v| !v.is_empty()) {
        Some(v) => v.parse().context("BENCH_STATUS_DAYS must be a positive number")?,
        None => 7,
    };
    if targets <= LONG_OUTAGE || days < 4 {
        bail!("BENCH_STATUS_TARGETS must be > {LONG_OUTAGE} and BENCH_STATUS_DAYS ≥ 4");
    }
    let gets: usize = b.pick(50, 20);
    let db = b.name("status");
    ctx.pg.create_db(&db, None).await?;
    let result = measure(ctx, &db, targets, days, gets).await;
    if std::env::var_os("BENCH_KEEP_STATUS_DB").is_none() {
        ctx.pg.drop_db(&db).await?;
    }
    result
}

async fn measure(ctx: &mut Ctx, db: &str, targets: usize, days: u32, gets: usize) -> anyhow::Result<()> {
    let b = ctx.b.clone();
    let url = ctx.pg.url(db);
    let h = Arc::new(History::new(targets, days, Utc::now()));
    crate::log(&format!("status: loading {targets} targets × {days} days at 60 s"));
    let loaded = load(&url, h.clone(), |rows| {
        crate::log(&format!("status: {} rows", num(rows as f64)))
    })
    .await?;
    let rate = loaded.rows as f64 / loaded.copy_secs;
    let client = ctx.pg.db(db).await?;
    let bytes: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);

    // The maintenance window, then the rollup backfill of the whole history.
    let store = Store::new(&url, 2, TARGETS_TOPIC).map_err(anyhow::Error::msg)?;
    let (m_from, m_to) = h.maintenance();
    store
        .add_maintenance(&sink::store::status::NewMaintenance {
            target_name: Some(target_name(LONG_OUTAGE)),
            starts_at: m_from,
            ends_at: m_to,
            reason: "bench: planned work".into(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("add_maintenance: {e}"))?;
    crate::log("status: rollup backfill");
    let t0 = Instant::now();
    let (mut passes, mut hours) = (0u64, 0u64);
    // The sink's default statement timeout first (what its own rollup job runs with); a
    // pass that exceeds it is reported, and the backfill goes on with a longer one.
    let mut timeout_note = String::new();
    let mut partial = String::new();
    let mut stopped = false;
    let rollup_limit = Duration::from_secs(
        match std::env::var("BENCH_STATUS_ROLLUP_LIMIT")
            .ok()
            .filter(|v| !v.is_empty())
        {
            Some(v) => v
                .parse()
                .context("BENCH_STATUS_ROLLUP_LIMIT must be a number of seconds")?,
            None => 3600,
        },
    );
    let mut store = store;
    loop {
        let p0 = Instant::now();
        // `rollup_once` works through every mark (one transaction per MARKS_PER_PASS), so the
        // limit cuts it: dropping the future rolls back the transaction in flight, and the
        // batches committed before stay.
        let left = rollup_limit.saturating_sub(t0.elapsed());
        let Ok(pass) = tokio::time::timeout(left, store.rollup_once()).await else {
            passes += 1;
            stopped = true;
            break;
        };
        let r = match pass {
            Ok(r) => r,
            Err(e) if timeout_note.is_empty() => {
                timeout_note = format!(
                    " Pass {} failed after {:.1} s with the sink's default statement timeout ({e}); the backfill \
                     went on with a 10-minute timeout.",
                    passes + 1,
                    p0.elapsed().as_secs_f64()
                );
                crate::log(&format!("status:{timeout_note}"));
                store = store.with_statement_timeout(Duration::from_secs(600));
                continue;
            }
            Err(e) => bail!("rollup_once: {e}"),
        };
        passes += 1;
        hours += r.hours;
        crate::log(&format!(
            "status: rollup pass {passes}: {} target-hours, {:.0} s in all",
            r.hours,
            t0.elapsed().as_secs_f64()
        ));
        if r.hours == 0 && r.targets == 0 {
            break;
        }
        if t0.elapsed() > rollup_limit {
            stopped = true;
            break;
        }
    }
    if stopped {
        // The cut pass's statement still runs on the server: cancel it, so that it neither
        // competes with the timed pages nor holds its marks.
        drop(store);
        client
            .execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'",
                &[],
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let left: i64 = client.query_one("SELECT count(*) FROM rollup_marks", &[]).await?.get(0);
        partial = " (partial rollups)".to_string();
        timeout_note.push_str(&format!(
            " **The backfill was stopped after {:.0} s (`BENCH_STATUS_ROLLUP_LIMIT`) with {} marks left: the pages \
             below were timed on partial rollups.**",
            t0.elapsed().as_secs_f64(),
            num(left as f64)
        ));
    }
    let rollup_secs = t0.elapsed().as_secs_f64();
    client.batch_execute("ANALYZE").await?;
    let incidents: i64 = client
        .query_one("SELECT count(*) FROM incidents", &[])
        .await
        .map_or(-1, |r| r.get(0));

    // A real sink serving the page on that database.
    let topic = b.name("status");
    ctx.topics.push(topic.clone());
    let status_addr: SocketAddr = format!("127.0.0.1:{}", crate::setup::free_port()?).parse()?;
    let sink = crate::setup::start_sink(
        &b,
        &ctx.pg,
        "sink-status",
        db,
        &topic,
        &topic,
        // The backfill above is the rollup job's work; the sink's own job stays idle while the
        // pages are timed.
        &[
            ("STATUS_ADDR", status_addr.to_string()),
            ("ROLLUP_INTERVAL", "1h".into()),
        ],
    )
    .await?;
    let outcome = time_pages(ctx, status_addr, &h, gets).await;
    sink.stop(Duration::from_secs(10)).await;
    let (timings, checked) = outcome?;

    // Figures and details.
    let mut d = format!(
        "{} rows ({} targets × {days} days, one slot per 60 s on each target's grid; {} failed, {:.2} %) loaded with \
         binary COPY in {STREAMS} streams of one-hour chunks (newest first, each in time order) through the sink's row encoder (`copy_row`) into `probe_results` \
         with its indexes: {:.0} s, {} rows/s; database {:.1} GB after `ANALYZE`. Rollup backfill (`Store::rollup_once` until \
         a pass finds nothing, {passes} passes, {} target-hours): {:.1} s{timeout_note}; {incidents} incidents. Then a real sink \
         (`STATUS_ADDR`) on that database: {gets} sequential GETs of each page per repeat after 3 warm-up GETs, one \
         connection per GET (connect to last body byte, from this harness on the same machine). {checked}\n\n\
         | page | repeat | p50 ms | p95 ms | max ms | bytes |\n|---|---:|---:|---:|---:|---:|\n",
        num(loaded.rows as f64),
        h.len(),
        num(loaded.failures as f64),
        100.0 * loaded.failures as f64 / loaded.rows as f64,
        loaded.copy_secs,
        num(rate),
        bytes as f64 / 1e9,
        num(hours as f64),
        rollup_secs,
    );
    for (label, repeats) in &timings {
        for (r, t) in repeats.iter().enumerate() {
            let _ = writeln!(
                d,
                "| {label} | {} | {} | {} | {} | {} |",
                r + 1,
                num(t.p50),
                num(t.p95),
                num(t.max),
                num(t.bytes as f64)
            );
        }
    }
    let figs = &mut ctx.report.figures;
    figs.push(Figure::new(
        "10",
        "status history load, binary COPY",
        "rows/s",
        vec![rate],
        None,
    ));
    figs.push(Figure::new(
        "10",
        format!("status rollup backfill of {} rows{partial}", num(loaded.rows as f64)),
        "s",
        vec![rollup_secs],
        None,
    ));
    for (label, repeats) in timings {
        figs.push(Figure::new(
            "10",
            format!("status p95, {label}, {} rows{partial}", num(loaded.rows as f64)),
            "ms",
            repeats.iter().map(|t| t.p95).collect(),
            // The goal is the pages as served (100 targets a page); every target on one page
            // is reported beside them.
            (!label.contains("per_page=1000")).then_some(Goal::Below(GOAL_MS)),
        ));
    }
    ctx.report.details.push(("10. Status page on a big history".into(), d));
    Ok(())
}

/// One repeat's timings of one page.
struct Timing {
    p50: f64,
    p95: f64,
    max: f64,
    bytes: usize,
}

/// Checks the pages answer with the loaded history, then times `gets` GETs of each per repeat.
/// Returns per page its repeats, and what was checked (a sentence).
async fn time_pages(
    ctx: &Ctx,
    addr: SocketAddr,
    h: &History,
    gets: usize,
) -> anyhow::Result<(Vec<(&'static str, Vec<Timing>)>, String)> {
    use testkit::http::try_http_get;
    testkit::http::wait_for_200(
        addr,
        "/api/v1/incidents",
        Duration::from_millis(100),
        Duration::from_secs(60),
    )
    .await
    .context("the status server did not answer 200 within 60 s")?;
    let (code, body) = try_http_get(addr, "/api/v1/targets?per_page=1000").await?;
    if code != 200 {
        bail!(
            "/api/v1/targets answered {code}: {}",
            body.chars().take(300).collect::<String>()
        );
    }
    let overview: serde_json::Value = serde_json::from_str(&body).context("/api/v1/targets is not JSON")?;
    let listed = overview["targets"].as_array().map_or(0, Vec::len);
    if listed != h.len() {
        bail!(
            "/api/v1/targets?per_page=1000 lists {listed} targets, the history has {}",
            h.len()
        );
    }
    let target = target_name(LONG_OUTAGE);
    let (code, body) = try_http_get(addr, &format!("/api/v1/targets/{target}")).await?;
    let detail: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("detail answered {code}"))?;
    let incidents = detail["incidents"].as_array().map_or(0, Vec::len);
    let planned = detail["incidents"].as_array().is_some_and(|a| {
        a.iter()
            .any(|i| i["planned"] == true && i["down_slots"].as_i64() >= Some(45))
    });
    if !planned {
        bail!("{target}'s detail has no planned incident of ≥ 45 slots ({incidents} incidents)");
    }
    let down_now = &overview["targets"][DOWN_NOW];
    if down_now["open_incident"].is_null() {
        bail!(
            "{} has no open incident in the overview (state {})",
            target_name(DOWN_NOW),
            down_now["state"]
        );
    }
    let checked = format!(
        "Checked first: `/api/v1/targets?per_page=1000` lists all {} targets, `{}` has an open incident, `{target}` has {incidents} incidents, \
         one of them the planned 45-slot outage.",
        h.len(),
        target_name(DOWN_NOW)
    );
    let mut out = Vec::new();
    for (label, path) in pages(&target) {
        let mut repeats = Vec::new();
        for _ in 0..ctx.b.repeats {
            let mut bytes = 0;
            for _ in 0..3 {
                try_http_get(addr, &path).await?;
            }
            let mut ms = Vec::with_capacity(gets);
            for _ in 0..gets {
                let t0 = Instant::now();
                let (code, body) = try_http_get(addr, &path).await?;
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
                if code != 200 {
                    bail!("GET {path} answered {code}");
                }
                bytes = body.len();
            }
            ms.sort_by(f64::total_cmp);
            repeats.push(Timing {
                p50: quantile(&ms, 0.5),
                p95: quantile(&ms, 0.95),
                max: ms[ms.len() - 1],
                bytes,
            });
        }
        out.push((label, repeats));
    }
    Ok((out, checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_has_runs_holes_and_an_open_incident() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let h = History::new(100, 7, now);
        let (first, end) = h.minutes();
        let rows: Vec<ProbeResult> = h.rows(first, end);
        // 100 targets × 7 days × 1440 slots, minus the 3-hour holes of targets 5 and 5 + 97.
        assert_eq!(rows.len(), 100 * 7 * 1440 - 180);
        let failed = rows.iter().filter(|r| !r.success).count() as f64 / rows.len() as f64;
        assert!((0.003..0.008).contains(&failed), "failure ratio {failed}");
        assert!(rows.iter().all(|r| r.scheduled_at >= h.from && r.scheduled_at < now));
        let ids: std::collections::HashSet<_> = rows.iter().map(|r| r.check_id).collect();
        assert_eq!(ids.len(), rows.len());
        // Every slot is on its target's grid.
        for r in rows.iter().step_by(997) {
            let phase = common::slots::phase(&r.target, INTERVAL).as_nanos() as i64;
            assert_eq!(
                (r.scheduled_at.timestamp_nanos_opt().unwrap() - phase).rem_euclid(60_000_000_000),
                0
            );
        }
        let last: Vec<&ProbeResult> = rows.iter().filter(|r| r.target == target_name(DOWN_NOW)).collect();
        assert!(last[last.len() - DOWN_NOW_SLOTS as usize..].iter().all(|r| !r.success));
        let outage = rows
            .iter()
            .filter(|r| {
                r.target == target_name(LONG_OUTAGE) && !r.success && r.error_kind.as_deref() == Some("connect")
            })
            .count();
        assert!(outage >= 45);
    }
}
