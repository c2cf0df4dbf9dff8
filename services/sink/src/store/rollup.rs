//! The rollup job's SQL (issue #10): marks left by the write path, the hourly and daily
//! rollups, incidents and each target's state, recomputed from the marks
//! ([`Store::rollup_once`]).
//!
//! A write transaction adds one `rollup_marks` row per distinct (target, UTC hour) of its
//! rows ([`mark_rows`]), committed with them. A pass takes the marks whose `not_before` has
//! passed (`DELETE ... RETURNING`, in READ COMMITTED, under a transaction-level advisory
//! lock) and recomputes in later statements of the same transaction, each of which sees every
//! row committed with a mark it took; a mark of a transaction still in flight is invisible to
//! the DELETE and taken next pass. Unlike deleting the marks in a transaction of their own,
//! a pass that fails rolls back and leaves its marks for the next one.
//!
//! Per target, incidents are recomputed by walking its slot verdicts from the latest up slot
//! before the earliest hour marked (extended back to the start of an incident still open
//! there): an up slot ends every run before it, so the walk needs no state from before.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::histogram;
use super::status::RollupReport;
use super::{Row, Store, StoreError};

/// The advisory lock key of the rollup job (one replica at a time).
pub const ROLLUP_LOCK: i64 = 7_355_610;

/// Marks taken per transaction.
pub const MARKS_PER_PASS: i64 = 2_000;

/// `t`'s UTC hour.
pub(super) fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::hours(1)).unwrap_or(t)
}

const INSERT_MARKS: &str = "
INSERT INTO rollup_marks (target_name, hour)
SELECT * FROM UNNEST($1::text[], $2::timestamptz[])";

/// Adds the marks of `rows` (one per distinct target and hour) in `tx`.
pub(super) async fn mark_rows(
    store: &Store,
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[Row],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let pieces: BTreeSet<(&str, DateTime<Utc>)> = rows
        .iter()
        .map(|r| (r.result.target.as_str(), hour_of(r.result.scheduled_at)))
        .collect();
    let (names, hours): (Vec<&str>, Vec<DateTime<Utc>>) = pieces.into_iter().unzip();
    let stmt = store.timed(tx.prepare_cached(INSERT_MARKS)).await?;
    store.timed(tx.execute(&stmt, &[&names, &hours])).await?;
    Ok(())
}

/// Takes the marks due, by target and hour: a backlog (a backfill after an upgrade, a
/// checker's late results) is processed a few targets at a time, each walked once.
const TAKE_MARKS: &str = "
DELETE FROM rollup_marks
WHERE id IN (SELECT id FROM rollup_marks WHERE not_before <= now() ORDER BY target_name, hour LIMIT $1)
RETURNING target_name, hour";

/// The `SET` list of both rollup upserts (`rollup_hourly` and `rollup_daily` have the same
/// columns): every column but the key takes the recomputed value.
macro_rules! rollup_update_set {
    () => {
        "
    up_slots = EXCLUDED.up_slots, down_slots = EXCLUDED.down_slots, unknown_slots = EXCLUDED.unknown_slots,
    maintenance_slots = EXCLUDED.maintenance_slots, expected_slots = EXCLUDED.expected_slots,
    probes = EXCLUDED.probes, successes = EXCLUDED.successes,
    resolve_sum = EXCLUDED.resolve_sum, resolve_count = EXCLUDED.resolve_count,
    connect_sum = EXCLUDED.connect_sum, connect_count = EXCLUDED.connect_count,
    tls_sum = EXCLUDED.tls_sum, tls_count = EXCLUDED.tls_count,
    processing_sum = EXCLUDED.processing_sum, processing_count = EXCLUDED.processing_count,
    transfer_sum = EXCLUDED.transfer_sum, transfer_count = EXCLUDED.transfer_count,
    duration_bins = EXCLUDED.duration_bins, duration_counts = EXCLUDED.duration_counts,
    last_up_at = EXCLUDED.last_up_at, computed_at = EXCLUDED.computed_at"
    };
}

