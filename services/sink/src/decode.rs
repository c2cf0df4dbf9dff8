//! From a Kafka message to a [`ProbeResult`] that `probe_results` can hold.
//!
//! A message becomes a row only when it is a probe result (JSON, [`common::result`]) *and*
//! every value fits the schema; anything else becomes a dead letter of class `decode` with the
//! reason, before PostgreSQL sees it. What is checked, and why:
//! - text holds no NUL character (PostgreSQL `text` cannot store U+0000, SQLSTATE 22021);
//! - `target` and `location` are at most [`MAX_TARGET_BYTES`] bytes each: they are keys of
//!   the B-tree index `(target_name, location, scheduled_at)`, whose entries are limited to
//!   about a third of a page (2704 bytes with 8 kB pages, SQLSTATE 54000; 2 × 1024 bytes
//!   and a timestamp fit); `url` and `final_url` at most
//!   [`MAX_URL_BYTES`]. Both bounds are far above any real target (the checker allows
//!   200-byte names);
//! - timestamps lie in years 0000 to 9999, the range RFC 3339 (§5.6 `date-fullyear`) can
//!   write, which the wire format promises, and inside PostgreSQL's `timestamptz` range;
//! - integers fit their columns (`integer` for `schema_version` and `redirects`, `bigint`
//!   for sizes) instead of being clamped;
//! - `ip_address`, when present, is an IP address (`inet`).
//!
//! [`Row`] and [`DeadLetter`], what a message becomes, are defined here; [`crate::store`]
//! writes them (and re-exports them). Never issues SQL.

use chrono::{DateTime, Datelike, Utc};
use common::result::ProbeResult;

/// A probe result with where it came from in Kafka.
#[derive(Debug, Clone)]
pub struct Row {
    /// The decoded result.
    pub result: ProbeResult,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// The message's key, raw (kept for the dead letter should PostgreSQL refuse the row).
    pub key: Option<Vec<u8>>,
    /// The message's payload, raw, as the dead letter keeps it. `None` for a row built in
    /// memory rather than read from a message (tests, bench): its dead letter then holds the
    /// result serialized again and the target name as key.
    pub payload: Option<Vec<u8>>,
}

/// A message that could not be stored, with its origin and the reason.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Message key, raw.
    pub key: Option<Vec<u8>>,
    /// Message payload, raw.
    pub payload: Option<Vec<u8>>,
    /// Why it is a dead letter; `dead_letters.error_class`.
    pub error_class: DeadLetterClass,
    /// The error text.
    pub error: String,
}

/// Why a message is a dead letter. The serialized form (strum) is the text of
/// `dead_letters.error_class` and the `class` label of `healthcheck_sink_dead_letters_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString, strum::Display)]
#[strum(serialize_all = "lowercase")]
pub enum DeadLetterClass {
    /// Not a probe result, or one holding a value the schema cannot hold ([`decode`]).
    Decode,
    /// PostgreSQL refused the row for its own data, whatever the SQLSTATE, while a canary row
    /// passed ([`crate::store::Store::write`]).
    Data,
    /// The store's canary dead letter, written in a transaction that is rolled back: never
    /// stored.
    Canary,
}

impl DeadLetterClass {
    /// The classes a stored dead letter can have (the canary's never is).
    pub const STORED: [Self; 2] = [Self::Decode, Self::Data];

