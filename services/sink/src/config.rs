//! The sink's configuration, read once from environment variables at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use crate::store::WriteMethod;
use common::config::{parse_duration, parse_positive_duration, ConfigError, Env, Secret};
use common::kafka::KafkaSettings;
use common::telemetry::LogFormat;
use serde::Deserialize;

/// Default admin address of the sink.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:8081";

/// Everything the sink needs, validated.
#[derive(Debug)]
pub struct Config {
    /// Kafka connection and topic.
    pub kafka: KafkaSettings,
    /// Consumer group (`KAFKA_GROUP_ID`, default `healthcheck-sink`), librdkafka `group.id`.
    pub group_id: String,
    /// Static membership id (`KAFKA_GROUP_INSTANCE_ID`), librdkafka `group.instance.id` (KIP-345).
    pub group_instance_id: Option<String>,
    /// PostgreSQL DSN (`DATABASE_URL` or `POSTGRESQL_DSN`): URL or libpq `key=value` form.
    pub database_url: Secret<String>,
    /// Pool size (`DB_POOL_SIZE`, default 5).
    pub pool_size: usize,
    /// Flush a batch at this many rows (`BATCH_MAX_ROWS`, default 5000).
    pub batch_max_rows: usize,
    /// Flush a batch at this many payload bytes (`BATCH_MAX_BYTES`, default 8 MiB).
    pub batch_max_bytes: usize,
    /// Flush a non-empty batch after this long (`BATCH_LINGER`, default 100 ms).
    pub batch_linger: Duration,
    /// Batches written at the same time, each in its own transaction on its own pooled
    /// connection (`WRITE_CONCURRENCY`, default 3; below `DB_POOL_SIZE`, which also serves
    /// readiness and partition maintenance). Offsets are still stored in consumption order.
    pub write_concurrency: usize,
    /// How rows reach the table (`WRITE_METHOD`: `copy`, the default, or `unnest` behind a
    /// transaction-pooling PgBouncer); see [`WriteMethod`].
    pub write_method: WriteMethod,
    /// Drop monthly partitions that ended longer ago than this (`RETENTION`, e.g. `400d`;
    /// `0` or unset keeps everything).
    pub retention: Option<Duration>,
    /// Monthly partitions created ahead (`PARTITIONS_AHEAD`, default 3; at least 1, so that
    /// next month's partition exists before the month starts).
    pub partitions_ahead: u32,
    /// PostgreSQL `statement_timeout` of the sink's transactions (`DB_STATEMENT_TIMEOUT`,
    /// default 30 s); the client gives up on an answer 5 s later. See
    /// [`crate::store::Store::with_statement_timeout`].
    pub statement_timeout: Duration,
    /// Admin server address (`ADMIN_ADDR`).
    pub admin_addr: SocketAddr,
    /// Not ready when a partition this sink answers for (its own, or every partition when it
    /// owns none) has had messages waiting and no committed progress for this long
    /// (`STALL_TIMEOUT`, default 60 s); see [`crate::stall`].
    pub stall_timeout: Duration,
    /// How long shutdown may take (`SHUTDOWN_GRACE_PERIOD`, default 25 s).
    pub shutdown_grace: Duration,
    /// Log format (`LOG_FORMAT`).
    pub log_format: LogFormat,
}

#[derive(Debug, Deserialize)]
struct Raw {
    kafka_group_id: Option<String>,
    kafka_group_instance_id: Option<String>,
    db_pool_size: Option<usize>,
    batch_max_rows: Option<usize>,
    batch_max_bytes: Option<usize>,
    batch_linger: Option<String>,
    write_concurrency: Option<usize>,
    write_method: Option<String>,
    retention: Option<String>,
    partitions_ahead: Option<u32>,
    db_statement_timeout: Option<String>,
    shutdown_grace_period: Option<String>,
    stall_timeout: Option<String>,
    log_format: Option<String>,
}

