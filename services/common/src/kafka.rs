//! Kafka client settings shared by the producer (checker) and the consumer (sink).
//!
//! Settings come from `KAFKA_BOOTSTRAP_SERVERS` (or the older `KAFKA_BROKER`), `KAFKA_TOPIC`
//! and any librdkafka property spelled `KAFKA_CFG_<PROPERTY>`, where the property name is
//! upper-cased with `.` written as `_`: `KAFKA_CFG_SECURITY_PROTOCOL=ssl` sets
//! `security.protocol=ssl` (property list: librdkafka's CONFIGURATION.md). That is how TLS client
//! certificates and SASL are configured without code changes. A service names the properties
//! its guarantees rest on ([`KafkaSettings::check_properties`]); a `KAFKA_CFG_*` variable that
//! would change one of them, or that librdkafka rejects, is a configuration error naming it.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde::Deserialize as _;

use crate::config::{ConfigError, Env};

/// Default topic for probe results.
pub const DEFAULT_TOPIC: &str = "healthcheck-results";

/// The default targets topic (`KAFKA_TARGETS_TOPIC`).
pub const DEFAULT_TARGETS_TOPIC: &str = "healthcheck-targets";

/// A librdkafka property a service's guarantees rest on: `KAFKA_CFG_*` may restate its
/// default but not change it ([`KafkaSettings::check_properties`]).
#[derive(Debug, Clone, Copy)]
pub struct Protected {
    /// The property's name in librdkafka's CONFIGURATION.md.
    pub name: &'static str,
    /// Other names librdkafka accepts for it (CONFIGURATION.md: "Alias for ...").
    pub aliases: &'static [&'static str],
    /// What depends on it, for the error message.
    pub why: &'static str,
}

/// Kafka connection settings.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// The topic probe results are published to and consumed from (`KAFKA_TOPIC`).
    pub topic: String,
    /// The compacted topic of target specs (`KAFKA_TARGETS_TOPIC`): key = target name, value =
    /// its spec as JSON, tombstone = removal. Read by fleet checkers and by the sink.
    pub targets_topic: String,
    /// Extra librdkafka properties from `KAFKA_CFG_*`, applied last (they override defaults,
    /// except the protected ones: see [`KafkaSettings::check_properties`]).
    pub properties: BTreeMap<String, String>,
    /// Create the topic at start-up when missing (`KAFKA_CREATE_TOPIC`, default true).
    pub create_topic: bool,
    /// Partitions of a topic created at start-up (`KAFKA_TOPIC_PARTITIONS`, default 6).
    pub topic_partitions: i32,
    /// Replication factor of a topic created at start-up (`KAFKA_TOPIC_REPLICATION_FACTOR`,
    /// default 1; use 3 on a production cluster).
    pub topic_replication_factor: i32,
    /// Partitions of the targets topic when it is created (`KAFKA_TARGETS_TOPIC_PARTITIONS`,
    /// default 6): the most checker replicas of one location that can share the work, as each
    /// partition belongs to one member of the location's group.
    pub targets_topic_partitions: i32,
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_property(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("targets_topic", &self.targets_topic)
            .field("properties", &props)
            .field("create_topic", &self.create_topic)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication_factor", &self.topic_replication_factor)
            .field("targets_topic_partitions", &self.targets_topic_partitions)
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (passwords, keys, JAAS/OAuth config).
fn is_secret_property(name: &str) -> bool {
    [
        "password",
        "secret",
        "key.pem",
        "jaas",
        "token",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// `bootstrap.servers` when neither `KAFKA_BOOTSTRAP_SERVERS` nor `KAFKA_BROKER` is set.
pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "localhost:9092";

/// The variables read by [`KafkaSettings::from_env`] outside its typed struct: the older name of
/// `KAFKA_BOOTSTRAP_SERVERS` and the librdkafka properties (as README's table writes them).
pub const OTHER_VARIABLES: &[&str] = &["KAFKA_BROKER", "KAFKA_CFG_<PROPERTY>"];

/// The scalar Kafka variables, typed, with their defaults (the one place they are written).
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(default)]
struct Raw {
    kafka_bootstrap_servers: String,
    kafka_topic: String,
    kafka_targets_topic: String,
    #[serde(deserialize_with = "flag")]
    kafka_create_topic: bool,
    kafka_topic_partitions: NonZeroU32,
    kafka_topic_replication_factor: NonZeroU32,
    kafka_targets_topic_partitions: NonZeroU32,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            kafka_bootstrap_servers: DEFAULT_BOOTSTRAP_SERVERS.to_string(),
            kafka_topic: DEFAULT_TOPIC.to_string(),
            kafka_targets_topic: DEFAULT_TARGETS_TOPIC.to_string(),
            kafka_create_topic: true,
            kafka_topic_partitions: NonZeroU32::new(6).expect("positive"),
            kafka_topic_replication_factor: NonZeroU32::new(1).expect("positive"),
            kafka_targets_topic_partitions: NonZeroU32::new(6).expect("positive"),
        }
    }
}

