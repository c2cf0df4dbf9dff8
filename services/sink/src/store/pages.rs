//! The status page's reads ([`super::status`]): a few statements per page, each an index
//! range scan of the rollups (`rollup_hourly`, `rollup_daily`, `target_state`, `incidents`)
//! or of one target's rows, assembled here.
//!
//! Windows are UTC-aligned: the 24 h uptime and the latency percentiles cover the current
//! hour and the 23 before it; 7 d and 30 d the current UTC day and the 6 (29) before it;
//! bars are the current bucket and the 89 before it. Slots the grid of a target version
//! expects that no rollup row counts yet (hours with no row at all, or slots after a row was
//! computed) are unknown.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio_postgres::Row as PgRow;

use super::histogram::Histogram;
use super::rollup::{hour_of, StoredState};
use super::status::{
    Bucket, BucketWidth, Failure, Incident, IncidentQuery, LatencyPoint, LocationState, MaintenanceWindow,
    NewMaintenance, Overview, PageRequest, SlotVerdict, State, StateCounts, TargetDetail, TargetSummary, Tls, Uptime,
    BUCKETS, DETAIL_FAILURES, DETAIL_INCIDENTS, MAX_INCIDENTS,
};
use super::{ErrorClass, ErrorCode, Store, StoreError};

/// Columns of an incident, in [`incident`] order.
const INCIDENT_COLUMNS: &str =
    "id, target_name, started_at, ended_at, down_slots, failing_locations, first_error_kind, first_error, planned";

const MAINTENANCE_COLUMNS: &str = "id, target_name, starts_at, ends_at, reason, created_at";

/// One rollup row (hourly or daily).
#[derive(Debug, Clone, Default)]
struct Piece {
    up: i64,
    down: i64,
    unknown: i64,
    maintenance: i64,
    expected: i64,
    probes: i64,
    /// (sum, count) per phase: resolve, connect, tls, processing, transfer.
    phases: [(f64, i64); 5],
    hist: Option<Histogram>,
}

/// A target version's grid, for the slots no row counts yet.
#[derive(Debug, Clone)]
struct Version {
    interval_us: i64,
    phase_us: i64,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
}

/// How many slots of the versions' grids lie in [from, to) (and before `now`), as
/// `slot_count` (V4) counts them.
fn grid_slots(versions: &[Version], from: DateTime<Utc>, to: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let ceil_div = |a: i64, b: i64| a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0);
    versions
        .iter()
        .map(|v| {
            let lo = from.max(v.since).timestamp_micros();
            let hi = to
                .min(now)
                .min(v.until.unwrap_or(DateTime::<Utc>::MAX_UTC))
                .timestamp_micros();
            if hi <= lo || v.interval_us <= 0 {
                return 0;
            }
            (ceil_div(hi - v.phase_us, v.interval_us) - ceil_div(lo - v.phase_us, v.interval_us)).max(0)
        })
        .sum()
}

/// Everything the summaries are made of, for every target or one.
#[derive(Default)]
struct Loaded {
    latest: BTreeMap<String, Vec<(LocationState, String)>>,
    hourly: HashMap<String, BTreeMap<DateTime<Utc>, Piece>>,
    daily: HashMap<String, BTreeMap<DateTime<Utc>, Piece>>,
    versions: HashMap<String, Vec<Version>>,
    state: HashMap<String, StoredState>,
    open: HashMap<String, Incident>,
    /// Windows covering now: target (None = all) and start.
    maintenance_now: Vec<(Option<String>, DateTime<Utc>)>,
}

/// The rollup columns a page reads, in [`piece`] order; `$hist` is the condition under which
/// the histogram is read.
fn rollup_select(table: &str, time: &str, hist: &str) -> String {
    format!(
        "SELECT target_name, {time}, up_slots, down_slots, unknown_slots, maintenance_slots, expected_slots, probes,
                resolve_sum, resolve_count, connect_sum, connect_count, tls_sum, tls_count,
                processing_sum, processing_count, transfer_sum, transfer_count,
                CASE WHEN {hist} THEN duration_bins END, CASE WHEN {hist} THEN duration_counts END
         FROM {table}"
    )
}

