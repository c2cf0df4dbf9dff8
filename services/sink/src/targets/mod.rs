//! The targets topic as history: a second, small consumer in the sink reads
//! `KAFKA_TARGETS_TOPIC` (key = target name, value = its spec as JSON, tombstone = removal;
//! see `checker::target`) from the beginning, in consumer group `<KAFKA_GROUP_ID>-targets`,
//! and writes every record to `target_changes` ([`crate::store::Store::write_target_changes`]),
//! from which the `targets`, `coverage` and `slot_verdicts` views know every slot that
//! should exist.
//!
//! Same rules as the results: one transaction per batch, offsets stored only after it
//! committed (auto-commit then commits them), replays absorbed (`target_changes` is unique on
//! topic, partition and offset), a record the schema cannot hold becomes a dead letter in
//! the same transaction ([`decode`]) and consumption goes on. A missing topic is waited for,
//! never fatal. It never issues SQL ([`crate::store`] does) and never produces to the topic.

mod decode;
mod run;

pub use decode::{decode, exact_seconds, TargetChange};
pub use run::{consumer, run, CONSUMER_DEFAULTS};

/// The consumer group of the targets consumer for the results consumer's `group_id`.
pub fn group_id(results_group: &str) -> String {
    format!("{results_group}-targets")
}
