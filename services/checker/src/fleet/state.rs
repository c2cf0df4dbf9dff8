//! What the fleet consumer knows of its partitions, as a pure state machine: events in
//! (assignment, revocation, a record, an end of partition, the clock), roster changes out
//! ([`Change`]). It never talks to Kafka or to the roster itself, so its rules are unit-tested.
//!
//! Rules:
//! - An assigned partition is `Loading` until its end: its records are collected (last value
//!   per key; a tombstone removes), then its targets are scheduled at once.
//! - A `Live` partition applies each record as it comes (upsert, or remove on a tombstone).
//! - A revoked partition's targets are not removed at once: they are handed over, kept
//!   scheduled for the hand-over period and removed then, unless a partition assigned in the
//!   meantime schedules them again (coverage over exclusivity during a rebalance).
//! - A lost assignment (the session expired: the broker was unreachable, or this replica was
//!   cut off) keeps its targets scheduled with no end until the group answers again (the next
//!   assignment, possibly empty), and the hand-over period runs from then. A replica that
//!   cannot reach the group keeps probing, as a single checker does through a broker outage;
//!   what it probed that another replica probed too has the same `check_id`.
//! - A value that does not build a target changes nothing: the previous spec keeps running.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::target::Target;

/// What the roster must do.
#[derive(Debug, Clone)]
pub enum Change {
    /// Schedule this spec (new or changed).
    Upsert(Arc<Target>),
    /// Stop scheduling this name.
    Remove(String),
}

impl PartialEq for Change {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Upsert(a), Self::Upsert(b)) => a.name == b.name && Arc::ptr_eq(a, b),
            (Self::Remove(a), Self::Remove(b)) => a == b,
            _ => false,
        }
    }
}

/// One partition's state.
#[derive(Debug)]
enum Partition {
    /// Read from its beginning, not yet at its end; `specs` is the last valid value per key
    /// (`None`: a tombstone).
    Loading {
        since: Instant,
        specs: HashMap<String, Option<Arc<Target>>>,
    },
    /// Its targets are scheduled; records apply live.
    Live { names: BTreeSet<String> },
}

/// The partitions of the targets topic this replica holds, and the targets it hands over.
#[derive(Debug)]
pub struct State {
    partitions: BTreeMap<i32, Partition>,
    /// Targets of revoked partitions, still scheduled until the instant given (`None`: of a
    /// lost assignment, until the next assignment starts the hand-over period).
    handover: HashMap<String, Option<Instant>>,
    handover_period: Duration,
}

impl State {
    /// No partitions; revoked targets are kept for `handover_period`.
    pub fn new(handover_period: Duration) -> Self {
        Self {
            partitions: BTreeMap::new(),
            handover: HashMap::new(),
            handover_period,
        }
    }

    /// Partitions newly assigned (possibly none: the group answered): each starts loading, and
    /// the targets of a lost assignment start their hand-over period.
    pub fn assign(&mut self, partitions: &[i32], now: Instant) {
        for until in self.handover.values_mut() {
            until.get_or_insert(now + self.handover_period);
        }
        for &p in partitions {
            self.partitions.insert(
                p,
                Partition::Loading {
                    since: now,
                    specs: HashMap::new(),
                },
            );
        }
    }

    /// Partitions revoked: their scheduled targets are handed over for the hand-over period.
    pub fn revoke(&mut self, partitions: &[i32], now: Instant) {
        self.release(partitions, Some(now + self.handover_period));
    }

    /// Partitions of a lost assignment: their targets stay scheduled until the next
    /// assignment, then for the hand-over period.
    pub fn lose(&mut self, partitions: &[i32]) {
        self.release(partitions, None);
    }

    fn release(&mut self, partitions: &[i32], until: Option<Instant>) {
        for p in partitions {
            if let Some(Partition::Live { names }) = self.partitions.remove(p) {
                for name in names {
                    self.handover.insert(name, until);
                }
            }
        }
    }

    /// Every partition revoked (shutdown, after leaving the group).
    pub fn revoke_all(&mut self, now: Instant) {
        let all: Vec<i32> = self.partitions.keys().copied().collect();
        self.revoke(&all, now);
    }

