//! `topic-ids`: prints the `check_id` of every probe result a topic holds, one per line, read
//! from the beginning of every partition to its end. `make e2e` compares this with the rows in
//! PostgreSQL: what the topic holds is the truth the sink must store, not what a log says.
//!
//! ```sh
//! target/debug/topic-ids 127.0.0.1:29092 healthcheck-results > ids.txt
//! ```
//!
//! The topic is read by `testkit::topic::read_all`, the reader the pipeline tests use (ends
//! from end-of-partition events, not ListOffsets, which the tansu test broker answers wrongly).
//! Messages that are not probe results are counted on stderr and skipped. Exit 1 when the
//! broker does not answer or the ends are not reached within `TOPIC_IDS_TIMEOUT_SECONDS`
//! (default 30).

use std::io::Write as _;
use std::time::Duration;

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(bootstrap), Some(topic)) = (args.next(), args.next()) else {
        bail!("usage: topic-ids BOOTSTRAP_SERVERS TOPIC");
    };
    let timeout = Duration::from_secs(
        std::env::var("TOPIC_IDS_TIMEOUT_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let records = testkit::topic::read_all(&bootstrap, &topic, timeout)?;
    let (mut printed, mut skipped) = (0u64, 0u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for r in &records {
        let id = r
            .payload
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v.get("check_id")?.as_str().map(str::to_owned));
        match id {
            Some(id) => {
                writeln!(out, "{id}")?;
                printed += 1;
            }
            None => skipped += 1,
        }
    }
    out.flush()?;
    eprintln!("topic-ids: {printed} results, {skipped} other messages");
    Ok(())
}
