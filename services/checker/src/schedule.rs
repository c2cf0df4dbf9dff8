//! Fixed-rate scheduling of probes.
//!
//! Each target has a grid of slots `phase + k × interval` on the Unix time axis, where `phase`
//! is derived from the target's name (so thousands of targets spread across the interval and a
//! restarted checker keeps the same slots). A slot's time never depends on how long earlier
//! probes took, so there is no drift. Every target has its own task and every probe its own
//! task, so a slow target never delays another. A global semaphore bounds the probes in flight;
//! when it is saturated, probes start late and the lateness shows in
//! `healthcheck_checker_scheduling_lateness_seconds` and in each result's `lateness_seconds`.
//! A probe task ends once its result is handed to the publisher, which never waits (see
//! `publish`: a bounded buffer, dropping and counting results when it is full), so neither
//! a slow broker nor an outage holds probe tasks or their memory.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::probe;
use crate::publish::Publisher;
use crate::target::Target;
use crate::timer::Timer;

/// The phase of `name`'s slot grid within `interval`: a stable hash of the name (the first
/// 8 bytes of its UUIDv5), so it survives restarts and upgrades.
pub fn phase(name: &str, interval: Duration) -> Duration {
    let h = uuid::Uuid::new_v5(&common::result::CHECK_ID_NAMESPACE, name.as_bytes());
    let n = u64::from_be_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    Duration::from_nanos(n % (interval.as_nanos().max(1) as u64))
}

/// The first slot of the grid strictly after `now`. Strictly: a slot that was due at or before
/// start-up may already have been probed by the previous run, so it is never probed again
/// (no two different results for one `check_id`).
pub fn next_slot_after(now: DateTime<Utc>, interval: Duration, phase: Duration) -> DateTime<Utc> {
    let interval_ns = interval.as_nanos() as i128;
    let phase_ns = phase.as_nanos() as i128;
    let now_ns = i128::from(now.timestamp_nanos_opt().unwrap_or(0));
    let k = (now_ns - phase_ns).div_euclid(interval_ns) + 1;
    let slot_ns = k * interval_ns + phase_ns;
    DateTime::from_timestamp_nanos(slot_ns as i64)
}

/// Everything a target's task needs.
#[derive(Clone)]
pub struct Scheduler {
    /// Bounds probes in flight.
    pub permits: Arc<Semaphore>,
    /// Publishes results.
    pub publisher: Publisher,
    /// Metrics.
    pub metrics: Metrics,
    /// Tracks probe tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Written into results.
    pub instance_id: Arc<str>,
    /// Wakes each probe at its slot (tokio's timer alone would be up to 1 ms late).
    pub timer: Arc<Timer>,
}

impl Scheduler {
    /// Runs `target`'s schedule until `stop` is cancelled. Probes already started finish on
    /// their own tasks (tracked by `tracker`) and publish their results.
    pub async fn run_target(self, target: Arc<Target>, stop: CancellationToken) {
        let phase = phase(&target.name, target.interval);
        let mut slot = next_slot_after(Utc::now(), target.interval, phase);
        let interval = chrono::Duration::from_std(target.interval).expect("interval fits");
        loop {
            // Sleep on the monotonic clock for the wall-clock distance to the slot, recomputed
            // each time so wall-clock corrections are followed.
            let wait = (slot - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.timer.sleep_until(std::time::Instant::now() + wait) => {}
            }
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                p = self.permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let (target2, this) = (target.clone(), self.clone());
            let scheduled_at = slot;
            self.metrics.probes_started.inc();
            self.metrics.in_flight.inc();
            self.tracker.spawn(async move {
                let result = probe::run(&target2, scheduled_at, &this.instance_id).await;
                this.metrics.lateness.observe(result.lateness_seconds.max(0.0));
                this.metrics.record(&result);
                this.metrics.in_flight.dec();
                drop(permit);
                // Never waits: the result is buffered (bounded) or dropped and counted.
                this.publisher.submit(&result);
            });
            slot += interval;
            // More than a whole interval behind: skip to the newest due slot instead of
            // firing a burst of stale probes.
            let now = Utc::now();
            if now - slot > interval {
                let behind = next_slot_after(now, target.interval, phase) - interval;
                let skipped =
                    ((behind - slot).num_nanoseconds().unwrap_or(0) / interval.num_nanoseconds().unwrap_or(1)).max(0);
                self.metrics.skipped_slots.inc_by(skipped as u64);
                tracing::warn!(target_name = %target.name, skipped, "Checker is more than one interval late; skipping slots.");
                slot = behind;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_on_a_fixed_grid_strictly_after_now() {
        let interval = Duration::from_secs(10);
        let phase = Duration::from_millis(2_500);
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:07Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = next_slot_after(now, interval, phase);
        assert_eq!(s.to_rfc3339(), "2026-01-01T00:00:12.500+00:00");
        // Exactly on a slot: that slot is not repeated.
        assert_eq!(next_slot_after(s, interval, phase), s + chrono::Duration::seconds(10));
    }

    #[test]
    fn phases_are_stable_and_spread() {
        let interval = Duration::from_secs(60);
        assert_eq!(phase("api", interval), phase("api", interval));
        let phases: std::collections::BTreeSet<u64> =
            (0..1000).map(|i| phase(&format!("t{i}"), interval).as_secs()).collect();
        assert!(
            phases.len() > 50,
            "1000 targets should spread over most of the 60 one-second buckets: {}",
            phases.len()
        );
        assert!(phase("x", interval) < interval);
    }
}
