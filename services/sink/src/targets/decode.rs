//! From a targets-topic record to a [`TargetChange`] that `target_changes` can hold, or a
//! dead letter of class `decode` saying why not. Never issues SQL.
//!
//! The record's schema is the one of an entry of the targets file (`checker::target`'s
//! `TargetSpec`); the sink reads only what its views need and keeps the rest as `spec`:
//! - the key is the target name: UTF-8, no NUL, at most [`MAX_TARGET_BYTES`] (it is a B-tree
//!   key, as in `probe_results`), equal to the spec's `name` when the spec has one;
//! - `interval`, always present (`checker targets apply` fills the default), a humantime
//!   string (`"30s"`) or a number of seconds, parsed by [`common::config`]'s parser; positive
//!   and a whole number of microseconds (the resolution of `timestamptz`, in which the views
//!   compute the slot grid);
//! - `quorum` and `failure_threshold`, optional, positive integers;
//! - no string of the spec holds a NUL character (`jsonb` cannot store U+0000).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::decode::{DeadLetter, DeadLetterClass, MAX_TARGET_BYTES};

/// One record of the targets topic, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetChange {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// The target's name (the record's key).
    pub name: String,
    /// The spec as published; `None` for a tombstone (the target was removed).
    pub spec: Option<serde_json::Value>,
    /// The spec's `interval`; `None` for a tombstone.
    pub interval: Option<Duration>,
    /// [`common::slots::phase`] of the name and interval; `None` for a tombstone.
    pub phase: Option<Duration>,
    /// The spec's `quorum`, if it has one.
    pub quorum: Option<i32>,
    /// The spec's `failure_threshold` (K: consecutive down slots that open an incident), if it
    /// has one.
    pub failure_threshold: Option<i32>,
    /// The record's timestamp (its create or log-append time; the time it was read when it
    /// has none).
    pub changed_at: DateTime<Utc>,
}

/// A duration as exact decimal seconds (`"1.500000000"`), as `target_changes` stores it
/// (`numeric`).
pub fn exact_seconds(d: Duration) -> String {
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Decodes a record of `topic` at `partition`/`offset`.
///
/// # Errors
/// A dead letter of class [`DeadLetterClass::Decode`] with the record's raw key and payload
/// and the reason (naming the field) when the record is not a target spec the schema can hold.
pub fn decode(
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    changed_at: DateTime<Utc>,
) -> Result<TargetChange, DeadLetter> {
    let dead = |error: String| DeadLetter {
        topic: topic.to_string(),
        partition,
        offset,
        key: key.map(<[u8]>::to_vec),
        payload: payload.map(<[u8]>::to_vec),
        error_class: DeadLetterClass::Decode,
        error,
    };
    let name = target_name(key).map_err(dead)?;
    let mut change = TargetChange {
        partition,
        offset,
        name,
        spec: None,
        interval: None,
        phase: None,
        quorum: None,
        failure_threshold: None,
        changed_at,
    };
    if let Some(payload) = payload {
        let spec = parse_spec(&change.name, payload).map_err(|e| dead(format!("target {:?}: {e}", change.name)))?;
        change.interval = Some(spec.interval);
        change.phase = Some(common::slots::phase(&change.name, spec.interval));
        change.quorum = spec.quorum;
        change.failure_threshold = spec.failure_threshold;
        change.spec = Some(spec.value);
    }
    Ok(change)
}

fn target_name(key: Option<&[u8]>) -> Result<String, String> {
    let key = key.ok_or("no key (the key is the target name)")?;
    let name = std::str::from_utf8(key).map_err(|e| format!("key is not UTF-8: {e}"))?;
    if name.is_empty() {
        return Err("key is empty (the key is the target name)".into());
    }
    if name.contains('\0') {
        return Err("key holds a NUL character, which PostgreSQL text cannot store".into());
    }
    if name.len() > MAX_TARGET_BYTES {
        return Err(format!(
            "key is {} bytes long, more than {MAX_TARGET_BYTES}",
            name.len()
        ));
    }
    Ok(name.to_string())
}

/// What the sink reads of a spec.
struct Spec {
    value: serde_json::Value,
    interval: Duration,
    quorum: Option<i32>,
    failure_threshold: Option<i32>,
}

/// The positive integer `field` of `obj`, if present and not null.
fn positive(obj: &serde_json::Map<String, serde_json::Value>, field: &str) -> Result<Option<i32>, String> {
    match obj.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(q) => q
            .as_u64()
            .filter(|&q| q > 0)
            .and_then(|q| i32::try_from(q).ok())
            .map(Some)
            .ok_or_else(|| format!("{field} {q} is not a positive integer")),
    }
}

