//! Helpers to read configuration from environment variables.
//!
//! Each service owns one typed configuration struct, deserialized in one pass by
//! [`Env::deserialize`] (envy, with `serde_path_to_error` finding the variable at fault); its
//! defaults live once, in the struct's `Default` impl, which README's tables are checked
//! against ([`documented_defaults`], [`check_readme`]). This module holds what the services
//! share: the error that names the offending variable, duration (de)serialization bounded by
//! [`MAX_DURATION`], secret wrapping and the environment snapshot that tests feed in place of
//! the process environment.
//!
//! Nothing here reads the process environment except [`Env::from_process`]: every other
//! value comes from an [`Env`] snapshot, so tests never need `std::env::set_var`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// An invalid or missing configuration value.
///
/// Its `Display` names the variable, says what is wrong and shows a valid example, e.g.
/// `INTERVAL: "abc" is not a duration (example: INTERVAL=30s)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {problem} (example: {var}={example})")]
pub struct ConfigError {
    /// The environment variable (or `VARIABLE[index].field` inside a structured value).
    pub var: String,
    /// What is wrong with the value.
    pub problem: String,
    /// A valid value, shown to the user.
    pub example: String,
}

impl ConfigError {
    /// Builds an error for `var`.
    pub fn new(var: impl Into<String>, problem: impl Into<String>, example: impl Into<String>) -> Self {
        Self {
            var: var.into(),
            problem: problem.into(),
            example: example.into(),
        }
    }
}

/// A snapshot of environment variables: the process environment in production, a list of pairs
/// in tests (so tests never call `std::env::set_var`).
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// Snapshot of the process environment. Variables whose name or value is not UTF-8 are skipped.
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
    }

    /// Snapshot built from `(name, value)` pairs.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }

    /// The value of `name`, or `None` when it is unset or empty (an empty variable means "unset",
    /// as in compose files and Kubernetes manifests that blank a value).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// The first set variable among `names` with its name, so errors name the one the user set.
    pub fn get_any<'a>(&'a self, names: &[&'a str]) -> Option<(&'a str, &'a str)> {
        names.iter().find_map(|n| self.get(n).map(|v| (*n, v)))
    }

    /// All variables, as pairs, for `envy::from_iter`.
    pub fn pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.vars
            .iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
    }

    /// Variables whose name starts with `prefix`, with the prefix removed.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }

    /// The value of `name` as set, even when empty (`None` when unset): what
    /// `std::env::var` would say, for a variable a target names as a credential's source.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Deserializes the variables into `T` with `envy`, each field named after its variable
    /// in lower case (`probe_concurrency` reads `PROBE_CONCURRENCY`).
    ///
    /// A field that fails is found by the path `serde_path_to_error` tracked, never from the
    /// text of envy's message. Fields need defaults (`#[serde(default)]`, see
    /// [`documented_defaults`]): the example shown with an error is the variable's default.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable, saying what is wrong (envy's or the field's own
    /// message) and showing the default as the example.
    pub fn deserialize<T>(&self) -> Result<T, ConfigError>
    where
        T: serde::de::DeserializeOwned + serde::Serialize + Default,
    {
        let Tracked(result) = envy::from_iter::<_, Tracked<T>>(self.pairs()).map_err(|e| {
            // Only a field without a default gets here; envy says which.
            let var = match &e {
                envy::Error::MissingValue(field) => field.to_uppercase(),
                envy::Error::Custom(_) => "environment".to_string(),
            };
            ConfigError::new(var, e.to_string(), "<see README>")
        })?;
        result.map_err(|(var, problem)| {
            let example = documented_defaults(&T::default())
                .into_iter()
                .find(|(name, _)| *name == var)
                .and_then(|(_, default)| default)
                .unwrap_or_else(|| "<see README>".to_string());
            ConfigError::new(var, problem, example)
        })
    }
}

/// `T` deserialized with its path tracked. envy keeps its deserializer private, so the
/// tracking wraps it inside this `Deserialize` impl, and the failure comes out as a value:
/// the variable (the path's first segment, upper-cased) and the problem.
struct Tracked<T>(Result<T, (String, String)>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Tracked<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_path_to_error::deserialize(deserializer) {
            Ok(value) => Ok(Self(Ok(value))),
            Err(e) => match e.path().iter().next() {
                Some(serde_path_to_error::Segment::Map { key }) => {
                    Ok(Self(Err((key.to_uppercase(), e.into_inner().to_string()))))
                }
                // Not inside a field (a missing one): envy's own error names it.
                _ => Err(e.into_inner()),
            },
        }
    }
}