/// Recomputes `rollup_hourly` for the pieces ($1 targets, $2 hours; $3 the histogram bounds).
/// Verdicts by `slot_verdicts_between`'s rule, set-based over every piece; probes by one
/// range scan per piece and location.
const ROLLUP_HOURS: &str = concat!(
    "
WITH pieces AS (
    SELECT DISTINCT target_name, hour FROM UNNEST($1::text[], $2::timestamptz[]) AS p(target_name, hour)
),
known AS (
    SELECT count(*)::int AS m FROM locations WHERE retired_at IS NULL
),
-- The pieces' slots, set-based (slot_verdicts_between's rule; one call per piece cost ~4 ms
-- on 10 M rows): the rows, and the grid of every version up to now.
grid AS (
    SELECT p.target_name, p.hour, from_epoch_us(k * b.iv + b.ph) AS scheduled_at
    FROM pieces p
    JOIN targets t
      ON t.target_name = p.target_name AND t.since < p.hour + interval '1 hour'
     AND coalesce(t.until, 'infinity') > p.hour
    CROSS JOIN LATERAL (
        SELECT (t.interval_seconds * 1000000)::bigint AS iv, floor(t.phase_seconds * 1000000)::bigint AS ph,
               greatest(t.since, p.hour) AS lo, least(coalesce(t.until, 'infinity'), p.hour + interval '1 hour', now()) AS hi
    ) b
    CROSS JOIN LATERAL generate_series(ceil((epoch_us(b.lo) - b.ph)::numeric / b.iv)::bigint,
                                       ceil((epoch_us(b.hi) - b.ph)::numeric / b.iv)::bigint - 1) k
    WHERE b.lo < b.hi
),
slots AS (
    SELECT s.target_name, s.hour, s.scheduled_at,
           count(DISTINCT s.location) AS probed,
           count(DISTINCT s.location) FILTER (WHERE NOT s.success) AS failed
    FROM (
        SELECT p.target_name, p.hour, r.scheduled_at, r.location, r.success
        FROM pieces p
        CROSS JOIN locations l
        JOIN probe_results r
          ON r.target_name = p.target_name AND r.location = l.name
         AND r.scheduled_at >= p.hour AND r.scheduled_at < p.hour + interval '1 hour'
        UNION ALL
        SELECT target_name, hour, scheduled_at, NULL, NULL FROM grid
    ) s
    GROUP BY 1, 2, 3
),
judged AS (
    SELECT s.target_name, s.hour, s.scheduled_at,
           CASE
               WHEN s.failed >= q.quorum THEN 'down'
               WHEN s.probed > s.failed AND s.probed - s.failed > k.m - q.quorum THEN 'up'
               ELSE 'unknown'
           END AS verdict,
           EXISTS (SELECT 1 FROM maintenance_windows w
                   WHERE (w.target_name IS NULL OR w.target_name = s.target_name)
                     AND w.starts_at <= s.scheduled_at AND w.ends_at > s.scheduled_at) AS maintenance
    FROM slots s
    CROSS JOIN known k
    CROSS JOIN LATERAL (
        SELECT coalesce(
            (SELECT ch.quorum FROM target_changes ch
             WHERE ch.target_name = s.target_name AND ch.changed_at <= s.scheduled_at
             ORDER BY ch.changed_at DESC, ch.kafka_partition DESC, ch.kafka_offset DESC LIMIT 1),
            k.m / 2 + 1) AS quorum
    ) q
),
verdicts AS (
    SELECT v.target_name, v.hour,
           count(*) FILTER (WHERE v.verdict = 'up' AND NOT v.maintenance)      AS up_slots,
           count(*) FILTER (WHERE v.verdict = 'down' AND NOT v.maintenance)    AS down_slots,
           count(*) FILTER (WHERE v.verdict = 'unknown' AND NOT v.maintenance) AS unknown_slots,
           count(*) FILTER (WHERE v.maintenance)                               AS maintenance_slots,
           max(v.scheduled_at) FILTER (WHERE v.verdict = 'up')                 AS last_up_at
    FROM judged v
    GROUP BY v.target_name, v.hour
),
bins AS (
    SELECT p.target_name, p.hour, width_bucket(r.duration_seconds, $3::float8[]) AS bin,
           count(*) AS probes, count(*) FILTER (WHERE r.success) AS successes,
           sum(r.resolve_seconds) AS resolve_sum, count(r.resolve_seconds) AS resolve_count,
           sum(r.connect_seconds) AS connect_sum, count(r.connect_seconds) AS connect_count,
           sum(r.tls_seconds) AS tls_sum, count(r.tls_seconds) AS tls_count,
           sum(r.processing_seconds) AS processing_sum, count(r.processing_seconds) AS processing_count,
           sum(r.transfer_seconds) AS transfer_sum, count(r.transfer_seconds) AS transfer_count
    FROM pieces p
    CROSS JOIN locations l
    JOIN probe_results r
      ON r.target_name = p.target_name AND r.location = l.name
     AND r.scheduled_at >= p.hour AND r.scheduled_at < p.hour + interval '1 hour'
    GROUP BY p.target_name, p.hour, 3
),
probes AS (
    SELECT target_name, hour, sum(probes) AS probes, sum(successes) AS successes,
           coalesce(sum(resolve_sum), 0) AS resolve_sum, sum(resolve_count) AS resolve_count,
           coalesce(sum(connect_sum), 0) AS connect_sum, sum(connect_count) AS connect_count,
           coalesce(sum(tls_sum), 0) AS tls_sum, sum(tls_count) AS tls_count,
           coalesce(sum(processing_sum), 0) AS processing_sum, sum(processing_count) AS processing_count,
           coalesce(sum(transfer_sum), 0) AS transfer_sum, sum(transfer_count) AS transfer_count,
           array_agg(bin ORDER BY bin) AS duration_bins, array_agg(probes::int ORDER BY bin) AS duration_counts
    FROM bins
    GROUP BY target_name, hour
),
expected AS (
    SELECT p.target_name, p.hour,
           coalesce(sum(slot_count((t.interval_seconds * 1000000)::bigint, floor(t.phase_seconds * 1000000)::bigint,
                                   greatest(t.since, p.hour),
                                   least(coalesce(t.until, 'infinity'), p.hour + interval '1 hour', now()))), 0) AS slots
    FROM pieces p
    LEFT JOIN targets t
      ON t.target_name = p.target_name AND t.since < p.hour + interval '1 hour'
     AND coalesce(t.until, 'infinity') > p.hour
    GROUP BY p.target_name, p.hour
)
INSERT INTO rollup_hourly AS h
SELECT p.target_name, p.hour,
       coalesce(v.up_slots, 0), coalesce(v.down_slots, 0), coalesce(v.unknown_slots, 0), coalesce(v.maintenance_slots, 0),
       e.slots,
       coalesce(b.probes, 0), coalesce(b.successes, 0),
       coalesce(b.resolve_sum, 0), coalesce(b.resolve_count, 0),
       coalesce(b.connect_sum, 0), coalesce(b.connect_count, 0),
       coalesce(b.tls_sum, 0), coalesce(b.tls_count, 0),
       coalesce(b.processing_sum, 0), coalesce(b.processing_count, 0),
       coalesce(b.transfer_sum, 0), coalesce(b.transfer_count, 0),
       coalesce(b.duration_bins, '{}'), coalesce(b.duration_counts, '{}'),
       v.last_up_at, now()
