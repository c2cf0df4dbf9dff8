//! What the status page and its JSON API read (issue #10): the overview of every target, one
//! target's detail, incidents and maintenance windows. Every read uses an index or a rollup
//! (see the V6 migration), so that a page stays fast on a long history.
//!
//! These types are the JSON API's shapes (`/api/v1/...`, described in `services/sink/openapi.yaml`):
//! times are RFC 3339 UTC, durations and latencies seconds (`f64`), ratios in [0, 1].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// A verdict: of one slot (over every location, through the quorum), of a target now, or of
/// a bucket of slots (the worst verdict it holds, `down` over `unknown` over `up`; slots in
/// a maintenance window are `maintenance` and never count as up or down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::AsRefStr, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum State {
    /// The quorum of locations succeeded (with one location: its probe succeeded).
    Up,
    /// At least the quorum of locations failed.
    Down,
    /// Neither: too few locations reported (a missing slot is unknown, never up).
    Unknown,
    /// Inside a maintenance window: excluded from uptime.
    Maintenance,
}

/// One location's latest result for a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationState {
    /// The location (`LOCATION` of the checker that probed).
    pub location: String,
    /// The slot of its latest result.
    pub scheduled_at: DateTime<Utc>,
    /// Whether that probe succeeded.
    pub success: bool,
    /// The final HTTP status, if a response came.
    pub status_code: Option<i32>,
    /// `ErrorKind` of a failed probe (`timeout`, `connect`, `regex`, ...).
    pub error_kind: Option<String>,
    /// The probe's whole duration, seconds.
    pub duration_seconds: f64,
}

/// Uptime over a window (24 h, 7 d, 30 d ending now), counted in slot verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uptime {
    /// `up / (up + down)`; `None` when no slot had a known verdict.
    pub ratio: Option<f64>,
    /// `(up + down) / (up + down + unknown)`: how much of the window is known; `None` when the
    /// window holds no slot outside maintenance.
    pub coverage_ratio: Option<f64>,
    /// Slots judged up.
    pub up_slots: i64,
    /// Slots judged down.
    pub down_slots: i64,
    /// Slots with no verdict (missing, or too few locations).
    pub unknown_slots: i64,
    /// Slots inside a maintenance window (in none of the ratios).
    pub maintenance_slots: i64,
}

/// One bar of a target's history: a bucket of slots (an hour or a day).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket (UTC); its width is the overview's `bucket_seconds`.
    pub start: DateTime<Utc>,
    /// Slots judged up.
    pub up_slots: i64,
    /// Slots judged down.
    pub down_slots: i64,
    /// Slots with no verdict.
    pub unknown_slots: i64,
    /// Slots inside a maintenance window.
    pub maintenance_slots: i64,
    /// The bucket's colour: `down` if any slot was down, else `unknown` if any was unknown,
    /// else `maintenance` if any was, else `up`; `unknown` for a bucket with no slot at all.
    pub state: State,
}

/// The width of the overview's bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, strum::EnumString, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum BucketWidth {
    /// 90 hourly buckets (3.75 days).
    #[default]
    Hour,
    /// 90 daily buckets (UTC days).
    Day,
}

impl BucketWidth {
    /// The bucket width in seconds.
    #[must_use]
    pub fn seconds(self) -> i64 {
        match self {
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }
}

/// How many buckets a target's bar holds.
pub const BUCKETS: usize = 90;

/// One target as the overview shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSummary {
    /// The target's name (the results topic's key).
    pub name: String,
    /// Its URL, from its latest result.
    pub url: String,
    /// Its state now: the verdict of its latest slot that has one (`unknown` when none), or
    /// `maintenance` inside a window.
    pub state: State,
    /// Since when it has been in `state` (the first slot of the current run), if known.
    pub state_since: Option<DateTime<Utc>>,
    /// Each location's latest result, sorted by location.
    pub locations: Vec<LocationState>,
    /// Uptime over the last 24 hours.
    pub uptime_24h: Uptime,
    /// Uptime over the last 7 days.
    pub uptime_7d: Uptime,
    /// Uptime over the last 30 days.
    pub uptime_30d: Uptime,
    /// Median probe duration over the last 24 hours (every location), seconds.
    pub latency_p50_seconds: Option<f64>,
    /// 95th percentile of the probe duration over the last 24 hours, seconds.
    pub latency_p95_seconds: Option<f64>,
    /// The error kind of its latest failed probe (any location).
    pub last_error_kind: Option<String>,
    /// The slot of that failure.
    pub last_error_at: Option<DateTime<Utc>>,
    /// The last [`BUCKETS`] buckets, oldest first, the current (partial) one last.
    pub buckets: Vec<Bucket>,
    /// The incident open now, if any.
    pub open_incident: Option<Incident>,
}

