//! The checker's Prometheus metrics.
//!
//! Per-target gauges reuse blackbox_exporter's names and meanings (`probe_success`,
//! `probe_duration_seconds`, `probe_http_*`, `probe_ssl_earliest_cert_expiry`), labelled by
//! `target`, so dashboards and alerts written for blackbox_exporter work unchanged. The
//! checker's own metrics are prefixed `healthcheck_checker_`. The per-target series are not
//! in the registry: [`probe`] keeps each target's last result and writes them on scrape
//! ([`Metrics`]' [`Exposition`]), and `PER_TARGET_METRICS=off` leaves them out.
//!
//! Label values come from closed sets, each an enum ([`Outcome`], [`PublishFailure`],
//! [`DropReason`], [`Phase`]): a [`CounterBy`] is incremented with a variant and registers every
//! variant at start-up, so a new variant cannot be forgotten and every series exists (a rate
//! over it reads 0, not "no data") before the first event. This module never decides an
//! outcome or a reason; it only counts what the probe and the publisher report.

use std::marker::PhantomData;
use std::sync::Arc;

use common::admin::Exposition;
use common::result::{ErrorKind, ProbeResult};
use prometheus::{Encoder as _, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use strum::IntoEnumIterator;

mod probe;

/// A closed set of label values: every value (registered at start-up) and its text.
pub trait LabelSet: Copy + 'static {
    /// Every value, in registration order.
    fn all() -> impl Iterator<Item = Self>;
    /// The label value Prometheus shows.
    fn label(self) -> &'static str;
}

impl<T> LabelSet for T
where
    T: IntoEnumIterator + Into<&'static str> + Copy + 'static,
{
    fn all() -> impl Iterator<Item = Self> {
        T::iter()
    }

    fn label(self) -> &'static str {
        self.into()
    }
}

/// `outcome` of `healthcheck_checker_probes_completed_total`: `success` or the
/// [`ErrorKind`] name of the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every condition held.
    Success,
    /// The probe failed with this kind.
    Failure(ErrorKind),
}

impl Outcome {
    /// The outcome a result records; `None` for an error kind this build does not know
    /// (results of this checker always carry one it knows).
    pub fn of(r: &ProbeResult) -> Option<Self> {
        match r.error_kind.as_deref() {
            None => Some(Self::Success),
            Some(kind) => kind.parse().ok().map(Self::Failure),
        }
    }
}

impl LabelSet for Outcome {
    fn all() -> impl Iterator<Item = Self> {
        std::iter::once(Self::Success).chain(ErrorKind::iter().map(Self::Failure))
    }

    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure(kind) => kind.as_str(),
        }
    }
}

/// `reason` of `healthcheck_checker_publish_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum PublishFailure {
    /// librdkafka refused the message for good (e.g. larger than `message.max.bytes`).
    Enqueue,
    /// The delivery report was an error, or the producer was closed before it came.
    Delivery,
    /// The result could not be encoded as JSON.
    Encode,
}

/// `reason` of `healthcheck_checker_results_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum DropReason {
    /// As many results wait as `queue.buffering.max.messages` allows.
    BufferFull,
    /// Still waiting when the shutdown grace period ended (or handed over after the close).
    Shutdown,
}

/// `change` of `healthcheck_checker_target_changes_total`: what the roster did to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum TargetChange {
    /// A target not scheduled before started (at start-up too).
    Added,
    /// A scheduled target's spec differed from the one it ran with.
    Changed,
    /// A scheduled target stopped.
    Removed,
}

/// `result` of `healthcheck_checker_target_reloads_total`: a `TARGETS_FILE` read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum ReloadResult {
    /// The new content was valid and the roster now schedules exactly its targets.
    Applied,
    /// The new content was unreadable or invalid; the targets running were kept.
    Invalid,
}

/// A counter with one label whose values are the variants of `L`, all registered at start-up.
#[derive(Clone)]
pub struct CounterBy<L> {
    vec: IntCounterVec,
    label: PhantomData<fn(L)>,
}

