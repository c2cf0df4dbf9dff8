//! `checker` binary: configuration → telemetry → app → run until SIGTERM/SIGINT.
//!
//! Subcommands that run instead of the service:
//! - `checker healthcheck` checks the running checker's `/healthz` (for container healthchecks
//!   in images without a shell);
//! - `checker targets validate FILE` reads FILE as the service reads `TARGETS_FILE` (the same
//!   parser, defaults and proxy variables) and exits 0 when it is valid, 2 with every problem,
//!   one per line, each naming the target's index and field (`TARGETS_FILE[2].timeout: ...`),
//!   when not. Files a target refers to (`tls.ca_file`, `basic_auth.password_file`, ...) must
//!   exist where it runs, as at start-up. Never connects to Kafka.
//! - `checker targets apply FILE [--dry-run]` makes the targets topic (`KAFKA_TARGETS_TOPIC`)
//!   hold exactly FILE's targets, publishing only the difference, and prints it;
//! - `checker targets list [--json]` prints the topic's targets;
//! - `checker probe URL [flags]`, `checker probe --target JSON|YAML`, `checker probe --file
//!   FILE [--name NAME]` probe one target now through `checker::probe::run` (see
//!   `checker::oneshot`): the result's wire JSON on stdout, a summary on stderr (not with
//!   `--json`). Never connects to Kafka.
//!
//! Exit codes of `targets`: 0 done, 1 the broker failed (the error is printed), 2 invalid
//! input (usage, configuration, the file), 3 another writer changed the topic during an apply.
//! Exit codes of `probe`: 0 the probe succeeded, 1 it failed, 2 invalid input (usage, a
//! variable, the target: each message names the flag, field or variable).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use checker::app::App;
use checker::config::{self, Config};
use checker::oneshot::{self, ProbeArgs};
use checker::target::{inline_secrets, read_file, read_file_with, References};
use checker::targets_topic::{self, diff::diff, State, TopicError};
use clap::{Parser, Subcommand};
use common::config::{ConfigError, Env};
use common::kafka::KafkaSettings;

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

/// How long reading the targets topic may take before `targets` gives up (exit 1).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `checker targets ...`: the targets topic from the command line.
#[derive(Parser)]
#[command(
    name = "checker targets",
    about = "Validate a targets file, apply it to the targets topic, list the topic"
)]
struct TargetsCli {
    #[command(subcommand)]
    command: TargetsCommand,
}

#[derive(Subcommand)]
enum TargetsCommand {
    /// Check FILE as the service reads TARGETS_FILE; list every problem (exit 2).
    Validate {
        /// YAML or JSON list of targets.
        file: PathBuf,
    },
    /// Make the targets topic hold exactly FILE's targets: publish the difference and print it.
    Apply {
        /// YAML or JSON list of targets.
        file: PathBuf,
        /// Print the difference and publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the targets topic's current targets.
    List {
        /// One JSON array of {name, partition, offset, timestamp, spec}.
        #[arg(long)]
        json: bool,
    },
}

/// How a `targets` command ended.
enum Exit {
    Done,
    Broker,
    Invalid,
    Raced,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(match e {
            Exit::Done => 0,
            Exit::Broker => 1,
            Exit::Invalid => 2,
            Exit::Raced => 3,
        })
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe") {
        return match ProbeArgs::try_parse_from(
            std::iter::once("checker probe".to_string()).chain(args[1..].iter().cloned()),
        ) {
            Ok(cli) => probe(&cli),
            Err(e) => {
                let _ = e.print();
                ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
            }
        };
    }
    if args.first().map(String::as_str) == Some("targets") {
        let cli = match TargetsCli::try_parse_from(
            std::iter::once("checker targets".to_string()).chain(args[1..].iter().cloned()),
        ) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                // Help is 0, a usage error 2.
                return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
            }
        };
        return targets(cli.command).into();
    }
    common::service::main(
        "checker",
        |env| config::admin_addr(env, config::DEFAULT_ADMIN_ADDR),
        Config::from_env,
        |c| c.log_format,
        |c| common::service::RuntimeSettings {
            worker_threads: c.worker_threads,
            realtime_priority: c.realtime_priority,
        },
        |config, shutdown| async move { App::build(config).await?.run_until_stopped(shutdown).await },
    )
}