/// The variables of a configuration struct and their defaults, as `README.md` shows them:
/// each field's name upper-cased (its variable), with the value `defaults` holds rendered as
/// text (`30s`, `512`, `copy`; durations in humantime's form), or `None` when the default is
/// no value (an `Option` field).
///
/// It is the source that README's configuration tables are checked against (see
/// [`readme_table`]), and of the example in an error from [`Env::deserialize`].
///
/// # Panics
/// When `T` does not serialize to a map of scalars (a programming error).
pub fn documented_defaults<T: serde::Serialize>(defaults: &T) -> Vec<(String, Option<String>)> {
    let serde_json::Value::Object(fields) = serde_json::to_value(defaults).expect("config defaults serialize") else {
        panic!("config defaults are not a struct");
    };
    fields
        .into_iter()
        .map(|(name, value)| {
            let shown = match value {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s),
                other => Some(other.to_string()),
            };
            (name.to_uppercase(), shown)
        })
        .collect()
}

/// The rows of the Markdown table that follows the heading `heading` (e.g. `### Sink`) in
/// `markdown`: every variable written in backquotes in a row's first cell, with the row's
/// second cell (its default as README shows it, e.g. `` `30s` `` or `host name`).
///
/// # Panics
/// When there is no such heading or no table under it (README changed shape).
pub fn readme_table(markdown: &str, heading: &str) -> Vec<(String, String)> {
    let rest = markdown
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading:?} heading"))
        .1;
    let rows: Vec<(String, String)> = rest
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header row and the |---| row
        .flat_map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (names, default) = (cells.get(1).copied().unwrap_or(""), cells.get(2).copied().unwrap_or(""));
            code_spans(names)
                .map(|name| (name.to_string(), default.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!rows.is_empty(), "no table under {heading:?}");
    rows
}

