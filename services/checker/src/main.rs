//! `checker` binary: configuration → telemetry → app → run until SIGTERM/SIGINT.
//!
//! `checker healthcheck` instead checks the running checker's `/healthz` (for container
//! healthchecks in images without a shell).

use std::process::ExitCode;

use checker::app::App;
use checker::config::{self, Config};
use common::config::Env;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let env = Env::from_process();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let addr = match config::admin_addr(&env, config::DEFAULT_ADMIN_ADDR) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("checker: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        };
        return match runtime.block_on(common::admin::self_check(addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("checker: unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("checker: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    common::telemetry::init(config.log_format);
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        common::shutdown::cancel_on_signals(shutdown.clone());
        App::build(config).await?.run_until_stopped(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "Checker failed.");
            ExitCode::FAILURE
        }
    }
}
