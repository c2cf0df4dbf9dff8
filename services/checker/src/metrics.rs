//! The checker's Prometheus metrics.
//!
//! Per-target gauges reuse blackbox_exporter's names and meanings (`probe_success`,
//! `probe_duration_seconds`, `probe_http_*`, `probe_ssl_earliest_cert_expiry`), labelled by
//! `target`, so dashboards and alerts written for blackbox_exporter work unchanged. The
//! checker's own metrics are prefixed `healthcheck_checker_`.

use common::result::{ErrorKind, ProbeResult};
use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Label values of `healthcheck_checker_results_dropped_total`.
pub const DROP_REASONS: [&str; 2] = ["buffer_full", "shutdown"];

/// All checker metrics, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    probe_success: GaugeVec,
    probe_duration: GaugeVec,
    status_code: GaugeVec,
    phase_duration: GaugeVec,
    redirects: GaugeVec,
    content_length: GaugeVec,
    uncompressed_body_length: GaugeVec,
    ssl_earliest_expiry: GaugeVec,
    failed_due_to_regex: GaugeVec,
    http_version: GaugeVec,
    /// Probes started.
    pub probes_started: IntCounter,
    probes_completed: IntCounterVec,
    /// Scheduling lateness (started minus scheduled), seconds.
    pub lateness: Histogram,
    /// Probes in flight now.
    pub in_flight: IntGauge,
    /// Slots skipped because the checker was more than one interval behind.
    pub skipped_slots: IntCounter,
    /// Results whose delivery the broker acknowledged.
    pub published: IntCounter,
    /// Results that could not be delivered, by reason.
    pub publish_failures: IntCounterVec,
    /// Messages in the producer's queue (librdkafka `rd_kafka_outq_len`).
    pub producer_queue: IntGauge,
    /// Results handed to the publisher and not yet delivered or failed for good.
    pub results_waiting: IntGauge,
    /// The most results that may wait (`queue.buffering.max.messages`).
    pub results_waiting_limit: IntGauge,
    /// Results dropped before reaching librdkafka, by reason (`buffer_full`, `shutdown`).
    pub results_dropped: IntCounterVec,
    /// Fatal producer errors, each followed by a new producer.
    pub producer_fatal_errors: IntCounter,
    /// Producers replaced because results stopped being delivered while the broker answered
    /// (see [`crate::publish::PublishLoop::replace_when_stalled`]).
    pub producer_stall_replacements: IntCounter,
    /// When the broker last acknowledged a result, Unix seconds.
    pub last_delivery: Gauge,
    /// Targets configured.
    pub targets: Gauge,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Panics
    /// Never in practice: names are static and registered once.
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let lateness = Histogram::with_opts(
            HistogramOpts::new(
                "healthcheck_checker_scheduling_lateness_seconds",
                "Time between a probe's scheduled slot and its start.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        registry.register(Box::new(lateness.clone())).expect("registered once");
        let probes_completed = counter_vec(
            "healthcheck_checker_probes_completed_total",
            "Probes completed, by outcome (success or the error kind).",
            &["outcome"],
        );
        probes_completed.with_label_values(&["success"]);
        for k in ErrorKind::ALL {
            probes_completed.with_label_values(&[k.as_str()]);
        }
        let publish_failures = counter_vec(
            "healthcheck_checker_publish_failures_total",
            "Results that could not be delivered to Kafka, by reason.",
            &["reason"],
        );
        for r in ["delivery", "enqueue", "encode"] {
            publish_failures.with_label_values(&[r]);
        }
        let results_dropped = counter_vec(
            "healthcheck_checker_results_dropped_total",
            "Results dropped before reaching the Kafka producer, by reason: buffer_full (as many results wait as queue.buffering.max.messages allows) or shutdown (still waiting when the grace period ended).",
            &["reason"],
        );
        for r in DROP_REASONS {
            results_dropped.with_label_values(&[r]);
        }
        let last_delivery = Gauge::new(
            "healthcheck_checker_last_delivery_timestamp_seconds",
            "When the broker last acknowledged a result, Unix seconds (0 before the first).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(last_delivery.clone()))
            .expect("registered once");
        let targets = Gauge::new("healthcheck_checker_targets", "Targets configured.").expect("valid metric");
        registry.register(Box::new(targets.clone())).expect("registered once");
        common::telemetry::register_build_info(&registry, "healthcheck_checker", env!("CARGO_PKG_VERSION"));
        Self {
            probe_success: gauge(
                "probe_success",
                "Whether the last probe was a success (1) or not (0).",
                &["target"],
            ),
            probe_duration: gauge(
                "probe_duration_seconds",
                "How long the last probe took, seconds.",
                &["target"],
            ),
            status_code: gauge(
                "probe_http_status_code",
                "Response HTTP status code of the last probe (0 when none).",
                &["target"],
            ),
            phase_duration: gauge(
                "probe_http_duration_seconds",
                "Duration of the last probe's HTTP phases, summed over redirects, seconds.",
                &["target", "phase"],
            ),
            redirects: gauge(
                "probe_http_redirects",
                "Redirects followed by the last probe.",
                &["target"],
            ),
            content_length: gauge(
                "probe_http_content_length",
                "Content-Length of the last probe's response (-1 when absent).",
                &["target"],
            ),
            uncompressed_body_length: gauge(
                "probe_http_uncompressed_body_length",
                "Body length of the last probe's response after decoding, bytes.",
                &["target"],
            ),
            ssl_earliest_expiry: gauge(
                "probe_ssl_earliest_cert_expiry",
                "Earliest notAfter of the presented certificates, Unix seconds.",
                &["target"],
            ),
            failed_due_to_regex: gauge(
                "probe_failed_due_to_regex",
                "Whether the last probe failed because of a body regex.",
                &["target"],
            ),
            http_version: gauge(
                "probe_http_version",
                "HTTP version of the last probe's response.",
                &["target"],
            ),
            probes_started: counter("healthcheck_checker_probes_started_total", "Probes started."),
            probes_completed,
            lateness,
            in_flight: int_gauge("healthcheck_checker_probes_in_flight", "Probes in flight now."),
            skipped_slots: counter(
                "healthcheck_checker_skipped_slots_total",
                "Scheduled slots skipped because the checker was more than one interval late.",
            ),
            published: counter(
                "healthcheck_checker_published_total",
                "Results whose delivery the broker acknowledged.",
            ),
            publish_failures,
            producer_queue: int_gauge(
                "healthcheck_checker_producer_queue_messages",
                "Messages waiting in the Kafka producer's queue.",
            ),
            results_waiting: int_gauge(
                "healthcheck_checker_results_waiting",
                "Results handed to the publisher and not yet delivered or failed for good.",
            ),
            results_waiting_limit: int_gauge(
                "healthcheck_checker_results_waiting_limit",
                "The most results that may wait for delivery (queue.buffering.max.messages); beyond it new results are dropped.",
            ),
            results_dropped,
            producer_fatal_errors: counter(
                "healthcheck_checker_producer_fatal_errors_total",
                "Fatal errors of the Kafka producer; each is followed by a new producer that sends the undelivered results again.",
            ),
            producer_stall_replacements: counter(
                "healthcheck_checker_producer_stall_replacements_total",
                "Producers replaced because no result was delivered for the stall timeout while the broker answered metadata.",
            ),
            last_delivery,
            targets,
            registry,
        }
    }

    /// Records a completed probe.
    pub fn record(&self, r: &ProbeResult) {
        let t = [r.target.as_str()];
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        self.probe_success.with_label_values(&t).set(b(r.success));
        self.probe_duration.with_label_values(&t).set(r.duration_seconds);
        self.status_code
            .with_label_values(&t)
            .set(f64::from(r.status_code.unwrap_or(0)));
        for (phase, v) in [
            ("resolve", r.phases.resolve),
            ("connect", r.phases.connect),
            ("tls", r.phases.tls),
            ("processing", r.phases.processing),
            ("transfer", r.phases.transfer),
        ] {
            self.phase_duration
                .with_label_values(&[r.target.as_str(), phase])
                .set(v.unwrap_or(0.0));
        }
        self.redirects.with_label_values(&t).set(f64::from(r.redirects));
        self.content_length
            .with_label_values(&t)
            .set(r.content_length.map_or(-1.0, |n| n as f64));
        self.uncompressed_body_length
            .with_label_values(&t)
            .set(r.body_bytes.unwrap_or(0) as f64);
        match r.tls.as_ref().and_then(|t| t.earliest_not_after) {
            Some(at) => self
                .ssl_earliest_expiry
                .with_label_values(&t)
                .set(at.timestamp() as f64),
            // No certificate read: drop the series rather than report the epoch.
            None => {
                let _ = self.ssl_earliest_expiry.remove_label_values(&t);
            }
        }
        self.failed_due_to_regex
            .with_label_values(&t)
            .set(b(r.regex_matched == Some(false)));
        let version = match r.http_version.as_deref() {
            Some("HTTP/1.0") => 1.0,
            Some("HTTP/1.1") => 1.1,
            Some("HTTP/2") => 2.0,
            _ => 0.0,
        };
        self.http_version.with_label_values(&t).set(version);
        self.probes_completed
            .with_label_values(&[r.error_kind.as_deref().unwrap_or("success")])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
