//! Helpers to read configuration from environment variables.
//!
//! Each service owns one typed configuration struct; this module holds what they share: the
//! error that names the offending variable, duration parsing, secret wrapping and the
//! environment snapshot that tests feed in place of the process environment.

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

    /// Deserializes the variables into `T` with `envy`, mapping envy's errors to [`ConfigError`].
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        envy::from_iter(self.pairs()).map_err(|e| match e {
            envy::Error::MissingValue(field) => {
                ConfigError::new(field.to_uppercase(), "is required but not set", "<see README>")
            }
            envy::Error::Custom(msg) => {
                // envy says "... while parsing value 'x' provided by NAME".
                let var = msg.rsplit("provided by ").next().unwrap_or("environment").to_string();
                ConfigError::new(var, msg, "<see README>")
            }
        })
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

/// A duration of `secs` seconds for `var`: finite, not negative, at most [`MAX_DURATION`].
///
/// # Errors
/// A [`ConfigError`] naming `var` otherwise.
pub fn duration_from_secs(var: &str, secs: f64) -> Result<Duration, ConfigError> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(ConfigError::new(var, format!("{secs} is not a duration"), "30s"));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(too_long(var, &secs.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn too_long(var: &str, value: &str) -> ConfigError {
    ConfigError::new(
        var,
        format!(
            "{value:?} is longer than the longest duration accepted, 100 years ({}s)",
            MAX_DURATION.as_secs()
        ),
        "30s",
    )
}

/// Parses a duration such as `30s`, `1m30s`, `250ms`, `400d` or a bare number of seconds
/// (`30`, `0.5`), at most [`MAX_DURATION`].
///
/// Errors name `var`. Zero is allowed; callers that need a positive value check it.
pub fn parse_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    let not_a_duration = || ConfigError::new(var, format!("{value:?} is not a duration"), "30s");
    let d = match v.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            return duration_from_secs(var, secs).map_err(|_| too_long(var, value));
        }
        Ok(_) => return Err(not_a_duration()),
        Err(_) => match humantime::parse_duration(v) {
            Ok(d) => d,
            // More seconds than a u64 holds: a duration, only far too long.
            Err(humantime::DurationError::NumberOverflow) => return Err(too_long(var, value)),
            Err(_) => return Err(not_a_duration()),
        },
    };
    if d > MAX_DURATION {
        return Err(too_long(var, value));
    }
    Ok(d)
}

/// Parses a positive duration (see [`parse_duration`]); zero is rejected.
pub fn parse_positive_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(var, value)?;
    if d.is_zero() {
        return Err(ConfigError::new(var, "must be greater than zero", "30s"));
    }
    Ok(d)
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

/// The host name of this machine (Kubernetes: the pod name), used as the default instance id.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
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
