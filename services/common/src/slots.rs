//! The slot grid: when a target is due. Shared by the checker (which probes on it) and the sink
//! (whose `coverage` view counts the slots that should have a row).
//!
//! Each target has a grid of slots `phase + k × interval` on the Unix time axis, where `phase`
//! is derived from the target's name alone: every replica and every location computes the same
//! grid, a restarted checker keeps it, and thousands of targets spread across the interval.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The phase of `name`'s slot grid within `interval`: a stable hash of the name (the first
/// 8 bytes of its UUIDv5 in [`crate::result::CHECK_ID_NAMESPACE`], big-endian, modulo the
/// interval in nanoseconds), so it survives restarts and upgrades.
pub fn phase(name: &str, interval: Duration) -> Duration {
    let h = uuid::Uuid::new_v5(&crate::result::CHECK_ID_NAMESPACE, name.as_bytes());
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
