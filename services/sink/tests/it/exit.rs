//! The sink binary with a runtime setting it cannot use: exit code 2 and a message naming the
//! variable, never a panic (before, tokio panicked on an invalid `TOKIO_WORKER_THREADS`).

use std::process::Command;

use testkit::process::bin;

#[test]
fn an_invalid_tokio_worker_threads_exits_2_naming_the_variable() {
    for value in ["0", "two"] {
        let out = Command::new(bin("sink"))
            .env_clear()
            .env("DATABASE_URL", "postgres://sink@127.0.0.1:1/healthcheck")
            .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
            .env("TOKIO_WORKER_THREADS", value)
            .output()
            .expect("sink binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "TOKIO_WORKER_THREADS={value}: {stderr}");
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}