impl<L: LabelSet> CounterBy<L> {
    /// Adds one to the series of `value`.
    pub fn inc(&self, value: L) {
        self.inc_by(value, 1);
    }

    /// Adds `n` to the series of `value`.
    pub fn inc_by(&self, value: L, n: u64) {
        self.vec.with_label_values(&[value.label()]).inc_by(n);
    }

    /// The current count of `value`.
    pub fn get(&self, value: L) -> u64 {
        self.vec.with_label_values(&[value.label()]).get()
    }
}

/// Registers metrics in one registry. Names and label names are static, so registration
/// fails only on a name used twice, a bug that the first start-up (and every test) shows.
struct Reg(Registry);

impl Reg {
    fn add<M: prometheus::core::Collector + Clone + 'static>(&self, m: prometheus::Result<M>) -> M {
        let m = m.expect("valid metric");
        self.0.register(Box::new(m.clone())).expect("registered once");
        m
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help))
    }

    fn int_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help))
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }

    fn counter_by<L: LabelSet>(&self, name: &str, help: &str, label: &str) -> CounterBy<L> {
        let vec = self.add(IntCounterVec::new(Opts::new(name, help), &[label]));
        for value in L::all() {
            vec.with_label_values(&[value.label()]);
        }
        CounterBy {
            vec,
            label: PhantomData,
        }
    }
}

/// `PER_TARGET_METRICS`: whether `/metrics` shows the per-target `probe_*` series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PerTargetMetrics {
    /// Every target scheduled here has its series (blackbox_exporter's view: in the checker
    /// its name and a struct of about 100 bytes, in Prometheus 13 series per target).
    #[default]
    On,
    /// None: a fleet too large to keep a series per target in Prometheus (the results in
    /// PostgreSQL and the `healthcheck_checker_*` totals remain).
    Off,
}

/// All checker metrics, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics` (with the `probe_*` series, see [`Exposition`]).
    pub registry: Registry,
    /// Each target's last result, `None` with `PER_TARGET_METRICS=off`.
    probe: Option<Arc<probe::ProbeSeries>>,
    /// Probes started.
    pub probes_started: IntCounter,
    /// Probes completed, by [`Outcome`].
    pub probes_completed: CounterBy<Outcome>,
    /// Scheduling lateness (started minus scheduled), seconds.
    pub lateness: Histogram,
    /// Probes in flight now.
    pub in_flight: IntGauge,
    /// Slots skipped because the checker was more than one interval behind.
    pub skipped_slots: IntCounter,
    /// Results whose delivery the broker acknowledged.
    pub published: IntCounter,
    /// Results that could not be delivered, by [`PublishFailure`].
    pub publish_failures: CounterBy<PublishFailure>,
    /// Messages in the producer's queue (librdkafka `rd_kafka_outq_len`).
    pub producer_queue: IntGauge,
    /// Results handed to the publisher and not yet delivered or failed for good.
    pub results_waiting: IntGauge,
    /// The most results that may wait (`queue.buffering.max.messages`).
    pub results_waiting_limit: IntGauge,
    /// Results dropped before reaching librdkafka, by [`DropReason`].
    pub results_dropped: CounterBy<DropReason>,
    /// Fatal producer errors, each followed by a new producer.
    pub producer_fatal_errors: IntCounter,
    /// Producers replaced because results stopped being delivered while the broker answered
    /// (see [`crate::publish::PublishLoop::replace_when_stalled`]).
    pub producer_stall_replacements: IntCounter,
    /// When the broker last acknowledged a result, Unix seconds.
    pub last_delivery: Gauge,
    /// Targets this checker schedules now (the roster's size).
    pub targets: Gauge,
    /// Targets added (at start-up too), changed and removed, by [`TargetChange`].
    pub target_changes: CounterBy<TargetChange>,
    /// `TARGETS_FILE` reloads, by [`ReloadResult`].
    pub target_reloads: CounterBy<ReloadResult>,
}