fn parse_spec(name: &str, payload: &[u8]) -> Result<Spec, String> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value.as_object().ok_or("the spec is not a JSON object")?;
    if let Some(path) = nul_in(&value, "") {
        return Err(format!(
            "{path} holds a NUL character, which PostgreSQL jsonb cannot store"
        ));
    }
    match obj.get("name") {
        None => {}
        Some(serde_json::Value::String(n)) if n == name => {}
        Some(other) => return Err(format!("name {other} differs from the key")),
    }
    let var = format!("KAFKA_TARGETS_TOPIC[{name}].interval");
    let interval = match obj.get("interval") {
        None | Some(serde_json::Value::Null) => return Err("no interval".into()),
        Some(serde_json::Value::String(s)) => common::config::parse_positive_duration(&var, s),
        Some(serde_json::Value::Number(n)) => {
            let secs = n.as_f64().ok_or("interval is not a number of seconds")?;
            common::config::duration_from_secs(&var, secs).and_then(|d| {
                if d.is_zero() {
                    Err(common::config::ConfigError::new(
                        &var,
                        "must be greater than zero",
                        "30s",
                    ))
                } else {
                    Ok(d)
                }
            })
        }
        Some(other) => {
            return Err(format!(
                "interval {other} is neither a duration nor a number of seconds"
            ))
        }
    }
    .map_err(|e| format!("invalid interval: {e}"))?;
    if interval.subsec_nanos() % 1000 != 0 {
        return Err(format!(
            "interval {interval:?} is not a whole number of microseconds (the resolution of timestamptz)"
        ));
    }
    let quorum = positive(obj, "quorum")?;
    let failure_threshold = positive(obj, "failure_threshold")?;
    Ok(Spec {
        value,
        interval,
        quorum,
        failure_threshold,
    })
}