FROM pieces p
JOIN expected e USING (target_name, hour)
LEFT JOIN verdicts v USING (target_name, hour)
LEFT JOIN probes b USING (target_name, hour)
ON CONFLICT (target_name, hour) DO UPDATE SET",
    rollup_update_set!()
);

/// Recomputes `rollup_daily` for the (target, UTC day) pieces $1, $2 from `rollup_hourly`.
const ROLLUP_DAYS: &str = concat!(
    "
WITH pieces AS (
    SELECT DISTINCT target_name, day FROM UNNEST($1::text[], $2::timestamptz[]) AS p(target_name, day)
),
hours AS (
    SELECT p.day, h.*
    FROM pieces p
    JOIN rollup_hourly h
      ON h.target_name = p.target_name AND h.hour >= p.day AND h.hour < p.day + interval '1 day'
),
bins AS (
    SELECT target_name, day, b.bin, sum(b.n)::int AS n
    FROM hours CROSS JOIN LATERAL UNNEST(duration_bins, duration_counts) AS b(bin, n)
    GROUP BY 1, 2, 3
),
hist AS (
    SELECT target_name, day, array_agg(bin ORDER BY bin) AS bins, array_agg(n ORDER BY bin) AS counts
    FROM bins GROUP BY 1, 2
),
sums AS (
    SELECT target_name, day,
           sum(up_slots)::int AS up_slots, sum(down_slots)::int AS down_slots, sum(unknown_slots)::int AS unknown_slots,
           sum(maintenance_slots)::int AS maintenance_slots, sum(expected_slots)::int AS expected_slots,
           sum(probes)::int AS probes, sum(successes)::int AS successes,
           sum(resolve_sum) AS resolve_sum, sum(resolve_count)::int AS resolve_count,
           sum(connect_sum) AS connect_sum, sum(connect_count)::int AS connect_count,
           sum(tls_sum) AS tls_sum, sum(tls_count)::int AS tls_count,
           sum(processing_sum) AS processing_sum, sum(processing_count)::int AS processing_count,
           sum(transfer_sum) AS transfer_sum, sum(transfer_count)::int AS transfer_count,
           max(last_up_at) AS last_up_at
    FROM hours GROUP BY 1, 2
)
INSERT INTO rollup_daily AS d
SELECT s.target_name, s.day, s.up_slots, s.down_slots, s.unknown_slots, s.maintenance_slots, s.expected_slots,
       s.probes, s.successes, s.resolve_sum, s.resolve_count, s.connect_sum, s.connect_count, s.tls_sum, s.tls_count,
       s.processing_sum, s.processing_count, s.transfer_sum, s.transfer_count,
       coalesce(h.bins, '{}'), coalesce(h.counts, '{}'), s.last_up_at, now()
FROM sums s LEFT JOIN hist h USING (target_name, day)
ON CONFLICT (target_name, day) DO UPDATE SET",
    rollup_update_set!()
);