impl Metrics {
    /// Creates and registers every metric, with the per-target series.
    pub fn new() -> Self {
        Self::with(PerTargetMetrics::On)
    }

    /// Creates and registers every metric; `per_target` says whether the `probe_*` series
    /// are kept.
    ///
    /// # Panics
    /// Never in practice: names are static and registered once.
    pub fn with(per_target: PerTargetMetrics) -> Self {
        let reg = Reg(Registry::new());
        let lateness_buckets = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        common::telemetry::register_build_info(&reg.0, "healthcheck_checker", env!("CARGO_PKG_VERSION"));
        common::telemetry::register_runtime_workers(&reg.0, "healthcheck_checker");
        Self {
            probe: (per_target == PerTargetMetrics::On).then(Arc::default),
            probes_started: reg.counter("healthcheck_checker_probes_started_total", "Probes started."),
            probes_completed: reg.counter_by(
                "healthcheck_checker_probes_completed_total",
                "Probes completed, by outcome (success or the error kind).",
                "outcome",
            ),
            lateness: reg.add(Histogram::with_opts(
                HistogramOpts::new(
                    "healthcheck_checker_scheduling_lateness_seconds",
                    "Time between a probe's scheduled slot and its start.",
                )
                .buckets(lateness_buckets),
            )),
            in_flight: reg.int_gauge("healthcheck_checker_probes_in_flight", "Probes in flight now."),
            skipped_slots: reg.counter(
                "healthcheck_checker_skipped_slots_total",
                "Scheduled slots skipped because the checker was more than one interval late.",
            ),
            published: reg.counter(
                "healthcheck_checker_published_total",
                "Results whose delivery the broker acknowledged.",
            ),
            publish_failures: reg.counter_by(
                "healthcheck_checker_publish_failures_total",
                "Results that could not be delivered to Kafka, by reason.",
                "reason",
            ),
            producer_queue: reg.int_gauge(
                "healthcheck_checker_producer_queue_messages",
                "Messages waiting in the Kafka producer's queue.",
            ),
            results_waiting: reg.int_gauge(
                "healthcheck_checker_results_waiting",
                "Results handed to the publisher and not yet delivered or failed for good.",
            ),
            results_waiting_limit: reg.int_gauge(
                "healthcheck_checker_results_waiting_limit",
                "The most results that may wait for delivery (queue.buffering.max.messages); beyond it new results are dropped.",
            ),
            results_dropped: reg.counter_by(
                "healthcheck_checker_results_dropped_total",
                "Results dropped before reaching the Kafka producer, by reason: buffer_full (as many results wait as queue.buffering.max.messages allows) or shutdown (still waiting when the grace period ended).",
                "reason",
            ),
            producer_fatal_errors: reg.counter(
                "healthcheck_checker_producer_fatal_errors_total",
                "Fatal errors of the Kafka producer; each is followed by a new producer that sends the undelivered results again.",
            ),
            producer_stall_replacements: reg.counter(
                "healthcheck_checker_producer_stall_replacements_total",
                "Producers replaced because no result was delivered for the stall timeout while the broker answered metadata.",
            ),
            last_delivery: reg.gauge(
                "healthcheck_checker_last_delivery_timestamp_seconds",
                "When the broker last acknowledged a result, Unix seconds (0 before the first).",
            ),
            targets: reg.gauge("healthcheck_checker_targets", "Targets this checker schedules now."),
            target_changes: reg.counter_by(
                "healthcheck_checker_target_changes_total",
                "Targets added (at start-up too), changed (a spec that differs) and removed by this checker.",
                "change",
            ),
            target_reloads: reg.counter_by(
                "healthcheck_checker_target_reloads_total",
                "TARGETS_FILE read again after a change or SIGHUP: applied, or invalid (the running targets were kept).",
                "result",
            ),
            registry: reg.0,
        }
    }