/// A boolean written `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off` (any case).
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = String::deserialize(d)?;
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(serde::de::Error::custom(format!("{v:?} is not a boolean"))),
    }
}

/// `name` when Kafka accepts it as a topic name: `[a-zA-Z0-9._-]`, 1 to 249 characters
/// (Kafka's `Topic.java`).
fn topic_name(var: &str, name: String, example: &str) -> Result<String, ConfigError> {
    let valid = (1..=249).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if valid {
        Ok(name)
    } else {
        Err(ConfigError::new(
            var,
            format!("{name:?} is not a valid topic name"),
            example,
        ))
    }
}

/// A count for librdkafka's admin API, which takes an `i32`.
fn to_i32(var: &str, n: NonZeroU32) -> Result<i32, ConfigError> {
    i32::try_from(n.get()).map_err(|_| ConfigError::new(var, format!("{n} is more than {}", i32::MAX), "6"))
}

impl KafkaSettings {
    /// The variables [`KafkaSettings::from_env`] reads into its typed struct, with their
    /// defaults as README's table shows them (see [`crate::config::documented_defaults`]);
    /// the others are [`OTHER_VARIABLES`].
    pub fn documented_defaults() -> Vec<(String, Option<String>)> {
        crate::config::documented_defaults(&Raw::default())
    }

