//! Stall detection for readiness: do the partitions this sink answers for make progress?
//!
//! A partition makes progress when the group's committed offset for it (as the broker has it)
//! moves forward, or when nothing waits in it (the committed offset is at the high
//! watermark). A sink answers for the partitions assigned to it, or, when it owns none, for
//! every partition of the topic: a member that owns nothing while messages pile up is not
//! doing its job either, whatever the cause (the owner is stuck, the group coordinator assigns
//! nothing, a rebalance never ends). The sink is stalled when one of those partitions has had
//! messages waiting and no commit for longer than the stall timeout (`STALL_TIMEOUT`).
//!
//! Reading the broker's committed offsets rather than the sink's own bookkeeping catches
//! every cause at once: writes blocked by a lock, partitions paused for good, offsets stored
//! but never committed. This module never talks to the broker itself: [`observe`] does, and
//! [`StallDetector`] judges what it saw.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

/// One partition as the broker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// Low watermark: the first offset still in the log.
    pub low: i64,
    /// High watermark: the offset the next message will get.
    pub high: i64,
    /// The group's committed offset (the next message to consume); `None` when the group has
    /// never committed one.
    pub committed: Option<i64>,
}

impl PartitionState {
    /// Messages in the log after the committed offset (with `auto.offset.reset=earliest`, a
    /// group without a committed offset starts at the low watermark).
    pub fn lag(&self) -> i64 {
        let from = self.committed.unwrap_or(self.low).max(self.low);
        (self.high - from).max(0)
    }
}

/// What [`observe`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Partitions of the topic assigned to this sink.
    pub assigned: Vec<i32>,
    /// Every partition of the topic.
    pub partitions: BTreeMap<i32, PartitionState>,
}

/// Reads the topic's partitions, their watermarks and the group's committed offsets, and this
/// consumer's assignment. Blocks for up to `timeout` per broker request (one metadata request,
/// one offset fetch, one watermark query per partition): run it on the blocking pool.
///
/// # Errors
/// The broker's or librdkafka's error, as text.
pub fn observe<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Observation, String> {
    let n = common::kafka::topic_partitions(consumer.client(), topic, timeout)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| format!("committed offsets: {e}"))?;
    let mut partitions = BTreeMap::new();
    for e in committed.elements_for_topic(topic) {
        let (low, high) = consumer
            .fetch_watermarks(topic, e.partition(), timeout)
            .map_err(|e| format!("watermarks: {e}"))?;
        let committed = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        partitions.insert(e.partition(), PartitionState { low, high, committed });
    }
    let assigned = consumer
        .assignment()
        .map_err(|e| format!("assignment: {e}"))?
        .elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect();
    Ok(Observation { assigned, partitions })
}

/// Follows the committed offsets from one observation to the next and says when the sink
/// is stalled.
#[derive(Debug)]
pub struct StallDetector {
    timeout: Duration,
    topic: String,
    /// Per partition: the committed offset last seen, and since when it has not moved while
    /// messages waited (the last progress).
    partitions: BTreeMap<i32, (Option<i64>, Instant)>,
    /// The last successful observation (or the detector's creation).
    observed: Instant,
}

/// What the detector concluded from an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// When the partitions this sink answers for last made progress: the oldest progress
    /// among those with messages waiting, or now when none has any.
    pub last_progress: Instant,
    /// Partitions assigned to this sink.
    pub assigned: usize,
    /// `Err` (the reason shown by `/readyz`) when stalled.
    pub state: Result<(), String>,
}

impl StallDetector {
    /// A detector for `topic` that calls a sink stalled after `timeout` without progress.
    pub fn new(topic: &str, timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            topic: topic.to_string(),
            partitions: BTreeMap::new(),
            observed: now,
        }
    }

    /// Judges `observation` (made at `now`), or the lack of one: without observations for
    /// longer than the timeout, progress cannot be seen, and that is a stall too.
    pub fn observe(&mut self, now: Instant, observation: Result<&Observation, &str>) -> Verdict {
        let obs = match observation {
            Ok(obs) => obs,
            Err(e) => {
                let blind = now.saturating_duration_since(self.observed);
                return Verdict {
                    last_progress: self.observed,
                    assigned: 0,
                    state: if blind > self.timeout {
                        Err(format!(
                            "cannot see the group's progress for {:.0}s: {e}",
                            blind.as_secs_f64()
                        ))
                    } else {
                        Ok(())
                    },
                };
            }
        };
        self.observed = now;
        self.partitions.retain(|p, _| obs.partitions.contains_key(p));
        for (&p, state) in &obs.partitions {
            let entry = self.partitions.entry(p).or_insert((state.committed, now));
            if state.lag() == 0 || state.committed > entry.0 {
                *entry = (state.committed, now);
            }
        }
        let answers_for: Vec<i32> = if obs.assigned.is_empty() {
            obs.partitions.keys().copied().collect()
        } else {
            obs.assigned.clone()
        };
        let waiting: Vec<(i32, i64, Instant)> = answers_for
            .iter()
            .filter_map(|p| {
                let lag = obs.partitions.get(p)?.lag();
                let since = self.partitions.get(p)?.1;
                (lag > 0).then_some((*p, lag, since))
            })
            .collect();
        let last_progress = waiting.iter().map(|w| w.2).min().unwrap_or(now);
        let stalled: Vec<&(i32, i64, Instant)> = waiting
            .iter()
            .filter(|w| now.saturating_duration_since(w.2) > self.timeout)
            .collect();
        let state = if stalled.is_empty() {
            Ok(())
        } else {
            let ps: Vec<i32> = stalled.iter().map(|w| w.0).collect();
            let lag: i64 = stalled.iter().map(|w| w.1).sum();
            let secs = now.saturating_duration_since(last_progress).as_secs_f64();
            Err(if obs.assigned.is_empty() {
                format!(
                    "owns no partition of {} while partitions {ps:?} have {lag} messages waiting and no commit for {secs:.0}s",
                    self.topic
                )
            } else {
                format!(
                    "no progress for {secs:.0}s: partitions {ps:?} of {} have {lag} messages waiting and no commit",
                    self.topic
                )
            })
        };
        Verdict {
            last_progress,
            assigned: obs.assigned.len(),
            state,
        }
    }
}

