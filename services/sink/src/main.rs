//! `sink` binary: configuration → telemetry → app → run until SIGTERM/SIGINT.
//!
//! `sink healthcheck` instead checks the running sink's `/healthz` (for container
//! healthchecks in images without a shell).

use std::process::ExitCode;

use sink::app::App;
use sink::config::{self, Config};

fn main() -> ExitCode {
    common::service::main(
        "sink",
        config::admin_addr,
        Config::from_env,
        |c| c.log_format,
        |config, shutdown| async move { App::build(config).await?.run_until_stopped(shutdown).await },
    )
}