/// Every target's state, and a page of their summaries, for the overview page and
/// `GET /api/v1/targets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// When the database answered.
    pub generated_at: DateTime<Utc>,
    /// The width of each bucket of [`TargetSummary::buckets`], seconds.
    pub bucket_seconds: i64,
    /// The locations known (not retired), sorted.
    pub locations: Vec<String>,
    /// How many targets have a result (on every page).
    pub total_targets: u64,
    /// This page, from 1.
    pub page: u32,
    /// Targets per page.
    pub per_page: u32,
    /// The targets in each state now, over every page.
    pub counts: StateCounts,
    /// The names of the targets down now, over every page, sorted.
    pub down_targets: Vec<String>,
    /// This page's targets, sorted by name: `(page - 1) * per_page` targets come before them.
    pub targets: Vec<TargetSummary>,
}

/// How many targets are in each [`State`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// Targets up.
    pub up: u64,
    /// Targets down.
    pub down: u64,
    /// Targets with no verdict.
    pub unknown: u64,
    /// Targets in a maintenance window.
    pub maintenance: u64,
}

impl StateCounts {
    /// Counts one target in `state`.
    pub fn add(&mut self, state: State) {
        match state {
            State::Up => self.up += 1,
            State::Down => self.down += 1,
            State::Unknown => self.unknown += 1,
            State::Maintenance => self.maintenance += 1,
        }
    }

    /// The count of `state`.
    pub fn get(&self, state: State) -> u64 {
        match state {
            State::Up => self.up,
            State::Down => self.down,
            State::Unknown => self.unknown,
            State::Maintenance => self.maintenance,
        }
    }
}

/// Which page of the overview: `per_page` targets (1 to [`MAX_PER_PAGE`]) sorted by name,
/// page 1 first. A page past the last is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// From 1.
    pub page: u32,
    /// 1 to [`MAX_PER_PAGE`].
    pub per_page: u32,
}

/// Targets per overview page unless asked otherwise. Measured on the 10 M-row history
/// (README, "Benchmarks"): 1,000 targets on one page are 5.4 MB of HTML, p95 293 ms; 100 are
/// 0.56 MB, p95 49 ms (goal of issue #10: 200 ms).
pub const DEFAULT_PER_PAGE: u32 = 100;
/// The most targets one overview page holds.
pub const MAX_PER_PAGE: u32 = 1000;

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            page: 1,
            per_page: DEFAULT_PER_PAGE,
        }
    }
}

impl PageRequest {
    /// How many targets come before this page.
    pub fn offset(&self) -> usize {
        (self.page.max(1) as usize - 1).saturating_mul(self.per_page as usize)
    }

    /// How many pages `total` targets fill (at least 1).
    pub fn pages(&self, total: u64) -> u64 {
        total.div_ceil(u64::from(self.per_page.max(1))).max(1)
    }
}

