//! The probe result: one JSON message per probe on the Kafka topic, one row in PostgreSQL.
//!
//! Compatibility rules, so producers and consumers can be upgraded one at a time:
//! - Fields are only ever added. A consumer ignores fields it does not know, and every field
//!   other than the identity fields (`check_id`, `target`, `url`, `scheduled_at`, `started_at`,
//!   `success`) may be missing and then reads as null.
//! - `schema_version` is raised whenever fields are added; it is informational.
//!
//! Units: durations are seconds (`f64`), timestamps are RFC 3339 with nanoseconds in UTC, sizes
//! are bytes.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version written by this build. Version 4 added `location` (and `check_id` became
/// a function of it).
pub const SCHEMA_VERSION: u32 = 4;

/// The location of a result that names none (written before schema version 4) and of a
/// checker whose `LOCATION` is not set.
pub const DEFAULT_LOCATION: &str = "default";

/// The UUID namespace of `check_id`s (a fixed random UUID; changing it changes every id).
pub const CHECK_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_7a0e_42d1_4b9e_9d3e_8f2a_6b7c_0d11);

/// The deterministic id of one scheduled probe: UUIDv5 (RFC 9562 §5.5) over
/// `"<target name>\n<location>\n<scheduled_at as RFC 3339 with nanoseconds>"`.
///
/// Two results with the same id describe the same scheduled slot of the same target seen from
/// the same location, so the sink keeps the first and drops replays: a checker that was cut
/// off and probed a slot its location's other replicas probed too publishes the same id.
/// Ids written before schema version 4 (`"<target>\n<scheduled_at>"`) stay as they were. A
/// location never holds a newline (`LOCATION` is validated), so the fields cannot run together.
pub fn check_id(target: &str, location: &str, scheduled_at: DateTime<Utc>) -> Uuid {
    let name = format!(
        "{target}\n{location}\n{}",
        scheduled_at.to_rfc3339_opts(SecondsFormat::Nanos, true)
    );
    Uuid::new_v5(&CHECK_ID_NAMESPACE, name.as_bytes())
}

/// Why a probe failed: a closed set, stored as its `snake_case` name (`body_too_large`).
///
/// The name is derived twice, by serde for the wire and by strum for labels and
/// [`ErrorKind::as_str`]; the unit test `error_kind_names_are_stable` proves they agree.
/// [`strum::IntoEnumIterator::iter`] lists every kind (metrics pre-register each label value).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorKind {
    /// The host name did not resolve (NXDOMAIN, no address of the wanted family, resolver error).
    Dns,
    /// The TCP connection failed (refused, unreachable, reset during connect).
    Connect,
    /// The TLS handshake failed (untrusted or expired certificate, name mismatch, protocol).
    Tls,
    /// The whole probe took longer than the target's timeout.
    Timeout,
    /// HTTP protocol failure: connection closed before the response headers, malformed response.
    Http,
    /// The response status code is not one of the target's expected codes.
    Status,
    /// Reading or decoding the response body failed.
    Body,
    /// The response body is larger than the configured cap.
    BodyTooLarge,
    /// The body regex did not match, or a must-not-match regex matched.
    Regex,
    /// A header condition failed (missing header, header regex).
    Header,
    /// More redirects than the target allows (also catches redirect loops).
    TooManyRedirects,
    /// The request could not be built (bad redirect location, unsupported scheme).
    Request,
    /// The proxy refused or failed the tunnel.
    Proxy,
}

impl ErrorKind {
    /// The `snake_case` name, as stored and used as a metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A phase of a probe, as blackbox_exporter names them in
/// `probe_http_duration_seconds{phase}`; [`Phases`] holds the time spent in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::Display, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Phase {
    /// Name resolution.
    Resolve,
    /// TCP connect.
    Connect,
    /// TLS handshake.
    Tls,
    /// Request sent until the response headers arrived.
    Processing,
    /// Response headers until the last body byte.
    Transfer,
}

/// The HTTP version of a response, in the form [`ProbeResult::http_version`] stores
/// (`HTTP/1.1`, `HTTP/2`; RFC 9110 §2.5 spells versions `HTTP/1.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::Display, strum::EnumString)]
pub enum HttpVersion {
    /// HTTP/0.9.
    #[strum(serialize = "HTTP/0.9")]
    Http09,
    /// HTTP/1.0.
    #[strum(serialize = "HTTP/1.0")]
    Http10,
    /// HTTP/1.1.
    #[strum(serialize = "HTTP/1.1")]
    Http11,
    /// HTTP/2.
    #[strum(serialize = "HTTP/2")]
    Http2,
    /// HTTP/3.
    #[strum(serialize = "HTTP/3")]
    Http3,
}

/// Time spent in each phase of the probe, in seconds, summed over redirect hops. Names and
/// meanings follow blackbox_exporter's `probe_http_duration_seconds{phase}`. A phase that did
/// not happen (no DNS for an IP literal, no TLS for plain HTTP, or the probe failed before it)
/// is null.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Phases {
    /// Name resolution.
    pub resolve: Option<f64>,
    /// TCP connect.
    pub connect: Option<f64>,
    /// TLS handshake.
    pub tls: Option<f64>,
    /// Request sent until the response headers arrived (server think time).
    pub processing: Option<f64>,
    /// Response headers until the last body byte.
    pub transfer: Option<f64>,
}

