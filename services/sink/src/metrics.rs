//! The sink's Prometheus metrics, prefixed `healthcheck_sink_`.

use prometheus::{
    Counter, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// All sink metrics, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// Messages received from Kafka.
    pub consumed: IntCounter,
    /// Rows inserted into `probe_results`.
    pub inserted: IntCounter,
    /// Of those, rows written by the direct COPY (the fast path of `WRITE_METHOD=copy`).
    pub copied_directly: IntCounter,
    /// Rows offered but already present (replays absorbed by `ON CONFLICT DO NOTHING`).
    pub duplicates: IntCounter,
    /// Dead letters written, by class ([`crate::store::DeadLetterClass`]: `decode`, `data`).
    pub dead_letters: IntCounterVec,
    /// Dead letters PostgreSQL refused even bare (no key, no payload, shortened error), so
    /// their messages were skipped: see [`crate::store::WriteOutcome::skipped_dead_letters`].
    /// Should stay 0; anything else is a message lost and an alert.
    pub dead_letters_skipped: IntCounter,
    /// Rows per batch.
    pub batch_rows: Histogram,
    /// Duration of a batch write (all its transactions), seconds.
    pub transaction_seconds: Histogram,
    /// Write retries, by [`crate::store::StoreError::retry_label`]: SQLSTATE class (`08`, `40`,
    /// `53`, `55`, `57`, `58`) or `io`/`pool`/`timeout`.
    pub retries: IntCounterVec,
    /// Seconds spent not taking messages because the next batch was full while one was being
    /// written (back-pressure from PostgreSQL).
    pub backpressure_seconds: Counter,
    /// Partitions paused because writes are behind (0 when consuming normally).
    pub partitions_paused: IntGauge,
    /// Consumer lag per partition, messages (librdkafka statistics `consumer_lag`).
    pub consumer_lag: IntGaugeVec,
    /// Rebalance events, by kind (`assign`, `revoke`).
    pub rebalances: IntCounterVec,
    /// Unix time of the last successful offset store.
    pub last_offset_store: Gauge,
    /// Unix time when the partitions this sink answers for last made progress (see
    /// [`crate::stall`]): `time() - healthcheck_sink_last_progress_timestamp_seconds` is how
    /// long they have had messages waiting and no commit (about 0 when none waits).
    pub last_progress: Gauge,
    /// Partitions of the topic assigned to this sink (readiness's last look).
    pub partitions_assigned: IntGauge,
    /// Records of the targets topic written, by outcome ([`TARGET_RECORD_OUTCOMES`]):
    /// `stored` (a new row of `target_changes`), `duplicate` (a replay absorbed),
    /// `dead_letter` (a record the schema cannot hold).
    pub target_records: IntCounterVec,
    /// Passes of the rollup job, by outcome (`ok`, `error`; [`ROLLUP_OUTCOMES`]).
    pub rollup_runs: IntCounterVec,
    /// Duration of a rollup pass, seconds.
    pub rollup_seconds: Histogram,
    /// Age of the oldest rollup mark due and not yet processed, seconds (0 when none): how
    /// far the status page's rollups lag the rows.
    pub rollup_lag: Gauge,
    /// Incidents open now and not planned (outside maintenance windows), all targets (the
    /// rollup job's last look).
    pub open_incidents: IntGauge,
}

/// The `outcome` labels of `healthcheck_sink_rollup_runs_total`.
pub const ROLLUP_OUTCOMES: [&str; 2] = ["ok", "error"];