    /// Every partition lost (a rebalance error).
    pub fn lose_all(&mut self) {
        let all: Vec<i32> = self.partitions.keys().copied().collect();
        self.lose(&all);
    }

    /// A record of partition `p`: `Some(target)` a valid spec, `None` a tombstone. Records of a
    /// partition not held are ignored.
    pub fn record(&mut self, p: i32, name: &str, value: Option<Arc<Target>>) -> Vec<Change> {
        match self.partitions.get_mut(&p) {
            None => Vec::new(),
            Some(Partition::Loading { specs, .. }) => {
                specs.insert(name.to_string(), value);
                Vec::new()
            }
            Some(Partition::Live { names }) => {
                self.handover.remove(name);
                match value {
                    Some(t) => {
                        names.insert(name.to_string());
                        vec![Change::Upsert(t)]
                    }
                    None => {
                        names.remove(name);
                        vec![Change::Remove(name.to_string())]
                    }
                }
            }
        }
    }

    /// Partition `p` reached its end. When it was loading, its targets are scheduled (and the
    /// time since its assignment returned); a tombstoned name still handed over is removed.
    pub fn end_of_partition(&mut self, p: i32, now: Instant) -> Option<(Duration, Vec<Change>)> {
        if !matches!(self.partitions.get(&p), Some(Partition::Loading { .. })) {
            return None;
        }
        let Some(Partition::Loading { since, specs }) = self.partitions.remove(&p) else {
            unreachable!("checked above");
        };
        let mut changes = Vec::new();
        let mut names = BTreeSet::new();
        for (name, value) in specs {
            let handed_over = self.handover.remove(&name).is_some();
            match value {
                Some(t) => {
                    names.insert(name);
                    changes.push(Change::Upsert(t));
                }
                None if handed_over => changes.push(Change::Remove(name)),
                None => {}
            }
        }
        self.partitions.insert(p, Partition::Live { names });
        Some((now.saturating_duration_since(since), changes))
    }

    /// Hand-overs that ran out: removed, unless a loading partition may schedule them again
    /// (they are decided when it is loaded).
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let loading = |name: &str| {
            self.partitions.values().any(|p| match p {
                Partition::Loading { specs, .. } => matches!(specs.get(name), Some(Some(_))),
                Partition::Live { .. } => false,
            })
        };
        let expired: Vec<String> = self
            .handover
            .iter()
            .filter(|(name, until)| until.is_some_and(|until| until <= now) && !loading(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            self.handover.remove(name);
        }
        expired.into_iter().map(Change::Remove).collect()
    }

    /// Partitions held.
    pub fn assigned(&self) -> usize {
        self.partitions.len()
    }