impl Phases {
    /// The time spent in `phase`, seconds; `None` when it did not happen.
    pub fn get(&self, phase: Phase) -> Option<f64> {
        *self.slot(phase)
    }

    /// Adds `seconds` to `phase` (hops of one probe add up).
    pub fn add(&mut self, phase: Phase, seconds: f64) {
        let slot = self.slot_mut(phase);
        *slot = Some(slot.unwrap_or(0.0) + seconds);
    }

    fn slot(&self, phase: Phase) -> &Option<f64> {
        match phase {
            Phase::Resolve => &self.resolve,
            Phase::Connect => &self.connect,
            Phase::Tls => &self.tls,
            Phase::Processing => &self.processing,
            Phase::Transfer => &self.transfer,
        }
    }

    fn slot_mut(&mut self, phase: Phase) -> &mut Option<f64> {
        match phase {
            Phase::Resolve => &mut self.resolve,
            Phase::Connect => &mut self.connect,
            Phase::Tls => &mut self.tls,
            Phase::Processing => &mut self.processing,
            Phase::Transfer => &mut self.transfer,
        }
    }
}

/// What the TLS handshake of the final hop showed. Absent when no certificate was read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsInfo {
    /// Negotiated protocol, e.g. `TLSv1_3`.
    pub version: Option<String>,
    /// Negotiated cipher suite, IANA name, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: Option<String>,
    /// notAfter of the leaf certificate (RFC 5280 §4.1.2.5).
    pub leaf_not_after: Option<DateTime<Utc>>,
    /// Earliest notAfter of the verified chain, leaf to trust anchor (what
    /// blackbox_exporter's `probe_ssl_last_chain_expiry_timestamp_seconds` reads from Go's
    /// `VerifiedChains`): a certificate the server sends that is not on the verified path does
    /// not count. The anchor counts when its certificate is known (a `ca_file`, the system
    /// store). Without verification (`insecure_skip_verify`), the same as
    /// `presented_earliest_not_after`.
    pub earliest_not_after: Option<DateTime<Utc>>,
    /// Earliest notAfter among all certificates the server presented, verified or not
    /// (blackbox_exporter's `probe_ssl_earliest_cert_expiry`). Added in schema version 3.
    pub presented_earliest_not_after: Option<DateTime<Utc>>,
    /// Subject of the leaf certificate, RFC 4514 string.
    pub leaf_subject: Option<String>,
}

fn default_location() -> String {
    DEFAULT_LOCATION.to_string()
}