/// Parses `ADMIN_ADDR`; shared with the `healthcheck` subcommand.
///
/// # Errors
/// A [`ConfigError`] naming `ADMIN_ADDR`.
pub fn admin_addr(env: &Env) -> Result<SocketAddr, ConfigError> {
    let v = env.get("ADMIN_ADDR").unwrap_or(DEFAULT_ADMIN_ADDR);
    v.parse().map_err(|_| {
        ConfigError::new(
            "ADMIN_ADDR",
            format!("{v:?} is not an IP:port address"),
            DEFAULT_ADMIN_ADDR,
        )
    })
}

impl Config {
    /// Reads and validates the configuration.
    ///
    /// # Errors
    /// The first invalid value, as a [`ConfigError`] naming its variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw: Raw = env.deserialize()?;
        let example_dsn = "postgres://sink:secret@postgres:5432/healthcheck";
        let (dsn_var, dsn) = env
            .get_any(&["DATABASE_URL", "POSTGRESQL_DSN"])
            .ok_or_else(|| ConfigError::new("DATABASE_URL", "is required but not set", example_dsn))?;
        // Parse now, TLS files included, so a typo fails at start-up; the error never echoes
        // the DSN (it holds the password).
        if let Err(e) = crate::pg_tls::connect_config(dsn) {
            return Err(ConfigError::new(dsn_var, e.to_string(), example_dsn));
        }
        let positive = |var: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(ConfigError::new(var, "must be positive", default.to_string())),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let retention = match raw.retention.as_deref() {
            None => None,
            Some(v) => Some(parse_duration("RETENTION", v)?).filter(|d| !d.is_zero()),
        };
        if retention.is_some_and(|r| r < Duration::from_secs(31 * 86_400)) {
            return Err(ConfigError::new(
                "RETENTION",
                "must be at least 31 days (partitions are monthly) or 0 to keep everything",
                "400d",
            ));
        }
        let pool_size = positive("DB_POOL_SIZE", raw.db_pool_size, 5)?;
        let write_concurrency = positive("WRITE_CONCURRENCY", raw.write_concurrency, 3)?;
        let write_method = match raw.write_method.as_deref() {
            None => WriteMethod::default(),
            Some(v) => v
                .parse()
                .map_err(|e: String| ConfigError::new("WRITE_METHOD", e, "copy"))?,
        };
        if write_concurrency >= pool_size {
            return Err(ConfigError::new(
                "WRITE_CONCURRENCY",
                format!("must be below DB_POOL_SIZE ({pool_size}): one connection stays free for readiness"),
                (pool_size - 1).max(1).to_string(),
            ));
        }
        let kafka = KafkaSettings::from_env(env)?;
        kafka.check_properties(crate::consume::CONSUMER_DEFAULTS, crate::consume::PROTECTED)?;
        Ok(Self {
            kafka,
            group_id: raw.kafka_group_id.unwrap_or_else(|| "healthcheck-sink".to_string()),
            group_instance_id: raw.kafka_group_instance_id,
            database_url: Secret::new(dsn.to_string()),
            pool_size,
            batch_max_rows: positive("BATCH_MAX_ROWS", raw.batch_max_rows, 5000)?,
            batch_max_bytes: positive("BATCH_MAX_BYTES", raw.batch_max_bytes, 8 << 20)?,
            batch_linger: match raw.batch_linger.as_deref() {
                Some(v) => parse_positive_duration("BATCH_LINGER", v)?,
                None => Duration::from_millis(100),
            },
            write_concurrency,
            write_method,
            retention,
            partitions_ahead: match raw.partitions_ahead {
                Some(0) => {
                    return Err(ConfigError::new(
                        "PARTITIONS_AHEAD",
                        "must be at least 1: with 0, the first rows of every month land in the default partition",
                        "3",
                    ))
                }
                Some(n) => n,
                None => 3,
            },
            statement_timeout: match raw.db_statement_timeout.as_deref() {
                Some(v) => parse_positive_duration("DB_STATEMENT_TIMEOUT", v)?,
                None => crate::store::DEFAULT_STATEMENT_TIMEOUT,
            },
            admin_addr: admin_addr(env)?,
            shutdown_grace: match raw.shutdown_grace_period.as_deref() {
                Some(v) => parse_positive_duration("SHUTDOWN_GRACE_PERIOD", v)?,
                None => Duration::from_secs(25),
            },
            stall_timeout: match raw.stall_timeout.as_deref() {
                Some(v) => parse_positive_duration("STALL_TIMEOUT", v)?,
                None => Duration::from_secs(60),
            },
            log_format: LogFormat::parse(raw.log_format.as_deref())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut pairs = vec![("DATABASE_URL", "postgres://u:hunter2@localhost/db")];
        pairs.extend_from_slice(extra);
        Config::from_env(&Env::from_pairs(pairs))
    }

    #[test]
    fn defaults_and_aliases() {
        let c = load(&[]).unwrap();
        assert_eq!(c.group_id, "healthcheck-sink");
        assert_eq!(c.retention, None);
        assert_eq!(
            (c.pool_size, c.write_concurrency, c.write_method),
            (5, 3, WriteMethod::Copy)
        );
        assert_eq!(
            load(&[("WRITE_METHOD", "unnest")]).unwrap().write_method,
            WriteMethod::Unnest
        );
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "the DSN's password must not be Debug-printed"
        );
        let c = Config::from_env(&Env::from_pairs([("POSTGRESQL_DSN", "host=localhost user=u dbname=d")])).unwrap();
        assert_eq!(c.database_url.expose(), "host=localhost user=u dbname=d");
        assert_eq!(load(&[("RETENTION", "0")]).unwrap().retention, None);
        assert_eq!(c.statement_timeout, Duration::from_secs(30));
        assert_eq!(
            load(&[("DB_STATEMENT_TIMEOUT", "5s")]).unwrap().statement_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(
            load(&[("RETENTION", "400d")]).unwrap().retention,
            Some(Duration::from_secs(400 * 86_400))
        );
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(Config::from_env(&Env::default()).unwrap_err().var, "DATABASE_URL");
        let e = Config::from_env(&Env::from_pairs([(
            "DATABASE_URL",
            "postgres://u:hunter2@h:notaport/db",
        )]))
        .unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        for (var, value) in [
            ("BATCH_MAX_ROWS", "0"),
            ("BATCH_MAX_ROWS", "many"),
            ("BATCH_LINGER", "x"),
            ("RETENTION", "1d"),
            ("DB_POOL_SIZE", "0"),
            ("WRITE_CONCURRENCY", "0"),
            ("WRITE_CONCURRENCY", "5"),
            ("WRITE_METHOD", "insert"),
            ("PARTITIONS_AHEAD", "0"),
            ("DB_STATEMENT_TIMEOUT", "0"),
            ("DB_STATEMENT_TIMEOUT", "soon"),
            ("STALL_TIMEOUT", "0s"),
            ("KAFKA_CFG_ENABLE_AUTO_OFFSET_STORE", "true"),
            ("KAFKA_CFG_ENABLE_AUTO_COMMIT", "false"),
            ("KAFKA_CFG_ISOLATION_LEVEL", "read_uncommitted"),
            ("KAFKA_CFG_AUTO_OFFSET_RESET", "latest"),
        ] {
            assert_eq!(load(&[(var, value)]).unwrap_err().var, var);
        }
    }

    /// Durations too long to add to a time (retention is subtracted from now, the grace
    /// period added to an instant) are errors naming the variable, never a later panic.
    #[test]
    fn overflowing_durations_name_the_variable() {
        for var in ["RETENTION", "BATCH_LINGER", "SHUTDOWN_GRACE_PERIOD"] {
            for value in ["10000000000000000d", "1000000000000d", "1e30"] {
                assert_eq!(load(&[(var, value)]).unwrap_err().var, var, "{var}={value}");
            }
        }
    }
}
