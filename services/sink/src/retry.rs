//! Retrying database operations that failed for a transient reason (a lost connection, a
//! serialization failure, a server that does not answer yet) until they pass or the sink
//! stops.
//!
//! The schedules come from `backon` ([`WRITE`], [`MIGRATE`]); this module only says which
//! failures retry ([`Failure`]), what ends a wait early (`stop`, and after a lost connection
//! the database answering readiness's ping again) and that no attempt starts after `stop`
//! ended a wait. It must never retry a failure that is not transient, and never swallow one:
//! every failure reaches the caller, as the error or through `on_retry`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ConstantBuilder, ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use crate::store::{ErrorClass, Store, StoreError};

/// The batch writes' schedule: capped exponential backoff with jitter, 100 ms doubling up to
/// 30 s, each wait drawn uniformly from its upper half (`backon` adds `[0, 1)` times the base
/// delay: base 50 ms → 15 s gives waits of 50–100 ms, 100–200 ms, … 15–30 s). Never ends.
pub const WRITE: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(Duration::from_secs(15))
    .with_factor(2.0)
    .with_jitter()
    .without_max_times();

/// The migrations' schedule at start-up: every 2 s while PostgreSQL is not reachable. Never
/// ends.
pub const MIGRATE: ConstantBuilder = ConstantBuilder::new()
    .with_delay(Duration::from_secs(2))
    .without_max_times();

/// What the retry needs to know about a failure.
pub trait Failure {
    /// Whether trying again later may succeed.
    fn is_transient(&self) -> bool;
    /// Whether the connection to the database was lost (readiness's next successful ping then
    /// ends the wait early).
    fn connection_lost(&self) -> bool;
}

impl Failure for StoreError {
    fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    fn connection_lost(&self) -> bool {
        StoreError::connection_lost(self)
    }
}

/// Why [`until_stopped`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum GaveUp<E> {
    /// A failure that is not transient: trying again cannot help.
    #[error("{0}")]
    Fatal(E),
    /// `stop` was cancelled: with the failure of the attempt it came after, or without one
    /// when it ended the wait before the next attempt.
    #[error("stopped before succeeding{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Stopped(Option<E>),
}

/// What an attempt ended with, inside the retry.
enum Attempt<E> {
    Failed(E),
    /// Not started: `stop` ended the wait before it.
    Skipped,
}