/// One probe of one target: the message published to Kafka and the row the sink writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Version of this schema that wrote the message ([`SCHEMA_VERSION`]).
    #[serde(default)]
    pub schema_version: u32,
    /// Deterministic id of the scheduled slot, see [`check_id`].
    pub check_id: Uuid,
    /// The checker instance that ran the probe (`INSTANCE_ID`, default the host name).
    #[serde(default)]
    pub instance_id: String,
    /// Where the probe ran from (the checker's `LOCATION`); [`DEFAULT_LOCATION`] in messages
    /// written before schema version 4. Added in schema version 4.
    #[serde(default = "default_location")]
    pub location: String,
    /// Target name (unique within a checker's target list).
    pub target: String,
    /// Target URL as configured, without credentials (those moved to basic auth).
    pub url: String,
    /// When the probe was due (the fixed-rate slot).
    pub scheduled_at: DateTime<Utc>,
    /// When the probe really started.
    pub started_at: DateTime<Utc>,
    /// `started_at - scheduled_at`, seconds: scheduling lateness.
    #[serde(default)]
    pub lateness_seconds: f64,
    /// The timeout that bounded the whole probe, seconds.
    #[serde(default)]
    pub timeout_seconds: f64,
    /// Total probe duration, seconds, DNS to last body byte over all hops (or until failure).
    #[serde(default)]
    pub duration_seconds: f64,
    /// Whether every condition held: connected, status expected, body and header conditions met.
    pub success: bool,
    /// Why the probe failed, when it did: an [`ErrorKind`] name. Kept as a string here so a
    /// consumer keeps kinds added by a newer producer.
    #[serde(default)]
    pub error_kind: Option<String>,
    /// Human-readable cause of the failure.
    #[serde(default)]
    pub error: Option<String>,
    /// HTTP status of the final response; null when no response arrived.
    #[serde(default)]
    pub status_code: Option<u16>,
    /// HTTP status of the first response (differs from `status_code` after redirects).
    #[serde(default)]
    pub first_status_code: Option<u16>,
    /// Redirects followed.
    #[serde(default)]
    pub redirects: u32,
    /// URL of the final response (after redirects), without credentials.
    #[serde(default)]
    pub final_url: Option<String>,
    /// HTTP version of the final response: `HTTP/1.1`, `HTTP/2`.
    #[serde(default)]
    pub http_version: Option<String>,
    /// IP address of the final hop's connection: with several addresses (Happy Eyeballs), the
    /// one that answered; when none did, the last one tried. A proxy's address when proxied.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// `ipv4` or `ipv6`.
    #[serde(default)]
    pub ip_family: Option<String>,
    /// Whether the body regex conditions held; null when the target has none.
    #[serde(default)]
    pub regex_matched: Option<bool>,
    /// Body bytes read, after content decoding.
    #[serde(default)]
    pub body_bytes: Option<u64>,
    /// The final response's `Content-Length` header, when present.
    #[serde(default)]
    pub content_length: Option<u64>,
    /// Phase timings.
    #[serde(default)]
    pub phases: Phases,
    /// TLS details of the final hop.
    #[serde(default)]
    pub tls: Option<TlsInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_id_is_deterministic_and_slot_specific() {
        let t = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(check_id("api", "eu", t), check_id("api", "eu", t));
        assert_ne!(check_id("api", "eu", t), check_id("web", "eu", t));
        assert_ne!(check_id("api", "eu", t), check_id("api", "us", t));
        assert_ne!(
            check_id("api", "eu", t),
            check_id("api", "eu", t + chrono::Duration::nanoseconds(1))
        );
        assert_eq!(check_id("api", "eu", t).get_version_num(), 5);
    }

    /// A message written before schema version 4 has no `location`: it reads as the default
    /// location, so its row joins the history of a single-location deployment.
    #[test]
    fn a_version_2_message_decodes_as_the_default_location() {
        let v2 = r#"{"schema_version":2,"check_id":"6f1c8a4e-1f1a-5b9a-9a4e-1f1a5b9a9a4e","instance_id":"c1",
            "target":"a","url":"http://x/","scheduled_at":"2026-01-01T00:00:00Z",
            "started_at":"2026-01-01T00:00:00.001Z","success":true,"status_code":200}"#;
        let r: ProbeResult = serde_json::from_str(v2).unwrap();
        assert_eq!(
            (r.location.as_str(), r.schema_version, r.status_code),
            ("default", 2, Some(200))
        );
    }

    #[test]
    fn minimal_and_extended_messages_decode() {
        let minimal = r#"{"check_id":"6f1c8a4e-1f1a-5b9a-9a4e-1f1a5b9a9a4e","target":"a","url":"http://x/",
            "scheduled_at":"2026-01-01T00:00:00Z","started_at":"2026-01-01T00:00:00.001Z","success":true,
            "some_future_field":{"x":1}}"#;
        let r: ProbeResult = serde_json::from_str(minimal).unwrap();
        assert!(r.success);
        assert_eq!(r.status_code, None);
        assert_eq!(r.phases, Phases::default());
        let again: ProbeResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    /// Found by `make fuzz` (target `probe_result`): without serde_json's `float_roundtrip`
    /// feature, about 3.5 % of durations as the checker writes them (`Duration::as_secs_f64`
    /// of a nanosecond count up to 10 s, printed in the shortest form that round-trips) were
    /// read back one unit in the last place off, so PostgreSQL stored another value than the
    /// checker measured.
    #[test]
    fn every_float_decodes_to_the_value_that_was_encoded() {
        let minimal = r#"{"check_id":"6f1c8a4e-1f1a-5b9a-9a4e-1f1a5b9a9a4e","target":"a","url":"http://x/",
            "scheduled_at":"2026-01-01T00:00:00Z","started_at":"2026-01-01T00:00:00.001Z","success":true}"#;
        let mut r: ProbeResult = serde_json::from_str(minimal).unwrap();
        for x in [2.729_756_367_000_000_2, 4.444_444_444_444_445_5e59] {
            r.duration_seconds = x;
            r.phases.connect = Some(x);
            let again: ProbeResult = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
            assert_eq!(again.duration_seconds.to_bits(), x.to_bits(), "{x:?}");
            assert_eq!(again, r);
        }
    }

    #[test]
    fn error_kind_names_are_stable() {
        use strum::IntoEnumIterator;
        assert_eq!(ErrorKind::iter().count(), 13);
        for k in ErrorKind::iter() {
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.as_str()));
            assert_eq!(k.as_str().parse::<ErrorKind>().unwrap(), k);
        }
        assert_eq!(ErrorKind::BodyTooLarge.as_str(), "body_too_large");
        assert_eq!(ErrorKind::TooManyRedirects.to_string(), "too_many_redirects");
    }

    #[test]
    fn phases_and_versions_have_blackbox_names() {
        use strum::IntoEnumIterator;
        let names: Vec<&str> = Phase::iter().map(Into::into).collect();
        assert_eq!(names, ["resolve", "connect", "tls", "processing", "transfer"]);
        let mut p = Phases::default();
        p.add(Phase::Tls, 0.25);
        p.add(Phase::Tls, 0.5);
        assert_eq!(
            (p.tls, p.get(Phase::Tls), p.get(Phase::Connect)),
            (Some(0.75), Some(0.75), None)
        );
        assert_eq!(HttpVersion::Http11.to_string(), "HTTP/1.1");
        assert_eq!("HTTP/2".parse::<HttpVersion>().unwrap(), HttpVersion::Http2);
    }
}
