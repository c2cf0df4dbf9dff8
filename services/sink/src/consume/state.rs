//! The consume loop's state machine: whether it lingers on an open batch, holds back (every
//! write slot busy and the next batch full), or has paused the assigned partitions, and when
//! the pending batch is to be written.
//!
//! Pure: no consumer and no clock of its own (the loop passes `now` and the pause and resume
//! calls, [`Partitions`]), so every transition is unit-tested. It never decides what a batch
//! holds, only when it is written and whether messages are taken.

use std::time::{Duration, Instant};

use super::PAUSE_AFTER;

/// What the loop is doing about taking messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum State {
    /// Taking messages, no linger timer: no batch is open, or every write slot is busy (a
    /// finishing write wakes the loop anyway; a timer past its deadline left armed would make
    /// it spin).
    #[default]
    Filling,
    /// Taking messages into an open batch while a write slot is free: it is written at
    /// `deadline` (its first message + linger) unless it fills first.
    Lingering {
        /// When the linger timer fires.
        deadline: Instant,
    },
    /// The next batch is full and every write slot is busy: messages wait in librdkafka's
    /// queue. Short stalls end here (a pause would discard what librdkafka prefetched).
    HeldBack {
        /// Since when.
        since: Instant,
    },
    /// Held back for longer than [`PAUSE_AFTER`]: the assigned partitions are paused and
    /// polling goes on, so that `max.poll.interval.ms` is never exceeded.
    Paused {
        /// Since when the loop has been holding back.
        since: Instant,
        /// A message arrived since the pause (from a partition assigned after it): the pause
        /// is renewed so that it covers the new partitions.
        taken: bool,
    },
}

/// What the loop knows after an event.
#[derive(Debug, Clone, Copy)]
pub(super) struct Turn {
    /// When the pending batch got its first message (`None`: it is empty).
    pub opened: Option<Instant>,
    /// The pending batch reached its row or byte limit.
    pub full: bool,
    /// Fewer writes in flight than `WRITE_CONCURRENCY`.
    pub slot_free: bool,
    /// The longest a batch waits for more messages ([`super::BatchLimits::linger`]).
    pub linger: Duration,
}

/// Pausing and resuming the assigned partitions: the consumer, or a fake in tests.
pub(super) trait Partitions {
    /// Pauses every assigned partition; returns whether it did.
    fn pause(&self) -> bool;
    /// Resumes every assigned partition.
    fn resume(&self);
}

impl State {
    /// Whether the loop polls for a message. While paused it polls whatever the batch holds:
    /// polling is what keeps the group membership, and only partitions assigned since the
    /// pause can deliver. Otherwise only while the pending batch has room.
    pub fn polls(self, full: bool) -> bool {
        matches!(self, Self::Paused { .. }) || !full
    }

