//! The checker binary with values it cannot use (durations too long to add to a time, a log
//! filter that does not parse): exit code 2 and a message naming the variable, never a panic
//! (before, `INTERVAL=1000000000000d` panicked in the scheduler and `DEFAULT_TIMEOUT=1e30`
//! while reading the configuration).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn overflowing_durations_exit_2_naming_the_variable() {
    exit_2_naming_the_variable(&[
        ("INTERVAL", "10000000000000000d"),
        ("INTERVAL", "1000000000000d"),
        ("DEFAULT_TIMEOUT", "1e30"),
        ("SHUTDOWN_GRACE_PERIOD", "1000000000000d"),
        ("TARGETS", r#"[{"url": "http://127.0.0.1:1/", "interval": 1e16}]"#),
    ]);
}

/// Before, an unparsable `RUST_LOG` was silently replaced by the default filter.
#[test]
fn an_unparsable_log_filter_exits_2_naming_the_variable() {
    exit_2_naming_the_variable(&[("RUST_LOG", "checker=loud"), ("RUST_LOG", "[unclosed")]);
}

#[test]
fn a_per_target_metrics_setting_other_than_on_or_off_exits_2_naming_the_variable() {
    exit_2_naming_the_variable(&[("PER_TARGET_METRICS", "maybe"), ("PER_TARGET_METRICS", "1")]);
}

/// Starts the checker with each `(var, value)` in turn and asserts it exits 2 at once with a
/// message naming `var`.
fn exit_2_naming_the_variable(cases: &[(&str, &str)]) {
    for &(var, value) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_checker"));
        cmd.env_clear()
            .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if var != "TARGETS" {
            cmd.env("TARGET", "http://127.0.0.1:1/");
        }
        let mut child = cmd.env(var, value).spawn().expect("checker binary");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "{var}={value} must exit 2 at once; stderr: {stderr}"
        );
        assert!(
            stderr.contains(var),
            "{var}={value}: stderr names the variable: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