/// Refreshes `latest_results` for the targets $1: the latest row per location (one index
/// probe of probe_results_target_location_time each).
const LATEST: &str = "
INSERT INTO latest_results AS x (target_name, location, scheduled_at, success, status_code, error_kind, duration_seconds, url)
SELECT r.target_name, r.location, r.scheduled_at, r.success, r.status_code, r.error_kind, r.duration_seconds, r.url
FROM UNNEST($1::text[]) AS t(name)
CROSS JOIN locations l
CROSS JOIN LATERAL (
    SELECT * FROM probe_results p WHERE p.target_name = t.name AND p.location = l.name
    ORDER BY p.scheduled_at DESC LIMIT 1
) r
ON CONFLICT (target_name, location) DO UPDATE SET
    scheduled_at = EXCLUDED.scheduled_at, success = EXCLUDED.success, status_code = EXCLUDED.status_code,
    error_kind = EXCLUDED.error_kind, duration_seconds = EXCLUDED.duration_seconds, url = EXCLUDED.url";

/// Where the incident walk of each target $1[i] starts for history changed from hour $2[i]:
/// the latest up slot before it (the target's first rolled-up hour when none), moved back to
/// the start of an incident open after it.
const WALK_FROM: &str = "
SELECT t.name, least(up.at, (SELECT min(i.started_at) FROM incidents i
                             WHERE i.target_name = t.name AND (i.ended_at IS NULL OR i.ended_at > up.at)))
FROM UNNEST($1::text[], $2::timestamptz[]) AS t(name, h)
CROSS JOIN LATERAL (
    SELECT coalesce((SELECT r.last_up_at FROM rollup_hourly r
                     WHERE r.target_name = t.name AND r.hour < t.h AND r.last_up_at IS NOT NULL
                     ORDER BY r.hour DESC LIMIT 1),
                    (SELECT min(r.hour) FROM rollup_hourly r WHERE r.target_name = t.name),
                    t.h) AS at
) up";

