//! `checker` binary: configuration → telemetry → app → run until SIGTERM/SIGINT.
//!
//! `checker healthcheck` instead checks the running checker's `/healthz` (for container
//! healthchecks in images without a shell).

use std::process::ExitCode;

use checker::app::App;
use checker::config::{self, Config};

fn main() -> ExitCode {
    common::service::main(
        "checker",
        |env| config::admin_addr(env, config::DEFAULT_ADMIN_ADDR),
        Config::from_env,
        |c| c.log_format,
        |config, shutdown| async move { App::build(config).await?.run_until_stopped(shutdown).await },
    )
}
