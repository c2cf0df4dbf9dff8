//! The checker's configuration, read once from environment variables at start-up.

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use common::config::{duration, ConfigError, Env};
use common::kafka::KafkaSettings;
use common::telemetry::LogFormat;
use serde::{Deserialize, Serialize};

use crate::metrics::PerTargetMetrics;
use crate::target::{load_targets, Defaults, ProxyEnv, Target};

/// Default admin address of the checker.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:8080";

/// Everything the checker needs, validated.
#[derive(Debug)]
pub struct Config {
    /// Kafka connection and topic.
    pub kafka: KafkaSettings,
    /// What to probe.
    pub targets: TargetSource,
    /// Where this checker probes from (`LOCATION`, default `default`): written into every
    /// result and its `check_id`; fleet checkers of one location share the consumer group
    /// `checker-<LOCATION>`.
    pub location: String,
    /// Admin server address (`ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// Written into every result (`INSTANCE_ID`, default the host name).
    pub instance_id: String,
    /// Most probes in flight at once (`PROBE_CONCURRENCY`, default 512).
    pub probe_concurrency: usize,
    /// The runtime's worker threads (`WORKER_THREADS`; `None`, the default: one per CPU, as
    /// tokio chooses): the threads probes, scheduling and the admin server run on;
    /// librdkafka's own threads and the `/metrics` encoder come on top. One worker costs less
    /// CPU per probe (no hand-offs and wake-ups between workers); more make more probes per
    /// second and keep the admin server answering when the probes saturate a worker
    /// (BENCHMARKS.md, items 1 and 2).
    pub worker_threads: Option<usize>,
    /// `SCHED_FIFO` at this priority (1–99) for every thread of the checker
    /// (`REALTIME_PRIORITY`; `None`, the default: the normal policy). A probe's timer then wakes
    /// it ahead of every normal thread on the machine: at 1,000 targets × 1 s beside the
    /// broker and PostgreSQL on 2 cores, lateness p99 fell to a fifth to a half of the normal
    /// policy's, unless the host deschedules the virtual CPUs themselves (BENCHMARKS.md, item
    /// 3). Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least the priority
    /// ([`common::service::set_realtime`]); for a checker well inside its capacity, since a
    /// saturated one would hold its cores from everything else but the kernel's real-time
    /// throttling.
    pub realtime_priority: Option<u8>,
    /// How long shutdown may take (`SHUTDOWN_GRACE_PERIOD`, default 25 s).
    pub shutdown_grace: Duration,
    /// Log format (`LOG_FORMAT`).
    pub log_format: LogFormat,
    /// The most results that wait for delivery (`KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES`,
    /// default 100000); see `publish`.
    pub results_waiting_limit: usize,
    /// Fleet mode's settings (used with [`TargetSource::Topic`]): the group, the hand-over
    /// period (`HANDOVER_PERIOD`), and what target specs are built with.
    pub fleet: crate::fleet::FleetConfig,
    /// `/readyz` fails when results have waited this long without any delivery
    /// (`DELIVERY_STALL_TIMEOUT`, default 30 s).
    pub delivery_stall_timeout: Duration,
    /// How often `TARGETS_FILE`'s content is compared with what was applied
    /// (`TARGETS_FILE_POLL_INTERVAL`, default 1 s); SIGHUP reloads at once.
    pub targets_file_poll_interval: Duration,
    /// What a target list is read with after start-up (a `TARGETS_FILE` reload, a record of
    /// the targets topic): the same environment and defaults as at start-up.
    pub target_context: TargetContext,
    /// Whether `/metrics` shows the per-target `probe_*` series (`PER_TARGET_METRICS`,
    /// `on` or `off`, default `on`).
    pub per_target_metrics: PerTargetMetrics,
}

/// The environment snapshot and the defaults targets are built with, kept for reading target
/// lists after start-up exactly as at start-up (`*_env` credential references are looked up in
/// `env`). `Debug` shows the defaults and the variables' names only, never their values.
#[derive(Clone)]
pub struct TargetContext {
    /// The environment snapshot the configuration was read from.
    pub env: Env,
    /// The defaults of targets that do not set an option.
    pub defaults: Defaults,
}

impl std::fmt::Debug for TargetContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.env.pairs().map(|(k, _)| k).collect();
        f.debug_struct("TargetContext")
            .field("env", &names)
            .field("defaults", &self.defaults)
            .finish()
    }
}