    /// The stored text, e.g. `"decode"`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Longest `target` accepted, in bytes (UTF-8).
pub const MAX_TARGET_BYTES: usize = 1024;

/// Longest `url` or `final_url` accepted, in bytes (UTF-8).
pub const MAX_URL_BYTES: usize = 65_536;

/// Decodes a message payload into a probe result the schema can hold.
///
/// # Errors
/// Why the message cannot be a row: a tombstone, not a probe result (the JSON error), or the
/// first value the schema cannot hold (field name and problem). The text is the dead letter's
/// `error`.
pub fn decode(payload: Option<&[u8]>) -> Result<ProbeResult, String> {
    let payload = payload.ok_or("empty payload (tombstone)")?;
    let r: ProbeResult = serde_json::from_slice(payload).map_err(|e| format!("not a probe result: {e}"))?;
    validate(&r).map_err(|e| format!("invalid probe result: {e}"))?;
    Ok(r)
}

/// Checks that every value of `r` fits `probe_results` (see the module doc).
///
/// # Errors
/// The first field that does not fit, with the reason.
pub fn validate(r: &ProbeResult) -> Result<(), String> {
    let tls = r.tls.as_ref();
    let texts: [(&str, Option<&str>); 13] = [
        ("target", Some(&r.target)),
        ("location", Some(&r.location)),
        ("url", Some(&r.url)),
        ("instance_id", Some(&r.instance_id)),
        ("error_kind", r.error_kind.as_deref()),
        ("error", r.error.as_deref()),
        ("final_url", r.final_url.as_deref()),
        ("http_version", r.http_version.as_deref()),
        ("ip_address", r.ip_address.as_deref()),
        ("ip_family", r.ip_family.as_deref()),
        ("tls.version", tls.and_then(|t| t.version.as_deref())),
        ("tls.cipher", tls.and_then(|t| t.cipher.as_deref())),
        ("tls.leaf_subject", tls.and_then(|t| t.leaf_subject.as_deref())),
    ];
    for (field, text) in texts {
        if text.is_some_and(|t| t.contains('\0')) {
            return Err(format!(
                "{field} holds a NUL character, which PostgreSQL text cannot store"
            ));
        }
    }
    for (field, text, max) in [
        ("target", Some(r.target.as_str()), MAX_TARGET_BYTES),
        ("location", Some(r.location.as_str()), MAX_TARGET_BYTES),
        ("url", Some(r.url.as_str()), MAX_URL_BYTES),
        ("final_url", r.final_url.as_deref(), MAX_URL_BYTES),
    ] {
        if let Some(len) = text.map(str::len).filter(|&len| len > max) {
            return Err(format!("{field} is {len} bytes long, more than {max}"));
        }
    }
    let times: [(&str, Option<DateTime<Utc>>); 4] = [
        ("scheduled_at", Some(r.scheduled_at)),
        ("started_at", Some(r.started_at)),
        ("tls.leaf_not_after", tls.and_then(|t| t.leaf_not_after)),
        ("tls.earliest_not_after", tls.and_then(|t| t.earliest_not_after)),
    ];
    for (field, t) in times {
        if let Some(t) = t.filter(|t| !(0..=9999).contains(&t.year())) {
            return Err(format!("{field} {t} is outside years 0000 to 9999 (RFC 3339)"));
        }
    }
    for (field, n) in [
        ("schema_version", Some(u64::from(r.schema_version))),
        ("redirects", Some(u64::from(r.redirects))),
    ] {
        if n.is_some_and(|n| i32::try_from(n).is_err()) {
            return Err(format!("{field} {} does not fit a PostgreSQL integer", n.unwrap_or(0)));
        }
    }
    for (field, n) in [("body_bytes", r.body_bytes), ("content_length", r.content_length)] {
        if let Some(n) = n.filter(|&n| i64::try_from(n).is_err()) {
            return Err(format!("{field} {n} does not fit a PostgreSQL bigint"));
        }
    }
    if let Some(ip) = r.ip_address.as_deref() {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("ip_address {ip:?} is not an IP address"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "check_id": "6f1c8a4e-1f1a-5b9a-9a4e-1f1a5b9a9a4e", "target": "a", "url": "http://x/",
            "scheduled_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:00.001Z",
            "success": true
        })
    }

    fn with(field: &str, value: serde_json::Value) -> Result<ProbeResult, String> {
        let mut m = minimal();
        m[field] = value;
        decode(Some(&serde_json::to_vec(&m).unwrap()))
    }

    #[test]
    fn dead_letter_classes_are_stored_as_lowercase_text() {
        assert_eq!(DeadLetterClass::STORED.map(DeadLetterClass::as_str), ["decode", "data"]);
        assert_eq!("canary".parse(), Ok(DeadLetterClass::Canary));
    }

    #[test]
    fn a_minimal_result_decodes() {
        assert!(decode(Some(&serde_json::to_vec(&minimal()).unwrap())).is_ok());
        assert!(with("target", "t".repeat(MAX_TARGET_BYTES).into()).is_ok());
        assert!(with("ip_address", "2001:db8::1".into()).is_ok());
    }

    #[test]
    fn values_the_schema_cannot_hold_are_refused_by_name() {
        for (field, value) in [
            ("target", serde_json::Value::from("a\u{0}b")),
            ("error", "boom\u{0}".into()),
            ("target", "t".repeat(MAX_TARGET_BYTES + 1).into()),
            ("location", "l".repeat(MAX_TARGET_BYTES + 1).into()),
            ("location", "eu\u{0}".into()),
            ("url", format!("http://x/{}", "p".repeat(MAX_URL_BYTES)).into()),
            ("scheduled_at", "+12345-01-01T00:00:00Z".into()),
            ("started_at", "-0001-12-31T00:00:00Z".into()),
            ("schema_version", u64::from(u32::MAX).into()),
            ("redirects", 2_147_483_648u64.into()),
            ("body_bytes", u64::MAX.into()),
            ("ip_address", "not-an-ip".into()),
        ] {
            let e = with(field, value.clone()).expect_err(&format!("{field} = {value}"));
            assert!(e.starts_with("invalid probe result: ") && e.contains(field), "{e}");
        }
        let mut m = minimal();
        m["tls"] = serde_json::json!({"leaf_subject": "CN=\u{0}"});
        let e = decode(Some(&serde_json::to_vec(&m).unwrap())).unwrap_err();
        assert!(e.contains("tls.leaf_subject"), "{e}");
        assert!(decode(None).unwrap_err().contains("tombstone"));
        assert!(decode(Some(b"{")).unwrap_err().starts_with("not a probe result"));
    }
}