/// Runs `attempt` until it succeeds, fails with a failure that is not transient, or `stop` is
/// cancelled, waiting between attempts as `backoff` says (it must not end). The first attempt
/// runs even when `stop` is cancelled already; `on_retry` sees every failure that is retried,
/// with the wait before the next attempt. When `wake` is given, a wait after a lost
/// connection also ends at the next successful [`Store::ping`].
///
/// # Errors
/// [`GaveUp::Fatal`] with the failure that is not transient; [`GaveUp::Stopped`] with the last
/// failure, if any, once `stop` is cancelled.
pub async fn until_stopped<T, E, Fut>(
    backoff: impl BackoffBuilder,
    stop: &CancellationToken,
    wake: Option<&Store>,
    mut attempt: impl FnMut() -> Fut,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, GaveUp<E>>
where
    E: Failure,
    Fut: Future<Output = Result<T, E>>,
{
    let lost = Arc::new(AtomicBool::new(false));
    let mut first = true;
    let guarded = || {
        let skip = !std::mem::take(&mut first) && stop.is_cancelled();
        let attempt = (!skip).then(&mut attempt);
        async move {
            match attempt {
                Some(attempt) => attempt.await.map_err(Attempt::Failed),
                None => Err(Attempt::Skipped),
            }
        }
    };
    let wait = {
        let (stop, wake, lost) = (stop.clone(), wake.cloned(), lost.clone());
        move |delay: Duration| {
            let stop = stop.clone();
            let wake = wake.clone().filter(|_| lost.load(Ordering::Relaxed));
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                    () = async {
                        match &wake {
                            Some(store) => store.reachable().await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
            }
        }
    };
    let done = guarded
        .retry(backoff)
        .sleep(wait)
        .when(|a| matches!(a, Attempt::Failed(e) if e.is_transient()) && !stop.is_cancelled())
        .notify(|a, delay| {
            if let Attempt::Failed(e) = a {
                lost.store(e.connection_lost(), Ordering::Relaxed);
                on_retry(e, delay);
            }
        })
        .await;
    done.map_err(|a| match a {
        Attempt::Failed(e) if e.is_transient() => GaveUp::Stopped(Some(e)),
        Attempt::Failed(e) => GaveUp::Fatal(e),
        Attempt::Skipped => GaveUp::Stopped(None),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A failure that is transient or not, and a lost connection or not.
    #[derive(Debug, PartialEq)]
    struct Fail {
        transient: bool,
    }

    impl Failure for Fail {
        fn is_transient(&self) -> bool {
            self.transient
        }

        fn connection_lost(&self) -> bool {
            false
        }
    }

    const FAST: ConstantBuilder = ConstantBuilder::new()
        .with_delay(Duration::from_millis(1))
        .without_max_times();

    /// Runs [`until_stopped`] over `outcomes` (one per attempt; `Ok` after the last), returns
    /// the result and how many attempts and retries there were.
    async fn run(
        outcomes: Vec<Result<u32, Fail>>,
        stop: &CancellationToken,
    ) -> (Result<u32, GaveUp<Fail>>, usize, usize) {
        let outcomes = Mutex::new(outcomes.into_iter());
        let (attempts, retries) = (Mutex::new(0), Mutex::new(0));
        let r = until_stopped(
            FAST,
            stop,
            None,
            || {
                *attempts.lock().unwrap() += 1;
                let next = outcomes.lock().unwrap().next().unwrap_or(Ok(0));
                async move { next }
            },
            |_, _| *retries.lock().unwrap() += 1,
        )
        .await;
        (r, attempts.into_inner().unwrap(), retries.into_inner().unwrap())
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let stop = CancellationToken::new();
        let t = || Err(Fail { transient: true });
        let (r, attempts, retries) = run(vec![t(), t(), t(), Ok(7)], &stop).await;
        assert_eq!((r.ok(), attempts, retries), (Some(7), 4, 3));
    }

    #[tokio::test]
    async fn a_failure_that_is_not_transient_is_not_retried() {
        let stop = CancellationToken::new();
        let (r, attempts, retries) = run(vec![Err(Fail { transient: false }), Ok(1)], &stop).await;
        assert!(matches!(r, Err(GaveUp::Fatal(Fail { transient: false }))), "{r:?}");
        assert_eq!((attempts, retries), (1, 0));
    }

    #[tokio::test]
    async fn once_stopped_the_first_attempt_still_runs_but_nothing_is_retried() {
        let stop = CancellationToken::new();
        stop.cancel();
        let (r, attempts, _) = run(vec![Ok(3)], &stop).await;
        assert_eq!((r.ok(), attempts), (Some(3), 1));
        let (r, attempts, retries) = run(vec![Err(Fail { transient: true }), Ok(1)], &stop).await;
        assert!(
            matches!(r, Err(GaveUp::Stopped(Some(Fail { transient: true })))),
            "{r:?}"
        );
        assert_eq!((attempts, retries), (1, 0));
    }

    #[tokio::test]
    async fn a_stop_during_the_wait_ends_it_without_another_attempt() {
        let stop = CancellationToken::new();
        let attempts = Mutex::new(0);
        let slow = ConstantBuilder::new()
            .with_delay(Duration::from_secs(3600))
            .without_max_times();
        let canceller = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                stop.cancel();
            })
        };
        let r: Result<(), _> = tokio::time::timeout(
            Duration::from_secs(10),
            until_stopped(
                slow,
                &stop,
                None,
                || {
                    *attempts.lock().unwrap() += 1;
                    async { Err(Fail { transient: true }) }
                },
                |_, _| {},
            ),
        )
        .await
        .expect("the stop ends the hour-long wait");
        canceller.await.unwrap();
        assert!(matches!(r, Err(GaveUp::Stopped(None))), "{r:?}");
        assert_eq!(attempts.into_inner().unwrap(), 1);
    }

    #[test]
    fn the_write_schedule_doubles_from_100ms_to_30s_with_waits_in_the_upper_half() {
        let waits: Vec<Duration> = WRITE.build().take(12).collect();
        let mut base = Duration::from_millis(100);
        for w in waits {
            assert!(base / 2 <= w && w <= base, "{w:?} outside [{:?}, {base:?}]", base / 2);
            base = (base * 2).min(Duration::from_secs(30));
        }
    }
}
