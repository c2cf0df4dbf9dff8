//! The sink's configuration, read once from environment variables at start-up.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::store::WriteMethod;
use common::config::{duration, ConfigError, Env, Secret};
use common::kafka::KafkaSettings;
use common::telemetry::LogFormat;
use serde::{Deserialize, Serialize};

/// Default admin address of the sink.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:8081";

/// Default address of the status page and JSON API ([`crate::status`]).
pub const DEFAULT_STATUS_ADDR: &str = "0.0.0.0:8080";

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
    /// Flush a batch at this many rows (`BATCH_MAX_ROWS`, default 20000: from a backlog, 20 %
    /// more rows/s than 5000, measured in `make bench`'s batch variants).
    pub batch_max_rows: usize,
    /// Flush a batch at this many payload bytes (`BATCH_MAX_BYTES`, default 16 MiB, above
    /// 20,000 typical results of ~0.8 kB).
    pub batch_max_bytes: usize,
    /// Flush a non-empty batch after this long (`BATCH_LINGER`, default 20 ms: at 1,000
    /// results/s that is ~20 rows a transaction, and a backlog fills `BATCH_MAX_ROWS` first).
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
    /// The status page and JSON API's address (`STATUS_ADDR`, default
    /// [`DEFAULT_STATUS_ADDR`]); `None` (`off`) serves none. See [`crate::status`].
    pub status_addr: Option<SocketAddr>,
    /// Connections of the status server's own read-only pool (`STATUS_POOL_SIZE`, default 2),
    /// apart from the writers' `DB_POOL_SIZE`.
    pub status_pool_size: usize,
    /// Not ready when a partition this sink answers for (its own, or every partition when it
    /// owns none) has had messages waiting and no committed progress for this long
    /// (`STALL_TIMEOUT`, default 60 s); see [`crate::stall`].
    pub stall_timeout: Duration,
    /// How long shutdown may take (`SHUTDOWN_GRACE_PERIOD`, default 25 s).
    pub shutdown_grace: Duration,
    /// Time between passes of the rollup job (`ROLLUP_INTERVAL`, default 30 s): how far the
    /// status page's rollups and incidents may lag the rows; see [`crate::rollup`].
    pub rollup_interval: Duration,
    /// Log format (`LOG_FORMAT`).
    pub log_format: LogFormat,
}

/// The scalar variables, typed, with their defaults: the one place they are written (README's
/// tables are checked against it by a test). Deserialized by [`Env::deserialize`].
#[derive(Debug, Deserialize, Serialize)]
#[serde(default)]
struct Raw {
    kafka_group_id: String,
    kafka_group_instance_id: Option<String>,
    db_pool_size: NonZeroUsize,
    batch_max_rows: NonZeroUsize,
    batch_max_bytes: NonZeroUsize,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    batch_linger: Duration,
    write_concurrency: NonZeroUsize,
    /// Parsed as a [`WriteMethod`].
    write_method: String,
    /// `None` or zero: keep everything.
    #[serde(with = "duration::option")]
    retention: Option<Duration>,
    /// At least 1: with 0, the first rows of every month would land in the default partition.
    partitions_ahead: NonZeroU32,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    db_statement_timeout: Duration,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    shutdown_grace_period: Duration,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    stall_timeout: Duration,
    #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
    rollup_interval: Duration,
    log_format: String,
    /// `IP:port` or `off`; parsed by [`status_addr`].
    status_addr: String,
    status_pool_size: NonZeroUsize,
}

impl Default for Raw {
    fn default() -> Self {
        let positive = |n| NonZeroUsize::new(n).expect("positive");
        Self {
            kafka_group_id: "healthcheck-sink".to_string(),
            kafka_group_instance_id: None,
            db_pool_size: positive(5),
            batch_max_rows: positive(20_000),
            batch_max_bytes: positive(16 << 20),
            batch_linger: Duration::from_millis(20),
            write_concurrency: positive(3),
            write_method: "copy".to_string(),
            retention: None,
            partitions_ahead: NonZeroU32::new(3).expect("positive"),
            db_statement_timeout: crate::store::DEFAULT_STATEMENT_TIMEOUT,
            shutdown_grace_period: Duration::from_secs(25),
            stall_timeout: Duration::from_secs(60),
            rollup_interval: Duration::from_secs(30),
            log_format: "auto".to_string(),
            status_addr: DEFAULT_STATUS_ADDR.to_string(),
            status_pool_size: positive(2),
        }
    }
}

/// Variables the sink reads outside [`Raw`] and [`KafkaSettings`]: the DSN (a secret, with
/// its older name; see [`database_url`]) and the log filter (`common::telemetry`).
#[cfg(test)]
const OTHER_VARIABLES: &[&str] = &["DATABASE_URL", "POSTGRESQL_DSN", "RUST_LOG"];

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

/// `STATUS_ADDR`: an `IP:port`, or `off` for no status server.
fn status_addr(v: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| {
        ConfigError::new(
            "STATUS_ADDR",
            format!("{v:?} is neither an IP:port address nor `off`"),
            DEFAULT_STATUS_ADDR,
        )
    })
}