fn piece(r: &PgRow) -> Piece {
    let i = |n: usize| i64::from(r.get::<_, i32>(n));
    let phase = |n: usize| (r.get::<_, f64>(n), i64::from(r.get::<_, i32>(n + 1)));
    let hist = match (r.get::<_, Option<Vec<i32>>>(18), r.get::<_, Option<Vec<i32>>>(19)) {
        (Some(b), Some(c)) => {
            let mut h = Histogram::default();
            h.add(&b, &c);
            Some(h)
        }
        _ => None,
    };
    Piece {
        up: i(2),
        down: i(3),
        unknown: i(4),
        maintenance: i(5),
        expected: i(6),
        probes: i(7),
        phases: [phase(8), phase(10), phase(12), phase(14), phase(16)],
        hist,
    }
}

/// A row of slot counts alone (`target_name, time, up, down, unknown, maintenance, expected`).
fn counts(r: &PgRow) -> Piece {
    let i = |n: usize| i64::from(r.get::<_, i32>(n));
    Piece {
        up: i(2),
        down: i(3),
        unknown: i(4),
        maintenance: i(5),
        expected: i(6),
        ..Piece::default()
    }
}

pub(super) fn incident(r: &PgRow, now: DateTime<Utc>) -> Incident {
    let started: DateTime<Utc> = r.get(2);
    let ended: Option<DateTime<Utc>> = r.get(3);
    Incident {
        id: r.get(0),
        target_name: r.get(1),
        started_at: started,
        ended_at: ended,
        duration_seconds: ((ended.unwrap_or(now) - started).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0),
        down_slots: i64::from(r.get::<_, i32>(4)),
        failing_locations: r.get(5),
        first_error_kind: r.get(6),
        first_error: r.get(7),
        planned: r.get(8),
    }
}

fn window(r: &PgRow) -> MaintenanceWindow {
    MaintenanceWindow {
        id: r.get(0),
        target_name: r.get(1),
        starts_at: r.get(2),
        ends_at: r.get(3),
        reason: r.get(4),
        created_at: r.get(5),
    }
}

/// The start of the bucket of `width` holding `t`.
fn bucket_of(t: DateTime<Utc>, width: BucketWidth) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::seconds(width.seconds())).unwrap_or(t)
}

/// The colour of a bucket (see [`Bucket::state`]).
fn bucket_state(up: i64, down: i64, unknown: i64, maintenance: i64) -> State {
    if down > 0 {
        State::Down
    } else if unknown > 0 {
        State::Unknown
    } else if maintenance > 0 {
        State::Maintenance
    } else if up > 0 {
        State::Up
    } else {
        State::Unknown
    }
}

fn uptime(up: i64, down: i64, unknown: i64, maintenance: i64) -> Uptime {
    let known = up + down;
    Uptime {
        ratio: (known > 0).then(|| up as f64 / known as f64),
        coverage_ratio: (known + unknown > 0).then(|| known as f64 / (known + unknown) as f64),
        up_slots: up,
        down_slots: down,
        unknown_slots: unknown,
        maintenance_slots: maintenance,
    }
}

