//! Helpers shared by the checker's and the sink's integration tests, the pipeline tests and
//! the bench: one HTTP GET ([`http`]), one Prometheus scrape ([`metrics`], parsed with
//! `prometheus-parse`), the topic read back ([`topic`]), the workspace binaries as processes
//! ([`process`]) and what Linux says about them ([`procfs`]), the test stack's PostgreSQL
//! ([`pg`]) and private brokers behind a cuttable forwarder ([`broker`], [`net`]).
//!
//! It is a dev-dependency (and the bench's): no service's normal build may link it, and it
//! must never hold assertions about a service's behaviour, only the means to observe it.

pub mod broker;
pub mod http;
pub mod metrics;
pub mod net;
pub mod pg;
pub mod process;
pub mod procfs;
pub mod topic;

use std::time::{Duration, Instant};

/// A unique name for topics, groups and databases: `<prefix>_<32 hex digits>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Polls `check` every 100 ms until it returns true.
///
/// # Panics
/// When `timeout` passes first; the message names `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}
