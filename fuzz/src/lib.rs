//! What the fuzz targets check, kept out of `fuzz_targets/` so each target is one line and the
//! checks can be pointed at other code (the sink's own decode function, say) in one place.

use std::io::Write as _;
use std::sync::OnceLock;

use checker::target::{load_targets, Defaults, Target};
use common::config::{ConfigError, Env};
use common::result::ProbeResult;

/// The decoder under test: bytes of one Kafka message to a [`ProbeResult`], as the sink
/// decodes them (`serde_json::from_slice`, in `sink::consume`). When the sink's decode function
/// becomes callable from outside, call it here instead.
pub fn decode(bytes: &[u8]) -> Result<ProbeResult, String> {
    serde_json::from_slice::<ProbeResult>(bytes).map_err(|e| e.to_string())
}

/// Decoding never panics, and a decoded message survives a round trip: what the checker
/// writes (`serde_json::to_vec`) for a result decodes to the same result.
pub fn check_probe_result(bytes: &[u8]) {
    let Ok(result) = decode(bytes) else { return };
    let encoded = serde_json::to_vec(&result).expect("a decoded result encodes");
    let again = decode(&encoded).unwrap_or_else(|e| {
        panic!(
            "the encoding of a decoded result does not decode: {e}\n{}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(again, result, "round trip changed the result");
}

/// `TARGETS=<bytes>` (the JSON form): parsing never panics, and what it accepts holds.
pub fn check_targets_json(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if names_a_special_file(serde_json::from_str::<serde_json::Value>(text).ok()) {
        return;
    }
    check_accepted(load_targets(&Env::from_pairs([("TARGETS", text)]), &defaults()));
}

/// `TARGETS_FILE=<a file holding bytes>` (the YAML or JSON form): parsing never panics, and
/// what it accepts holds.
pub fn check_targets_yaml(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let value = serde_yaml::from_str::<serde_yaml::Value>(text).ok();
    if names_a_special_file(value.and_then(|v| serde_json::to_value(v).ok())) {
        return;
    }
    static FILE: OnceLock<tempfile::NamedTempFile> = OnceLock::new();
    let file = FILE.get_or_init(|| tempfile::NamedTempFile::new().expect("temporary file"));
    let mut f = std::fs::File::create(file.path()).expect("rewrite the temporary file");
    f.write_all(bytes).expect("write the temporary file");
    drop(f);
    let path = file.path().to_str().expect("UTF-8 temporary path");
    check_accepted(load_targets(&Env::from_pairs([("TARGETS_FILE", path)]), &defaults()));
}

/// The checker's defaults when no variable is set (`DEFAULT_INTERVAL`, `DEFAULT_TIMEOUT`,
/// `BODY_MAX_BYTES`), and no proxy.
fn defaults() -> Defaults {
    checker::config::target_defaults(&Env::default()).expect("the defaults are valid")
}

/// What the module doc of `checker::target` promises for an accepted list ("every option is
/// checked here, so a probe never meets an invalid setting").
fn check_accepted(parsed: Result<Vec<Target>, ConfigError>) {
    let Ok(targets) = parsed else { return };
    assert!(!targets.is_empty(), "an empty list was accepted");
    let mut names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "duplicate names accepted: {names:?}"
    );
    for t in &targets {
        assert!(!t.name.is_empty() && t.name.len() <= 200, "name {:?}", t.name);
        assert!(matches!(t.url.scheme(), "http" | "https"), "url {}", t.url);
        assert!(t.url.host_str().is_some(), "url without a host: {}", t.url);
        assert!(!t.interval.is_zero(), "{}: zero interval accepted", t.name);
        assert!(!t.timeout.is_zero(), "{}: zero timeout accepted", t.name);
        assert!(t.timeout <= t.interval, "{}: timeout longer than the interval", t.name);
        assert!(t.body_max_bytes > 0, "{}: zero body cap accepted", t.name);
        assert!(!t.valid_status.is_empty(), "{}: no valid status codes", t.name);
        for r in &t.valid_status {
            assert!(
                (100..=599).contains(r.start()) && (100..=599).contains(r.end()) && r.start() <= r.end(),
                "{}: status range {r:?} accepted",
                t.name
            );
        }
    }
}

/// True when a string in `value` names a device, a FIFO or a socket, or a path under `/proc`
/// or `/sys`: the parser reads `*_file` options, and reading `/dev/zero` or
/// a FIFO never ends. That is the operator's own configuration, not a parser bug, so such inputs
/// are skipped.
fn names_a_special_file(value: Option<serde_json::Value>) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => special(s),
            serde_json::Value::Array(a) => a.iter().any(walk),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| special(k) || walk(v)),
            _ => false,
        }
    }
    fn special(s: &str) -> bool {
        use std::os::unix::fs::FileTypeExt as _;
        s.contains("/proc")
            || s.contains("/sys")
            || std::fs::metadata(s).is_ok_and(|m| {
                let t = m.file_type();
                t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket()
            })
    }
    value.as_ref().is_some_and(walk)
}