    /// Partitions still loading.
    pub fn loading(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, p)| matches!(p, Partition::Loading { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Targets handed over and still scheduled.
    pub fn handing_over(&self) -> usize {
        self.handover.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Defaults, ProxyEnv};
    use common::config::Env;

    fn target(name: &str) -> Arc<Target> {
        let defaults = Defaults {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            body_max_bytes: 1024,
            proxy_env: ProxyEnv::default(),
        };
        let json = format!(r#"{{"url": "http://127.0.0.1:1/{name}"}}"#);
        Arc::new(crate::target::target_from_json(name, json.as_bytes(), &Env::default(), &defaults).unwrap())
    }

    fn names(changes: &[Change]) -> Vec<String> {
        let mut v: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Upsert(t) => format!("+{}", t.name),
                Change::Remove(n) => format!("-{n}"),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_partition_is_scheduled_at_once_at_its_end_with_the_last_value_per_key() {
        let t0 = Instant::now();
        let mut s = State::new(Duration::from_secs(10));
        s.assign(&[0], t0);
        assert!(s.record(0, "a", Some(target("a"))).is_empty());
        assert!(s.record(0, "b", Some(target("b"))).is_empty());
        assert!(s.record(0, "a", None).is_empty(), "a tombstone while loading");
        let newest_c = target("c");
        s.record(0, "c", Some(target("c")));
        s.record(0, "c", Some(newest_c.clone()));
        assert_eq!(s.loading(), vec![0]);
        let (took, changes) = s.end_of_partition(0, t0 + Duration::from_millis(300)).unwrap();
        assert_eq!(took, Duration::from_millis(300));
        assert_eq!(names(&changes), ["+b", "+c"]);
        assert!(changes.contains(&Change::Upsert(newest_c)), "the last value of c");
        assert!(s.loading().is_empty());
        assert!(s.end_of_partition(0, t0).is_none(), "a later end changes nothing");
        // Live now.
        assert_eq!(names(&s.record(0, "d", Some(target("d")))), ["+d"]);
        assert_eq!(names(&s.record(0, "b", None)), ["-b"]);
        assert!(s.record(5, "x", Some(target("x"))).is_empty(), "not held");
    }

    #[test]
    fn revoked_targets_stay_for_the_handover_period_unless_they_come_back() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        let mut s = State::new(period);
        s.assign(&[0, 1], t0);
        s.record(0, "a", Some(target("a")));
        s.record(1, "b", Some(target("b")));
        s.end_of_partition(0, t0);
        s.end_of_partition(1, t0);
        s.revoke(&[0, 1], t0);
        assert_eq!(s.assigned(), 0);
        assert_eq!(s.handing_over(), 2);
        assert!(
            s.tick(t0 + period - Duration::from_millis(1)).is_empty(),
            "kept until the end"
        );
        // Partition 1 comes back before the end and is loading when it ends: b is kept for it.
        s.assign(&[1], t0 + Duration::from_secs(5));
        s.record(1, "b", Some(target("b")));
        assert_eq!(names(&s.tick(t0 + period)), ["-a"]);
        let (_, changes) = s.end_of_partition(1, t0 + period + Duration::from_secs(1)).unwrap();
        assert_eq!(names(&changes), ["+b"]);
        assert_eq!(s.handing_over(), 0);
        assert!(s.tick(t0 + period * 3).is_empty(), "b is owned again, never removed");
    }

    /// Found by reading the first version: a lost assignment was handed over like a revoked
    /// one, so a replica cut off from the broker for longer than the session timeout plus the
    /// hand-over period stopped probing altogether.
    #[test]
    fn a_lost_assignment_keeps_probing_until_the_group_answers_again() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        let mut s = State::new(period);
        s.assign(&[0, 1], t0);
        s.record(0, "a", Some(target("a")));
        s.record(1, "b", Some(target("b")));
        s.end_of_partition(0, t0);
        s.end_of_partition(1, t0);
        s.lose(&[0, 1]);
        assert!(
            s.tick(t0 + Duration::from_secs(3600)).is_empty(),
            "an hour cut off: still probing"
        );
        assert_eq!(s.handing_over(), 2);
        // The group answers: partition 1 comes back, 0 went to another replica.
        let back = t0 + Duration::from_secs(3600);
        s.assign(&[1], back);
        s.record(1, "b", Some(target("b")));
        s.end_of_partition(1, back);
        assert!(s.tick(back + period - Duration::from_millis(1)).is_empty());
        assert_eq!(names(&s.tick(back + period)), ["-a"]);
        assert_eq!(s.handing_over(), 0);
        // An empty assignment starts the hand-over period too (a standby after the cut).
        s.lose_all();
        s.assign(&[], back + period);
        assert_eq!(names(&s.tick(back + period * 2)), ["-b"]);
    }

    #[test]
    fn a_handed_over_target_tombstoned_in_the_reloaded_partition_is_removed() {
        let t0 = Instant::now();
        let mut s = State::new(Duration::from_secs(10));
        s.assign(&[0], t0);
        s.record(0, "a", Some(target("a")));
        s.end_of_partition(0, t0);
        s.revoke_all(t0);
        s.assign(&[0], t0);
        s.record(0, "a", None);
        let (_, changes) = s.end_of_partition(0, t0).unwrap();
        assert_eq!(names(&changes), ["-a"]);
        assert!(s.tick(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_loading_partition_that_is_revoked_hands_nothing_over() {
        let t0 = Instant::now();
        let mut s = State::new(Duration::from_secs(10));
        s.assign(&[0], t0);
        s.record(0, "a", Some(target("a")));
        s.revoke(&[0], t0);
        assert_eq!(s.handing_over(), 0);
        assert!(s.end_of_partition(0, t0).is_none());
    }
}