/// The scalar variables, typed, with their defaults: the one place they are written (README's
/// tables are checked against it by a test). Deserialized by [`Env::deserialize`].
#[derive(Debug, Deserialize, Serialize)]
#[serde(default)]
struct Raw {
    /// `None`: the host name.
    instance_id: Option<String>,
    location: String,
    probe_concurrency: NonZeroUsize,
    /// `None`: one per CPU.
    worker_threads: Option<NonZeroUsize>,
    /// `None`: `SCHED_OTHER`.
    realtime_priority: Option<u8>,
    body_max_bytes: NonZeroU64,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    default_interval: Duration,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    default_timeout: Duration,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    shutdown_grace_period: Duration,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    delivery_stall_timeout: Duration,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    handover_period: Duration,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    targets_file_poll_interval: Duration,
    log_format: String,
    per_target_metrics: PerTargetMetrics,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            instance_id: None,
            location: common::result::DEFAULT_LOCATION.to_string(),
            probe_concurrency: NonZeroUsize::new(512).expect("positive"),
            worker_threads: None,
            realtime_priority: None,
            body_max_bytes: NonZeroU64::new(1 << 20).expect("positive"),
            default_interval: Duration::from_secs(30),
            default_timeout: Duration::from_secs(10),
            shutdown_grace_period: Duration::from_secs(25),
            delivery_stall_timeout: Duration::from_secs(30),
            handover_period: Duration::from_secs(20),
            targets_file_poll_interval: Duration::from_secs(1),
            log_format: "auto".to_string(),
            per_target_metrics: PerTargetMetrics::On,
        }
    }
}

/// Variables the checker reads outside [`Raw`] and [`KafkaSettings`]: the target list
/// ([`load_targets`]), the proxy environment ([`ProxyEnv`]), the results buffer
/// (`crate::publish::results_waiting_limit`) and the log filter (`common::telemetry`).
#[cfg(test)]
const OTHER_VARIABLES: &[&str] = &[
    "TARGETS",
    "TARGETS_FILE",
    "TARGET",
    "PATTERN",
    "INTERVAL",
    "DELAY",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES",
    "RUST_LOG",
];

impl Raw {
    /// The defaults of targets that do not set an option.
    fn target_defaults(&self, env: &Env) -> Result<Defaults, ConfigError> {
        Ok(Defaults {
            interval: self.default_interval,
            timeout: self.default_timeout,
            body_max_bytes: self.body_max_bytes.get(),
            proxy_env: ProxyEnv::from_env(env)?,
        })
    }
}

/// Reads the defaults of targets that do not set an option (`DEFAULT_INTERVAL`,
/// `DEFAULT_TIMEOUT`, `BODY_MAX_BYTES`, the proxy variables); shared with
/// `checker targets validate`, so a file is judged with the service's own defaults.
///
/// # Errors
/// A [`ConfigError`] naming the first invalid variable.
pub fn target_defaults(env: &Env) -> Result<Defaults, ConfigError> {
    env.deserialize::<Raw>()?.target_defaults(env)
}

/// Where the checker's targets come from.
#[derive(Debug)]
pub enum TargetSource {
    /// `TARGETS`, or `TARGET` with `PATTERN` and `INTERVAL`: fixed for the life of the process.
    Fixed(Vec<Target>),
    /// `TARGETS_FILE`: read at start-up, read again when the file changes (a Kubernetes
    /// ConfigMap update) and on SIGHUP.
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Its targets at start-up.
        targets: Vec<Target>,
    },
    /// None of the above: the targets topic (`KAFKA_TARGETS_TOPIC`), shared by the location's
    /// checkers through the consumer group `checker-<LOCATION>` (see `crate::fleet`).
    Topic,
}

impl TargetSource {
    /// Reads the static target forms from `env` ([`load_targets`]), or [`TargetSource::Topic`]
    /// when none is set.
    ///
    /// # Errors
    /// The static list's [`ConfigError`].
    pub fn from_env(env: &Env, defaults: &Defaults) -> Result<Self, ConfigError> {
        if ["TARGETS", "TARGETS_FILE", "TARGET"]
            .iter()
            .all(|v| env.get(v).is_none())
        {
            return Ok(Self::Topic);
        }
        let targets = load_targets(env, defaults)?;
        Ok(match (env.get("TARGETS"), env.get("TARGETS_FILE")) {
            (None, Some(path)) => Self::File {
                path: path.into(),
                targets,
            },
            _ => Self::Fixed(targets),
        })
    }