/// `at` as Unix time in seconds (for a `_timestamp_seconds` gauge), given that `now` is now.
pub fn unix_seconds(at: Instant, now: Instant) -> f64 {
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    unix - now.saturating_duration_since(at).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(assigned: &[i32], parts: &[(i32, i64, Option<i64>)]) -> Observation {
        Observation {
            assigned: assigned.to_vec(),
            partitions: parts
                .iter()
                .map(|&(p, high, committed)| {
                    (
                        p,
                        PartitionState {
                            low: 0,
                            high,
                            committed,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn lag_counts_from_the_committed_offset_or_the_start_of_the_log() {
        let s = |low, high, committed| PartitionState { low, high, committed }.lag();
        assert_eq!(s(0, 10, Some(4)), 6);
        assert_eq!(s(5, 10, None), 5);
        assert_eq!(s(5, 10, Some(2)), 5, "offsets before the log start are reset to it");
        assert_eq!(s(0, 10, Some(10)), 0);
    }

    #[test]
    fn an_owner_is_stalled_when_its_waiting_partition_commits_nothing_for_the_timeout() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = StallDetector::new("t", Duration::from_secs(10), t0);
        assert!(d
            .observe(s(0), Ok(&obs(&[0, 1], &[(0, 100, Some(50)), (1, 0, None)])))
            .state
            .is_ok());
        // Partition 0 moves: progress.
        let v = d.observe(s(8), Ok(&obs(&[0, 1], &[(0, 200, Some(60)), (1, 0, None)])));
        assert_eq!((v.state.clone(), v.last_progress), (Ok(()), s(8)));
        // Then nothing moves while messages wait.
        assert!(d
            .observe(s(17), Ok(&obs(&[0, 1], &[(0, 300, Some(60)), (1, 0, None)])))
            .state
            .is_ok());
        let v = d.observe(s(19), Ok(&obs(&[0, 1], &[(0, 300, Some(60)), (1, 0, None)])));
        let reason = v.state.unwrap_err();
        assert!(
            reason.contains("no progress for 11s") && reason.contains("[0]") && reason.contains("240"),
            "{reason}"
        );
        assert_eq!(v.last_progress, s(8));
        // Caught up (lag 0) is progress even without a commit.
        let v = d.observe(s(30), Ok(&obs(&[0, 1], &[(0, 60, Some(60)), (1, 0, None)])));
        assert_eq!((v.state, v.last_progress), (Ok(()), s(30)));
    }

    #[test]
    fn a_sink_that_owns_nothing_answers_for_the_whole_topic() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = StallDetector::new("t", Duration::from_secs(10), t0);
        d.observe(s(0), Ok(&obs(&[], &[(0, 10, Some(10)), (1, 5, None)])));
        // Another member commits partition 1: fine.
        assert!(d
            .observe(s(11), Ok(&obs(&[], &[(0, 10, Some(10)), (1, 9, Some(3))])))
            .state
            .is_ok());
        let reason = d
            .observe(s(22), Ok(&obs(&[], &[(0, 10, Some(10)), (1, 20, Some(3))])))
            .state
            .unwrap_err();
        assert!(
            reason.starts_with("owns no partition of t") && reason.contains("[1] have 17"),
            "{reason}"
        );
        // An owner answers only for its own partitions.
        assert!(d
            .observe(s(23), Ok(&obs(&[0], &[(0, 10, Some(10)), (1, 20, Some(3))])))
            .state
            .is_ok());
    }

    #[test]
    fn not_seeing_the_group_for_longer_than_the_timeout_is_a_stall() {
        let t0 = Instant::now();
        let mut d = StallDetector::new("t", Duration::from_secs(10), t0);
        assert!(d.observe(t0 + Duration::from_secs(5), Err("timed out")).state.is_ok());
        let reason = d
            .observe(t0 + Duration::from_secs(11), Err("timed out"))
            .state
            .unwrap_err();
        assert!(
            reason.contains("cannot see the group's progress for 11s: timed out"),
            "{reason}"
        );
    }
}
