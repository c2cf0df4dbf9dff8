//! Fixed-rate scheduling of probes.
//!
//! Each target has a grid of slots `phase + k × interval` on the Unix time axis, where `phase`
//! is derived from the target's name (`common::slots`: thousands of targets spread across the
//! interval, and a restarted checker or another location keeps the same slots). A slot's time never depends on how long earlier
//! probes took, so there is no drift. Every target has its own task and every probe its own
//! task, so a slow target never delays another. A global semaphore bounds the probes in flight;
//! when it is saturated, probes start late and the lateness shows in
//! `healthcheck_checker_scheduling_lateness_seconds` and in each result's `lateness_seconds`.
//! A probe task ends once its result is handed to the publisher, which never waits (see
//! `publish`: a bounded buffer, dropping and counting results when it is full), so neither
//! a slow broker nor an outage holds probe tasks or their memory.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::probe;
use crate::publish::Publisher;
use crate::target::Target;
use crate::timer::Timer;

pub use common::slots::{next_slot_after, phase};

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
    /// Written into results and into their `check_id` (`LOCATION`).
    pub location: Arc<str>,
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
                let result = probe::run(&target2, scheduled_at, &this.instance_id, &this.location).await;
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