/// An incident: a run of at least K consecutive `down` slots (K = the target's
/// `failure_threshold`, default [`DEFAULT_FAILURE_THRESHOLD`]), from its first down slot
/// until the first `up` slot after it (unknown slots neither open nor close one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Stable id.
    pub id: i64,
    /// The target.
    pub target_name: String,
    /// The first down slot.
    pub started_at: DateTime<Utc>,
    /// The first up slot after it; `None` while open.
    pub ended_at: Option<DateTime<Utc>>,
    /// `ended_at - started_at`, or up to now while open, seconds.
    pub duration_seconds: f64,
    /// How many slots were down.
    pub down_slots: i64,
    /// The locations that failed during it, sorted.
    pub failing_locations: Vec<String>,
    /// The error kind of its first failed probe.
    pub first_error_kind: Option<String>,
    /// The error text of its first failed probe.
    pub first_error: Option<String>,
    /// Whether it overlaps a maintenance window (planned work, not an outage).
    pub planned: bool,
}

/// The default K: consecutive down slots that open an incident.
pub const DEFAULT_FAILURE_THRESHOLD: i32 = 2;

/// Mean time of each phase of the probes in one bucket, and the bucket's p95 duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyPoint {
    /// Start of the bucket.
    pub start: DateTime<Utc>,
    /// Probes in the bucket (every location).
    pub probes: i64,
    /// Mean DNS resolution time, seconds.
    pub resolve_seconds: Option<f64>,
    /// Mean TCP connect time, seconds.
    pub connect_seconds: Option<f64>,
    /// Mean TLS handshake time, seconds.
    pub tls_seconds: Option<f64>,
    /// Mean time from request sent to first response byte, seconds.
    pub processing_seconds: Option<f64>,
    /// Mean time reading the body, seconds.
    pub transfer_seconds: Option<f64>,
    /// 95th percentile of the whole duration, seconds.
    pub p95_seconds: Option<f64>,
}

/// The certificate a target presented most recently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tls {
    /// When it was seen (the slot of that result).
    pub observed_at: DateTime<Utc>,
    /// TLS version (`TLSv1.3`, ...).
    pub version: Option<String>,
    /// Cipher suite.
    pub cipher: Option<String>,
    /// The leaf certificate's subject.
    pub leaf_subject: Option<String>,
    /// The leaf certificate's expiry.
    pub leaf_not_after: Option<DateTime<Utc>>,
    /// The earliest expiry in the chain (blackbox_exporter's `probe_ssl_earliest_cert_expiry`).
    pub earliest_not_after: Option<DateTime<Utc>>,
}

/// A failed probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Its slot.
    pub scheduled_at: DateTime<Utc>,
    /// The location that probed.
    pub location: String,
    /// Its `ErrorKind`.
    pub error_kind: Option<String>,
    /// Its error text.
    pub error: Option<String>,
    /// The final HTTP status, if a response came.
    pub status_code: Option<i32>,
}

/// A slot and its verdict (the target page's strip of recent slots).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotVerdict {
    /// The slot.
    pub scheduled_at: DateTime<Utc>,
    /// Its verdict.
    pub state: State,
    /// The locations that failed it, sorted.
    pub locations_failed: Vec<String>,
}

/// A maintenance window: slots inside it count as `maintenance` (not in uptime) and an
/// incident overlapping it is planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// Stable id.
    pub id: i64,
    /// The target, or `None` for every target.
    pub target_name: Option<String>,
    /// Start (inclusive).
    pub starts_at: DateTime<Utc>,
    /// End (exclusive).
    pub ends_at: DateTime<Utc>,
    /// Why (free text).
    pub reason: String,
    /// When it was added.
    pub created_at: DateTime<Utc>,
}

/// A maintenance window to add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMaintenance {
    /// The target, or `None` for every target.
    pub target_name: Option<String>,
    /// Start (inclusive).
    pub starts_at: DateTime<Utc>,
    /// End (exclusive); after `starts_at`.
    pub ends_at: DateTime<Utc>,
    /// Why.
    pub reason: String,
}