/// The `outcome` labels of `healthcheck_sink_target_records_total`.
pub const TARGET_RECORD_OUTCOMES: [&str; 3] = ["stored", "duplicate", "dead_letter"];

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// Longer than 80 lines on purpose: it is the list of the sink's metrics, one registration
    /// each, in the order of the fields; split up, the list would be harder to check against
    /// the struct, not easier.
    ///
    /// # Panics
    /// Never in practice: names are static and registered once.
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry.register(Box::new(m.clone())).expect("registered once");
                m
            }};
        }
        let dead_letters: IntCounterVec = reg!(IntCounterVec::new(
            Opts::new("healthcheck_sink_dead_letters_total", "Dead letters written, by class."),
            &["class"]
        ));
        for c in crate::store::DeadLetterClass::STORED {
            dead_letters.with_label_values(&[c.as_str()]);
        }
        let retries: IntCounterVec = reg!(IntCounterVec::new(
            Opts::new(
                "healthcheck_sink_write_retries_total",
                "Batch write retries, by SQLSTATE class or io/pool/timeout."
            ),
            &["class"]
        ));
        let rebalances: IntCounterVec = reg!(IntCounterVec::new(
            Opts::new(
                "healthcheck_sink_rebalances_total",
                "Consumer group rebalance events, by kind."
            ),
            &["kind"]
        ));
        for k in ["assign", "revoke"] {
            rebalances.with_label_values(&[k]);
        }
        let target_records: IntCounterVec = reg!(IntCounterVec::new(
            Opts::new(
                "healthcheck_sink_target_records_total",
                "Records of the targets topic written to target_changes or dead_letters, by outcome."
            ),
            &["outcome"]
        ));
        for o in TARGET_RECORD_OUTCOMES {
            target_records.with_label_values(&[o]);
        }
        let rollup_runs: IntCounterVec = reg!(IntCounterVec::new(
            Opts::new(
                "healthcheck_sink_rollup_runs_total",
                "Passes of the rollup job, by outcome."
            ),
            &["outcome"]
        ));
        for o in ROLLUP_OUTCOMES {
            rollup_runs.with_label_values(&[o]);
        }
        common::telemetry::register_build_info(&registry, "healthcheck_sink", env!("CARGO_PKG_VERSION"));
        Self {
            consumed: reg!(IntCounter::new(
                "healthcheck_sink_messages_consumed_total",
                "Messages received from Kafka."
            )),
            inserted: reg!(IntCounter::new(
                "healthcheck_sink_rows_inserted_total",
                "Rows inserted into probe_results."
            )),
            copied_directly: reg!(IntCounter::new(
                "healthcheck_sink_rows_copied_directly_total",
                "Rows of healthcheck_sink_rows_inserted_total written by a COPY straight into probe_results (batches without replays)."
            )),
            duplicates: reg!(IntCounter::new(
                "healthcheck_sink_duplicates_total",
                "Rows offered that were already stored (replays absorbed)."
            )),
            dead_letters,
            dead_letters_skipped: reg!(IntCounter::new(
                "healthcheck_sink_dead_letters_skipped_total",
                "Dead letters PostgreSQL refused even without key and payload; their messages were skipped."
            )),
            batch_rows: reg!(Histogram::with_opts(
                HistogramOpts::new("healthcheck_sink_batch_rows", "Messages per written batch.")
                    .buckets(prometheus::exponential_buckets(1.0, 4.0, 9).expect("buckets"))
            )),
            transaction_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "healthcheck_sink_transaction_duration_seconds",
                    "Time to write one batch, seconds."
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
                ])
            )),
            retries,
            backpressure_seconds: reg!(Counter::new(
                "healthcheck_sink_backpressure_seconds_total",
                "Seconds spent not taking messages because writes were behind (messages left in librdkafka's queue, then partitions paused)."
            )),
            partitions_paused: reg!(IntGauge::new(
                "healthcheck_sink_partitions_paused",
                "Partitions paused because writes are behind (0 when consuming normally)."
            )),
            consumer_lag: reg!(IntGaugeVec::new(
                Opts::new("healthcheck_sink_consumer_lag", "Consumer lag per partition, messages."),
                &["topic", "partition"]
            )),
            rebalances,
            last_offset_store: reg!(Gauge::new(
                "healthcheck_sink_last_offset_store_timestamp_seconds",
                "Unix time of the last successful offset store."
            )),
            last_progress: reg!(Gauge::new(
                "healthcheck_sink_last_progress_timestamp_seconds",
                "Unix time when the partitions this sink answers for (its own, or all when it owns none) last made progress: a commit, or nothing waiting."
            )),
            partitions_assigned: reg!(IntGauge::new(
                "healthcheck_sink_partitions_assigned",
                "Partitions of the topic assigned to this sink."
            )),
            target_records,
            rollup_runs,
            rollup_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "healthcheck_sink_rollup_duration_seconds",
                    "Time of one pass of the rollup job, seconds."
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
            )),
            rollup_lag: reg!(Gauge::new(
                "healthcheck_sink_rollup_lag_seconds",
                "Age of the oldest rollup mark due and not processed yet, seconds (0 when none)."
            )),
            open_incidents: reg!(IntGauge::new(
                "healthcheck_sink_open_incidents",
                "Incidents open now and not planned (outside maintenance windows), all targets."
            )),
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
