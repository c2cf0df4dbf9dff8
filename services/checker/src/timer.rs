//! Wake-ups at a precise instant.
//!
//! tokio's timer wheel has a resolution of 1 ms and rounds deadlines up, so a probe woken by
//! `tokio::time::sleep` starts 0–1 ms after its slot even on an idle machine. [`Timer`] lets
//! tokio sleep until [`COARSE_MARGIN`] before the deadline, then hands the last stretch to one
//! dedicated thread that waits with a futex timeout (`recv_timeout`, tens of microseconds of
//! precision) and wakes every due task. One thread serves every target: at 10,000 wake-ups per
//! second it costs a few percent of a core.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long before the deadline tokio's coarse timer hands over to the timer thread.
pub const COARSE_MARGIN: Duration = Duration::from_millis(2);

struct Wake {
    at: Instant,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Wake {}

impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Wake {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A precise timer shared by every target's task. The thread ends when the `Timer` is dropped.
pub struct Timer {
    tx: mpsc::Sender<Wake>,
    seq: std::sync::atomic::AtomicU64,
}

impl Timer {
    /// Starts the timer thread.
    ///
    /// # Panics
    /// The operating system refuses to start a thread.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Wake>();
        std::thread::Builder::new()
            .name("precise-timer".into())
            .spawn(move || {
                let mut heap: BinaryHeap<Wake> = BinaryHeap::new();
                loop {
                    let next = match heap.peek() {
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(w) => rx.recv_timeout(w.at.saturating_duration_since(Instant::now())),
                    };
                    match next {
                        Ok(w) => heap.push(w),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let now = Instant::now();
                    while heap.peek().is_some_and(|w| w.at <= now) {
                        let _ = heap.pop().expect("peeked").tx.send(());
                    }
                }
            })
            .expect("start the precise-timer thread");
        Self {
            tx,
            seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Resolves at `at`, or as soon after as the timer thread and tokio's scheduler allow; at
    /// once when `at` has passed. Never resolves before `at`.
    pub async fn sleep_until(&self, at: Instant) {
        if let Some(early) = at.checked_sub(COARSE_MARGIN) {
            if early > Instant::now() {
                tokio::time::sleep_until(early.into()).await;
            }
        }
        if at <= Instant::now() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = self.tx.send(Wake { at, seq, tx });
        if sent.is_err() || rx.await.is_err() {
            // The thread is gone (never while the checker runs): fall back to tokio's timer.
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_wakes_before_the_deadline_in_any_order() {
        let timer = std::sync::Arc::new(Timer::start());
        let start = Instant::now();
        // Deadlines registered out of order, some inside the coarse margin, some past.
        let offsets_ms = [7u64, 1, 4, 0, 12, 3, 3, 9];
        let handles: Vec<_> = offsets_ms
            .iter()
            .map(|&ms| {
                let timer = timer.clone();
                let at = start + Duration::from_millis(ms);
                tokio::spawn(async move {
                    timer.sleep_until(at).await;
                    Instant::now() >= at
                })
            })
            .collect();
        for h in handles {
            assert!(h.await.unwrap(), "woke before its deadline");
        }
    }
}