/// The texts in backquotes in `cell`.
pub fn code_spans(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

/// Checks one service's configuration against README's tables: its own (under `heading`)
/// and "Both services", which holds the Kafka settings ([`crate::kafka::KafkaSettings`]) and
/// what every service reads. `code` is the service's typed struct
/// ([`documented_defaults`]) and any other (variable, default) pair it reads; `elsewhere`
/// names variables it reads without a default to compare (lists, secrets, `RUST_LOG`).
///
/// # Errors
/// Every difference, one per line (see [`check_readme`]).
pub fn check_service_readme(
    readme: &str,
    heading: &str,
    mut code: Vec<(String, Option<String>)>,
    elsewhere: &[&str],
) -> Result<(), String> {
    let mut tables = readme_table(readme, "### Both services");
    tables.extend(readme_table(readme, heading));
    code.extend(crate::kafka::KafkaSettings::documented_defaults());
    let elsewhere = [elsewhere, crate::kafka::OTHER_VARIABLES].concat();
    check_readme(&tables, &code, &elsewhere)
}

/// Checks a service's configuration against README's tables: every variable in `code`
/// (name, default) is in one of `tables` with the same default (in backquotes, as the same
/// text or the same duration: `60s` is `1m`; or no value in backquotes when `None`), and every variable in `tables` is in `code` or in `elsewhere`
/// (variables the service reads outside its typed struct).
///
/// # Errors
/// Every difference, one per line.
pub fn check_readme(
    tables: &[(String, String)],
    code: &[(String, Option<String>)],
    elsewhere: &[&str],
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (var, default) in code {
        match tables.iter().find(|(name, _)| name == var) {
            None => problems.push(format!("{var} is not in README's table")),
            Some((_, shown)) => {
                let documented: Vec<&str> = code_spans(shown).collect();
                let agrees = match default {
                    // `60s` in README is the `1m` humantime writes.
                    Some(d) => documented.iter().any(|shown| {
                        shown == d || matches!((from_text(shown), from_text(d)), (Ok(a), Ok(b)) if a == b)
                    }),
                    None => documented.is_empty(),
                };
                if !agrees {
                    problems.push(format!("{var}: README says {shown:?}, the code {default:?}"));
                }
            }
        }
    }
    for (name, _) in tables {
        if !code.iter().any(|(var, _)| var == name) && !elsewhere.contains(&name.as_str()) {
            problems.push(format!("{name} is in README's table but the code does not read it"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// The longest duration any variable accepts: 100 years (`100y`; humantime's year is 365.25
/// days, so 3,155,760,000 s).
///
/// Durations are added to `Instant`s and `DateTime`s and converted to `chrono::Duration`
/// (whose range is about ±292 million years but whose arithmetic on a `DateTime` overflows far
/// sooner) and to librdkafka milliseconds; bounding them where they are parsed means none of
/// those places can overflow or panic, whatever the input (e.g. `INTERVAL=10000000000000000d`).
pub const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000);

/// Why a value is not an accepted duration; `Display` is the problem shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Neither humantime's form nor a number of seconds, or negative.
    #[error("{0:?} is not a duration")]
    NotADuration(String),
    /// Longer than [`MAX_DURATION`].
    #[error("{0:?} is longer than the longest duration accepted, 100 years ({max}s)", max = MAX_DURATION.as_secs())]
    TooLong(String),
    /// Zero (or so small it rounds to zero nanoseconds) where a positive duration is needed.
    #[error("{0:?} is not a positive duration")]
    Zero(String),
}

/// A duration of `secs` seconds: finite, not negative, at most [`MAX_DURATION`].
fn from_secs(secs: f64, shown: &str) -> Result<Duration, DurationError> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(DurationError::NotADuration(shown.to_string()));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(DurationError::TooLong(shown.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Reads `30s`, `1m30s`, `250ms`, `400d` (humantime's form) or a bare number of seconds
/// (`30`, `0.5`, which humantime does not take), at most [`MAX_DURATION`].
fn from_text(value: &str) -> Result<Duration, DurationError> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return from_secs(secs, value);
    }
    let d = match humantime::parse_duration(v) {
        Ok(d) => d,
        // More seconds than a u64 holds: a duration, only far too long.
        Err(humantime::DurationError::NumberOverflow) => return Err(DurationError::TooLong(value.to_string())),
        Err(_) => return Err(DurationError::NotADuration(value.to_string())),
    };
    if d > MAX_DURATION {
        return Err(DurationError::TooLong(value.to_string()));
    }
    Ok(d)
}

fn nonzero(d: Duration, shown: &str) -> Result<Duration, DurationError> {
    if d.is_zero() {
        Err(DurationError::Zero(shown.to_string()))
    } else {
        Ok(d)
    }
}

/// A duration of `secs` seconds for `var`: finite, not negative, at most [`MAX_DURATION`].
///
/// # Errors
/// A [`ConfigError`] naming `var` otherwise.
pub fn duration_from_secs(var: &str, secs: f64) -> Result<Duration, ConfigError> {
    from_secs(secs, &secs.to_string()).map_err(|e| ConfigError::new(var, e.to_string(), "30s"))
}

/// Parses a duration such as `30s`, `1m30s`, `250ms`, `400d` or a bare number of seconds
/// (`30`, `0.5`), at most [`MAX_DURATION`].
///
/// Errors name `var`. Zero is allowed; callers that need a positive value use
/// [`parse_positive_duration`].
pub fn parse_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    from_text(value).map_err(|e| ConfigError::new(var, e.to_string(), "30s"))
}

/// Parses a positive duration (see [`parse_duration`]); zero is rejected.
pub fn parse_positive_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(var, value)?;
    if d.is_zero() {
        return Err(ConfigError::new(var, "must be greater than zero", "30s"));
    }
    Ok(d)
}

/// Serde functions for `Duration` fields of configuration structs, in the accepted forms of
/// [`parse_duration`], at most [`MAX_DURATION`]: text (`"30s"`, or `"30"` as envy hands every
/// variable over) or, in JSON and YAML, a number of seconds (`30`, `0.5`).
///
/// `#[serde(with = "common::config::duration")]` for a duration that may be zero,
/// `deserialize_with = "common::config::duration::positive"` for one that may not, and the
/// [`option`](self::duration::option) functions for `Option<Duration>`. Serializing writes
/// humantime's form (`30s`, `100ms`), as README shows defaults.
///
/// humantime does the text (the same `humantime::parse_duration` the `humantime-serde` crate
/// wraps); this module adds what that crate lacks: bare numbers of seconds, the
/// [`MAX_DURATION`] bound, and "too long" told apart from "not a
/// duration" by humantime's typed error rather than its message.
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};
    use serde::{Deserialize, Serializer};

    use super::{from_secs, from_text, nonzero, DurationError};

    struct DurationVisitor {
        positive: bool,
    }

    impl DurationVisitor {
        fn check<E: de::Error>(&self, d: Result<Duration, DurationError>, shown: &str) -> Result<Duration, E> {
            d.and_then(|d| if self.positive { nonzero(d, shown) } else { Ok(d) })
                .map_err(E::custom)
        }
    }

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"30s\", \"250ms\" or a number of seconds")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            self.check(from_text(v), v)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            let shown = v.to_string();
            self.check(from_secs(v, &shown), &shown)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_f64(v as f64)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            self.visit_f64(v as f64)
        }
    }

    /// A duration, zero allowed.
    ///
    /// # Errors
    /// `D::Error` with a [`DurationError`]'s text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor { positive: false })
    }

    /// A duration greater than zero.
    ///
    /// # Errors
    /// `D::Error` with a [`DurationError`]'s text.
    pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor { positive: true })
    }

    /// Writes `d` in humantime's form (`30s`, `100ms`, `1m 30s`).
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// The same for `Option<Duration>` fields (use with `#[serde(default)]`).
    pub mod option {
        use super::*;

        #[derive(Deserialize)]
        struct Any(#[serde(deserialize_with = "super::deserialize")] Duration);

        #[derive(Deserialize)]
        struct Positive(#[serde(deserialize_with = "super::positive")] Duration);

        /// An optional duration, zero allowed.
        ///
        /// # Errors
        /// `D::Error` with a [`DurationError`]'s text.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<Any>::deserialize(d)?.map(|Any(d)| d))
        }

        /// An optional duration greater than zero.
        ///
        /// # Errors
        /// `D::Error` with a [`DurationError`]'s text.
        pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<Positive>::deserialize(d)?.map(|Positive(d)| d))
        }

        /// Writes the duration in humantime's form, or nothing.
        ///
        /// # Errors
        /// The serializer's.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&humantime::format_duration(*d)),
                None => s.serialize_none(),
            }
        }
    }
}

