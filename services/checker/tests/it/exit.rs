//! The checker binary with values it cannot use (durations too long to add to a time, a log
//! filter that does not parse): exit code 2 and a message naming the variable, never a panic
//! (before, `INTERVAL=1000000000000d` panicked in the scheduler and `DEFAULT_TIMEOUT=1e30`
//! while reading the configuration). And `WORKER_THREADS`, which the runtime is built with:
//! an invalid one exits 2, a valid one is the worker count a running checker reports.
//! `TOKIO_WORKER_THREADS`, which tokio panicked on. `REALTIME_PRIORITY`: outside 1–99, or
//! without the capability it needs, exit 2; with it, every thread of the checker runs under
//! `SCHED_FIFO` at that priority.

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

#[test]
fn a_worker_count_that_is_not_a_positive_number_exits_2_naming_the_variable() {
    exit_2_naming_the_variable(&[
        ("WORKER_THREADS", "0"),
        ("WORKER_THREADS", "two"),
        ("WORKER_THREADS", "-1"),
    ]);
}

/// Before, tokio panicked reading it (`WORKER_THREADS` unset).
#[test]
fn an_invalid_tokio_worker_threads_exits_2_naming_the_variable() {
    exit_2_naming_the_variable(&[("TOKIO_WORKER_THREADS", "0"), ("TOKIO_WORKER_THREADS", "two")]);
}

#[test]
fn a_realtime_priority_outside_1_to_99_exits_2_naming_the_variable() {
    exit_2_naming_the_variable(&[
        ("REALTIME_PRIORITY", "0"),
        ("REALTIME_PRIORITY", "100"),
        ("REALTIME_PRIORITY", "high"),
    ]);
}

/// The scheduling policy and real-time priority of every thread of `pid`
/// (`/proc/<pid>/task/*/stat` fields 41 and 40, `proc(5)`), by thread name.
fn thread_policies(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // The name, in parentheses, may hold spaces: the fields after it start at field 3.
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        out.push((name, fields[41 - 3].parse().unwrap(), fields[40 - 3].parse().unwrap()));
    }
    out
}

/// Whether this process may use real-time policies (root holds `CAP_SYS_NICE`).
fn privileged() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 23) != 0) // CAP_SYS_NICE
}

/// With `CAP_SYS_NICE`, `REALTIME_PRIORITY=N` puts every thread under `SCHED_FIFO` (policy 1)
/// at N: the runtime's workers and librdkafka's threads, which start after the policy is set.
/// Unset, none is.
#[test]
fn realtime_priority_puts_every_thread_of_the_checker_under_sched_fifo() {
    if !privileged() {
        eprintln!("skipped: no CAP_SYS_NICE here (CI runs as root)");
        return;
    }
    for (setting, policy, priority) in [(Some("37"), 1, 37), (None, 0, 0)] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_checker"));
        cmd.env_clear()
            .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
            .env("ADMIN_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .env("TARGET", "http://127.0.0.1:1/")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = setting {
            cmd.env("REALTIME_PRIORITY", p);
        }
        let mut child = cmd.spawn().expect("checker binary");
        // Serving /metrics: the runtime and the producer (librdkafka's threads) are up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while get_metrics(port).is_none_or(|m| !m.contains("healthcheck_checker_runtime_worker_threads")) {
            assert!(Instant::now() < deadline, "no /metrics from the checker");
            std::thread::sleep(Duration::from_millis(100));
        }
        let threads = thread_policies(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            threads.iter().any(|(n, ..)| n.starts_with("rdk:")) && threads.iter().any(|(n, ..)| n == "tokio-rt-worker"),
            "{threads:?}"
        );
        for (name, p, prio) in &threads {
            assert_eq!(
                (*p, *prio),
                (policy, priority),
                "thread {name}, REALTIME_PRIORITY={setting:?}"
            );
        }
    }
}

/// Without `CAP_SYS_NICE` (dropped from the bounding and inheritable sets by `setpriv`), the
/// policy cannot be had: exit 2 naming the variable, rather than run without it.
#[test]
fn a_realtime_priority_without_the_capability_exits_2_naming_the_variable() {
    let mut cmd = if privileged() {
        let mut c = Command::new("setpriv");
        c.args(["--inh-caps=-sys_nice", "--bounding-set=-sys_nice", "--"]);
        c.arg(env!("CARGO_BIN_EXE_checker"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_checker"))
    };
    let out = cmd
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("TARGET", "http://127.0.0.1:1/")
        .env("REALTIME_PRIORITY", "50")
        .output()
        .expect("checker binary (and setpriv, from util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("REALTIME_PRIORITY"), "{stderr}");
}

/// `WORKER_THREADS=N` gives the runtime N worker threads
/// (`healthcheck_checker_runtime_worker_threads` on `/metrics`), whatever
/// `TOKIO_WORKER_THREADS` says; unset, one per CPU.
#[test]
fn the_runtime_has_as_many_workers_as_worker_threads_says() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (setting, expected) in [(Some("1"), 1), (Some("3"), 3), (None, cpus)] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_checker"));
        cmd.env_clear()
            .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
            .env("ADMIN_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .env("TARGET", "http://127.0.0.1:1/")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(n) = setting {
            cmd.env("WORKER_THREADS", n).env("TOKIO_WORKER_THREADS", "5");
        }
        let mut child = cmd.spawn().expect("checker binary");
        let deadline = Instant::now() + Duration::from_secs(20);
        let workers = loop {
            let scraped = get_metrics(port).and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("healthcheck_checker_runtime_worker_threads "))
                    .map(|v| v.trim().to_string())
            });
            if let Some(v) = scraped {
                break v;
            }
            assert!(Instant::now() < deadline, "no /metrics from the checker");
            std::thread::sleep(Duration::from_millis(100));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(workers, expected.to_string(), "WORKER_THREADS={setting:?}");
    }
}

/// The body of `GET /metrics` on 127.0.0.1:`port` (HTTP/1.0, so the server closes the
/// connection after it), or `None` while nothing answers.
fn get_metrics(port: u16) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
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