/// The DSN from `DATABASE_URL` (or `POSTGRESQL_DSN`), parsed now, TLS files included, so a
/// typo fails at start-up. The error never echoes the DSN (it holds the password).
pub fn database_url(env: &Env) -> Result<Secret<String>, ConfigError> {
    let example_dsn = "postgres://sink:secret@postgres:5432/healthcheck";
    let (dsn_var, dsn) = env
        .get_any(&["DATABASE_URL", "POSTGRESQL_DSN"])
        .ok_or_else(|| ConfigError::new("DATABASE_URL", "is required but not set", example_dsn))?;
    if let Err(e) = crate::pg_tls::connect_config(dsn) {
        return Err(ConfigError::new(dsn_var, e.to_string(), example_dsn));
    }
    Ok(Secret::new(dsn.to_string()))
}

/// `RETENTION`: zero means keep everything; otherwise at least a month, as partitions are.
fn retention(raw: Option<Duration>) -> Result<Option<Duration>, ConfigError> {
    let retention = raw.filter(|d| !d.is_zero());
    if retention.is_some_and(|r| r < Duration::from_secs(31 * 86_400)) {
        return Err(ConfigError::new(
            "RETENTION",
            "must be at least 31 days (partitions are monthly) or 0 to keep everything",
            "400d",
        ));
    }
    Ok(retention)
}

impl Config {
    /// Reads and validates the configuration.
    ///
    /// # Errors
    /// The first invalid value, as a [`ConfigError`] naming its variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw: Raw = env.deserialize()?;
        let database_url = database_url(env)?;
        let pool_size = raw.db_pool_size.get();
        let write_concurrency = raw.write_concurrency.get();
        if write_concurrency >= pool_size {
            return Err(ConfigError::new(
                "WRITE_CONCURRENCY",
                format!("must be below DB_POOL_SIZE ({pool_size}): one connection stays free for readiness"),
                (pool_size - 1).max(1).to_string(),
            ));
        }
        let write_method = raw
            .write_method
            .parse()
            .map_err(|e: String| ConfigError::new("WRITE_METHOD", e, "copy"))?;
        let kafka = KafkaSettings::from_env(env)?;
        kafka.check_properties(crate::consume::CONSUMER_DEFAULTS, crate::consume::PROTECTED)?;
        Ok(Self {
            kafka,
            group_id: raw.kafka_group_id,
            group_instance_id: raw.kafka_group_instance_id,
            database_url,
            pool_size,
            batch_max_rows: raw.batch_max_rows.get(),
            batch_max_bytes: raw.batch_max_bytes.get(),
            batch_linger: raw.batch_linger,
            write_concurrency,
            write_method,
            retention: retention(raw.retention)?,
            partitions_ahead: raw.partitions_ahead.get(),
            statement_timeout: raw.db_statement_timeout,
            admin_addr: admin_addr(env)?,
            status_addr: status_addr(&raw.status_addr)?,
            status_pool_size: raw.status_pool_size.get(),
            shutdown_grace: raw.shutdown_grace_period,
            stall_timeout: raw.stall_timeout,
            rollup_interval: raw.rollup_interval,
            log_format: LogFormat::parse(Some(&raw.log_format))?,
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
            (c.status_addr, c.status_pool_size),
            (Some(DEFAULT_STATUS_ADDR.parse().unwrap()), 2)
        );
        assert_eq!(load(&[("STATUS_ADDR", "off")]).unwrap().status_addr, None);
        assert_eq!(
            load(&[("STATUS_ADDR", "127.0.0.1:0")]).unwrap().status_addr,
            Some("127.0.0.1:0".parse().unwrap())
        );
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
            ("STATUS_ADDR", "8080"),
            ("STATUS_ADDR", "no"),
            ("STATUS_POOL_SIZE", "0"),
            ("KAFKA_CFG_ENABLE_AUTO_OFFSET_STORE", "true"),
            ("KAFKA_CFG_ENABLE_AUTO_COMMIT", "false"),
            ("KAFKA_CFG_ISOLATION_LEVEL", "read_uncommitted"),
            ("KAFKA_CFG_AUTO_OFFSET_RESET", "latest"),
        ] {
            assert_eq!(load(&[(var, value)]).unwrap_err().var, var);
        }
    }

    /// README's "Both services" and "Sink" tables list exactly the variables the sink reads,
    /// with the defaults of [`Raw`] and [`KafkaSettings`].
    #[test]
    fn readme_tables_match_the_code() {
        let mut code = common::config::documented_defaults(&Raw::default());
        code.push(("ADMIN_ADDR".to_string(), Some(DEFAULT_ADMIN_ADDR.to_string())));
        let readme = include_str!("../../../README.md");
        common::config::check_service_readme(readme, "### Sink", code, OTHER_VARIABLES)
            .unwrap_or_else(|e| panic!("README.md's configuration tables and the code disagree:\n{e}"));
        assert_eq!(
            Raw::default().write_method.parse::<WriteMethod>(),
            Ok(WriteMethod::default()),
            "the default WRITE_METHOD is the store's default"
        );
    }

    #[test]
    fn counts_and_durations_are_typed_naming_the_variable() {
        let c = load(&[
            ("BATCH_LINGER", "0.25"),
            ("STALL_TIMEOUT", "2m"),
            ("BATCH_MAX_ROWS", "100"),
        ])
        .unwrap();
        assert_eq!(
            (c.batch_linger, c.stall_timeout, c.batch_max_rows),
            (Duration::from_millis(250), Duration::from_secs(120), 100)
        );
        for (var, value) in [
            ("BATCH_MAX_BYTES", "0"),
            ("PARTITIONS_AHEAD", "-1"),
            ("BATCH_LINGER", "5 jiffies"),
            ("RETENTION", "1 eon"),
        ] {
            assert_eq!(load(&[(var, value)]).unwrap_err().var, var, "{var}={value}");
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
