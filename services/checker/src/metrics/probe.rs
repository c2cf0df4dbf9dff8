//! blackbox_exporter's per-target `probe_*` series: each target's last result, kept as one
//! small [`Last`] and written out as exposition text on scrape.
//!
//! Names, help, labels and values are blackbox_exporter's (`prober/http.go`), as the checker
//! served them before from one `GaugeVec` per name. Those cost a label map, a `LabelPair`
//! per label and an atomic per series, 13 series per target (≈130,000 at 10,000 targets),
//! and a scrape cloned every series into a `MetricFamily` before writing the text. Here a
//! target is its name (one `Arc<str>`) and a `Last` of about 100 bytes, and a scrape copies
//! the map under the lock, then writes the text from the copy: the same bytes prometheus'
//! `TextEncoder` writes for those `GaugeVec`s (families by name, series by label values,
//! `phase` before `target`; a unit test compares the two).
//!
//! This module never decides a value; each is read off the [`ProbeResult`] as before.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use common::result::{HttpVersion, Phase, ProbeResult};
use strum::IntoEnumIterator;

/// A target's last result, as much of it as the `probe_*` series show.
#[derive(Debug, Clone, Copy)]
struct Last {
    duration: f64,
    /// Seconds per [`Phase`], indexed by `phase as usize`; 0 when the phase did not happen.
    phases: [f64; 5],
    content_length: Option<u64>,
    body_bytes: u64,
    /// Earliest `notAfter` of the presented certificates, Unix seconds; `None`: no series.
    cert_expiry: Option<i64>,
    redirects: u32,
    status_code: u16,
    version: Option<HttpVersion>,
    success: bool,
    regex_failed: bool,
}

impl Last {
    fn of(r: &ProbeResult) -> Self {
        let mut phases = [0.0; 5];
        for phase in Phase::iter() {
            phases[phase as usize] = r.phases.get(phase).unwrap_or(0.0);
        }
        Self {
            duration: r.duration_seconds,
            phases,
            content_length: r.content_length,
            body_bytes: r.body_bytes.unwrap_or(0),
            cert_expiry: r
                .tls
                .as_ref()
                .and_then(|t| t.earliest_not_after)
                .map(|at| at.timestamp()),
            redirects: r.redirects,
            status_code: r.status_code.unwrap_or(0),
            version: r.http_version.as_deref().and_then(|v| v.parse().ok()),
            success: r.success,
            regex_failed: r.regex_matched == Some(false),
        }
    }
}

fn flag(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// `probe_http_version`'s value: 1.0, 1.1 or 2; 0 when there was no response. hyper's client
/// speaks neither HTTP/0.9 nor HTTP/3, so those read 0 as well.
fn version_number(v: Option<HttpVersion>) -> f64 {
    match v {
        Some(HttpVersion::Http10) => 1.0,
        Some(HttpVersion::Http11) => 1.1,
        Some(HttpVersion::Http2) => 2.0,
        Some(HttpVersion::Http09 | HttpVersion::Http3) | None => 0.0,
    }
}

/// How a family's series are made from a target's [`Last`].
enum Series {
    /// One series labelled `target`, absent when the value is `None`.
    One(fn(&Last) -> Option<f64>),
    /// One series per [`Phase`], labelled `phase` and `target`.
    ByPhase,
}

/// One `probe_*` family (all gauges).
struct Family {
    name: &'static str,
    help: &'static str,
    series: Series,
}

/// Every `probe_*` family, sorted by name (the order a registry's `gather` gives them).
const FAMILIES: [Family; 10] = [
    Family {
        name: "probe_duration_seconds",
        help: "How long the last probe took, seconds.",
        series: Series::One(|l| Some(l.duration)),
    },
    Family {
        name: "probe_failed_due_to_regex",
        help: "Whether the last probe failed because of a body regex.",
        series: Series::One(|l| Some(flag(l.regex_failed))),
    },
    Family {
        name: "probe_http_content_length",
        help: "Content-Length of the last probe's response (-1 when absent).",
        series: Series::One(|l| Some(l.content_length.map_or(-1.0, |n| n as f64))),
    },
    Family {
        name: "probe_http_duration_seconds",
        help: "Duration of the last probe's HTTP phases, summed over redirects, seconds.",
        series: Series::ByPhase,
    },
    Family {
        name: "probe_http_redirects",
        help: "Redirects followed by the last probe.",
        series: Series::One(|l| Some(f64::from(l.redirects))),
    },
    Family {
        name: "probe_http_status_code",
        help: "Response HTTP status code of the last probe (0 when none).",
        series: Series::One(|l| Some(f64::from(l.status_code))),
    },
    Family {
        name: "probe_http_uncompressed_body_length",
        help: "Body length of the last probe's response after decoding, bytes.",
        series: Series::One(|l| Some(l.body_bytes as f64)),
    },
    Family {
        name: "probe_http_version",
        help: "HTTP version of the last probe's response.",
        series: Series::One(|l| Some(version_number(l.version))),
    },
    Family {
        name: "probe_ssl_earliest_cert_expiry",
        help: "Earliest notAfter of the presented certificates, Unix seconds.",
        // No certificate read: no series rather than the epoch.
        series: Series::One(|l| l.cert_expiry.map(|at| at as f64)),
    },
    Family {
        name: "probe_success",
        help: "Whether the last probe was a success (1) or not (0).",
        series: Series::One(|l| Some(flag(l.success))),
    },
];

/// The `probe_*` series of the targets recorded and not forgotten. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub(super) struct ProbeSeries {
    last: Mutex<BTreeMap<Arc<str>, Last>>,
}