/// `checker probe ...`: 0 the probe succeeded, 1 it failed, 2 invalid input.
fn probe(cli: &ProbeArgs) -> ExitCode {
    let env = Env::from_process();
    let prepared = config::target_defaults(&env)
        .map_err(|e| vec![e])
        .and_then(|defaults| oneshot::prepare(cli, &env, &defaults));
    let prepared = match prepared {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("checker probe: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("checker probe: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(oneshot::probe(&prepared));
    let json = serde_json::to_string(&result).expect("a ProbeResult serializes");
    // A closed stdout (`| head`) is not a reason to panic; the exit code still tells the outcome.
    let _ = writeln!(std::io::stdout().lock(), "{json}");
    if !cli.json {
        let _ = write!(
            std::io::stderr().lock(),
            "{}",
            oneshot::summary(&result, chrono::Utc::now())
        );
    }
    ExitCode::from(if result.success { 0 } else { 1 })
}

fn targets(command: TargetsCommand) -> Exit {
    let env = Env::from_process();
    match command {
        TargetsCommand::Validate { file } => validate(&env, &file.to_string_lossy()),
        TargetsCommand::Apply { file, dry_run } => {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(apply(&env, &file.to_string_lossy(), dry_run)),
                Err(e) => {
                    eprintln!("checker: cannot start the runtime: {e}");
                    Exit::Broker
                }
            }
        }
        TargetsCommand::List { json } => list(&env, json),
    }
}

fn print_problems(file: &str, errors: &[ConfigError]) {
    for e in errors {
        eprintln!("{e}");
    }
    eprintln!("checker: {file}: {} problems", errors.len());
}

/// `checker targets validate FILE`: the environment's defaults (`DEFAULT_INTERVAL`, ...),
/// through `read_file`, ignoring `TARGETS`/`TARGET` (only FILE is judged).
fn validate(env: &Env, file: &str) -> Exit {
    let defaults = match config::target_defaults(env) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("checker: invalid configuration: {e}");
            return Exit::Invalid;
        }
    };
    match read_file(file, env, &defaults) {
        Ok(targets) => {
            println!("checker: {file}: {} targets valid", targets.len());
            Exit::Done
        }
        Err(errors) => {
            print_problems(file, &errors);
            Exit::Invalid
        }
    }
}

/// The Kafka settings of the environment, with the apply producer's protected properties
/// checked.
fn kafka(env: &Env) -> Result<KafkaSettings, ConfigError> {
    let k = KafkaSettings::from_env(env)?;
    k.check_properties(targets_topic::PRODUCER_DEFAULTS, targets_topic::PROTECTED)?;
    Ok(k)
}