    /// Reads the settings from `env`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable when a value is invalid (an empty bootstrap list, a
    /// topic name with characters Kafka rejects, a non-numeric partition count).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw: Raw = env.deserialize()?;
        // The older name counts only when the current one is not set.
        let (servers_var, bootstrap_servers) = match env.get("KAFKA_BOOTSTRAP_SERVERS") {
            None => env
                .get("KAFKA_BROKER")
                .map_or(("KAFKA_BOOTSTRAP_SERVERS", raw.kafka_bootstrap_servers.as_str()), |v| {
                    ("KAFKA_BROKER", v)
                }),
            Some(_) => ("KAFKA_BOOTSTRAP_SERVERS", raw.kafka_bootstrap_servers.as_str()),
        };
        check_servers(servers_var, bootstrap_servers)?;
        let topic = topic_name("KAFKA_TOPIC", raw.kafka_topic, DEFAULT_TOPIC)?;
        let targets_topic = topic_name("KAFKA_TARGETS_TOPIC", raw.kafka_targets_topic, DEFAULT_TARGETS_TOPIC)?;
        let properties: BTreeMap<String, String> = env
            .with_prefix("KAFKA_CFG_")
            .map(|(k, v)| (k.to_ascii_lowercase().replace('_', "."), v.to_string()))
            .collect();
        check_files(&properties)?;
        Ok(Self {
            bootstrap_servers: bootstrap_servers.trim().to_string(),
            topic,
            targets_topic,
            properties,
            create_topic: raw.kafka_create_topic,
            topic_partitions: to_i32("KAFKA_TOPIC_PARTITIONS", raw.kafka_topic_partitions)?,
            topic_replication_factor: to_i32("KAFKA_TOPIC_REPLICATION_FACTOR", raw.kafka_topic_replication_factor)?,
            targets_topic_partitions: to_i32("KAFKA_TARGETS_TOPIC_PARTITIONS", raw.kafka_targets_topic_partitions)?,
        })
    }

    /// Checks the `KAFKA_CFG_*` properties against a service's librdkafka `defaults`: each
    /// must be a property librdkafka knows with a value it accepts, and none may change a
    /// [`Protected`] property (each must be in `defaults`) from its default. Values are
    /// compared as librdkafka reads them back (`rd_kafka_conf_get`), so equivalent spellings
    /// (`1` and `true`, `all` and `-1`, `smallest` and `earliest`) are alike: restating a
    /// protected default is allowed.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the `KAFKA_CFG_*` variable.
    ///
    /// # Panics
    /// When `defaults` are invalid or lack a protected name (a programming error).
    pub fn check_properties(&self, defaults: &[(&str, &str)], protected: &[Protected]) -> Result<(), ConfigError> {
        // librdkafka's reading of `value` for `key`, as property `name` (its canonical name).
        let read = |key: &str, value: &str, name: &str| -> Result<Option<String>, rdkafka::error::KafkaError> {
            Ok(ClientConfig::new()
                .set(key, value)
                .create_native_config()?
                .get(name)
                .ok())
        };
        for (k, v) in &self.properties {
            let var = format!("KAFKA_CFG_{}", k.to_ascii_uppercase().replace('.', "_"));
            let user = |name: &str| {
                read(k, v, name).map_err(|e| {
                    let problem = match e {
                        rdkafka::error::KafkaError::ClientConfig(_, desc, _, _) if !is_secret_property(k) => desc,
                        _ => format!("librdkafka rejects {k} or its value"),
                    };
                    ConfigError::new(&var, problem, "<a value from librdkafka's CONFIGURATION.md>")
                })
            };
            user(k)?;
            for p in protected
                .iter()
                .filter(|p| p.name == k || p.aliases.contains(&k.as_str()))
            {
                let default = defaults
                    .iter()
                    .find(|(d, _)| *d == p.name)
                    .map(|(_, v)| *v)
                    .unwrap_or_else(|| panic!("protected property {} is not in the defaults", p.name));
                let required = read(p.name, default, p.name).expect("valid service defaults");
                if user(p.name)? != required {
                    return Err(ConfigError::new(
                        &var,
                        format!(
                            "may not change {} (fixed at {default}: {}); remove the variable",
                            p.name, p.why
                        ),
                        default,
                    ));
                }
            }
        }
        Ok(())
    }

    /// A librdkafka client configuration: `bootstrap.servers`, then `defaults` (the service's
    /// own choices), then the user's `KAFKA_CFG_*` properties, which win.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        cfg
    }

    /// Creates the results topic (`KAFKA_TOPIC`, `KAFKA_TOPIC_PARTITIONS` partitions) when
    /// `create_topic` is set and it does not exist yet. Takes at most about 15 s when the
    /// broker does not answer.
    ///
    /// # Errors
    /// The broker's error, except "topic already exists", which is success.
    pub async fn ensure_topic(&self) -> Result<(), rdkafka::error::KafkaError> {
        self.ensure_named_topic(&self.topic, self.topic_partitions, &[]).await
    }

    /// Creates the targets topic (`KAFKA_TARGETS_TOPIC`, `KAFKA_TARGETS_TOPIC_PARTITIONS`
    /// partitions, `cleanup.policy=compact`: the broker keeps the last value of each key, so
    /// the topic is the current target set however old) when `create_topic` is set and it does
    /// not exist yet. An existing topic is left as it is.
    ///
    /// # Errors
    /// As [`KafkaSettings::ensure_topic`].
    pub async fn ensure_targets_topic(&self) -> Result<(), rdkafka::error::KafkaError> {
        self.ensure_named_topic(
            &self.targets_topic,
            self.targets_topic_partitions,
            &[("cleanup.policy", "compact")],
        )
        .await
    }

    /// Creates `topic` with `partitions` partitions, the replication factor of
    /// `KAFKA_TOPIC_REPLICATION_FACTOR` and the topic-level `configs` (Kafka's topic
    /// configuration names, e.g. `cleanup.policy`) when `create_topic` is set and it does not
    /// exist yet. Takes at most about 15 s when the broker does not answer.
    ///
    /// # Errors
    /// The broker's error, except "topic already exists", which is success.
    pub async fn ensure_named_topic(
        &self,
        topic: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        if !self.create_topic {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.client_config(&[]).create()?;
        let mut new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.topic_replication_factor),
        );
        for (k, v) in configs {
            new = new.set(k, v);
        }
        // Both timeouts bound the call: the broker's (`timeout_ms` of CreateTopics) and the
        // client's (otherwise `socket.timeout.ms`, 60 s, when the broker does not answer).
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(15)));
        let results = admin.create_topics([&new], &opts).await?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic, partitions, ?configs, "Created topic."),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(rdkafka::error::KafkaError::AdminOp(code)),
            }
        }
        Ok(())
    }
}