/// The slots of each target $1[i] from $2[i] on, by target and time.
const WALK_SLOTS: &str = "
SELECT t.name, s.scheduled_at, s.locations_failed, s.failure_threshold, s.verdict, s.error_kind, s.error
FROM UNNEST($1::text[], $2::timestamptz[]) AS t(name, f)
CROSS JOIN LATERAL slot_verdicts_between(t.name, t.f, 'infinity') s
ORDER BY 1, 2";

const STORED_STATE: &str = "
SELECT target_name, state, since, last_error_kind, last_error_at FROM target_state WHERE target_name = ANY($1::text[])";

/// Deletes the incidents of targets $1 after their walk's start $2 that the walk did not find
/// again (target $3[i], start $4[i]).
const DELETE_INCIDENTS: &str = "
DELETE FROM incidents i
USING UNNEST($1::text[], $2::timestamptz[]) AS w(name, f)
WHERE i.target_name = w.name AND (i.ended_at IS NULL OR i.ended_at > w.f)
  AND NOT EXISTS (SELECT 1 FROM UNNEST($3::text[], $4::timestamptz[]) AS k(name, s)
                  WHERE k.name = i.target_name AND k.s = i.started_at)";

/// Failing locations travel as a JSON array of strings.
const UPSERT_INCIDENTS: &str = "
INSERT INTO incidents AS i (target_name, started_at, ended_at, down_slots, failing_locations, first_error_kind, first_error, planned)
SELECT u.name, u.s, u.e, u.n, ARRAY(SELECT jsonb_array_elements_text(u.l::jsonb)), u.k, u.t,
       EXISTS (SELECT 1 FROM maintenance_windows w
               WHERE (w.target_name IS NULL OR w.target_name = u.name)
                 AND w.starts_at < coalesce(u.e, 'infinity') AND w.ends_at > u.s)
FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int4[], $5::text[], $6::text[], $7::text[])
    AS u(name, s, e, n, l, k, t)
ON CONFLICT (target_name, started_at) DO UPDATE SET
    ended_at = EXCLUDED.ended_at, down_slots = EXCLUDED.down_slots, failing_locations = EXCLUDED.failing_locations,
    first_error_kind = EXCLUDED.first_error_kind, first_error = EXCLUDED.first_error, planned = EXCLUDED.planned";

const UPSERT_STATE: &str = "
INSERT INTO target_state (target_name, state, since, last_slot, last_error_kind, last_error_at, updated_at)
SELECT *, now() FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::timestamptz[])
ON CONFLICT (target_name) DO UPDATE SET
    state = EXCLUDED.state, since = EXCLUDED.since, last_slot = EXCLUDED.last_slot,
    last_error_kind = EXCLUDED.last_error_kind, last_error_at = EXCLUDED.last_error_at, updated_at = now()";

/// A row of `target_state`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StoredState {
    pub state: String,
    pub since: Option<DateTime<Utc>>,
    pub last_error_kind: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

impl StoredState {
    /// From `state, since, last_error_kind, last_error_at` at column `first`.
    pub(super) fn from_row(r: &tokio_postgres::Row, first: usize) -> Self {
        Self {
            state: r.get(first),
            since: r.get(first + 1),
            last_error_kind: r.get(first + 2),
            last_error_at: r.get(first + 3),
        }
    }
}

/// One slot as the incident walk sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WalkSlot {
    pub at: DateTime<Utc>,
    pub failed: Vec<String>,
    pub threshold: i32,
    /// `up`, `down` or `unknown`.
    pub verdict: String,
    pub error_kind: Option<String>,
    pub error: Option<String>,
}

/// An incident the walk found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found {
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub down_slots: i32,
    pub locations: BTreeSet<String>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
}

/// What the walk concludes.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Walk {
    pub incidents: Vec<Found>,
    /// The latest verdict (`up`/`down`) and the first slot of its run; `None` when no slot
    /// had one.
    pub state: Option<(String, DateTime<Utc>)>,
    /// Whether the verdict changed during the walk (else the run may have started before).
    pub changed: bool,
    pub last_slot: Option<DateTime<Utc>>,
    /// The latest slot with a failed location, and that failure's kind.
    pub last_error: Option<(DateTime<Utc>, Option<String>)>,
}