    /// The targets known at start-up (none for [`TargetSource::Topic`]).
    pub fn initial(&self) -> &[Target] {
        match self {
            Self::Fixed(targets) | Self::File { targets, .. } => targets,
            Self::Topic => &[],
        }
    }
}

/// `LOCATION`: 1 to 63 characters of `[a-zA-Z0-9._-]`, so that `checker-<LOCATION>` is a
/// valid consumer group id and a label value, and `check_id`'s fields cannot run together.
/// Shared with `checker probe --location`.
///
/// # Errors
/// A [`ConfigError`] naming `LOCATION`.
pub fn location(name: String) -> Result<String, ConfigError> {
    let valid = (1..=63).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if valid {
        Ok(name)
    } else {
        Err(ConfigError::new(
            "LOCATION",
            format!("{name:?} is not a location name (1 to 63 of a-z, A-Z, 0-9, '.', '_', '-')"),
            "eu-west-1",
        ))
    }
}

/// Parses `ADMIN_ADDR` (`host:port`); shared with the `healthcheck` subcommand.
///
/// # Errors
/// A [`ConfigError`] naming `ADMIN_ADDR`.
pub fn admin_addr(env: &Env, default: &str) -> Result<SocketAddr, ConfigError> {
    let v = env.get("ADMIN_ADDR").unwrap_or(default);
    v.parse()
        .map_err(|_| ConfigError::new("ADMIN_ADDR", format!("{v:?} is not an IP:port address"), default))
}

