//! The consume loop: Kafka messages → batches → PostgreSQL → stored offsets.
//!
//! Invariants:
//! - An offset is stored only after the transaction holding its row (or its dead letter) has
//!   committed, and only when every batch consumed before it that holds messages of the same
//!   partition has committed too (the `Watermark` in `offsets`): up to `WRITE_CONCURRENCY` batches are
//!   written at once and may commit out of order. Auto-commit then commits stored offsets (librdkafka `enable.auto.offset.store=false`,
//!   `enable.auto.commit=true`). After a crash the group resumes at or before the first
//!   unwritten message: at-least-once delivery, and `ON CONFLICT DO NOTHING` on the
//!   deterministic `check_id` turns replays into no-ops (exactly-once effect).
//! - The loop keeps polling while batches are being written or retried, filling the next
//!   batch. When every write slot is busy and that batch is full too, it stops taking messages
//!   (they wait in librdkafka's bounded queue). If that lasts longer than [`PAUSE_AFTER`] (a
//!   slow or unreachable database), it pauses the assigned partitions and goes on polling, so
//!   that `max.poll.interval.ms` is never exceeded and the group does not reassign partitions
//!   of a live sink. librdkafka drops what it had prefetched for paused partitions and fetches
//!   again from the application's position on resume (the offset after the last message
//!   returned to the sink), so nothing is skipped; the loop resumes as soon as the next batch
//!   is written.
//! - On revoke, messages of the revoked partitions that are not being written yet are dropped
//!   (their new owner consumes them), and the rebalance callback waits up to
//!   [`REVOKE_DRAIN_TIMEOUT`] for the writes in flight that hold those partitions, then stores
//!   their offsets, which librdkafka commits before handing the partitions over: the new owner
//!   starts after them instead of replaying them. A write still in flight after the timeout
//!   (database down) finishes later; its offset store is refused and the new owner's replay is
//!   absorbed.
//! - A message that is not a probe result is dead-lettered, never dropped and never fatal.
//!
//! The pieces, one job each: `context` ([`SinkContext`], librdkafka's context: statistics,
//! rebalances, the revoke drain), `batch` (messages gathered for one transaction), `offsets`
//! (which offsets may be stored, and storing them), `state` (the loop's state machine:
//! lingering, held back, paused), `run` ([`Loop`], carrying it out) and `write` (one batch
//! write with its retries, [`crate::retry`]).

mod batch;
mod context;
mod offsets;
mod run;
mod state;
mod write;

use std::time::Duration;

use common::kafka::Protected;

pub use batch::BatchLimits;
pub use context::SinkContext;
pub use run::{ConsumeError, Loop};

/// The consumer's librdkafka properties (besides `group.id`, `group.instance.id` and
/// `bootstrap.servers`); `KAFKA_CFG_*` may override any but [`PROTECTED`].
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "healthcheck-sink"),
    ("enable.auto.offset.store", "false"),
    ("enable.auto.commit", "true"),
    ("auto.commit.interval.ms", "1000"),
    ("auto.offset.reset", "earliest"),
    ("isolation.level", "read_committed"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("statistics.interval.ms", "5000"),
    // librdkafka's default (500 ms) is how long a broker may hold an empty fetch; some
    // brokers (tansu) answer only at that deadline even when data arrives meanwhile,
    // which adds up to half a second to every result's latency. 50 ms: at most that much
    // added, and one empty fetch per broker every 50 ms when the topic is idle.
    ("fetch.wait.max.ms", "50"),
];

/// The consumer properties the sink's guarantees rest on, with the reason: `KAFKA_CFG_*`
/// may not change them (see [`common::kafka::KafkaSettings::check_properties`]).
pub const PROTECTED: &[Protected] = &[
    Protected {
        name: "enable.auto.offset.store",
        aliases: &[],
        why: "an offset is stored only after the transaction holding its row committed",
    },
    Protected {
        name: "enable.auto.commit",
        aliases: &[],
        why: "stored offsets are committed by auto-commit, and on revoke before the partitions move",
    },
    Protected {
        name: "auto.offset.reset",
        aliases: &[],
        why: "a new group, or one whose offsets expired, must read what the topic holds, not skip it",
    },
    Protected {
        name: "isolation.level",
        aliases: &[],
        why: "messages of aborted transactions must never become rows",
    },
];

/// How long writes may hold the loop back (messages left in librdkafka's queue) before it
/// pauses the assigned partitions and goes on polling. Short stalls are absorbed by the queue
/// (a pause discards what librdkafka prefetched); long ones (a database outage) must not
/// exceed `max.poll.interval.ms`.
pub const PAUSE_AFTER: Duration = Duration::from_secs(2);

/// The longest a revoke waits for the writes in flight that hold the revoked partitions.
/// Bounded, as the group waits for this member: a write stuck on a database outage is
/// replayed by the new owner instead.
pub const REVOKE_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