    /// Records a completed probe: its per-target gauges and its outcome.
    pub fn record(&self, r: &ProbeResult) {
        if let Some(probe) = &self.probe {
            probe.record_if(r, || true);
        }
        self.count_outcome(r);
    }

    /// Records a completed probe of a target that may have been removed meanwhile: its
    /// outcome always, its per-target gauges only while `owned` is not cancelled (the target
    /// is still scheduled here). Checked and written under the lock [`Metrics::forget`] takes,
    /// so a target removed (token cancelled, then `forget`) never gets its series back.
    pub fn record_owned(&self, r: &ProbeResult, owned: &tokio_util::sync::CancellationToken) {
        if let Some(probe) = &self.probe {
            probe.record_if(r, || !owned.is_cancelled());
        }
        self.count_outcome(r);
    }

    /// Removes every per-target `probe_*` series of target `name` (a target removed or moved
    /// to another checker). Unknown names are ignored.
    pub fn forget(&self, name: &str) {
        if let Some(probe) = &self.probe {
            probe.forget(name);
        }
    }

    /// What `/metrics` shows, as text.
    pub fn text(&self) -> String {
        let mut buf = Vec::new();
        self.encode(&mut buf).expect("the registry's families are valid");
        String::from_utf8(buf).expect("the exposition is UTF-8")
    }

    fn count_outcome(&self, r: &ProbeResult) {
        if let Some(outcome) = Outcome::of(r) {
            self.probes_completed.inc(outcome);
        }
    }
}

