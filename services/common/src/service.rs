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
/// `worker_threads` the number of the runtime's worker threads (`None`: tokio's default, one
/// per CPU, or `TOKIO_WORKER_THREADS`), and `run` builds the app and runs it until its token
/// is cancelled (on SIGTERM or SIGINT).
pub fn main<C, Fut>(
    name: &str,
    admin_addr: impl FnOnce(&Env) -> Result<SocketAddr, ConfigError>,
    config: impl FnOnce(&Env) -> Result<C, ConfigError>,
    log_format: impl FnOnce(&C) -> LogFormat,
    worker_threads: impl FnOnce(&C) -> Option<usize>,
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
    crate::telemetry::init(log_format(&config), filter);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads(&config) {
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