/// Runs a blocking metadata request (see [`topic_partitions`]) on the blocking thread pool: the
/// readiness test of both services.
///
/// # Errors
/// A short description when the broker cannot be reached or does not know the topic.
pub async fn check_metadata<F>(fetch: F) -> Result<(), String>
where
    F: FnOnce() -> Result<usize, String> + Send + 'static,
{
    tokio::task::spawn_blocking(fetch)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .and_then(|n| {
            if n == 0 {
                Err("topic has no partitions".to_string())
            } else {
                Ok(())
            }
        })
}

/// Number of partitions of `topic`, from a metadata request that blocks up to `timeout`.
///
/// # Errors
/// The broker's error as text (unreachable, unknown topic).
pub fn topic_partitions<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<usize, String> {
    let md = client.fetch_metadata(Some(topic), timeout).map_err(|e| e.to_string())?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or("topic not in metadata")?;
    if let Some(err) = t.error() {
        return Err(format!(
            "topic {topic}: {:?}",
            rdkafka::error::RDKafkaErrorCode::from(err)
        ));
    }
    Ok(t.partitions().len())
}

/// librdkafka opens the files of its `*.location` properties (`ssl.ca.location`,
/// `ssl.certificate.location`, `ssl.key.location`, `ssl.crl.location`,
/// `ssl.keystore.location`, ...) only when a client is created, and then reports, e.g.,
/// `ssl.certificate.location failed: error:0A080002:SSL routines::system lib`, which names
/// neither the variable nor the file. Checks now that each can be opened (a file or, for
/// `ssl.ca.location`, a directory; its special value `probe` is left to librdkafka).
fn check_files(properties: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, path) in properties {
        if !name.ends_with(".location") || (name == "ssl.ca.location" && path == "probe") {
            continue;
        }
        if let Err(e) = std::fs::File::open(path) {
            return Err(ConfigError::new(
                format!("KAFKA_CFG_{}", name.to_ascii_uppercase().replace('.', "_")),
                format!("{path:?} cannot be read ({e})"),
                "/etc/kafka/tls/client.pem",
            ));
        }
    }
    Ok(())
}

/// Each server of a comma-separated list must be `host:port`.
fn check_servers(var: &str, servers: &str) -> Result<(), ConfigError> {
    for server in servers.split(',') {
        let server = server.trim();
        let ok = server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(ConfigError::new(
                var,
                format!("{server:?} is not host:port"),
                "kafka-0.kafka:9092,kafka-1.kafka:9092",
            ));
        }
    }
    Ok(())
}

/// How long [`recv`] waits on one wake-up before it polls librdkafka's queue again.
pub const RECV_REPOLL: Duration = Duration::from_millis(100);

