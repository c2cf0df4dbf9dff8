//! The targets topic's records into `target_changes`: one batch, one transaction, with its
//! dead letters; replays absorbed by the unique (topic, partition, offset, record timestamp).

use super::{DeadLetter, Store, StoreError};
use crate::targets::{exact_seconds, TargetChange};

/// Interval and phase travel as exact decimal text and become `numeric` in SQL.
const INSERT_TARGET_CHANGES: &str = "
INSERT INTO target_changes
    (topic, kafka_partition, kafka_offset, target_name, spec, interval_seconds, phase_seconds, quorum, changed_at,
     failure_threshold)
SELECT $1, p, o, n, s, i::numeric, ph::numeric, q, c, k
FROM UNNEST($2::int4[], $3::int8[], $4::text[], $5::jsonb[], $6::text[], $7::text[], $8::int4[], $9::timestamptz[],
            $10::int4[])
    AS u(p, o, n, s, i, ph, q, c, k)
ON CONFLICT DO NOTHING";

impl Store {
    /// Writes the records of the targets topic `topic` in `changes` and the dead letters `dead` in one
    /// transaction; returns how many changes and how many dead letters were new (a replay
    /// inserts none).
    ///
    /// # Errors
    /// A transient [`StoreError`] to retry, or a fatal one (schema, permissions); nothing of
    /// the batch is kept.
    pub async fn write_target_changes(
        &self,
        topic: &str,
        changes: &[TargetChange],
        dead: &[DeadLetter],
    ) -> Result<(u64, u64), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = self.timed(client.transaction()).await?;
        self.timed(tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            self.statement_timeout.as_millis()
        )))
        .await?;
        let inserted = if changes.is_empty() {
            0
        } else {
            let partition: Vec<i32> = changes.iter().map(|c| c.partition).collect();
            let offset: Vec<i64> = changes.iter().map(|c| c.offset).collect();
            let name: Vec<&str> = changes.iter().map(|c| c.name.as_str()).collect();
            let spec: Vec<Option<&serde_json::Value>> = changes.iter().map(|c| c.spec.as_ref()).collect();
            let interval: Vec<Option<String>> = changes.iter().map(|c| c.interval.map(exact_seconds)).collect();
            let phase: Vec<Option<String>> = changes.iter().map(|c| c.phase.map(exact_seconds)).collect();
            let quorum: Vec<Option<i32>> = changes.iter().map(|c| c.quorum).collect();
            let at: Vec<chrono::DateTime<chrono::Utc>> = changes.iter().map(|c| c.changed_at).collect();
            let threshold: Vec<Option<i32>> = changes.iter().map(|c| c.failure_threshold).collect();
            let stmt = self.timed(tx.prepare_cached(INSERT_TARGET_CHANGES)).await?;
            self.timed(tx.execute(
                &stmt,
                &[
                    &topic, &partition, &offset, &name, &spec, &interval, &phase, &quorum, &at, &threshold,
                ],
            ))
            .await?
        };
        let dead_inserted = if dead.is_empty() {
            0
        } else {
            self.insert_dead_letters(&tx, dead).await?
        };
        self.timed(tx.commit()).await?;
        Ok((inserted, dead_inserted))
    }
}
