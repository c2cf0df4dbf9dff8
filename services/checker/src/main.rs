//! `checker` binary: configuration → telemetry → app → run until SIGTERM/SIGINT.
//!
//! Two subcommands run instead of the service:
//! - `checker healthcheck` checks the running checker's `/healthz` (for container healthchecks
//!   in images without a shell);
//! - `checker targets validate FILE` reads FILE as the service reads `TARGETS_FILE` (the same
//!   parser, defaults and proxy variables) and exits 0 when it is valid, 2 with the error
//!   naming the target's index and field (`TARGETS_FILE[2].timeout: ...`) when not. It never
//!   probes a target and never connects to Kafka. Files a target refers to (`tls.ca_file`,
//!   `basic_auth.password_file`, ...) must exist where it runs, as at start-up.

use std::process::ExitCode;

use checker::app::App;
use checker::config::{self, Config};
use checker::target::load_targets;
use common::config::Env;

const TARGETS_USAGE: &str = "usage: checker targets validate FILE";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("targets") {
        return match &args[1..] {
            [command, file] if command == "validate" => validate_targets(file),
            _ => {
                eprintln!("checker: {TARGETS_USAGE}");
                ExitCode::from(2)
            }
        };
    }
    common::service::main(
        "checker",
        |env| config::admin_addr(env, config::DEFAULT_ADMIN_ADDR),
        Config::from_env,
        |c| c.log_format,
        |config, shutdown| async move { App::build(config).await?.run_until_stopped(shutdown).await },
    )
}

/// `checker targets validate FILE`: the process environment with `TARGETS_FILE=FILE` (and
/// without `TARGETS`/`TARGET`, which would take precedence), through `load_targets`.
fn validate_targets(file: &str) -> ExitCode {
    let env = Env::from_pairs(
        Env::from_process()
            .pairs()
            .filter(|(k, _)| k != "TARGETS" && k != "TARGET")
            .chain([("TARGETS_FILE".to_string(), file.to_string())]),
    );
    match config::target_defaults(&env).and_then(|defaults| load_targets(&env, &defaults)) {
        Ok(targets) => {
            println!("checker: {file}: {} targets valid", targets.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("checker: invalid targets file: {e}");
            ExitCode::from(2)
        }
    }
}