/// The next message of `consumer`, as [`StreamConsumer::recv`] returns it, but polling the
/// queue again every [`RECV_REPOLL`] while none comes.
///
/// rdkafka's `StreamConsumer` is woken when librdkafka's queue turns from empty to non-empty,
/// and that wake-up can be missed (rust-rdkafka issue #665): measured here on rdkafka 0.38 with
/// eight producers on one partition, a consumer saw nothing for more than 15 s while the next
/// message was already queued (a new `recv` returned it within 150 µs), about once in 20,000
/// messages. A bare `recv().await` then waits until the queue empties and fills again, which
/// on a busy partition never happens. Dropping a pending `recv` loses nothing: a message is
/// taken from the queue only when it is returned.
///
/// [`StreamConsumer::recv`]: rdkafka::consumer::StreamConsumer::recv
///
/// # Errors
/// What `recv` returns: the consumer's error (an error event from librdkafka).
pub async fn recv<C, R>(
    consumer: &rdkafka::consumer::StreamConsumer<C, R>,
) -> rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>
where
    C: rdkafka::consumer::ConsumerContext + 'static,
    R: rdkafka::util::AsyncRuntime,
{
    loop {
        if let Ok(m) = tokio::time::timeout(RECV_REPOLL, consumer.recv()).await {
            return m;
        }
    }
}

