//! Realistic probe results for the sink throughput: 1,000 targets (half HTTPS with TLS
//! details), one result per target per second, ~2 % failures with error text, every field the
//! checker fills. Deterministic in the index, so the Kafka pre-fill and the raw COPY carry the
//! same rows.

use chrono::{DateTime, Duration, Utc};
use common::result::{check_id, Phases, ProbeResult, TlsInfo, SCHEMA_VERSION};

/// Distinct targets in the generated data.
pub const TARGETS: usize = 1_000;

/// A stable pseudo-random number for `(i, salt)` (splitmix64).
fn rnd(i: u64, salt: u64) -> u64 {
    let mut z = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform float in `[lo, hi)` for `(i, salt)`.
fn uniform(i: u64, salt: u64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * (rnd(i, salt) >> 11) as f64 / (1u64 << 53) as f64
}

/// The outcome of result `n`: 2 % time out, 1 % answer 503, the rest succeed with 200.
/// `(success, error_kind, error, status code, whether every phase ran)`.
fn outcome(n: u64) -> (bool, Option<String>, Option<String>, Option<u16>, bool) {
    match rnd(n, 7) % 100 {
        0 | 1 => (
            false,
            Some("timeout".to_string()),
            Some("probe timed out after 5s during processing".to_string()),
            None,
            false,
        ),
        2 => (
            false,
            Some("status".to_string()),
            Some("status 503 is not one of the expected codes [200..=299]".to_string()),
            Some(503),
            true,
        ),
        _ => (true, None, None, Some(200), true),
    }
}

/// The `i`-th result: target `i % 1000`, slot `i / 1000` seconds after `base` (plus a
/// per-target phase). Distinct `i` give distinct `check_id`s.
pub fn result(i: usize, base: DateTime<Utc>) -> ProbeResult {
    let t = i % TARGETS;
    let slot = (i / TARGETS) as i64;
    let n = i as u64;
    let https = t.is_multiple_of(2);
    let target = format!("svc-{t:04}");
    let host = format!("svc-{t:04}.prod.example.com");
    let url = format!("{}://{host}/healthz", if https { "https" } else { "http" });
    let scheduled_at = base + Duration::seconds(slot) + Duration::microseconds((t as i64) * 997);
    let lateness = uniform(n, 1, 0.000_05, 0.000_6);
    let started_at = scheduled_at + Duration::nanoseconds((lateness * 1e9) as i64);
    let resolve = uniform(n, 2, 0.000_2, 0.002);
    let connect = uniform(n, 3, 0.000_1, 0.003);
    let tls = https.then(|| uniform(n, 4, 0.002, 0.012));
    let processing = uniform(n, 5, 0.001, 0.08);
    let transfer = uniform(n, 6, 0.000_01, 0.001);
    let (success, error_kind, error, status, phases_done) = outcome(n);
    let duration = if success || status.is_some() {
        resolve + connect + tls.unwrap_or(0.0) + processing + transfer
    } else {
        5.0
    };
    let body = 2_000 + (rnd(n, 8) % 1_500);
    ProbeResult {
        schema_version: SCHEMA_VERSION,
        check_id: check_id(&target, common::result::DEFAULT_LOCATION, scheduled_at),
        instance_id: format!("checker-{}", t % 3),
        location: common::result::DEFAULT_LOCATION.into(),
        target,
        url: url.clone(),
        scheduled_at,
        started_at,
        lateness_seconds: lateness,
        timeout_seconds: 5.0,
        duration_seconds: duration,
        success,
        error_kind,
        error,
        status_code: status,
        first_status_code: status,
        redirects: 0,
        final_url: phases_done.then(|| url.clone()),
        http_version: phases_done.then(|| if https { "HTTP/2" } else { "HTTP/1.1" }.to_string()),
        ip_address: Some(format!("10.{}.{}.{}", t / 250, t % 250, 10 + t % 7)),
        ip_family: Some("ipv4".into()),
        regex_matched: phases_done.then_some(success),
        body_bytes: phases_done.then_some(body),
        content_length: phases_done.then_some(body),
        phases: Phases {
            resolve: Some(resolve),
            connect: Some(connect),
            tls,
            processing: phases_done.then_some(processing),
            transfer: phases_done.then_some(transfer),
        },
        tls: https.then(|| TlsInfo {
            version: Some("TLSv1_3".into()),
            cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
            leaf_not_after: Some(base + Duration::days(40 + (t as i64 % 50))),
            earliest_not_after: Some(base + Duration::days(40 + (t as i64 % 50))),
            leaf_subject: Some(format!("CN={host}")),
            ..TlsInfo::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_and_deterministic() {
        let base = Utc::now();
        let ids: std::collections::HashSet<_> = (0..5_000).map(|i| result(i, base).check_id).collect();
        assert_eq!(ids.len(), 5_000);
        assert_eq!(result(42, base), result(42, base));
        let json = serde_json::to_vec(&result(0, base)).unwrap();
        assert!(json.len() > 600, "realistic size: {}", json.len());
    }
}
