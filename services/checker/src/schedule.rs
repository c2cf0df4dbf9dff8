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
//!
//! A target's task receives its spec through a `watch` channel (the [`crate::roster`] holds
//! the sender), so a changed spec is applied live: with the same interval the task keeps its
//! next slot (no slot lost or gained); with another interval it moves to the new grid at the
//! first new-grid slot strictly after the later of now and the last slot it probed
//! ([`slot_after_change`]). A probe already started finishes with the spec it started with.
//! This module never decides which targets run; the roster does.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Semaphore};
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

/// The slot a target's task waits for after its spec changed from interval `old` to `new`.
///
/// - Same interval: `next`, the slot it was waiting for (the grid is a function of name and
///   interval, so it is unchanged: no slot lost, none gained).
/// - Another interval: the first slot of the new grid (`phase(name, new)`) strictly after the
///   later of `now` and `last_probed` (the last slot probed, if any), so no slot is probed
///   twice and none is due in the past.
pub fn slot_after_change(
    name: &str,
    old: Duration,
    new: Duration,
    next: DateTime<Utc>,
    last_probed: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    if old == new {
        return next;
    }
    let from = last_probed.map_or(now, |last| last.max(now));
    next_slot_after(from, new, phase(name, new))
}

impl Scheduler {
    /// Runs the schedule of the target in `spec` until `stop` is cancelled or the sender is
    /// dropped. Each new value of `spec` (same name) is applied from the next slot on, see
    /// [`slot_after_change`]. Probes already started finish on their own tasks (tracked by
    /// `tracker`) with the spec they started with, and publish their results; their `probe_*`
    /// gauges are written only while `stop` is not cancelled ([`Metrics::record_owned`]).
    pub async fn run_target(self, mut spec: watch::Receiver<Arc<Target>>, stop: CancellationToken) {
        let mut target = spec.borrow_and_update().clone();
        let mut interval = chrono_interval(target.interval);
        let mut slot = next_slot_after(Utc::now(), target.interval, phase(&target.name, target.interval));
        let mut last_probed: Option<DateTime<Utc>> = None;
        loop {
            // Sleep on the monotonic clock for the wall-clock distance to the slot, recomputed
            // each time so wall-clock corrections are followed.
            let wait = (slot - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                () = stop.cancelled() => return,
                changed = spec.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let new = spec.borrow_and_update().clone();
                    slot = slot_after_change(&new.name, target.interval, new.interval, slot, last_probed, Utc::now());
                    interval = chrono_interval(new.interval);
                    target = new;
                    continue;
                }
                () = self.timer.sleep_until(std::time::Instant::now() + wait) => {}
            }
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                p = self.permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let (target2, this, owned) = (target.clone(), self.clone(), stop.clone());
            let scheduled_at = slot;
            self.metrics.probes_started.inc();
            self.metrics.in_flight.inc();
            self.tracker.spawn(async move {
                let result = probe::run(&target2, scheduled_at, &this.instance_id, &this.location).await;
                this.metrics.lateness.observe(result.lateness_seconds.max(0.0));
                this.metrics.record_owned(&result, &owned);
                this.metrics.in_flight.dec();
                drop(permit);
                // Never waits: the result is buffered (bounded) or dropped and counted.
                this.publisher.submit(&result);
            });
            last_probed = Some(slot);
            slot += interval;
            // More than a whole interval behind: skip to the newest due slot instead of
            // firing a burst of stale probes.
            let now = Utc::now();
            if now - slot > interval {
                let behind = next_slot_after(now, target.interval, phase(&target.name, target.interval)) - interval;
                let skipped =
                    ((behind - slot).num_nanoseconds().unwrap_or(0) / interval.num_nanoseconds().unwrap_or(1)).max(0);
                self.metrics.skipped_slots.inc_by(skipped as u64);
                tracing::warn!(target_name = %target.name, skipped, "Checker is more than one interval late; skipping slots.");
                slot = behind;
            }
        }
    }
}

/// A target's interval as a `chrono::Duration` (configuration bounds it, see
/// `config::tests::overflowing_durations_name_their_variable`).
fn chrono_interval(interval: Duration) -> chrono::Duration {
    chrono::Duration::from_std(interval).expect("interval fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The grid of `name` at `interval`: `n` slots from the first after `from`.
    fn grid(name: &str, interval: Duration, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut slot = next_slot_after(from, interval, phase(name, interval));
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(slot);
            slot += chrono_interval(interval);
        }
        out
    }

    #[test]
    fn a_change_with_the_same_interval_keeps_the_next_slot() {
        let ten = Duration::from_secs(10);
        let now = at("2026-01-01T00:00:07Z");
        let slots = grid("api", ten, now - chrono::Duration::seconds(30), 5);
        // Waiting for slots[3], slots[2] probed: whatever the time, the next slot stays.
        for now in [
            slots[2],
            slots[2] + chrono::Duration::milliseconds(1),
            slots[3] - chrono::Duration::milliseconds(1),
        ] {
            assert_eq!(
                slot_after_change("api", ten, ten, slots[3], Some(slots[2]), now),
                slots[3]
            );
        }
        assert_eq!(
            slot_after_change("api", ten, ten, slots[0], None, now),
            slots[0],
            "nothing probed yet"
        );
    }

    #[test]
    fn a_new_interval_starts_on_its_grid_strictly_after_now_and_the_last_probe() {
        let (ten, sixty) = (Duration::from_secs(10), Duration::from_secs(60));
        let start = at("2026-01-01T00:00:00Z");
        let old = grid("api", ten, start, 4);
        let new = grid("api", sixty, start - chrono::Duration::seconds(120), 10);
        let now = old[1] + chrono::Duration::seconds(1);
        let next = slot_after_change("api", ten, sixty, old[2], Some(old[1]), now);
        assert!(new.contains(&next), "{next} is on the new grid {new:?}");
        assert!(next > now, "strictly after now");
        assert_eq!(
            next,
            *new.iter().find(|s| **s > now).unwrap(),
            "the first new-grid slot after now: none skipped"
        );
        // A clock a little behind the last slot probed (which is on the new grid): that slot
        // is never probed again, the next one of the new grid is.
        let last = new[5];
        let next = slot_after_change(
            "api",
            ten,
            sixty,
            old[2],
            Some(last),
            last - chrono::Duration::milliseconds(5),
        );
        assert_eq!(next, new[6]);
        // Shorter again: the 10 s grid resumes with the first slot after now.
        let back = slot_after_change("api", sixty, ten, next, Some(old[1]), now);
        assert_eq!(back, next_slot_after(now, ten, phase("api", ten)));
        assert!(back > now && back - now <= chrono_interval(ten));
    }
}