/// Walks `slots` (in time order): a run of down slots (unknown ones skipped) opens an incident
/// at its `threshold`-th down slot (the threshold of the slot reaching it), dated from the
/// run's first; the first up slot ends the run and closes the incident.
pub(crate) fn walk(slots: &[WalkSlot]) -> Walk {
    let mut w = Walk::default();
    let mut run: Option<Found> = None;
    let mut open = false;
    for s in slots {
        w.last_slot = Some(s.at);
        if !s.failed.is_empty() {
            w.last_error = Some((s.at, s.error_kind.clone()));
        }
        match s.verdict.as_str() {
            "down" => {
                let r = run.get_or_insert_with(|| Found {
                    started_at: s.at,
                    ended_at: None,
                    down_slots: 0,
                    locations: BTreeSet::new(),
                    error_kind: s.error_kind.clone(),
                    error: s.error.clone(),
                });
                r.down_slots += 1;
                r.locations.extend(s.failed.iter().cloned());
                if r.down_slots >= s.threshold {
                    open = true;
                }
            }
            "up" => {
                if let Some(mut r) = run.take() {
                    if open {
                        r.ended_at = Some(s.at);
                        w.incidents.push(r);
                    }
                }
                open = false;
            }
            _ => continue,
        }
        match &w.state {
            Some((v, _)) if *v == s.verdict => {}
            Some(_) => {
                w.changed = true;
                w.state = Some((s.verdict.clone(), s.at));
            }
            None => w.state = Some((s.verdict.clone(), s.at)),
        }
    }
    if let (Some(r), true) = (run, open) {
        w.incidents.push(r);
    }
    w
}

impl Store {
    /// The rollup job's gauges: the age of the oldest mark due (seconds, 0 when none) and the
    /// incidents open now.
    ///
    /// # Errors
    /// The database is unreachable or a statement fails.
    pub async fn rollup_status(&self) -> Result<(f64, i64), StoreError> {
        let client = self.pool.get().await?;
        let r = self
            .timed(client.query_one(
                "SELECT coalesce(extract(epoch FROM now() - min(not_before))::float8, 0)
                        FROM rollup_marks WHERE not_before <= now()",
                &[],
            ))
            .await?;
        let open = self
            .timed(client.query_one(
                "SELECT count(*) FROM incidents WHERE ended_at IS NULL AND NOT planned",
                &[],
            ))
            .await?;
        Ok((r.get(0), open.get(0)))
    }

    /// One pass of the rollup job; see [`Store::rollup_once`] (in `status`).
    pub(super) async fn rollup_pass(&self) -> Result<RollupReport, StoreError> {
        let mut report = RollupReport::default();
        loop {
            let (batch, taken) = self.rollup_batch().await?;
            report.hours += batch.hours;
            report.targets += batch.targets;
            if taken < MARKS_PER_PASS as u64 {
                return Ok(report);
            }
        }
    }