/// Slot counts of `pieces` in [from, now), with the grid's slots no piece counts as unknown.
fn window_counts(
    pieces: Option<&BTreeMap<DateTime<Utc>, Piece>>,
    versions: &[Version],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (i64, i64, i64, i64) {
    let (mut up, mut down, mut unknown, mut maint, mut expected) = (0, 0, 0, 0, 0);
    if let Some(p) = pieces {
        for (_, x) in p.range(from..to) {
            up += x.up;
            down += x.down;
            unknown += x.unknown;
            maint += x.maintenance;
            expected += x.expected;
        }
    }
    unknown += (grid_slots(versions, from, to, now) - expected).max(0);
    (up, down, unknown, maint)
}

/// Which targets [`Store::load`] reads: one in full (a target page), or a page of the
/// overview (slot counts, and the last 24 hours' histograms).
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Target(&'a str),
    Targets(&'a [String]),
}

/// A target's state now: `maintenance` inside a window (since its earliest start), else the
/// stored state (`target_state`), else unknown.
fn current_state(
    name: &str,
    maintenance_now: &[(Option<String>, DateTime<Utc>)],
    stored: Option<&StoredState>,
) -> (State, Option<DateTime<Utc>>) {
    let in_maintenance = maintenance_now
        .iter()
        .filter(|(t, _)| t.as_deref().is_none_or(|t| t == name))
        .map(|(_, s)| *s)
        .min();
    match (in_maintenance, stored) {
        (Some(since), _) => (State::Maintenance, Some(since)),
        (None, Some(st)) => (
            match st.state.as_str() {
                "up" => State::Up,
                "down" => State::Down,
                _ => State::Unknown,
            },
            st.since,
        ),
        (None, None) => (State::Unknown, None),
    }
}

/// The statement of the windows covering `$1` (now).
const MAINTENANCE_NOW: &str =
    "SELECT target_name, starts_at FROM maintenance_windows WHERE starts_at <= $1 AND ends_at > $1";

impl Store {
    /// Loads what the summaries of `scope`'s targets need.
    async fn load(
        &self,
        client: &deadpool_postgres::Client,
        now: DateTime<Utc>,
        width: BucketWidth,
        scope: Scope<'_>,
    ) -> Result<Loaded, StoreError> {
        let cur_hour = hour_of(now);
        let cur_day = bucket_of(now, BucketWidth::Day);
        let buckets_back = BUCKETS as i32 - 1;
        let hist_from = cur_hour - TimeDelta::hours(23);
        let (hourly_from, daily_from) = match width {
            BucketWidth::Hour => (
                cur_hour - TimeDelta::hours(buckets_back.into()),
                cur_day - TimeDelta::days(29),
            ),
            BucketWidth::Day => (hist_from, cur_day - TimeDelta::days(buckets_back.into())),
        };
        // A target page reads every bucket's histogram (its latency chart); the overview
        // only the last 24 hours'.
        let (one, hourly_hist, daily_hist) = match scope {
            Scope::Target(_) => (true, "true", "true"),
            Scope::Targets(_) => (false, "hour >= $2", "false"),
        };
        // `= $n` for one target, `= ANY($n)` for a page of them (the key's index either way).
        let is = |n: usize| match scope {
            Scope::Target(_) => format!("target_name = ${n}"),
            Scope::Targets(_) => format!("target_name = ANY(${n})"),
        };
        let mut loaded = Loaded::default();
        let t: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match &scope {
            Scope::Target(name) => vec![name],
            Scope::Targets(names) => vec![names],
        };
        let latest_sql = format!(
            "SELECT target_name, location, scheduled_at, success, status_code, error_kind, duration_seconds, url
             FROM latest_results WHERE {}",
            is(1)
        );
        // The overview: slot counts alone, then the last 24 hours' histograms; a target page:
        // every column of its rows.
        let rollup_sql = |table: &str, key: &str, hist: &str| match scope {
            Scope::Target(_) => format!(
                "{} WHERE {key} >= $1 AND $2::timestamptz IS NOT NULL AND {}",
                rollup_select(table, key, hist),
                is(3)
            ),
            Scope::Targets(_) => format!(
                "SELECT target_name, {key}, up_slots, down_slots, unknown_slots, maintenance_slots, expected_slots
                 FROM {table} WHERE {key} >= $1 AND $2::timestamptz IS NOT NULL AND {}",
                is(3)
            ),
        };
        let hourly_sql = rollup_sql("rollup_hourly", "hour", hourly_hist);
        let daily_sql = rollup_sql("rollup_daily", "day", daily_hist);
        let mut hourly_params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&hourly_from, &hist_from];
        hourly_params.extend(t.iter().copied());
        let mut daily_params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&daily_from, &hist_from];
        daily_params.extend(t.iter().copied());
        let oldest = daily_from.min(hourly_from);
        let versions_sql = format!(
            "SELECT target_name, (interval_seconds * 1000000)::bigint, floor(phase_seconds * 1000000)::bigint, since, until
             FROM targets WHERE coalesce(until, 'infinity') > $1 AND {}",
            is(2)
        );
        let mut version_params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&oldest];
        version_params.extend(t.iter().copied());
        let state_sql = format!(
            "SELECT target_name, state, since, last_error_kind, last_error_at FROM target_state WHERE {}",
            is(1)
        );
        let open_sql = format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE ended_at IS NULL AND {}",
            is(1)
        );
        let now_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&now];
        let hist_sql = format!(
            "SELECT target_name, hour, duration_bins, duration_counts FROM rollup_hourly WHERE hour >= $1 AND {}",
            is(2)
        );
        let hist = async {
            if one {
                return Ok(Vec::new());
            }
            self.timed(client.query(hist_sql.as_str(), &[&hist_from, t[0]])).await
        };
        // One round trip for all: tokio-postgres pipelines the statements on the connection.
        let (latest_rows, hourly_rows, daily_rows, hist_rows, version_rows, state_rows, open_rows, maint_rows) = futures::try_join!(
            self.timed(client.query(latest_sql.as_str(), &t)),
            self.timed(client.query(hourly_sql.as_str(), &hourly_params)),
            self.timed(client.query(daily_sql.as_str(), &daily_params)),
            hist,
            self.timed(client.query(versions_sql.as_str(), &version_params)),
            self.timed(client.query(state_sql.as_str(), &t)),
            self.timed(client.query(open_sql.as_str(), &t)),
            self.timed(client.query(MAINTENANCE_NOW, &now_param)),
        )?;
        for r in latest_rows {
            loaded.latest.entry(r.get(0)).or_default().push((
                LocationState {
                    location: r.get(1),
                    scheduled_at: r.get(2),
                    success: r.get(3),
                    status_code: r.get(4),
                    error_kind: r.get(5),
                    duration_seconds: r.get(6),
                },
                r.get(7),
            ));
        }
        for (rows, into) in [(hourly_rows, &mut loaded.hourly), (daily_rows, &mut loaded.daily)] {
            for r in rows {
                let p = if r.len() == 7 { counts(&r) } else { piece(&r) };
                // No allocation per row (90,000 of them in the overview): the name is copied
                // once per target.
                let name: &str = r.get(0);
                match into.get_mut(name) {
                    Some(m) => {
                        m.insert(r.get(1), p);
                    }
                    None => {
                        into.insert(name.to_string(), BTreeMap::from([(r.get(1), p)]));
                    }
                }
            }
        }
        for r in hist_rows {
            let mut h = Histogram::default();
            h.add(&r.get::<_, Vec<i32>>(2), &r.get::<_, Vec<i32>>(3));
            if let Some(p) = loaded
                .hourly
                .get_mut(r.get::<_, &str>(0))
                .and_then(|m| m.get_mut(&r.get::<_, DateTime<Utc>>(1)))
            {
                p.hist = Some(h);
            }
        }
        for r in version_rows {
            loaded.versions.entry(r.get(0)).or_default().push(Version {
                interval_us: r.get(1),
                phase_us: r.get(2),
                since: r.get(3),
                until: r.get(4),
            });
        }
        for r in state_rows {
            loaded.state.insert(r.get(0), StoredState::from_row(&r, 1));
        }
        for r in open_rows {
            let i = incident(&r, now);
            match loaded.open.get(&i.target_name) {
                Some(o) if o.started_at > i.started_at => {}
                _ => {
                    loaded.open.insert(i.target_name.clone(), i);
                }
            }
        }
        for r in maint_rows {
            loaded.maintenance_now.push((r.get(0), r.get(1)));
        }
        Ok(loaded)
    }

    /// The summaries of `scope`'s targets that have a result, sorted by name.
    async fn summaries(
        &self,
        client: &deadpool_postgres::Client,
        now: DateTime<Utc>,
        width: BucketWidth,
        scope: Scope<'_>,
    ) -> Result<(Vec<TargetSummary>, Loaded), StoreError> {
        let mut l = self.load(client, now, width, scope).await?;
        let cur_hour = hour_of(now);
        let cur_day = bucket_of(now, BucketWidth::Day);
        let first_bucket = bucket_of(now, width) - TimeDelta::seconds(width.seconds() * (BUCKETS as i64 - 1));
        let mut out = Vec::with_capacity(l.latest.len());
        let no_versions = Vec::new();
        for (name, mut locs) in std::mem::take(&mut l.latest) {
            locs.sort_by(|a, b| a.0.location.cmp(&b.0.location));
            let url = locs
                .iter()
                .max_by_key(|(s, _)| s.scheduled_at)
                .map(|(_, u)| u.clone())
                .unwrap_or_default();
            let versions = l.versions.get(&name).unwrap_or(&no_versions);
            let hourly = l.hourly.get(&name);
            let daily = l.daily.get(&name);
            let (pieces, w) = match width {
                BucketWidth::Hour => (hourly, TimeDelta::hours(1)),
                BucketWidth::Day => (daily, TimeDelta::days(1)),
            };
            let buckets = (0..BUCKETS as i32)
                .map(|i| {
                    let start = first_bucket + w * i;
                    let (up, down, unknown, maintenance) = window_counts(pieces, versions, start, start + w, now);
                    Bucket {
                        start,
                        up_slots: up,
                        down_slots: down,
                        unknown_slots: unknown,
                        maintenance_slots: maintenance,
                        state: bucket_state(up, down, unknown, maintenance),
                    }
                })
                .collect();
            let end = now + TimeDelta::hours(1);
            let u = |p, from| {
                let (a, b, c, d) = window_counts(p, versions, from, end, now);
                uptime(a, b, c, d)
            };
            let mut hist = Histogram::default();
            if let Some(h) = hourly {
                for (_, p) in h.range(cur_hour - TimeDelta::hours(23)..) {
                    if let Some(x) = &p.hist {
                        hist.merge(x);
                    }
                }
            }
            let stored = l.state.get(&name);
            let (state, state_since) = current_state(&name, &l.maintenance_now, stored);
            out.push(TargetSummary {
                url,
                state,
                state_since,
                locations: locs.into_iter().map(|(s, _)| s).collect(),
                uptime_24h: u(hourly, cur_hour - TimeDelta::hours(23)),
                uptime_7d: u(daily, cur_day - TimeDelta::days(6)),
                uptime_30d: u(daily, cur_day - TimeDelta::days(29)),
                latency_p50_seconds: hist.quantile(0.5),
                latency_p95_seconds: hist.quantile(0.95),
                last_error_kind: stored.and_then(|s| s.last_error_kind.clone()),
                last_error_at: stored.and_then(|s| s.last_error_at),
                buckets,
                open_incident: l.open.remove(&name),
                name,
            });
        }
        Ok((out, l))
    }

    /// See [`Store::overview`]: the states of every target first (`latest_results`,
    /// `target_state`, the windows now), then the summaries of `page`'s slice of them.
    pub(super) async fn read_overview(&self, width: BucketWidth, page: PageRequest) -> Result<Overview, StoreError> {
        let client = self.pool.get().await?;
        let now: DateTime<Utc> = self.timed(client.query_one("SELECT now()", &[])).await?.get(0);
        let now_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&now];
        let (name_rows, state_rows, maint_rows, location_rows) = futures::try_join!(
            self.timed(client.query("SELECT DISTINCT target_name FROM latest_results ORDER BY 1", &[])),
            self.timed(client.query(
                "SELECT target_name, state, since, last_error_kind, last_error_at FROM target_state",
                &[]
            )),
            self.timed(client.query(MAINTENANCE_NOW, &now_param)),
            self.timed(client.query("SELECT name FROM locations WHERE retired_at IS NULL ORDER BY name", &[])),
        )?;
        let names: Vec<String> = name_rows.iter().map(|r| r.get(0)).collect();
        let stored: HashMap<String, StoredState> = state_rows
            .iter()
            .map(|r| (r.get(0), StoredState::from_row(r, 1)))
            .collect();
        let maintenance_now: Vec<(Option<String>, DateTime<Utc>)> =
            maint_rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut counts = StateCounts::default();
        let mut down_targets = Vec::new();
        for name in &names {
            let (state, _) = current_state(name, &maintenance_now, stored.get(name));
            counts.add(state);
            if state == State::Down {
                down_targets.push(name.clone());
            }
        }
        let from = names.len().min(page.offset());
        let slice = &names[from..names.len().min(from + page.per_page as usize)];
        let targets = if slice.is_empty() {
            Vec::new()
        } else {
            self.summaries(&client, now, width, Scope::Targets(slice)).await?.0
        };
        Ok(Overview {
            generated_at: now,
            bucket_seconds: width.seconds(),
            locations: location_rows.iter().map(|r| r.get(0)).collect(),
            total_targets: names.len() as u64,
            page: page.page,
            per_page: page.per_page,
            counts,
            down_targets,
            targets,
        })
    }

    /// See [`Store::target_detail`].
    pub(super) async fn read_target_detail(
        &self,
        name: &str,
        width: BucketWidth,
    ) -> Result<Option<TargetDetail>, StoreError> {
        let client = self.pool.get().await?;
        let now: DateTime<Utc> = self.timed(client.query_one("SELECT now()", &[])).await?.get(0);
        let (mut summaries, loaded) = self.summaries(&client, now, width, Scope::Target(name)).await?;
        let Some(summary) = summaries.pop() else {
            return Ok(None);
        };
        let pieces = match width {
            BucketWidth::Hour => loaded.hourly.get(name),
            BucketWidth::Day => loaded.daily.get(name),
        };
        let latency = summary
            .buckets
            .iter()
            .map(|b| {
                let p = pieces.and_then(|p| p.get(&b.start)).cloned().unwrap_or_default();
                let mean = |i: usize| {
                    let (s, n) = p.phases[i];
                    (n > 0).then(|| s / n as f64)
                };
                LatencyPoint {
                    start: b.start,
                    probes: p.probes,
                    resolve_seconds: mean(0),
                    connect_seconds: mean(1),
                    tls_seconds: mean(2),
                    processing_seconds: mean(3),
                    transfer_seconds: mean(4),
                    p95_seconds: p.hist.as_ref().and_then(|h| h.quantile(0.95)),
                }
            })
            .collect();
        let from: Option<DateTime<Utc>> = self
            .timed(client.query_one(
                "SELECT least(
                    (SELECT min(s) FROM (
                        SELECT DISTINCT x.scheduled_at AS s FROM locations l CROSS JOIN LATERAL (
                            SELECT p.scheduled_at FROM probe_results p WHERE p.target_name = $1 AND p.location = l.name
                            ORDER BY p.scheduled_at DESC LIMIT $2) x
                        ORDER BY 1 DESC LIMIT $2) d),
                    (SELECT now() - $2 * t.interval_seconds * interval '1 second'
                     FROM targets t WHERE t.target_name = $1 ORDER BY t.since DESC LIMIT 1))",
                &[&name, &(BUCKETS as i64)],
            ))
            .await?
            .get(0);
        let slots = match from {
            None => Vec::new(),
            Some(from) => {
                let mut v: Vec<SlotVerdict> = self
                    .timed(client.query(
                        "SELECT scheduled_at, verdict, maintenance, locations_failed
                         FROM slot_verdicts_between($1, $2, 'infinity') ORDER BY scheduled_at DESC LIMIT $3",
                        &[&name, &from, &(BUCKETS as i64)],
                    ))
                    .await?
                    .iter()
                    .map(|r| SlotVerdict {
                        scheduled_at: r.get(0),
                        state: if r.get::<_, bool>(2) {
                            State::Maintenance
                        } else {
                            match r.get::<_, &str>(1) {
                                "up" => State::Up,
                                "down" => State::Down,
                                _ => State::Unknown,
                            }
                        },
                        locations_failed: r.get(3),
                    })
                    .collect();
                v.reverse();
                v
            }
        };
        let incidents = self
            .timed(client.query(
                &format!(
                    "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE target_name = $1 ORDER BY started_at DESC LIMIT $2"
                ),
                &[&name, &(DETAIL_INCIDENTS as i64)],
            ))
            .await?
            .iter()
            .map(|r| incident(r, now))
            .collect();
        let tls = if summary.url.starts_with("https:") {
            self.timed(client.query_opt(
                "SELECT x.* FROM locations l CROSS JOIN LATERAL (
                     SELECT p.scheduled_at, p.tls_version, p.tls_cipher, p.tls_leaf_subject, p.tls_leaf_not_after,
                            p.tls_earliest_not_after
                     FROM probe_results p
                     WHERE p.target_name = $1 AND p.location = l.name AND p.tls_version IS NOT NULL
                     ORDER BY p.scheduled_at DESC LIMIT 1) x
                 ORDER BY x.scheduled_at DESC LIMIT 1",
                &[&name],
            ))
            .await?
            .map(|r| Tls {
                observed_at: r.get(0),
                version: r.get(1),
                cipher: r.get(2),
                leaf_subject: r.get(3),
                leaf_not_after: r.get(4),
                earliest_not_after: r.get(5),
            })
        } else {
            None
        };
        let failures = self
            .timed(client.query(
                "SELECT scheduled_at, location, error_kind, error, status_code FROM probe_results
                 WHERE target_name = $1 AND NOT success ORDER BY scheduled_at DESC LIMIT $2",
                &[&name, &(DETAIL_FAILURES as i64)],
            ))
            .await?
            .iter()
            .map(|r| Failure {
                scheduled_at: r.get(0),
                location: r.get(1),
                error_kind: r.get(2),
                error: r.get(3),
                status_code: r.get(4),
            })
            .collect();
        let maintenance = self
            .timed(client.query(
                &format!(
                    "SELECT {MAINTENANCE_COLUMNS} FROM maintenance_windows
                     WHERE ends_at > $2 AND (target_name IS NULL OR target_name = $1) ORDER BY starts_at, id"
                ),
                &[&name, &now],
            ))
            .await?
            .iter()
            .map(window)
            .collect();
        Ok(Some(TargetDetail {
            summary,
            latency,
            slots,
            incidents,
            tls,
            failures,
            maintenance,
        }))
    }

    /// See [`Store::incidents`].
    pub(super) async fn read_incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError> {
        let client = self.pool.get().await?;
        let now: DateTime<Utc> = self.timed(client.query_one("SELECT now()", &[])).await?.get(0);
        let limit = i64::from(if query.limit == 0 {
            MAX_INCIDENTS
        } else {
            query.limit.min(MAX_INCIDENTS)
        });
        let mut sql = format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE true");
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&limit];
        if let Some(t) = &query.target {
            params.push(t);
            sql.push_str(&format!(" AND target_name = ${}", params.len()));
        }
        if let Some(s) = &query.since {
            params.push(s);
            sql.push_str(&format!(" AND started_at >= ${}", params.len()));
        }
        match query.open {
            Some(true) => sql.push_str(" AND ended_at IS NULL"),
            Some(false) => sql.push_str(" AND ended_at IS NOT NULL"),
            None => {}
        }
        sql.push_str(" ORDER BY started_at DESC, id DESC LIMIT $1");
        Ok(self
            .timed(client.query(sql.as_str(), &params))
            .await?
            .iter()
            .map(|r| incident(r, now))
            .collect())
    }

    /// See [`Store::add_maintenance`].
    pub(super) async fn insert_maintenance(&self, w: &NewMaintenance) -> Result<MaintenanceWindow, StoreError> {
        if w.ends_at <= w.starts_at {
            return Err(StoreError {
                class: ErrorClass::Data,
                code: ErrorCode::Sqlstate(tokio_postgres::error::SqlState::CHECK_VIOLATION),
                message: format!(
                    "a maintenance window must end after it starts: {} is not after {}",
                    w.ends_at.to_rfc3339(),
                    w.starts_at.to_rfc3339()
                ),
            });
        }
        let mut client = self.pool.get().await?;
        let tx = self.timed(client.transaction()).await?;
        let row = self
            .timed(tx.query_one(
                &format!(
                    "INSERT INTO maintenance_windows (target_name, starts_at, ends_at, reason) VALUES ($1, $2, $3, $4)
                     RETURNING {MAINTENANCE_COLUMNS}"
                ),
                &[&w.target_name, &w.starts_at, &w.ends_at, &w.reason],
            ))
            .await?;
        self.timed(tx.execute(MARK_WINDOW, &[&w.target_name, &w.starts_at, &w.ends_at]))
            .await?;
        self.timed(tx.commit()).await?;
        Ok(window(&row))
    }

    /// See [`Store::maintenance_windows`].
    pub(super) async fn read_maintenance(&self, include_past: bool) -> Result<Vec<MaintenanceWindow>, StoreError> {
        let client = self.pool.get().await?;
        Ok(self
            .timed(client.query(
                &format!(
                    "SELECT {MAINTENANCE_COLUMNS} FROM maintenance_windows WHERE $1 OR ends_at > now() ORDER BY starts_at, id"
                ),
                &[&include_past],
            ))
            .await?
            .iter()
            .map(window)
            .collect())
    }

    /// See [`Store::delete_maintenance`].
    pub(super) async fn remove_maintenance(&self, id: i64) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = self.timed(client.transaction()).await?;
        let row = self
            .timed(tx.query_opt(
                "DELETE FROM maintenance_windows WHERE id = $1 RETURNING target_name, starts_at, ends_at",
                &[&id],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let (t, s, e): (Option<String>, DateTime<Utc>, DateTime<Utc>) = (row.get(0), row.get(1), row.get(2));
        self.timed(tx.execute(MARK_WINDOW, &[&t, &s, &e])).await?;
        self.timed(tx.commit()).await?;
        Ok(true)
    }
}

