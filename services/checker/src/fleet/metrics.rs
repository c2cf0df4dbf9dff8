//! The fleet consumer's metrics, registered on the checker's registry (names pinned in
//! BRIEF-COMMON, interface 3). Only counts what the consumer reports.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Kinds of rebalance event (the `kind` label of `healthcheck_checker_rebalances_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum RebalanceKind {
    /// Partitions assigned (an incremental assignment; may be empty).
    Assign,
    /// Partitions revoked by a rebalance or by leaving the group.
    Revoke,
    /// The assignment was lost (session expired, or the group moved on without us).
    Lost,
}

/// The fleet's metrics.
#[derive(Clone)]
pub struct FleetMetrics {
    /// `healthcheck_checker_assigned_partitions`: partitions of the targets topic held now.
    pub assigned_partitions: IntGauge,
    /// `healthcheck_checker_rebalances_total{kind}`.
    rebalances: IntCounterVec,
    /// `healthcheck_checker_partition_load_seconds`: assignment → the partition's targets
    /// scheduled (its end reached), seconds.
    pub partition_load: Histogram,
    /// `healthcheck_checker_target_errors_total`: targets-topic values that did not build a
    /// target (the previous spec of that name, if any, keeps running).
    pub target_errors: IntCounter,
    /// `healthcheck_checker_handover_targets`: targets of revoked partitions still scheduled
    /// during their hand-over period.
    pub handover_targets: IntGauge,
}

impl FleetMetrics {
    /// Registers the fleet's metrics on `registry` (the one `/metrics` serves).
    ///
    /// # Panics
    /// When they are registered twice on the same registry (a programming error).
    pub fn register(registry: &Registry) -> Self {
        fn add<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: prometheus::Result<M>) -> M {
            let m = m.expect("valid metric");
            r.register(Box::new(m.clone())).expect("registered once");
            m
        }
        let rebalances = add(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "healthcheck_checker_rebalances_total",
                    "Rebalance events of the targets topic's consumer group, by kind (assign, revoke, lost).",
                ),
                &["kind"],
            ),
        );
        for kind in <RebalanceKind as strum::IntoEnumIterator>::iter() {
            rebalances.with_label_values(&[kind.into()]);
        }
        Self {
            assigned_partitions: add(
                registry,
                IntGauge::new(
                    "healthcheck_checker_assigned_partitions",
                    "Partitions of the targets topic this checker holds.",
                ),
            ),
            rebalances,
            partition_load: add(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "healthcheck_checker_partition_load_seconds",
                        "Time from a targets-topic partition's assignment to its targets being scheduled.",
                    )
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
                ),
            ),
            target_errors: add(
                registry,
                IntCounter::new(
                    "healthcheck_checker_target_errors_total",
                    "Targets-topic values that are not a valid target; the previous spec of that name keeps running.",
                ),
            ),
            handover_targets: add(
                registry,
                IntGauge::new(
                    "healthcheck_checker_handover_targets",
                    "Targets of revoked partitions still probed during the hand-over period.",
                ),
            ),
        }
    }

    /// Counts one rebalance event.
    pub fn rebalance(&self, kind: RebalanceKind) {
        self.rebalances.with_label_values(&[kind.into()]).inc();
    }
}