/// One target in detail, for its page and `GET /api/v1/targets/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetDetail {
    /// What the overview shows of it.
    pub summary: TargetSummary,
    /// Latency by phase per bucket, oldest first (the overview's buckets).
    pub latency: Vec<LatencyPoint>,
    /// Its last [`BUCKETS`] slots, oldest first.
    pub slots: Vec<SlotVerdict>,
    /// Its incidents, newest first (at most [`DETAIL_INCIDENTS`]).
    pub incidents: Vec<Incident>,
    /// The certificate it presented last, for an HTTPS target.
    pub tls: Option<Tls>,
    /// Its last failed probes, newest first (at most [`DETAIL_FAILURES`]).
    pub failures: Vec<Failure>,
    /// Maintenance windows that apply to it and have not ended, soonest first.
    pub maintenance: Vec<MaintenanceWindow>,
}

/// Incidents a target page lists.
pub const DETAIL_INCIDENTS: usize = 50;
/// Failures a target page lists.
pub const DETAIL_FAILURES: usize = 20;

/// Which incidents `GET /api/v1/incidents` returns: newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IncidentQuery {
    /// Only this target's.
    pub target: Option<String>,
    /// Only those that started at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Only open ones (`Some(true)`), only closed ones (`Some(false)`), or all.
    pub open: Option<bool>,
    /// At most this many (the API caps it at 1000); 0 means [`MAX_INCIDENTS`].
    pub limit: u32,
}

/// The most incidents one [`Store::incidents`] call returns.
pub const MAX_INCIDENTS: u32 = 1000;

/// What one pass of the rollup job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupReport {
    /// (target, hour) pieces recomputed.
    pub hours: u64,
    /// Targets whose incidents were recomputed.
    pub targets: u64,
}

impl Store {
    /// Every target's state, and the summaries of `page`'s targets with bars of `width`.
    ///
    /// # Errors
    /// The database is unreachable or a statement fails.
    pub async fn overview(&self, width: BucketWidth, page: PageRequest) -> Result<Overview, StoreError> {
        self.read_overview(width, page).await
    }

    /// One target's detail; `None` when it has no result.
    ///
    /// # Errors
    /// The database is unreachable or a statement fails.
    pub async fn target_detail(&self, name: &str, width: BucketWidth) -> Result<Option<TargetDetail>, StoreError> {
        self.read_target_detail(name, width).await
    }

    /// The incidents `query` selects, newest first. A target name holding a NUL character
    /// selects none without a query: PostgreSQL `text` cannot hold U+0000 (so no target has
    /// such a name, the sink refuses it), nor can it be sent as a parameter (SQLSTATE 22021).
    ///
    /// # Errors
    /// The database is unreachable or a statement fails.
    pub async fn incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError> {
        if query.target.as_deref().is_some_and(|t| t.contains('\0')) {
            return Ok(Vec::new());
        }
        self.read_incidents(query).await
    }

    /// Adds a maintenance window (and marks the history it covers for recomputation).
    ///
    /// # Errors
    /// `ends_at` is not after `starts_at`, or the database fails.
    pub async fn add_maintenance(&self, window: &NewMaintenance) -> Result<MaintenanceWindow, StoreError> {
        self.insert_maintenance(window).await
    }

    /// Maintenance windows that have not ended by `now`, or all with `include_past`, by start.
    ///
    /// # Errors
    /// The database is unreachable or a statement fails.
    pub async fn maintenance_windows(&self, include_past: bool) -> Result<Vec<MaintenanceWindow>, StoreError> {
        self.read_maintenance(include_past).await
    }

    /// Deletes a maintenance window; `false` when there was none with that id.
    ///
    /// # Errors
    /// The database is unreachable or a statement fails.
    pub async fn delete_maintenance(&self, id: i64) -> Result<bool, StoreError> {
        self.remove_maintenance(id).await
    }

    /// One pass of the rollup job: recomputes the rollups and incidents of the history written
    /// since the last pass. One replica at a time (an advisory lock); a pass that finds the
    /// lock taken does nothing.
    ///
    /// # Errors
    /// The database is unreachable or a statement fails.
    pub async fn rollup_once(&self) -> Result<RollupReport, StoreError> {
        self.rollup_pass().await
    }
}