/// Marks the hours [$2, $3) of target $1 (every target known when NULL) for the rollup job:
/// hours begun now, and hours not ended yet once more when they have ended.
const MARK_WINDOW: &str = "
INSERT INTO rollup_marks (target_name, hour, not_before)
SELECT n.name, h.h, nb.at
FROM (SELECT $1::text AS name WHERE $1::text IS NOT NULL
      UNION SELECT target_name FROM target_state WHERE $1::text IS NULL
      UNION SELECT target_name FROM targets WHERE $1::text IS NULL) n
CROSS JOIN generate_series(date_trunc('hour', $2::timestamptz, 'UTC'), $3::timestamptz - interval '1 microsecond',
                           interval '1 hour') h(h)
CROSS JOIN LATERAL (SELECT now() WHERE h.h <= now()
                    UNION ALL SELECT h.h + interval '1 hour' WHERE h.h + interval '1 hour' > now()) nb(at)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_slots_counts_as_slot_count_does() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let v = vec![Version {
            interval_us: 60_000_000,
            phase_us: 7_000_000,
            since: t(0),
            until: None,
        }];
        // Slots at 7, 67, 127, ... seconds.
        assert_eq!(grid_slots(&v, t(0), t(3600), t(10_000)), 60);
        assert_eq!(grid_slots(&v, t(7), t(67), t(10_000)), 1);
        assert_eq!(grid_slots(&v, t(8), t(67), t(10_000)), 0);
        assert_eq!(grid_slots(&v, t(0), t(3600), t(128)), 3, "none after now");
        let ended = vec![Version {
            until: Some(t(68)),
            ..v[0].clone()
        }];
        assert_eq!(
            grid_slots(&ended, t(0), t(3600), t(10_000)),
            2,
            "none after the version"
        );
    }

    #[test]
    fn a_bucket_takes_the_worst_verdict_it_holds() {
        assert_eq!(bucket_state(5, 1, 1, 1), State::Down);
        assert_eq!(bucket_state(5, 0, 1, 1), State::Unknown);
        assert_eq!(bucket_state(5, 0, 0, 1), State::Maintenance);
        assert_eq!(bucket_state(5, 0, 0, 0), State::Up);
        assert_eq!(bucket_state(0, 0, 0, 0), State::Unknown);
        let u = uptime(3, 1, 4, 2);
        assert_eq!((u.ratio, u.coverage_ratio), (Some(0.75), Some(0.5)));
        assert_eq!(uptime(0, 0, 0, 7).ratio, None);
    }
}