    /// One transaction: takes up to [`MARKS_PER_PASS`] marks and recomputes what they cover.
    /// Returns the report and the number of marks taken (0 when another replica holds the
    /// lock).
    async fn rollup_batch(&self) -> Result<(RollupReport, u64), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = self.timed(client.transaction()).await?;
        self.timed(tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            self.statement_timeout.as_millis()
        )))
        .await?;
        let locked: bool = self
            .timed(tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&ROLLUP_LOCK]))
            .await?
            .get(0);
        if !locked {
            self.timed(tx.rollback()).await?;
            return Ok((RollupReport::default(), 0));
        }
        let marks = self.timed(tx.query(TAKE_MARKS, &[&MARKS_PER_PASS])).await?;
        let taken = marks.len() as u64;
        let pieces: BTreeSet<(String, DateTime<Utc>)> = marks.iter().map(|r| (r.get(0), r.get(1))).collect();
        if pieces.is_empty() {
            self.timed(tx.commit()).await?;
            return Ok((RollupReport::default(), 0));
        }
        let (names, hours): (Vec<&str>, Vec<DateTime<Utc>>) = pieces.iter().map(|(n, h)| (n.as_str(), *h)).unzip();
        self.timed(tx.execute(ROLLUP_HOURS, &[&names, &hours, &histogram::bounds()]))
            .await?;
        let days: BTreeSet<(&str, DateTime<Utc>)> = pieces
            .iter()
            .map(|(n, h)| (n.as_str(), h.duration_trunc(TimeDelta::days(1)).unwrap_or(*h)))
            .collect();
        let (dnames, dstarts): (Vec<&str>, Vec<DateTime<Utc>>) = days.into_iter().unzip();
        self.timed(tx.execute(ROLLUP_DAYS, &[&dnames, &dstarts])).await?;
        let mut earliest: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
        for (n, h) in &pieces {
            earliest.entry(n.as_str()).or_insert(*h);
        }
        let targets: Vec<&str> = earliest.keys().copied().collect();
        self.timed(tx.execute(LATEST, &[&targets])).await?;
        self.recompute_incidents(&tx, &earliest).await?;
        self.timed(tx.commit()).await?;
        Ok((
            RollupReport {
                hours: pieces.len() as u64,
                targets: earliest.len() as u64,
            },
            taken,
        ))
    }

    /// Recomputes the incidents and state of every target of `earliest` from the latest up
    /// slot before its hour: a few statements for all of them, the walks in Rust.
    async fn recompute_incidents(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        earliest: &BTreeMap<&str, DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let (names, hours): (Vec<&str>, Vec<DateTime<Utc>>) = earliest.iter().map(|(n, h)| (*n, *h)).unzip();
        let mut from: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for r in self.timed(tx.query(WALK_FROM, &[&names, &hours])).await? {
            from.insert(r.get(0), r.get(1));
        }
        let (fnames, froms): (Vec<&str>, Vec<DateTime<Utc>>) = from.iter().map(|(n, f)| (n.as_str(), *f)).unzip();
        let mut slots: BTreeMap<String, Vec<WalkSlot>> = BTreeMap::new();
        for r in self.timed(tx.query(WALK_SLOTS, &[&fnames, &froms])).await? {
            slots.entry(r.get(0)).or_default().push(WalkSlot {
                at: r.get(1),
                failed: r.get(2),
                threshold: r.get(3),
                verdict: r.get(4),
                error_kind: r.get(5),
                error: r.get(6),
            });
        }
        let mut stored: BTreeMap<String, StoredState> = BTreeMap::new();
        for r in self.timed(tx.query(STORED_STATE, &[&fnames])).await? {
            stored.insert(r.get(0), StoredState::from_row(&r, 1));
        }
        let mut found: Vec<(&str, Found)> = Vec::new();
        // Per target: its new state and its last slot.
        let mut states: Vec<(&str, StoredState, Option<DateTime<Utc>>)> = Vec::new();
        let none = Vec::new();
        for (name, walk_from) in &from {
            let w = walk(slots.get(name).unwrap_or(&none));
            let stored = stored.get(name);
            let (state, since) = match (&w.state, stored) {
                (
                    Some((v, _)),
                    Some(StoredState {
                        state, since: Some(ss), ..
                    }),
                ) if !w.changed && v == state && ss < walk_from => (v.clone(), Some(*ss)),
                (Some((v, at)), _) => (v.clone(), Some(*at)),
                (None, Some(st)) => (st.state.clone(), st.since),
                (None, None) => ("unknown".to_string(), None),
            };
            let (err_kind, err_at) = match (&w.last_error, stored) {
                (Some((at, kind)), _) => (kind.clone(), Some(*at)),
                (
                    None,
                    Some(StoredState {
                        last_error_kind,
                        last_error_at: Some(at),
                        ..
                    }),
                ) if at < walk_from => (last_error_kind.clone(), Some(*at)),
                _ => (None, None),
            };
            let new = StoredState {
                state,
                since,
                last_error_kind: err_kind,
                last_error_at: err_at,
            };
            states.push((name.as_str(), new, w.last_slot));
            found.extend(w.incidents.into_iter().map(|i| (name.as_str(), i)));
        }
        let inames: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
        let starts: Vec<DateTime<Utc>> = found.iter().map(|(_, i)| i.started_at).collect();
        self.timed(tx.execute(DELETE_INCIDENTS, &[&fnames, &froms, &inames, &starts]))
            .await?;
        if !found.is_empty() {
            let ends: Vec<Option<DateTime<Utc>>> = found.iter().map(|(_, i)| i.ended_at).collect();
            let downs: Vec<i32> = found.iter().map(|(_, i)| i.down_slots).collect();
            let locs: Vec<String> = found
                .iter()
                .map(|(_, i)| serde_json::to_string(&i.locations).expect("strings"))
                .collect();
            let kinds: Vec<Option<&str>> = found.iter().map(|(_, i)| i.error_kind.as_deref()).collect();
            let errors: Vec<Option<&str>> = found.iter().map(|(_, i)| i.error.as_deref()).collect();
            self.timed(tx.execute(
                UPSERT_INCIDENTS,
                &[&inames, &starts, &ends, &downs, &locs, &kinds, &errors],
            ))
            .await?;
        }
        let snames: Vec<&str> = states.iter().map(|s| s.0).collect();
        let svals: Vec<&str> = states.iter().map(|s| s.1.state.as_str()).collect();
        let since: Vec<Option<DateTime<Utc>>> = states.iter().map(|s| s.1.since).collect();
        let last: Vec<Option<DateTime<Utc>>> = states.iter().map(|s| s.2).collect();
        let ekind: Vec<Option<&str>> = states.iter().map(|s| s.1.last_error_kind.as_deref()).collect();
        let eat: Vec<Option<DateTime<Utc>>> = states.iter().map(|s| s.1.last_error_at).collect();
        self.timed(tx.execute(UPSERT_STATE, &[&snames, &svals, &since, &last, &ekind, &eat]))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(pattern: &str, threshold: i32) -> Vec<WalkSlot> {
        let t0 = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        pattern
            .chars()
            .enumerate()
            .map(|(i, c)| WalkSlot {
                at: t0 + TimeDelta::minutes(i as i64),
                failed: if c == 'd' { vec!["a".into()] } else { vec![] },
                threshold,
                verdict: match c {
                    'u' => "up",
                    'd' => "down",
                    _ => "unknown",
                }
                .into(),
                error_kind: (c == 'd').then(|| format!("e{i}")),
                error: None,
            })
            .collect()
    }

    /// (start index, end index or None, down slots) of each incident.
    fn found(pattern: &str, k: i32) -> Vec<(i64, Option<i64>, i32)> {
        let s = slots(pattern, k);
        let t0 = s[0].at;
        walk(&s)
            .incidents
            .iter()
            .map(|i| {
                (
                    (i.started_at - t0).num_minutes(),
                    i.ended_at.map(|e| (e - t0).num_minutes()),
                    i.down_slots,
                )
            })
            .collect()
    }

    #[test]
    fn k_consecutive_down_slots_open_an_incident_and_the_first_up_closes_it() {
        assert_eq!(found("uduu", 2), vec![]);
        assert_eq!(found("udduu", 2), vec![(1, Some(3), 2)]);
        assert_eq!(found("uddd", 2), vec![(1, None, 3)]);
        assert_eq!(found("uddud", 2), vec![(1, Some(3), 2)]);
        assert_eq!(found("udduddd", 3), vec![(4, None, 3)]);
        assert_eq!(found("dud", 1), vec![(0, Some(1), 1), (2, None, 1)]);
    }

    #[test]
    fn unknown_slots_neither_open_nor_close() {
        assert_eq!(found("u?d??du", 2), vec![(2, Some(6), 2)]);
        assert_eq!(found("udd???", 2), vec![(1, None, 2)]);
        assert_eq!(found("u????", 2), vec![]);
    }

    #[test]
    fn the_walk_reports_state_since_and_the_first_error() {
        let s = slots("uud?dd?", 2);
        let w = walk(&s);
        assert_eq!(w.state, Some(("down".to_string(), s[2].at)));
        assert!(w.changed);
        assert_eq!(w.incidents[0].error_kind.as_deref(), Some("e2"));
        assert_eq!(w.last_error, Some((s[5].at, Some("e5".to_string()))));
        let w = walk(&slots("u?u", 2));
        assert_eq!((w.state.map(|s| s.0), w.changed), (Some("up".to_string()), false));
    }
}
