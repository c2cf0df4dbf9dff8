//! `sink` binary: configuration → telemetry → app → run until SIGTERM/SIGINT.
//!
//! Subcommands that run instead of the service:
//! - `sink healthcheck` checks the running sink's `/healthz` (for container healthchecks in
//!   images without a shell);
//! - `sink maintenance add|list|delete` manages maintenance windows (issue #10) in the database
//!   of `DATABASE_URL` (the only variable it reads): slots inside a window are excluded from
//!   uptime and incidents overlapping one are planned. The running sink's rollup job applies
//!   a change at its next pass.
//!
//! Exit codes of `maintenance`: 0 done, 1 no window with that id, 2 invalid input (usage, a
//! time, `DATABASE_URL`), 3 the database failed (the error is printed).

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Parser, Subcommand};
use common::config::Env;
use sink::app::App;
use sink::config::{self, Config};
use sink::store::status::{MaintenanceWindow, NewMaintenance};
use sink::store::Store;

/// mimalloc instead of glibc's malloc: it returns freed pages to the kernel within
/// milliseconds (glibc kept tens of MiB of the start-up's freed memory in its arenas) and
/// allocates faster on the hot paths (see BENCHMARKS.md, sections 4 and 5).
/// Built without transparent huge pages (the crate's `no_thp`: mimalloc does not
/// `madvise(MADV_HUGEPAGE)` its arenas): with them, each arena's 2 MiB pages counted whole
/// in RSS, 80 against 57 MiB for 10,000 targets and 30 against 18 MiB for one. On a host whose
/// THP setting is `always` the kernel backs such regions by itself; the images set
/// `MIMALLOC_ALLOW_THP=0`, which makes mimalloc turn THP off for the process
/// (`PR_SET_THP_DISABLE`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `sink maintenance ...`: maintenance windows from the command line.
#[derive(Parser)]
#[command(
    name = "sink maintenance",
    about = "Add, list and delete maintenance windows (excluded from uptime; incidents in them are planned)"
)]
struct MaintenanceCli {
    #[command(subcommand)]
    command: MaintenanceCommand,
}

#[derive(Subcommand)]
enum MaintenanceCommand {
    /// Add a window for one target (--target) or every target (--all) and print it.
    #[command(group(ArgGroup::new("scope").required(true).args(["target", "all"])))]
    #[command(group(ArgGroup::new("end").required(true).args(["to", "for_"])))]
    Add {
        /// The target's name.
        #[arg(long)]
        target: Option<String>,
        /// Every target.
        #[arg(long)]
        all: bool,
        /// Start: RFC 3339 (`2026-12-01T22:00:00Z`) or `now`.
        #[arg(long, value_parser = parse_time)]
        from: DateTime<Utc>,
        /// End (exclusive): RFC 3339.
        #[arg(long, value_parser = parse_time)]
        to: Option<DateTime<Utc>>,
        /// Length instead of an end (`2h`, `30m`).
        #[arg(long = "for", id = "for_", value_parser = parse_length)]
        length: Option<Duration>,
        /// Why (shown on the status page).
        #[arg(long)]
        reason: String,
    },
    /// Print the windows not ended yet (with --all, every window), by start.
    List {
        /// Include windows that have ended.
        #[arg(long)]
        all: bool,
        /// One JSON array of {id, target_name, starts_at, ends_at, reason, created_at}.
        #[arg(long)]
        json: bool,
    },
    /// Delete the window ID.
    Delete {
        /// The window's id (from `list`).
        id: i64,
    },
}

/// `now` or an RFC 3339 time.
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if s == "now" {
        return Ok(Utc::now());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is neither `now` nor an RFC 3339 time (2026-12-01T22:00:00Z): {e}"))
}

/// A positive humantime duration.
fn parse_length(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be positive".into()),
        Err(e) => Err(format!("{s:?} is not a duration (2h, 30m): {e}")),
    }
}

/// How a `maintenance` command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Done = 0,
    NotFound = 1,
    Invalid = 2,
    Database = 3,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("maintenance") {
        let cli = match MaintenanceCli::try_parse_from(
            std::iter::once("sink maintenance".to_string()).chain(args[1..].iter().cloned()),
        ) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                return ExitCode::from(if e.use_stderr() { Exit::Invalid as u8 } else { 0 });
            }
        };
        return ExitCode::from(maintenance(cli.command) as u8);
    }
    common::service::main(
        "sink",
        config::admin_addr,
        Config::from_env,
        |c| c.log_format,
        |_| common::service::RuntimeSettings::default(),
        |config, shutdown| async move { App::build(config).await?.run_until_stopped(shutdown).await },
    )
}

/// Runs a `maintenance` command against `DATABASE_URL`.
fn maintenance(command: MaintenanceCommand) -> Exit {
    let dsn = match config::database_url(&Env::from_process()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("sink: invalid configuration: {e}");
            return Exit::Invalid;
        }
    };
    let window = match &command {
        MaintenanceCommand::Add {
            target,
            from,
            to,
            length,
            reason,
            ..
        } => {
            let ends_at = match (to, length) {
                (Some(t), _) => *t,
                (None, Some(l)) => match chrono::Duration::from_std(*l)
                    .ok()
                    .and_then(|l| from.checked_add_signed(l))
                {
                    Some(t) => t,
                    None => {
                        eprintln!("sink: --for is too long");
                        return Exit::Invalid;
                    }
                },
                (None, None) => unreachable!("clap requires --to or --for"),
            };
            if ends_at <= *from {
                eprintln!(
                    "sink: the window must end after it starts: --to {} is not after --from {}",
                    ends_at.to_rfc3339(),
                    from.to_rfc3339()
                );
                return Exit::Invalid;
            }
            Some(NewMaintenance {
                target_name: target.clone(),
                starts_at: *from,
                ends_at,
                reason: reason.clone(),
            })
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let store = match Store::new(dsn.expose(), 1, "") {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sink: DATABASE_URL: {e}");
                return Exit::Invalid;
            }
        };
        let result = match command {
            MaintenanceCommand::Add { .. } => {
                let w = window.expect("built above");
                store.add_maintenance(&w).await.map(|w| {
                    println!("added {}", line(&w));
                    Exit::Done
                })
            }
            MaintenanceCommand::List { all, json } => store.maintenance_windows(all).await.map(|ws| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&ws).expect("serializable"));
                } else {
                    for w in &ws {
                        println!("{}", line(w));
                    }
                }
                Exit::Done
            }),
            MaintenanceCommand::Delete { id } => store.delete_maintenance(id).await.map(|found| {
                if found {
                    println!("deleted {id}");
                    Exit::Done
                } else {
                    eprintln!("sink: no maintenance window with id {id}");
                    Exit::NotFound
                }
            }),
        };
        result.unwrap_or_else(|e| {
            eprintln!("sink: database: {e}");
            Exit::Database
        })
    })
}

/// One window on one line: `id target|* start end reason`.
fn line(w: &MaintenanceWindow) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        w.id,
        w.target_name.as_deref().unwrap_or("*"),
        w.starts_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        w.ends_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        w.reason
    )
}