/// A value that must never appear in logs, `Debug` output or metrics (passwords, tokens, DSNs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself; call only where it is handed to the library that needs it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The host name of this machine (Kubernetes: the pod name), used as the default instance id:
/// `HOSTNAME` from `env`, else `/etc/hostname`, else `unknown`.
pub fn hostname(env: &Env) -> String {
    env.get("HOSTNAME")
        .map(str::to_string)
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found while fuzzing the target list: `1e20` seconds panicked in
    /// `Duration::from_secs_f64` instead of being reported.
    #[test]
    fn durations_too_large_negative_or_not_finite_are_errors() {
        for v in ["1e20", "18446744073709551616", "-1", "NaN", "inf", "-0.5"] {
            assert_eq!(parse_duration("X", v).unwrap_err().var, "X", "{v}");
        }
        assert_eq!(parse_positive_duration("X", "1e-12").unwrap_err().var, "X");
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("X", "30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("X", "1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("X", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("X", "15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("X", "0.5").unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn bad_duration_names_the_variable() {
        let e = parse_duration("INTERVAL", "abc").unwrap_err();
        assert_eq!(e.var, "INTERVAL");
        assert_eq!(
            e.to_string(),
            "INTERVAL: \"abc\" is not a duration (example: INTERVAL=30s)"
        );
        assert!(parse_duration("X", "-1").is_err());
        assert!(parse_positive_duration("X", "0s").is_err());
    }

    #[test]
    fn durations_too_long_to_add_to_a_time_are_rejected_naming_the_variable() {
        // Text with units (more seconds than a u64 holds, and merely more than 100 years),
        // bare numbers of seconds (beyond u64, beyond f64's finite range) and both entry points.
        for value in [
            "10000000000000000d",
            "1000000000000d",
            "101y",
            "1e30",
            "1e400",
            "18446744073709551616",
        ] {
            for parse in [parse_duration, parse_positive_duration] {
                let e = parse("INTERVAL", value).unwrap_err();
                assert_eq!(e.var, "INTERVAL", "{value}: {e}");
            }
        }
        assert_eq!(
            parse_duration("X", "36500d").unwrap(),
            Duration::from_secs(36_500 * 86_400)
        );
        assert_eq!(parse_duration("X", "100y").unwrap(), MAX_DURATION);
        assert_eq!(
            parse_duration("X", &MAX_DURATION.as_secs().to_string()).unwrap(),
            MAX_DURATION
        );
        assert!(parse_duration("X", &(MAX_DURATION.as_secs() + 1).to_string()).is_err());
        assert_eq!(duration_from_secs("timeout", 1e300).unwrap_err().var, "timeout");
        assert_eq!(duration_from_secs("timeout", f64::NAN).unwrap_err().var, "timeout");
        assert_eq!(duration_from_secs("t", 1.5).unwrap(), Duration::from_millis(1500));
    }

    /// A configuration struct as the services write theirs.
    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    #[serde(default)]
    struct Sample {
        #[serde(with = "duration")]
        linger: Duration,
        #[serde(deserialize_with = "duration::positive", serialize_with = "duration::serialize")]
        grace_period: Duration,
        #[serde(with = "duration::option")]
        retention: Option<Duration>,
        pool_size: std::num::NonZeroUsize,
        group: Option<String>,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                linger: Duration::from_millis(100),
                grace_period: Duration::from_secs(25),
                retention: None,
                pool_size: std::num::NonZeroUsize::new(5).unwrap(),
                group: None,
            }
        }
    }

    fn sample(pairs: &[(&str, &str)]) -> Result<Sample, ConfigError> {
        Env::from_pairs(pairs.iter().copied()).deserialize()
    }

    #[test]
    fn typed_fields_take_units_bare_seconds_and_defaults() {
        let s = sample(&[("LINGER", "0.25"), ("GRACE_PERIOD", "1m30s"), ("RETENTION", "400d")]).unwrap();
        assert_eq!(s.linger, Duration::from_millis(250));
        assert_eq!(s.grace_period, Duration::from_secs(90));
        assert_eq!(s.retention, Some(Duration::from_secs(400 * 86_400)));
        assert_eq!(s.pool_size.get(), 5);
        let s = sample(&[("GRACE_PERIOD", "30"), ("POOL_SIZE", "7")]).unwrap();
        assert_eq!((s.grace_period, s.pool_size.get()), (Duration::from_secs(30), 7));
        assert_eq!(s.linger, Duration::from_millis(100));
    }

    #[test]
    fn typed_field_errors_name_the_variable_and_show_its_default() {
        for (var, value, example) in [
            ("POOL_SIZE", "0", "5"),
            ("POOL_SIZE", "many", "5"),
            ("GRACE_PERIOD", "0", "25s"),
            ("GRACE_PERIOD", "30 fortnights", "25s"),
            ("LINGER", "10000000000000000d", "100ms"),
            ("LINGER", "-1", "100ms"),
            ("RETENTION", "5x", "<see README>"),
        ] {
            let e = sample(&[(var, value)]).unwrap_err();
            assert_eq!(
                (e.var.as_str(), e.example.as_str()),
                (var, example),
                "{var}={value}: {e}"
            );
        }
        let e = sample(&[("GRACE_PERIOD", "5x")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "GRACE_PERIOD: \"5x\" is not a duration (example: GRACE_PERIOD=25s)"
        );
    }

    #[test]
    fn readme_tables_are_checked_both_ways() {
        let readme = "# x\n\n### Sample\n\n| Variable | Default | Meaning |\n|---|---|---|\n\
            | `LINGER` | `100ms` | a |\n| `GRACE_PERIOD` | `25s` | b |\n| `RETENTION` | keep forever | c |\n\
            | `POOL_SIZE` (or `POOL`) | `5` | d |\n| `GROUP` | — | e |\n\ntext\n";
        let table = readme_table(readme, "### Sample");
        let code = documented_defaults(&Sample::default());
        assert_eq!(check_readme(&table, &code, &["POOL"]), Ok(()));
        // A default that drifted, a variable README lacks, one the code lacks.
        let drifted = readme.replace("`25s`", "`30s`");
        let e = check_readme(&readme_table(&drifted, "### Sample"), &code, &["POOL"]).unwrap_err();
        assert!(e.contains("GRACE_PERIOD"), "{e}");
        let missing = readme.replace("| `GROUP` | — | e |\n", "");
        assert!(check_readme(&readme_table(&missing, "### Sample"), &code, &["POOL"]).is_err());
        assert!(check_readme(&table, &code, &[]).is_err(), "POOL is read nowhere");
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let env = Env::from_pairs([("A", ""), ("B", "1")]);
        assert_eq!(env.get("A"), None);
        assert_eq!(env.get_any(&["A", "B"]), Some(("B", "1")));
    }

    #[test]
    fn secrets_do_not_debug_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