/// The JSON path of the first string (or object key) holding a NUL character.
fn nul_in(v: &serde_json::Value, path: &str) -> Option<String> {
    match v {
        serde_json::Value::String(s) => s.contains('\0').then(|| path.to_string()),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in(v, &format!("{path}[{i}]"))),
        serde_json::Value::Object(o) => o.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(p)
            } else {
                nul_in(v, &p)
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn change(key: Option<&str>, payload: Option<&str>) -> Result<TargetChange, DeadLetter> {
        decode(
            "targets",
            1,
            7,
            key.map(str::as_bytes),
            payload.map(str::as_bytes),
            at(),
        )
    }

    #[test]
    fn a_spec_keeps_its_interval_quorum_and_the_phase_of_its_grid() {
        let c = change(
            Some("api"),
            Some(r#"{"name":"api","url":"https://api.example/","interval":"1m30s","quorum":2,"failure_threshold":3}"#),
        )
        .unwrap();
        let interval = Duration::from_secs(90);
        assert_eq!(c.interval, Some(interval));
        assert_eq!((c.quorum, c.failure_threshold), (Some(2), Some(3)));
        assert_eq!(c.phase, Some(common::slots::phase("api", interval)));
        assert_eq!((c.partition, c.offset, c.changed_at), (1, 7, at()));
        // Bare seconds, as a number or a string, are the same interval.
        for v in ["90", "\"90\""] {
            let c = change(Some("api"), Some(&format!(r#"{{"url":"x","interval":{v}}}"#))).unwrap();
            assert_eq!(
                (c.interval, c.quorum, c.failure_threshold),
                (Some(interval), None, None)
            );
        }
    }

    #[test]
    fn the_stored_phase_is_exactly_the_checkers() {
        for (name, interval) in [("api", "30s"), ("web", "10s"), ("t1", "5s"), ("x", "250ms")] {
            let c = change(Some(name), Some(&format!(r#"{{"interval":"{interval}"}}"#))).unwrap();
            let expected = common::slots::phase(name, humantime::parse_duration(interval).unwrap());
            assert_eq!(c.phase, Some(expected));
            let text = exact_seconds(c.phase.unwrap());
            let (secs, nanos) = text.split_once('.').unwrap();
            assert_eq!(
                Duration::new(secs.parse().unwrap(), nanos.parse().unwrap()),
                expected,
                "{text} is the phase to the nanosecond"
            );
        }
    }

    #[test]
    fn a_tombstone_is_a_removal() {
        let c = change(Some("api"), None).unwrap();
        assert_eq!((c.spec, c.interval, c.phase, c.quorum), (None, None, None, None));
    }

    #[test]
    fn records_the_schema_cannot_hold_are_dead_letters_naming_the_problem() {
        for (key, payload, problem) in [
            (None, Some(r#"{"interval":"1s"}"#), "no key"),
            (Some(""), Some(r#"{"interval":"1s"}"#), "key is empty"),
            (Some("a\u{0}"), Some(r#"{"interval":"1s"}"#), "key holds a NUL"),
            (Some("api"), Some("{"), "not JSON"),
            (Some("api"), Some("[1]"), "not a JSON object"),
            (Some("api"), Some(r#"{"url":"x"}"#), "no interval"),
            (Some("api"), Some(r#"{"interval":"soon"}"#), "invalid interval"),
            (Some("api"), Some(r#"{"interval":"0s"}"#), "invalid interval"),
            (Some("api"), Some(r#"{"interval":-1}"#), "invalid interval"),
            (Some("api"), Some(r#"{"interval":true}"#), "neither a duration"),
            (Some("api"), Some(r#"{"interval":"1s","quorum":0}"#), "quorum 0"),
            (Some("api"), Some(r#"{"interval":"1s","quorum":"2"}"#), "quorum \"2\""),
            (
                Some("api"),
                Some(r#"{"interval":"1s","failure_threshold":0}"#),
                "failure_threshold 0",
            ),
            (
                Some("api"),
                Some(r#"{"interval":"1s","failure_threshold":2.5}"#),
                "failure_threshold 2.5",
            ),
            (
                Some("api"),
                Some(r#"{"interval":"1s","name":"web"}"#),
                "differs from the key",
            ),
            (
                Some("api"),
                Some(r#"{"interval":"1s","headers":{"a":"b\u0000"}}"#),
                "headers.a holds a NUL",
            ),
        ] {
            let d = change(key, payload).expect_err(problem);
            assert!(d.error.contains(problem), "{problem}: {}", d.error);
            assert_eq!(d.error_class, DeadLetterClass::Decode);
            assert_eq!((d.topic.as_str(), d.partition, d.offset), ("targets", 1, 7));
            assert_eq!(d.payload.as_deref(), payload.map(str::as_bytes));
        }
        let long = "n".repeat(MAX_TARGET_BYTES + 1);
        assert!(change(Some(&long), None).unwrap_err().error.contains("bytes long"));
        let d = change(Some("api"), Some(r#"{"interval":"soon"}"#)).unwrap_err();
        assert!(d.error.contains("KAFKA_TARGETS_TOPIC[api].interval"), "{}", d.error);
    }
}