/// Drops `client`, a librdkafka client (a consumer: leave the group, commit what auto-commit
/// holds; a producer: flush), on a thread of its own, waiting at most `timeout` for the other
/// holders of the `Arc` to let go and for the close to finish. Returns whether it finished.
///
/// rdkafka's `BaseConsumer::drop` polls until librdkafka has closed the consumer, which waits
/// for the group coordinator: during a broker outage it had not finished 40 s later (measured here),
/// and on a runtime worker it held that worker, and with it the shutdown, for as long. A
/// close still running after `timeout` goes on in the background until the process exits.
pub async fn close_within<T: Send + Sync + 'static>(client: std::sync::Arc<T>, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    // Tasks that were aborted or blocking calls that hold a clone let go of it soon.
    while std::sync::Arc::strong_count(&client) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (done, closed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("kafka-close".into()).spawn(move || {
        drop(client);
        let _ = done.send(());
    });
    if spawned.is_err() {
        return false;
    }
    tokio::time::timeout_at(deadline, closed).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_properties_pass_through_and_win() {
        let env = Env::from_pairs([
            ("KAFKA_BROKER", "b1:9092,b2:9093"),
            ("KAFKA_CFG_SECURITY_PROTOCOL", "ssl"),
            ("KAFKA_CFG_SSL_KEY_PASSWORD", "hunter2"),
            ("KAFKA_CFG_ACKS", "1"),
        ]);
        let k = KafkaSettings::from_env(&env).unwrap();
        assert_eq!(k.bootstrap_servers, "b1:9092,b2:9093");
        assert_eq!(k.topic, DEFAULT_TOPIC);
        let cfg = k.client_config(&[("acks", "all")]);
        assert_eq!(cfg.get("security.protocol"), Some("ssl"));
        assert_eq!(cfg.get("acks"), Some("1"));
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    const DEFAULTS: &[(&str, &str)] = &[
        ("enable.auto.offset.store", "false"),
        ("acks", "all"),
        ("auto.offset.reset", "earliest"),
        ("linger.ms", "5"),
    ];
    const PROTECTED: &[Protected] = &[
        Protected {
            name: "enable.auto.offset.store",
            aliases: &[],
            why: "stored after commit",
        },
        Protected {
            name: "acks",
            aliases: &["request.required.acks"],
            why: "durable",
        },
        Protected {
            name: "auto.offset.reset",
            aliases: &[],
            why: "a new group reads everything",
        },
    ];

    fn check(pairs: &[(&'static str, &'static str)]) -> Result<(), ConfigError> {
        KafkaSettings::from_env(&Env::from_pairs(pairs.iter().copied()))
            .unwrap()
            .check_properties(DEFAULTS, PROTECTED)
    }

    #[test]
    fn protected_properties_cannot_be_changed() {
        for (var, value) in [
            ("KAFKA_CFG_ENABLE_AUTO_OFFSET_STORE", "true"),
            ("KAFKA_CFG_ENABLE_AUTO_OFFSET_STORE", "1"),
            ("KAFKA_CFG_ACKS", "1"),
            // An alias of acks.
            ("KAFKA_CFG_REQUEST_REQUIRED_ACKS", "0"),
            // A topic-level property, set at the global level.
            ("KAFKA_CFG_AUTO_OFFSET_RESET", "latest"),
        ] {
            let e = check(&[(var, value)]).expect_err(&format!("{var}={value}"));
            assert_eq!(e.var, var, "{e}");
            assert!(e.problem.contains("may not change"), "{e}");
        }
        // Restating a default in any spelling librdkafka reads the same is fine; other
        // properties pass through.
        for (var, value) in [
            ("KAFKA_CFG_ENABLE_AUTO_OFFSET_STORE", "false"),
            ("KAFKA_CFG_ACKS", "-1"),
            ("KAFKA_CFG_AUTO_OFFSET_RESET", "smallest"),
            ("KAFKA_CFG_LINGER_MS", "50"),
            ("KAFKA_CFG_SECURITY_PROTOCOL", "ssl"),
        ] {
            check(&[(var, value)]).unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        }
    }

    #[test]
    fn properties_librdkafka_rejects_name_their_variable() {
        let e = check(&[("KAFKA_CFG_NO_SUCH_PROPERTY", "1")]).unwrap_err();
        assert_eq!(e.var, "KAFKA_CFG_NO_SUCH_PROPERTY");
        let e = check(&[("KAFKA_CFG_LINGER_MS", "soon")]).unwrap_err();
        assert_eq!(e.var, "KAFKA_CFG_LINGER_MS");
    }

    #[test]
    fn unreadable_tls_files_name_their_variable() {
        let dir = std::env::temp_dir();
        let missing = dir.join("kafka-tls-test-missing.pem");
        let e = KafkaSettings::from_env(&Env::from_pairs([
            ("KAFKA_CFG_SECURITY_PROTOCOL", "ssl".to_string()),
            ("KAFKA_CFG_SSL_CA_LOCATION", dir.display().to_string()),
            ("KAFKA_CFG_SSL_KEY_LOCATION", missing.display().to_string()),
        ]))
        .unwrap_err();
        assert_eq!(e.var, "KAFKA_CFG_SSL_KEY_LOCATION");
        // A CA directory and librdkafka's `probe` are accepted.
        for ca in [dir.display().to_string(), "probe".to_string()] {
            KafkaSettings::from_env(&Env::from_pairs([("KAFKA_CFG_SSL_CA_LOCATION", ca)])).unwrap();
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        let e = KafkaSettings::from_env(&Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", "nohostport")])).unwrap_err();
        assert_eq!(e.var, "KAFKA_BOOTSTRAP_SERVERS");
        let e = KafkaSettings::from_env(&Env::from_pairs([("KAFKA_BROKER", "x:y")])).unwrap_err();
        assert_eq!(e.var, "KAFKA_BROKER");
        let e = KafkaSettings::from_env(&Env::from_pairs([("KAFKA_TOPIC", "bad topic")])).unwrap_err();
        assert_eq!(e.var, "KAFKA_TOPIC");
        for (var, value) in [
            ("KAFKA_TOPIC_PARTITIONS", "0"),
            ("KAFKA_TOPIC_PARTITIONS", "-3"),
            ("KAFKA_TOPIC_REPLICATION_FACTOR", "3000000000"),
            ("KAFKA_CREATE_TOPIC", "maybe"),
            ("KAFKA_TARGETS_TOPIC_PARTITIONS", "0"),
        ] {
            let e = KafkaSettings::from_env(&Env::from_pairs([(var, value)])).unwrap_err();
            assert_eq!(e.var, var, "{var}={value}: {e}");
        }
    }

    #[test]
    fn typed_values_and_defaults() {
        let k = KafkaSettings::from_env(&Env::default()).unwrap();
        assert_eq!(k.bootstrap_servers, DEFAULT_BOOTSTRAP_SERVERS);
        assert_eq!(
            (k.create_topic, k.topic_partitions, k.topic_replication_factor),
            (true, 6, 1)
        );
        let k = KafkaSettings::from_env(&Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "a:1"),
            ("KAFKA_BROKER", "b:2"),
            ("KAFKA_CREATE_TOPIC", "Off"),
            ("KAFKA_TOPIC_PARTITIONS", "12"),
        ]))
        .unwrap();
        assert_eq!(
            (k.bootstrap_servers.as_str(), k.create_topic, k.topic_partitions),
            ("a:1", false, 12)
        );
    }
}
