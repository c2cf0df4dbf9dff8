//! The `main` both service binaries share: configuration → telemetry → app → run until
//! SIGTERM/SIGINT, and the `healthcheck` subcommand for container healthchecks in images
//! without a shell or curl.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Env};
use crate::telemetry::LogFormat;

/// Runs service `name` from the process environment and returns the process exit code: 0
/// after a clean stop, 1 when the app fails, 2 for invalid configuration (the message names
/// the variable). With the argument `healthcheck`, checks the running service's `/healthz`
/// at `admin_addr(env)` instead (0 healthy, 1 not).
///
/// `config` reads the whole configuration, `log_format` picks the log format from it,
/// `runtime` how the process runs ([`RuntimeSettings`]: the runtime's worker threads, a
/// real-time scheduling policy), and `run` builds the app and runs it until its token is
/// cancelled (on SIGTERM or SIGINT). A real-time policy that cannot be had (no `CAP_SYS_NICE`)
/// is invalid configuration: exit 2, naming `REALTIME_PRIORITY`.
pub fn main<C, Fut>(
    name: &str,
    admin_addr: impl FnOnce(&Env) -> Result<SocketAddr, ConfigError>,
    config: impl FnOnce(&Env) -> Result<C, ConfigError>,
    log_format: impl FnOnce(&C) -> LogFormat,
    runtime: impl FnOnce(&C) -> RuntimeSettings,
    run: impl FnOnce(C, CancellationToken) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let env = Env::from_process();
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let addr = match admin_addr(&env) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{name}: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        };
        return match runtime.block_on(crate::admin::self_check(addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match config(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match crate::telemetry::filter(env.get("RUST_LOG")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{name}: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = runtime(&config);
    let checked = tokio_worker_threads(&env).and_then(|tokio_workers| {
        if let Some(priority) = settings.realtime_priority {
            // Before any thread is made: every thread of the process inherits the policy.
            set_realtime(priority)?;
        }
        Ok(settings.worker_threads.or(tokio_workers))
    });
    let workers = match checked {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{name}: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(log_format(&config), filter);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        runtime.worker_threads(n);
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signals(shutdown.clone());
        run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(service = name, error = %format!("{e:#}"), "Stopped with an error.");
            ExitCode::FAILURE
        }
    }
}

/// How a service's process runs, from its configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// The tokio runtime's worker threads (`WORKER_THREADS`); `None`: tokio's default, one per
    /// CPU, or `TOKIO_WORKER_THREADS`.
    pub worker_threads: Option<usize>,
    /// `SCHED_FIFO` at this priority (1–99) for every thread of the process
    /// (`REALTIME_PRIORITY`); `None`: the normal policy (`SCHED_OTHER`).
    pub realtime_priority: Option<u8>,
}

/// `TOKIO_WORKER_THREADS`, which tokio reads (and panicked on) when `WORKER_THREADS` is
/// unset: a positive integer, or unset; empty means unset, as for every variable here (one
/// worker per CPU).
///
/// # Errors
/// A [`ConfigError`] naming `TOKIO_WORKER_THREADS`.
fn tokio_worker_threads(env: &Env) -> Result<Option<usize>, ConfigError> {
    match env.var("TOKIO_WORKER_THREADS") {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(Some(std::thread::available_parallelism().map_or(1, usize::from))),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(ConfigError::new(
                "TOKIO_WORKER_THREADS",
                format!("{v:?} is not a positive integer"),
                "2",
            )),
        },
    }
}

/// Puts the calling thread under the real-time policy `SCHED_FIFO` at `priority`
/// (`sched(7)`); the threads it starts afterwards inherit the policy (glibc's default,
/// `PTHREAD_INHERIT_SCHED`), so called before the runtime is built it covers the tokio
/// workers, the blocking pool and librdkafka's threads alike. Such a thread runs as soon as it
/// is woken, ahead of every `SCHED_OTHER` thread of the machine, until it blocks; the
/// kernel's real-time throttling (`/proc/sys/kernel/sched_rt_runtime_us`, 95 % by default)
/// keeps the rest for the others.
///
/// # Errors
/// A [`ConfigError`] naming `REALTIME_PRIORITY`: the priority is outside 1–99, or the
/// process may not use the policy (it needs `CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` of at least
/// `priority`).
pub fn set_realtime(priority: u8) -> Result<(), ConfigError> {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy, ThreadPriority,
        ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let invalid = |problem: String| ConfigError::new("REALTIME_PRIORITY", problem, "50");
    let value = ThreadPriorityValue::try_from(priority)
        .ok()
        .filter(|_| (1..=99).contains(&priority))
        .ok_or_else(|| invalid(format!("{priority} is not a SCHED_FIFO priority (1 to 99)")))?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| {
        let cause = match e {
            thread_priority::Error::OS(code) => std::io::Error::from_raw_os_error(code).to_string(),
            other => other.to_string(),
        };
        invalid(format!(
            "cannot run under SCHED_FIFO at priority {priority}: {cause} (the process needs CAP_SYS_NICE, \
             or an RLIMIT_RTPRIO of at least {priority})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokio_worker_threads_is_a_positive_integer_or_unset() {
        let check = |v: Option<&str>| tokio_worker_threads(&Env::from_pairs(v.map(|v| ("TOKIO_WORKER_THREADS", v))));
        assert_eq!(check(None), Ok(None));
        assert_eq!(check(Some(" 3 ")), Ok(Some(3)));
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(check(Some("")), Ok(Some(cpus)), "empty: unset, one per CPU");
        for bad in ["0", "two", "-1"] {
            assert_eq!(check(Some(bad)).unwrap_err().var, "TOKIO_WORKER_THREADS", "{bad:?}");
        }
    }

    #[test]
    fn realtime_priorities_outside_fifo_s_range_are_refused_by_name() {
        for bad in [0, 100, 255] {
            let e = set_realtime(bad).unwrap_err();
            assert_eq!(e.var, "REALTIME_PRIORITY", "{bad}");
        }
    }
}