impl ProbeSeries {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Arc<str>, Last>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets target `r.target`'s series from `r` when `keep()` holds, checked under the lock
    /// [`ProbeSeries::forget`] takes (so a target forgotten meanwhile stays forgotten).
    pub(super) fn record_if(&self, r: &ProbeResult, keep: impl FnOnce() -> bool) {
        let last = Last::of(r);
        let mut map = self.lock();
        if !keep() {
            return;
        }
        match map.get_mut(r.target.as_str()) {
            Some(slot) => *slot = last,
            None => {
                map.insert(Arc::from(r.target.as_str()), last);
            }
        }
    }

    /// Removes every series of target `name` (unknown names are ignored).
    pub(super) fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Writes every family that has a series to `out`, in the text exposition format.
    ///
    /// # Errors
    /// `out`'s.
    pub(super) fn encode(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        // A copy, so that probes finishing during the (much longer) writing never wait.
        let targets: Vec<(Arc<str>, Last)> = self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect();
        if targets.is_empty() {
            return Ok(());
        }
        let escaped: Vec<std::borrow::Cow<'_, str>> = targets.iter().map(|(name, _)| escape(name)).collect();
        for family in &FAMILIES {
            match family.series {
                Series::One(value) => {
                    let mut values = escaped
                        .iter()
                        .zip(&targets)
                        .filter_map(|(name, (_, last))| Some((name, value(last)?)))
                        .peekable();
                    if values.peek().is_none() {
                        continue;
                    }
                    header(out, family)?;
                    for (target, v) in values {
                        writeln!(out, "{}{{target=\"{target}\"}} {v}", family.name)?;
                    }
                }
                Series::ByPhase => {
                    header(out, family)?;
                    // Label values sort the series: `phase` (the first label name) first.
                    let mut phases: Vec<Phase> = Phase::iter().collect();
                    phases.sort_by_key(|p| <&'static str>::from(*p));
                    for phase in phases {
                        let label: &'static str = phase.into();
                        for (target, (_, last)) in escaped.iter().zip(&targets) {
                            let v = last.phases[phase as usize];
                            writeln!(out, "{}{{phase=\"{label}\",target=\"{target}\"}} {v}", family.name)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn header(out: &mut dyn std::io::Write, family: &Family) -> std::io::Result<()> {
    writeln!(
        out,
        "# HELP {} {}\n# TYPE {} gauge",
        family.name, family.help, family.name
    )
}

/// A label value as the text format writes it: `\`, `"` and line feeds escaped.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    let mut s = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.into()
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, GaugeVec, Opts, Registry};

    use super::*;

    /// What the checker served before: one `GaugeVec` per family, set as the old
    /// `ProbeGauges::record` set them, written by prometheus' `TextEncoder`.
    fn reference(results: &[ProbeResult]) -> String {
        let reg = Registry::new();
        let vec = |family: &Family| {
            let labels: &[&str] = match family.series {
                Series::One(_) => &["target"],
                Series::ByPhase => &["target", "phase"],
            };
            let g = GaugeVec::new(Opts::new(family.name, family.help), labels).unwrap();
            reg.register(Box::new(g.clone())).unwrap();
            (family.name, g)
        };
        let g: BTreeMap<&str, GaugeVec> = FAMILIES.iter().map(vec).collect();
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        for r in results {
            let t = [r.target.as_str()];
            g["probe_success"].with_label_values(&t).set(b(r.success));
            g["probe_duration_seconds"]
                .with_label_values(&t)
                .set(r.duration_seconds);
            g["probe_http_status_code"]
                .with_label_values(&t)
                .set(f64::from(r.status_code.unwrap_or(0)));
            for phase in Phase::iter() {
                g["probe_http_duration_seconds"]
                    .with_label_values(&[r.target.as_str(), phase.into()])
                    .set(r.phases.get(phase).unwrap_or(0.0));
            }
            g["probe_http_redirects"]
                .with_label_values(&t)
                .set(f64::from(r.redirects));
            g["probe_http_content_length"]
                .with_label_values(&t)
                .set(r.content_length.map_or(-1.0, |n| n as f64));
            g["probe_http_uncompressed_body_length"]
                .with_label_values(&t)
                .set(r.body_bytes.unwrap_or(0) as f64);
            match r.tls.as_ref().and_then(|t| t.earliest_not_after) {
                Some(at) => g["probe_ssl_earliest_cert_expiry"]
                    .with_label_values(&t)
                    .set(at.timestamp() as f64),
                None => {
                    let _ = g["probe_ssl_earliest_cert_expiry"].remove_label_values(&t);
                }
            }
            g["probe_failed_due_to_regex"]
                .with_label_values(&t)
                .set(b(r.regex_matched == Some(false)));
            let version = r.http_version.as_deref().and_then(|v| v.parse::<HttpVersion>().ok());
            g["probe_http_version"]
                .with_label_values(&t)
                .set(version_number(version));
        }
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&reg.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn encoded(s: &ProbeSeries) -> String {
        let mut buf = Vec::new();
        s.encode(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn result(json: serde_json::Value) -> ProbeResult {
        let mut base = serde_json::json!({
            "check_id": "6f1c8a4e-1f1a-5b9a-9a4e-1f1a5b9a9a4e", "url": "http://x/",
            "scheduled_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:00.001Z",
            "success": true,
        });
        base.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn families_are_sorted_by_name() {
        let names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    /// Byte for byte what prometheus wrote for the `GaugeVec`s: every field set and unset,
    /// every HTTP version, names that need escaping, a target recorded twice (the last
    /// result wins, and a certificate's series goes when a probe read none).
    #[test]
    fn the_text_is_what_the_gauge_vecs_wrote() {
        let results = [
            result(
                serde_json::json!({"target": "b", "duration_seconds": 0.125, "status_code": 200,
                "http_version": "HTTP/1.1", "redirects": 2, "regex_matched": true, "body_bytes": 1234,
                "content_length": 1234, "tls": {"earliest_not_after": "2030-01-01T00:00:00Z"},
                "phases": {"resolve": 0.001, "connect": 0.0002, "tls": 0.003, "processing": 0.04, "transfer": 1e-5}}),
            ),
            result(
                serde_json::json!({"target": "a \"quoted\" \\ name\nx", "success": false,
                "error_kind": "connection_refused", "duration_seconds": 3.0, "http_version": "HTTP/2"}),
            ),
            result(
                serde_json::json!({"target": "c", "http_version": "HTTP/1.0", "regex_matched": false,
                "tls": {"earliest_not_after": "2027-06-01T12:00:00Z"}}),
            ),
            result(serde_json::json!({"target": "d", "http_version": "HTTP/3"})),
            result(serde_json::json!({"target": "c", "http_version": "HTTP/1.0", "duration_seconds": 0.5})),
        ];
        let s = ProbeSeries::default();
        for r in &results {
            s.record_if(r, || true);
        }
        let text = encoded(&s);
        assert_eq!(text, reference(&results));
        assert!(
            text.contains("probe_ssl_earliest_cert_expiry{target=\"b\"} 1893456000\n"),
            "{text}"
        );
        assert!(!text.contains("probe_ssl_earliest_cert_expiry{target=\"c\"}"), "{text}");
        assert!(text.contains("{target=\"a \\\"quoted\\\" \\\\ name\\nx\"}"), "{text}");
    }

    #[test]
    fn nothing_recorded_writes_nothing_and_forget_removes_a_target() {
        let s = ProbeSeries::default();
        assert_eq!(encoded(&s), "");
        let a = result(serde_json::json!({"target": "a"}));
        let b = result(serde_json::json!({"target": "b"}));
        s.record_if(&a, || true);
        s.record_if(&b, || true);
        s.forget("a");
        s.forget("never-recorded");
        s.record_if(&a, || false);
        assert_eq!(encoded(&s), reference(&[b]));
    }
}