impl Config {
    /// Reads and validates the configuration.
    ///
    /// # Errors
    /// The first invalid value, as a [`ConfigError`] naming its variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw: Raw = env.deserialize()?;
        let defaults = raw.target_defaults(env)?;
        let kafka = KafkaSettings::from_env(env)?;
        kafka.check_properties(crate::publish::PRODUCER_DEFAULTS, crate::publish::PROTECTED)?;
        kafka.check_properties(crate::fleet::CONSUMER_DEFAULTS, crate::fleet::PROTECTED)?;
        // Unset, the hand-over shrinks to fit a shorter grace period (4/5 of it, leaving the
        // rest for the last probes and the flush); set, it must fit.
        let handover_period = if env.get("HANDOVER_PERIOD").is_none() {
            raw.handover_period.min(raw.shutdown_grace_period * 4 / 5)
        } else {
            raw.handover_period
        };
        if handover_period > raw.shutdown_grace_period {
            return Err(ConfigError::new(
                "HANDOVER_PERIOD",
                format!(
                    "{:?} is longer than SHUTDOWN_GRACE_PERIOD ({:?}); a stopping checker probes its targets for the hand-over period within the grace period",
                    raw.handover_period, raw.shutdown_grace_period
                ),
                "20s",
            ));
        }
        let location = location(raw.location)?;
        let fleet = crate::fleet::FleetConfig {
            group_id: format!("checker-{location}"),
            handover_period,
        };
        Ok(Self {
            fleet,
            results_waiting_limit: crate::publish::results_waiting_limit(&kafka)?,
            delivery_stall_timeout: raw.delivery_stall_timeout,
            targets_file_poll_interval: raw.targets_file_poll_interval,
            kafka,
            targets: TargetSource::from_env(env, &defaults)?,
            target_context: TargetContext {
                env: env.clone(),
                defaults,
            },
            location,
            admin_addr: admin_addr(env, DEFAULT_ADMIN_ADDR)?,
            instance_id: raw.instance_id.unwrap_or_else(|| common::config::hostname(env)),
            probe_concurrency: raw.probe_concurrency.get(),
            worker_threads: raw.worker_threads.map(NonZeroUsize::get),
            realtime_priority: match raw.realtime_priority {
                Some(p) if !(1..=99).contains(&p) => {
                    return Err(ConfigError::new(
                        "REALTIME_PRIORITY",
                        format!("{p} is not a SCHED_FIFO priority (1 to 99)"),
                        "50",
                    ))
                }
                p => p,
            },
            shutdown_grace: raw.shutdown_grace_period,
            log_format: LogFormat::parse(Some(&raw.log_format))?,
            per_target_metrics: raw.per_target_metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_errors_name_the_variable() {
        let base = [("TARGET", "http://127.0.0.1:1/")];
        let with = |k: &'static str, v: &'static str| {
            let mut pairs: Vec<(&str, &str)> = base.to_vec();
            pairs.push((k, v));
            Config::from_env(&Env::from_pairs(pairs))
        };
        assert!(with("X", "y").is_ok());
        for (var, value) in [
            ("PROBE_CONCURRENCY", "lots"),
            ("PROBE_CONCURRENCY", "0"),
            ("ADMIN_ADDR", "localhost"),
            ("DEFAULT_TIMEOUT", "soon"),
            ("LOG_FORMAT", "xml"),
            ("LOCATION", "eu west"),
            ("LOCATION", "a\nb"),
            ("BODY_MAX_BYTES", "-1"),
            ("HTTP_PROXY", "::"),
            ("PER_TARGET_METRICS", "no"),
            ("PER_TARGET_METRICS", "ON"),
        ] {
            let e = with(var, value).unwrap_err();
            assert_eq!(e.var, var, "{e}");
        }
    }

    /// Fleet mode's settings: the group follows LOCATION, the hand-over must fit in the
    /// grace period, and the consumer properties it rests on cannot be changed.
    #[test]
    fn fleet_settings_name_their_variable() {
        let c = Config::from_env(&Env::from_pairs([("LOCATION", "eu-1")])).unwrap();
        assert!(matches!(c.targets, TargetSource::Topic));
        assert_eq!(c.fleet.group_id, "checker-eu-1");
        assert_eq!(c.fleet.handover_period, Duration::from_secs(20));
        for (var, value) in [
            ("HANDOVER_PERIOD", "26s"),
            ("HANDOVER_PERIOD", "0"),
            ("KAFKA_CFG_PARTITION_ASSIGNMENT_STRATEGY", "range"),
            ("KAFKA_CFG_ENABLE_AUTO_COMMIT", "true"),
            ("KAFKA_CFG_ENABLE_PARTITION_EOF", "false"),
        ] {
            let e = Config::from_env(&Env::from_pairs([(var, value)])).unwrap_err();
            assert_eq!(e.var, var, "{var}={value}: {e}");
        }
        let c = Config::from_env(&Env::from_pairs([
            ("HANDOVER_PERIOD", "40s"),
            ("SHUTDOWN_GRACE_PERIOD", "1m"),
        ]))
        .unwrap();
        assert_eq!(c.fleet.handover_period, Duration::from_secs(40));
        // Unset, it fits a shorter grace period instead of refusing it (a static checker with
        // SHUTDOWN_GRACE_PERIOD=10s once exited 2 over a hand-over it never uses).
        let c = Config::from_env(&Env::from_pairs([
            ("TARGET", "http://127.0.0.1:1/"),
            ("SHUTDOWN_GRACE_PERIOD", "10s"),
        ]))
        .unwrap();
        assert_eq!(c.fleet.handover_period, Duration::from_secs(8));
    }

    /// Every duration the checker reads, too long to add to a time: an error naming where it
    /// was, never a panic later (the scheduler converts intervals to `chrono::Duration` and
    /// adds them to instants; shutdown adds the grace period to an instant).
    #[test]
    fn overflowing_durations_name_their_variable() {
        let huge = ["10000000000000000d", "1e30", "1000000000000d"];
        for value in huge {
            for var in [
                "DEFAULT_INTERVAL",
                "DEFAULT_TIMEOUT",
                "SHUTDOWN_GRACE_PERIOD",
                "DELIVERY_STALL_TIMEOUT",
            ] {
                let env = Env::from_pairs([("TARGET", "http://127.0.0.1:1/"), (var, value)]);
                assert_eq!(Config::from_env(&env).unwrap_err().var, var, "{var}={value}");
            }
            for var in ["INTERVAL", "DELAY"] {
                let env = Env::from_pairs([("TARGET", "http://127.0.0.1:1/"), (var, value)]);
                assert_eq!(Config::from_env(&env).unwrap_err().var, var, "{var}={value}");
            }
        }
        // In the target list: as text and as a number of seconds.
        for (field, value) in [
            ("interval", r#""10000000000000000d""#),
            ("interval", "1e300"),
            ("interval", "1e16"),
            ("timeout", r#""1e30""#),
            ("timeout", "1e300"),
        ] {
            let targets = format!(r#"[{{"url": "http://127.0.0.1:1/", "{field}": {value}}}]"#);
            let env = Env::from_pairs([("TARGETS", targets.as_str())]);
            let e = Config::from_env(&env).unwrap_err();
            assert!(
                e.var.starts_with("TARGETS") && e.var.ends_with(field),
                "{field}={value}: {e}"
            );
        }
    }

    /// README's "Both services" and "Checker" tables list exactly the variables the checker
    /// reads, with the defaults of [`Raw`] and [`KafkaSettings`].
    #[test]
    fn readme_tables_match_the_code() {
        let mut code = common::config::documented_defaults(&Raw::default());
        code.push(("ADMIN_ADDR".to_string(), Some(DEFAULT_ADMIN_ADDR.to_string())));
        let readme = include_str!("../../../README.md");
        common::config::check_service_readme(readme, "### Checker", code, OTHER_VARIABLES)
            .unwrap_or_else(|e| panic!("README.md's configuration tables and the code disagree:\n{e}"));
    }

    #[test]
    fn counts_and_durations_are_typed_naming_the_variable() {
        let base = ("TARGET", "http://127.0.0.1:1/");
        let load = |k: &'static str, v: &'static str| Config::from_env(&Env::from_pairs([base, (k, v)]));
        let c = load("DEFAULT_INTERVAL", "45").unwrap();
        assert_eq!(
            c.targets.initial()[0].interval,
            Duration::from_secs(45),
            "a bare number of seconds"
        );
        assert_eq!(
            load("SHUTDOWN_GRACE_PERIOD", "1m30s").unwrap().shutdown_grace,
            Duration::from_secs(90)
        );
        for (var, value) in [
            ("PROBE_CONCURRENCY", "0"),
            ("WORKER_THREADS", "0"),
            ("WORKER_THREADS", "two"),
            ("REALTIME_PRIORITY", "0"),
            ("REALTIME_PRIORITY", "100"),
            ("REALTIME_PRIORITY", "high"),
            ("BODY_MAX_BYTES", "0"),
            ("DEFAULT_INTERVAL", "0"),
            ("DELIVERY_STALL_TIMEOUT", "30 parsecs"),
            ("DEFAULT_TIMEOUT", "5q"),
            ("TARGETS_FILE_POLL_INTERVAL", "0"),
            ("TARGETS_FILE_POLL_INTERVAL", "often"),
        ] {
            let e = load(var, value).unwrap_err();
            assert_eq!(e.var, var, "{var}={value}: {e}");
        }
        assert_eq!(
            load("TARGETS_FILE_POLL_INTERVAL", "250ms")
                .unwrap()
                .targets_file_poll_interval,
            Duration::from_millis(250)
        );
        assert_eq!(load("X", "y").unwrap().per_target_metrics, PerTargetMetrics::On);
        assert_eq!(
            load("PER_TARGET_METRICS", "off").unwrap().per_target_metrics,
            PerTargetMetrics::Off
        );
        let c = Config::from_env(&Env::from_pairs([base, ("HOSTNAME", "pod-7")])).unwrap();
        assert_eq!(c.instance_id, "pod-7", "the host name comes from the snapshot");
    }

    /// The configuration keeps the environment snapshot (for reading targets later); its
    /// `Debug` names the variables, never their values.
    #[test]
    fn the_kept_environment_never_shows_a_value() {
        let c = Config::from_env(&Env::from_pairs([
            ("TARGET", "http://127.0.0.1:1/"),
            ("PROBE_TOKEN", "hunter2-value"),
        ]))
        .unwrap();
        assert_eq!(c.target_context.env.get("PROBE_TOKEN"), Some("hunter2-value"));
        let debug = format!("{c:?}");
        assert!(debug.contains("PROBE_TOKEN") && !debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn the_results_buffer_follows_librdkafkas_queue_bound() {
        let base = [("TARGET", "http://127.0.0.1:1/")];
        assert_eq!(
            Config::from_env(&Env::from_pairs(base)).unwrap().results_waiting_limit,
            100_000
        );
        let c = Config::from_env(&Env::from_pairs([
            base[0],
            ("KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES", "2500"),
        ]))
        .unwrap();
        assert_eq!(c.results_waiting_limit, 2500);
        for bad in ["0", "many", "-5", "3000000000"] {
            let e = Config::from_env(&Env::from_pairs([
                base[0],
                ("KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES", bad),
            ]))
            .unwrap_err();
            assert_eq!(e.var, "KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES", "{bad}");
        }
    }
}