    /// The linger timer's deadline, when it is armed.
    pub fn linger_deadline(self) -> Option<Instant> {
        match self {
            Self::Lingering { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Since when the loop has been holding back (held back or paused).
    pub fn held_since(self) -> Option<Instant> {
        match self {
            Self::HeldBack { since } | Self::Paused { since, .. } => Some(since),
            _ => None,
        }
    }

    /// A message was taken.
    pub fn taken(self) -> Self {
        match self {
            Self::Paused { since, .. } => Self::Paused { since, taken: true },
            other => other,
        }
    }

    /// After every event: whether to write the pending batch now (it is full, or has lingered
    /// long enough, and a write slot is free), and the next state, pausing or resuming the
    /// partitions on the way.
    pub fn turn(self, t: Turn, now: Instant, partitions: &impl Partitions) -> (bool, Self) {
        let due = t.full || t.opened.is_some_and(|o| now.saturating_duration_since(o) >= t.linger);
        let write = due && t.slot_free;
        // A batch handed to a write leaves an empty one behind.
        let (opened, hold) = if write { (None, false) } else { (t.opened, t.full) };
        let next = match self {
            Self::Paused { .. } if !hold => {
                partitions.resume();
                Self::taking(opened, t)
            }
            _ if !hold => Self::taking(opened, t),
            Self::Filling | Self::Lingering { .. } => Self::HeldBack { since: now },
            Self::HeldBack { since } if now.saturating_duration_since(since) >= PAUSE_AFTER => {
                if partitions.pause() {
                    Self::Paused { since, taken: false }
                } else {
                    // Tried again on the next turn.
                    Self::HeldBack { since }
                }
            }
            Self::HeldBack { .. } => self,
            Self::Paused { since, taken: true } => {
                // Once paused, stay paused until resumed, even if the renewal fails.
                partitions.pause();
                Self::Paused { since, taken: false }
            }
            Self::Paused { .. } => self,
        };
        (write, next)
    }

    /// Taking messages: lingering on an open batch while a slot is free, filling otherwise.
    fn taking(opened: Option<Instant>, t: Turn) -> Self {
        match opened {
            Some(o) if t.slot_free => Self::Lingering { deadline: o + t.linger },
            _ => Self::Filling,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Counts pauses and resumes; a pause succeeds when `pause_ok`.
    #[derive(Default)]
    struct Fake {
        pause_ok: bool,
        pauses: Cell<u32>,
        resumes: Cell<u32>,
    }

    impl Partitions for Fake {
        fn pause(&self) -> bool {
            self.pauses.set(self.pauses.get() + 1);
            self.pause_ok
        }

        fn resume(&self) {
            self.resumes.set(self.resumes.get() + 1);
        }
    }

    const LINGER: Duration = Duration::from_millis(200);

    fn turn(opened: Option<Instant>, full: bool, slot_free: bool) -> Turn {
        Turn {
            opened,
            full,
            slot_free,
            linger: LINGER,
        }
    }

    fn paused(since: Instant, taken: bool) -> State {
        State::Paused { since, taken }
    }

    fn ok() -> Fake {
        Fake {
            pause_ok: true,
            ..Fake::default()
        }
    }

    #[test]
    fn an_open_batch_lingers_while_a_slot_is_free_and_is_written_at_the_deadline() {
        let (t0, p) = (Instant::now(), ok());
        assert_eq!(
            State::Filling.turn(turn(None, false, true), t0, &p),
            (false, State::Filling)
        );
        let (write, s) = State::Filling.turn(turn(Some(t0), false, true), t0, &p);
        assert_eq!((write, s), (false, State::Lingering { deadline: t0 + LINGER }));
        assert!(s.polls(false));
        // Every slot busy: no timer (the write that finishes wakes the loop).
        assert_eq!(s.turn(turn(Some(t0), false, false), t0, &p), (false, State::Filling));
        // The deadline passed: written, and the next batch is empty.
        assert_eq!(
            s.turn(turn(Some(t0), false, true), t0 + LINGER, &p),
            (true, State::Filling)
        );
        assert_eq!((p.pauses.get(), p.resumes.get()), (0, 0));
    }

    #[test]
    fn a_full_batch_is_written_at_once_when_a_slot_is_free() {
        let (t0, p) = (Instant::now(), ok());
        let lingering = State::Lingering { deadline: t0 + LINGER };
        assert_eq!(
            lingering.turn(turn(Some(t0), true, true), t0, &p),
            (true, State::Filling)
        );
    }

    #[test]
    fn a_full_batch_with_every_slot_busy_holds_back_then_pauses_after_pause_after() {
        let (t0, p) = (Instant::now(), ok());
        let full_busy = turn(Some(t0), true, false);
        let (write, held) = State::Filling.turn(full_busy, t0, &p);
        assert_eq!((write, held), (false, State::HeldBack { since: t0 }));
        assert!(!held.polls(true), "held back: messages wait in librdkafka's queue");
        let almost = t0 + PAUSE_AFTER - Duration::from_millis(1);
        assert_eq!(held.turn(full_busy, almost, &p), (false, held));
        assert_eq!(p.pauses.get(), 0);
        let (_, s) = held.turn(full_busy, t0 + PAUSE_AFTER, &p);
        assert_eq!(s, paused(t0, false));
        assert!(s.polls(true), "paused: polling goes on");
        assert_eq!(p.pauses.get(), 1);
        // Still full and busy: no new pause.
        assert_eq!(s.turn(full_busy, t0 + PAUSE_AFTER * 2, &p), (false, s));
        assert_eq!(p.pauses.get(), 1);
    }

    #[test]
    fn a_failed_pause_is_tried_again_on_the_next_turn() {
        let t0 = Instant::now();
        let p = Fake::default();
        let full_busy = turn(Some(t0), true, false);
        let held = State::HeldBack { since: t0 };
        assert_eq!(held.turn(full_busy, t0 + PAUSE_AFTER, &p), (false, held));
        assert_eq!(held.turn(full_busy, t0 + PAUSE_AFTER, &p), (false, held));
        assert_eq!(p.pauses.get(), 2);
    }

    #[test]
    fn a_message_taken_while_paused_renews_the_pause() {
        let (t0, p) = (Instant::now(), ok());
        let s0 = paused(t0, false).taken();
        assert_eq!(s0, paused(t0, true));
        let (_, s) = s0.turn(turn(Some(t0), true, false), t0, &p);
        assert_eq!((s, p.pauses.get()), (paused(t0, false), 1));
        assert_eq!(State::Filling.taken(), State::Filling);
    }

    #[test]
    fn a_finished_write_writes_the_held_batch_and_resumes() {
        let (t0, p) = (Instant::now(), ok());
        let s0 = paused(t0, false);
        // A slot came free: the full batch is written and the partitions resumed.
        let (write, s) = s0.turn(turn(Some(t0), true, true), t0 + PAUSE_AFTER * 3, &p);
        assert_eq!((write, s, p.resumes.get()), (true, State::Filling, 1));
        assert!(s.held_since().is_none());
        // Held back without a pause: written, nothing to resume.
        let held = State::HeldBack { since: t0 };
        assert_eq!(held.held_since(), Some(t0));
        assert_eq!(held.turn(turn(Some(t0), true, true), t0, &p), (true, State::Filling));
        assert_eq!(p.resumes.get(), 1);
    }

    #[test]
    fn a_revoke_that_empties_the_held_batch_resumes_and_lingers_on_what_is_left() {
        let (t0, p) = (Instant::now(), ok());
        let s0 = paused(t0, false);
        let (write, s) = s0.turn(turn(Some(t0), false, false), t0, &p);
        assert_eq!((write, s, p.resumes.get()), (false, State::Filling, 1));
        let (write, s) = State::HeldBack { since: t0 }.turn(turn(Some(t0), false, true), t0, &p);
        assert_eq!((write, s), (false, State::Lingering { deadline: t0 + LINGER }));
    }
}