/// The registry's families with the `probe_*` ones in their place by name, as one registry
/// would order them.
impl Exposition for Metrics {
    fn encode(&self, mut out: &mut dyn std::io::Write) -> prometheus::Result<()> {
        let families = self.registry.gather();
        let split = families.partition_point(|f| f.get_name() < "probe_");
        let text = prometheus::TextEncoder::new();
        text.encode(&families[..split], &mut out)?;
        if let Some(probe) = &self.probe {
            probe.encode(out)?;
        }
        text.encode(&families[split..], &mut out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The label values of every series of `name` in the exposition, sorted.
    fn labels_of(m: &Metrics, name: &str) -> Vec<String> {
        let mut values: Vec<String> = m
            .registry
            .gather()
            .iter()
            .filter(|f| f.get_name() == name)
            .flat_map(|f| f.get_metric().iter())
            .map(|s| s.get_label().iter().map(|l| l.get_value().to_string()).collect())
            .collect();
        values.sort();
        values
    }

    #[test]
    fn every_label_value_is_registered_before_its_first_event() {
        let m = Metrics::new();
        let outcomes = labels_of(&m, "healthcheck_checker_probes_completed_total");
        let mut expected: Vec<String> = ["success"]
            .into_iter()
            .chain(ErrorKind::iter().map(ErrorKind::as_str))
            .map(String::from)
            .collect();
        expected.sort();
        assert_eq!(outcomes, expected);
        assert_eq!(
            labels_of(&m, "healthcheck_checker_publish_failures_total"),
            ["delivery", "encode", "enqueue"]
        );
        assert_eq!(
            labels_of(&m, "healthcheck_checker_results_dropped_total"),
            ["buffer_full", "shutdown"]
        );
        assert_eq!(
            labels_of(&m, "healthcheck_checker_target_changes_total"),
            ["added", "changed", "removed"]
        );
        assert_eq!(
            labels_of(&m, "healthcheck_checker_target_reloads_total"),
            ["applied", "invalid"]
        );
    }

    /// Every `probe_*` family `/metrics` shows, with the target names it has series for.
    fn probe_targets(m: &Metrics) -> Vec<(String, Vec<String>)> {
        let mut families: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            std::collections::BTreeMap::new();
        for line in m.text().lines().filter(|l| l.starts_with("probe_")) {
            let (name, rest) = line.split_once('{').expect("probe_* series have labels");
            let target = rest
                .split_once("target=\"")
                .and_then(|(_, v)| v.split_once('"'))
                .map(|(v, _)| v.to_string())
                .expect("a target label");
            families.entry(name.to_string()).or_default().insert(target);
        }
        families
            .into_iter()
            .map(|(name, targets)| (name, targets.into_iter().collect()))
            .collect()
    }

    /// A successful HTTPS probe of `target`.
    fn result(target: &str) -> ProbeResult {
        let json = format!(
            r#"{{"check_id":"6f1c8a4e-1f1a-5b9a-9a4e-1f1a5b9a9a4e","target":"{target}","url":"http://x/",
            "scheduled_at":"2026-01-01T00:00:00Z","started_at":"2026-01-01T00:00:00.001Z","success":true,
            "status_code":200,"http_version":"HTTP/1.1","tls":{{"earliest_not_after":"2030-01-01T00:00:00Z"}}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn forget_removes_every_series_of_one_target_and_a_late_probe_cannot_bring_them_back() {
        let m = Metrics::new();
        let (a, b) = (
            tokio_util::sync::CancellationToken::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        m.record_owned(&result("a"), &a);
        m.record_owned(&result("b"), &b);
        let families = probe_targets(&m);
        assert!(families.len() >= 10, "every probe_* family has series: {families:?}");
        assert!(families.iter().all(|(_, names)| names == &["a", "b"]), "{families:?}");

        a.cancel();
        m.forget("a");
        m.forget("never-scheduled");
        m.record_owned(&result("a"), &a);
        let families = probe_targets(&m);
        assert!(families.iter().all(|(_, names)| names == &["b"]), "{families:?}");
        assert_eq!(
            m.probes_completed.get(Outcome::Success),
            3,
            "the late probe still counts"
        );
    }

    /// `PER_TARGET_METRICS=off`: no `probe_*` series at all, the totals as before.
    #[test]
    fn per_target_series_switched_off_leave_the_totals() {
        let r = result("a");
        let (on, off) = (Metrics::new(), Metrics::with(PerTargetMetrics::Off));
        for m in [&on, &off] {
            m.record(&r);
            m.record_owned(&r, &tokio_util::sync::CancellationToken::new());
            m.forget("a");
            m.record(&r);
            assert_eq!(m.probes_completed.get(Outcome::Success), 3);
        }
        assert_eq!(probe_targets(&on).len(), 10, "{}", on.text());
        assert!(!off.text().contains("probe_"), "{}", off.text());
        assert!(off
            .text()
            .contains("healthcheck_checker_probes_completed_total{outcome=\"success\"} 3"));
    }

    /// The registry never holds a `probe_*` family: it would be written twice.
    #[test]
    fn the_probe_families_are_only_written_once() {
        let m = Metrics::new();
        m.record(&result("a"));
        assert!(m.registry.gather().iter().all(|f| !f.get_name().starts_with("probe_")));
        let text = m.text();
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "families once each, by name");
    }

    #[test]
    fn outcome_is_read_back_from_the_result() {
        let minimal = r#"{"check_id":"6f1c8a4e-1f1a-5b9a-9a4e-1f1a5b9a9a4e","target":"a","url":"http://x/",
            "scheduled_at":"2026-01-01T00:00:00Z","started_at":"2026-01-01T00:00:00.001Z","success":false,
            "error_kind":"body_too_large","http_version":"HTTP/2"}"#;
        let mut r: ProbeResult = serde_json::from_str(minimal).unwrap();
        let m = Metrics::new();
        m.record(&r);
        assert_eq!(m.probes_completed.get(Outcome::Failure(ErrorKind::BodyTooLarge)), 1);
        assert!(m.text().contains("\nprobe_http_version{target=\"a\"} 2\n"));
        r.error_kind = Some("from_a_newer_build".into());
        assert_eq!(Outcome::of(&r), None);
        r.error_kind = None;
        assert_eq!(Outcome::of(&r), Some(Outcome::Success));
    }
}
