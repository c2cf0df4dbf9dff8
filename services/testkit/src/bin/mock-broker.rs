//! `mock-broker`: librdkafka's mock cluster (`rdkafka::mocking`) as a process, the broker
//! `make demo` runs by default, so that a first demo needs no broker built from source.
//!
//! ```sh
//! mock-broker --bootstrap-file .tmp/demo/bootstrap healthcheck-results:6 healthcheck-targets:6
//! ```
//!
//! Creates each `TOPIC[:PARTITIONS]` (default 6 partitions; the mock cluster answers no
//! CreateTopics, so clients must run with `KAFKA_CREATE_TOPIC=false`), writes the cluster's
//! `bootstrap.servers` (`127.0.0.1:PORT`, a port the kernel chose) to the file, replaced
//! atomically, and to stdout, then serves until SIGTERM or SIGINT.
//!
//! What it is not (librdkafka's `rdkafka_mock.c`, 2.12): one in-memory log per partition with
//! a size cap (older records are dropped, about 5 MB kept per partition); topic configs such
//! as `cleanup.policy=compact` are not applied; consumer groups, committed offsets, idempotent
//! producers and ListOffsets work, but group rounds are slow (about `session.timeout.ms`
//! for a cooperative round). Right for a demo of a few targets; the tests run on tansu.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use rdkafka::mocking::MockCluster;
use tokio::signal::unix::{signal, SignalKind};

/// Partitions of a topic named without `:PARTITIONS`.
const DEFAULT_PARTITIONS: i32 = 6;

const USAGE: &str = "usage: mock-broker [--bootstrap-file PATH] TOPIC[:PARTITIONS]...";

struct Args {
    bootstrap_file: Option<PathBuf>,
    topics: Vec<(String, i32)>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut parsed = Args {
        bootstrap_file: None,
        topics: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bootstrap-file" => {
                let path = args.next().context("--bootstrap-file needs a path")?;
                parsed.bootstrap_file = Some(path.into());
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ if arg.starts_with('-') => bail!("unknown option {arg:?}\n{USAGE}"),
            _ => parsed.topics.push(parse_topic(&arg)?),
        }
    }
    Ok(parsed)
}

/// `name` or `name:partitions`, partitions a positive number.
fn parse_topic(arg: &str) -> anyhow::Result<(String, i32)> {
    let (name, partitions) = match arg.rsplit_once(':') {
        Some((name, n)) => {
            let n: i32 = n.parse().ok().filter(|n| *n > 0).with_context(|| {
                format!("{arg:?}: partitions must be a positive number, e.g. healthcheck-results:6")
            })?;
            (name, n)
        }
        None => (arg, DEFAULT_PARTITIONS),
    };
    if name.is_empty() {
        bail!("{arg:?}: empty topic name");
    }
    Ok((name.to_string(), partitions))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    // Before the cluster exists, so that a signal during start-up is not lost.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let mock = MockCluster::new(1).context("mock cluster")?;
    for (topic, partitions) in &args.topics {
        mock.create_topic(topic, *partitions, 1)
            .with_context(|| format!("create topic {topic}"))?;
    }
    let bootstrap = mock.bootstrap_servers();
    if let Some(path) = &args.bootstrap_file {
        // Written last and renamed into place: a reader that sees the file can connect.
        let tmp = path.with_extension("part");
        std::fs::write(&tmp, format!("{bootstrap}\n")).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    }
    println!("{bootstrap}");

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(mock);
    if let Some(path) = &args.bootstrap_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_with_and_without_partitions() {
        let args = parse_args(
            ["--bootstrap-file", "/tmp/b", "results:3", "targets"]
                .into_iter()
                .map(String::from),
        )
        .unwrap();
        assert_eq!(args.bootstrap_file, Some(PathBuf::from("/tmp/b")));
        assert_eq!(
            args.topics,
            [("results".to_string(), 3), ("targets".to_string(), DEFAULT_PARTITIONS)]
        );
    }

    #[test]
    fn bad_partitions_are_refused() {
        for arg in ["results:0", "results:-1", "results:x", ":3"] {
            assert!(parse_topic(arg).is_err(), "{arg} accepted");
        }
    }
}