/// Reads the topic's state on the blocking pool.
async fn read_state(settings: &KafkaSettings) -> Result<State, TopicError> {
    let s = settings.clone();
    tokio::task::spawn_blocking(move || targets_topic::read_state(&s, READ_TIMEOUT))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// `checker targets apply FILE [--dry-run]`.
async fn apply(env: &Env, file: &str, dry_run: bool) -> Exit {
    let (defaults, settings) = match config::target_defaults(env).and_then(|d| Ok((d, kafka(env)?))) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("checker: invalid configuration: {e}");
            return Exit::Invalid;
        }
    };
    // Everything is judged before anything is read or written.
    let listed = match read_file_with(file, env, &defaults, References::NotRead) {
        Ok(l) => l,
        Err(errors) => {
            print_problems(file, &errors);
            eprintln!("checker: nothing published");
            return Exit::Invalid;
        }
    };
    let secrets: Vec<ConfigError> = listed.iter().flat_map(inline_secrets).collect();
    if !secrets.is_empty() {
        print_problems(file, &secrets);
        eprintln!("checker: nothing published: the targets topic holds references to secrets, never their values");
        return Exit::Invalid;
    }
    let desired: BTreeMap<String, serde_json::Value> = listed
        .iter()
        .map(|l| (l.target.name.clone(), targets_topic::topic_value(&l.target, &l.spec)))
        .collect();
    let topic = settings.targets_topic.clone();

    if !dry_run {
        if let Err(e) = targets_topic::ensure_topic(&settings).await {
            eprintln!("checker: cannot create the targets topic {topic}: {e}");
            return Exit::Broker;
        }
    }
    let before = match read_state(&settings).await {
        Ok(s) => s,
        Err(TopicError::Missing(_)) if dry_run => State::new(),
        Err(e) => {
            eprintln!("checker: cannot read the targets topic {topic}: {e}");
            return Exit::Broker;
        }
    };
    let d = diff(&desired, &before);
    print!("{}", d.render());
    if dry_run {
        println!("checker: {topic}: {} (dry run: nothing published)", d.summary());
        return Exit::Done;
    }
    if d.is_empty() {
        println!("checker: {topic}: {}", d.summary());
        return Exit::Done;
    }
    if let Err(e) = targets_topic::publish(&settings, &d.records()).await {
        eprintln!(
            "checker: publishing to the targets topic {topic} failed: {e} (some changes may be published: apply again)"
        );
        return Exit::Broker;
    }
    println!("checker: {topic}: {}", d.summary());
    // Another apply racing this one leaves a mix that neither file describes: say so.
    let after = match read_state(&settings).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("checker: published, but cannot read the targets topic {topic} back: {e}");
            return Exit::Broker;
        }
    };
    let left = diff(&desired, &after);
    if !left.is_empty() {
        eprintln!(
            "checker: another writer changed the targets topic {topic} during this apply: {} now differ from {file} ({}); \
             the topic holds a mix of both applies: apply once, from one place (see README)",
            shown_names(&left.names()),
            left.summary()
        );
        return Exit::Raced;
    }
    Exit::Done
}

/// The first ten of `names`, then how many more.
fn shown_names(names: &[&str]) -> String {
    match names.len() {
        0..=10 => names.join(", "),
        n => format!("{} and {} more", names[..10].join(", "), n - 10),
    }
}

/// `checker targets list [--json]`.
fn list(env: &Env, json: bool) -> Exit {
    let settings = match kafka(env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("checker: invalid configuration: {e}");
            return Exit::Invalid;
        }
    };
    let state = match targets_topic::read_state(&settings, READ_TIMEOUT) {
        Ok(s) => s,
        Err(TopicError::Missing(_)) => State::new(),
        Err(e) => {
            eprintln!("checker: cannot read the targets topic {}: {e}", settings.targets_topic);
            return Exit::Broker;
        }
    };
    if json {
        let rows: Vec<serde_json::Value> = state
            .iter()
            .map(|(name, e)| {
                serde_json::json!({
                    "name": name,
                    "partition": e.partition,
                    "offset": e.offset,
                    "timestamp": e.timestamp,
                    "spec": e.spec,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!("NAME\tINTERVAL\tPARTITION\tOFFSET\tURL");
        for (name, e) in &state {
            let field = |f: &str| {
                e.spec
                    .as_ref()
                    .and_then(|s| s.get(f))
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("-")
                    .to_string()
            };
            println!(
                "{name}\t{}\t{}\t{}\t{}",
                field("interval"),
                e.partition,
                e.offset,
                checker::target::redact_userinfo(&field("url"))
            );
        }
        println!("checker: {}: {} targets", settings.targets_topic, state.len());
    }
    Exit::Done
}
