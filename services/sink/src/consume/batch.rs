//! Batching: messages copied out of librdkafka ([`RawMessage`]) gather into a [`Batch`] for
//! one transaction until a [`BatchLimits`] limit is reached; the write task decodes it.
//!
//! A batch must never lose a message it was given: a message is either in it, or removed with
//! its whole revoked partition ([`Batch::drop_partitions`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::message::Message;

use crate::store::{DeadLetter, DeadLetterClass, Row};

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Messages per batch.
    pub max_rows: usize,
    /// Payload bytes per batch.
    pub max_bytes: usize,
    /// Longest wait between the first message of a batch and its write.
    pub linger: Duration,
}

/// A message as taken from librdkafka, not decoded yet.
struct RawMessage {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// Messages gathered for one transaction, with the highest offset seen per partition. The
/// consume loop only copies messages in (`raw`); the write task decodes them into `rows` and
/// `dead`, so that decoding runs in parallel with consuming.
#[derive(Default)]
pub(super) struct Batch {
    /// Messages as consumed, until [`Batch::decode`].
    raw: Vec<RawMessage>,
    /// Decoded probe results.
    pub(super) rows: Vec<Row>,
    /// Undecodable messages.
    pub(super) dead: Vec<DeadLetter>,
    /// Payload bytes taken in (a limit, not a total: dropping messages leaves it).
    bytes: usize,
    /// Partition → the highest offset in the batch.
    pub(super) offsets: BTreeMap<i32, i64>,
    /// When the first message came in (`None`: empty).
    pub(super) opened: Option<Instant>,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.raw.len() + self.rows.len() + self.dead.len()
    }

    /// Decodes the raw messages: probe results the schema can hold become rows (with the
    /// message's raw key and payload, kept for a dead letter should PostgreSQL refuse the
    /// row), anything else a dead letter of class `decode` ([`crate::decode`]).
    pub(super) fn decode(&mut self, topic: &str) {
        for m in std::mem::take(&mut self.raw) {
            match crate::decode::decode(m.payload.as_deref()) {
                Ok(result) => self.rows.push(Row {
                    result,
                    partition: m.partition,
                    offset: m.offset,
                    key: m.key,
                    payload: m.payload,
                }),
                Err(error) => {
                    tracing::warn!(partition = m.partition, offset = m.offset, error = %error, "Dead-lettering an undecodable message.");
                    self.dead.push(DeadLetter {
                        topic: topic.to_string(),
                        partition: m.partition,
                        offset: m.offset,
                        key: m.key,
                        payload: m.payload,
                        error_class: DeadLetterClass::Decode,
                        error,
                    });
                }
            }
        }
    }

    /// Copies `m` in (its key and payload, its offset as the partition's highest).
    pub(super) fn push<M: Message>(&mut self, m: &M) {
        let (partition, offset) = (m.partition(), m.offset());
        let payload = m.payload();
        self.bytes += payload.map_or(0, <[u8]>::len);
        self.raw.push(RawMessage {
            partition,
            offset,
            key: m.key().map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
        });
        let max = self.offsets.entry(partition).or_insert(offset);
        *max = (*max).max(offset);
        self.opened.get_or_insert_with(Instant::now);
    }

    pub(super) fn is_full(&self, limits: &BatchLimits) -> bool {
        self.len() >= limits.max_rows || self.bytes >= limits.max_bytes
    }

    /// Removes the messages of `partitions` (bytes are left as counted: a limit, not a total).
    pub(super) fn drop_partitions(&mut self, partitions: &[i32]) {
        self.raw.retain(|m| !partitions.contains(&m.partition));
        self.rows.retain(|r| !partitions.contains(&r.partition));
        self.dead.retain(|d| !partitions.contains(&d.partition));
        self.offsets.retain(|p, _| !partitions.contains(p));
        if self.len() == 0 {
            *self = Self::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    fn message(partition: i32, offset: i64, payload: &[u8]) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn a_batch_keeps_the_highest_offset_per_partition_and_fills_by_rows_or_bytes() {
        let by_rows = BatchLimits {
            max_rows: 3,
            max_bytes: 1_000,
            linger: Duration::from_secs(1),
        };
        let by_bytes = BatchLimits {
            max_rows: 1_000,
            max_bytes: 6,
            ..by_rows
        };
        let mut b = Batch::default();
        assert!(b.opened.is_none());
        b.push(&message(0, 7, b"abc"));
        b.push(&message(1, 2, b"d"));
        assert!(b.opened.is_some() && !b.is_full(&by_rows) && !b.is_full(&by_bytes));
        b.push(&message(0, 9, b"ef"));
        assert_eq!((b.len(), b.offsets.clone()), (3, offsets(&[(0, 9), (1, 2)])));
        assert!(b.is_full(&by_rows) && b.is_full(&by_bytes));
    }

    #[test]
    fn dropping_revoked_partitions_keeps_the_others() {
        let mut b = Batch::default();
        b.dead.push(DeadLetter {
            topic: "t".into(),
            partition: 1,
            offset: 3,
            key: None,
            payload: None,
            error_class: DeadLetterClass::Decode,
            error: "x".into(),
        });
        b.offsets = offsets(&[(0, 9), (1, 3)]);
        b.opened = Some(Instant::now());
        b.drop_partitions(&[0]);
        assert_eq!((b.len(), b.offsets.clone()), (1, offsets(&[(1, 3)])));
        b.drop_partitions(&[1]);
        assert!(
            b.opened.is_none() && b.offsets.is_empty(),
            "an emptied batch is a new batch"
        );
    }
}
