//! The checker's configuration, read once from environment variables at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use common::config::{parse_positive_duration, ConfigError, Env};
use common::kafka::KafkaSettings;
use common::telemetry::LogFormat;
use serde::Deserialize;

use crate::target::{load_targets, Defaults, ProxyEnv, Target};

/// Default admin address of the checker.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:8080";

/// Everything the checker needs, validated.
#[derive(Debug)]
pub struct Config {
    /// Kafka connection and topic.
    pub kafka: KafkaSettings,
    /// What to probe.
    pub targets: Vec<Target>,
    /// Admin server address (`ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// Written into every result (`INSTANCE_ID`, default the host name).
    pub instance_id: String,
    /// Most probes in flight at once (`PROBE_CONCURRENCY`, default 512).
    pub probe_concurrency: usize,
    /// How long shutdown may take (`SHUTDOWN_GRACE_PERIOD`, default 25 s).
    pub shutdown_grace: Duration,
    /// Log format (`LOG_FORMAT`).
    pub log_format: LogFormat,
    /// The most results that wait for delivery (`KAFKA_CFG_QUEUE_BUFFERING_MAX_MESSAGES`,
    /// default 100000); see `publish`.
    pub results_waiting_limit: usize,
    /// `/readyz` fails when results have waited this long without any delivery
    /// (`DELIVERY_STALL_TIMEOUT`, default 30 s).
    pub delivery_stall_timeout: Duration,
}

/// The scalar variables, deserialized by envy (which names the variable in its errors).
#[derive(Debug, Deserialize)]
struct Raw {
    instance_id: Option<String>,
    probe_concurrency: Option<usize>,
    shutdown_grace_period: Option<String>,
    delivery_stall_timeout: Option<String>,
    log_format: Option<String>,
}

/// The variables behind [`Defaults`], deserialized by envy.
#[derive(Debug, Deserialize)]
struct RawDefaults {
    body_max_bytes: Option<u64>,
    default_interval: Option<String>,
    default_timeout: Option<String>,
}

fn duration_or(var: &str, v: Option<&str>, default_secs: u64) -> Result<Duration, ConfigError> {
    v.map_or(Ok(Duration::from_secs(default_secs)), |v| {
        parse_positive_duration(var, v)
    })
}

/// Reads the defaults of targets that do not set an option (`DEFAULT_INTERVAL`,
/// `DEFAULT_TIMEOUT`, `BODY_MAX_BYTES`, the proxy variables); shared with
/// `checker targets validate`, so a file is judged with the service's own defaults.
///
/// # Errors
/// A [`ConfigError`] naming the first invalid variable.
pub fn target_defaults(env: &Env) -> Result<Defaults, ConfigError> {
    let raw: RawDefaults = env.deserialize()?;
    let defaults = Defaults {
        interval: duration_or("DEFAULT_INTERVAL", raw.default_interval.as_deref(), 30)?,
        timeout: duration_or("DEFAULT_TIMEOUT", raw.default_timeout.as_deref(), 10)?,
        body_max_bytes: raw.body_max_bytes.unwrap_or(1 << 20),
        proxy_env: ProxyEnv::from_env(env)?,
    };
    if defaults.body_max_bytes == 0 {
        return Err(ConfigError::new("BODY_MAX_BYTES", "must be positive", "1048576"));
    }
    Ok(defaults)
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
        let duration = |var: &str, v: &Option<String>, default: u64| duration_or(var, v.as_deref(), default);
        let defaults = target_defaults(env)?;
        let probe_concurrency = raw.probe_concurrency.unwrap_or(512);
        if probe_concurrency == 0 {
            return Err(ConfigError::new("PROBE_CONCURRENCY", "must be positive", "512"));
        }
        let kafka = KafkaSettings::from_env(env)?;
        kafka.check_properties(crate::publish::PRODUCER_DEFAULTS, crate::publish::PROTECTED)?;
        Ok(Self {
            results_waiting_limit: crate::publish::results_waiting_limit(&kafka)?,
            delivery_stall_timeout: duration("DELIVERY_STALL_TIMEOUT", &raw.delivery_stall_timeout, 30)?,
            kafka,
            targets: load_targets(env, &defaults)?,
            admin_addr: admin_addr(env, DEFAULT_ADMIN_ADDR)?,
            instance_id: raw.instance_id.unwrap_or_else(common::config::hostname),
            probe_concurrency,
            shutdown_grace: duration("SHUTDOWN_GRACE_PERIOD", &raw.shutdown_grace_period, 25)?,
            log_format: LogFormat::parse(raw.log_format.as_deref())?,
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
            ("BODY_MAX_BYTES", "-1"),
            ("HTTP_PROXY", "::"),
        ] {
            let e = with(var, value).unwrap_err();
            assert_eq!(e.var, var, "{e}");
        }
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
