//! Monthly partitions of `probe_results`: created ahead, dropped past retention, and their
//! names. Only [`Store::maintain_partitions`] issues DDL, under an advisory lock and a
//! `lock_timeout`; it must never hold up the inserts queued behind its locks for long.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use deadpool_postgres::Transaction;

use super::{Store, StoreError, PARTITION_LOCK_TIMEOUT};

impl Store {
    /// Creates the monthly partitions from last month to `months_ahead` months ahead, and drops
    /// monthly partitions that ended before `now - retention` (`None`: keep everything), with
    /// the rows of `probe_results_default` older than that. Dropping a partition removes its
    /// rows without the bloat of `DELETE`.
    ///
    /// A new month's rows that landed in `probe_results_default` (its partition did not exist
    /// yet) move into the new partition in the same transaction: the table is created apart,
    /// filled from the default partition, then attached (`ATTACH PARTITION`, PostgreSQL docs
    /// "ALTER TABLE": it takes `SHARE UPDATE EXCLUSIVE` on `probe_results`, which inserts and
    /// queries do not wait for, and `ACCESS EXCLUSIVE` on the default partition). Bounds are
    /// UTC month starts whatever the server's `TimeZone`. The DDL runs with `lock_timeout`
    /// [`PARTITION_LOCK_TIMEOUT`], so a long query holding a lock it needs makes it give up
    /// (until the next run) instead of queueing every insert behind its lock request. One
    /// replica maintains at a time (an advisory lock; the others skip the run).
    ///
    /// # Errors
    /// A database error; a partition that could not be created or dropped is reported after
    /// the others were done and committed.
    pub async fn maintain_partitions(
        &self,
        now: DateTime<Utc>,
        months_ahead: u32,
        retention: Option<Duration>,
    ) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = self.timed(client.transaction()).await?;
        self.timed(tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
            PARTITION_LOCK_TIMEOUT.as_millis(),
            self.statement_timeout.as_millis()
        )))
        .await?;
        // One maintainer at a time across replicas; released at commit.
        let locked: bool = self
            .timed(tx.query_one("SELECT pg_try_advisory_xact_lock(7355609)", &[]))
            .await?
            .get(0);
        if !locked {
            tracing::debug!("Another sink maintains the partitions now; skipping this run.");
            return Ok(());
        }
        let mut failed: Option<StoreError> = None;
        self.create_ahead(&tx, now, months_ahead, &mut failed).await?;
        if let Some(retention) = retention {
            let cutoff = now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
            self.drop_past(&tx, cutoff, &mut failed).await?;
        }
        self.timed(tx.commit()).await?;
        failed.map_or(Ok(()), Err)
    }

    /// Creates the missing partitions from last month to `months_ahead` months after `now`.
    /// A partition that cannot be created is rolled back to its savepoint and its error kept
    /// in `failed` (the first one); after a lock timeout, the rest waits for the next run.
    async fn create_ahead(
        &self,
        tx: &Transaction<'_>,
        now: DateTime<Utc>,
        months_ahead: u32,
        failed: &mut Option<StoreError>,
    ) -> Result<(), StoreError> {
        let first = month_start(now.year(), now.month()) - chrono::Months::new(1);
        for i in 0..=months_ahead + 1 {
            let from = first + chrono::Months::new(i);
            let to = from + chrono::Months::new(1);
            let name = partition_name(from);
            let exists: bool = self
                .timed(tx.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]))
                .await?
                .get(0);
            if exists {
                continue;
            }
            if failed.as_ref().is_some_and(StoreError::is_lock_timeout) {
                // Each attempt would hold up what queues behind it again: next run.
                break;
            }
            self.timed(tx.batch_execute("SAVEPOINT p")).await?;
            match self.create_partition(tx, &name, from, to).await {
                Ok(moved) => tracing::info!(partition = %name, moved_from_default = moved, "Created partition."),
                Err(e) => {
                    self.timed(tx.batch_execute("ROLLBACK TO SAVEPOINT p")).await?;
                    tracing::warn!(partition = %name, code = %e.code, error = %e.message, "Could not create partition; trying again at the next run.");
                    failed.get_or_insert(e);
                }
            }
        }
        Ok(())
    }

    /// Drops the monthly partitions that ended before `cutoff` and deletes the default
    /// partition's rows of the months before `cutoff`'s; errors are kept in `failed` as in
    /// [`Store::create_ahead`].
    async fn drop_past(
        &self,
        tx: &Transaction<'_>,
        cutoff: DateTime<Utc>,
        failed: &mut Option<StoreError>,
    ) -> Result<(), StoreError> {
        let parts = self
            .timed(tx.query(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'probe_results'::regclass AND c.relname ~ '^probe_results_y[0-9]{4}m[0-9]{2}$'",
                &[],
            ))
            .await?;
        for row in parts {
            let name: String = row.get(0);
            let Some(start) = parse_partition_name(&name) else {
                continue;
            };
            if start + chrono::Months::new(1) > cutoff || failed.as_ref().is_some_and(StoreError::is_lock_timeout) {
                continue;
            }
            self.timed(tx.batch_execute("SAVEPOINT p")).await?;
            match self.timed(tx.batch_execute(&format!("DROP TABLE {name}"))).await {
                Ok(()) => tracing::info!(partition = %name, "Dropped partition past retention."),
                Err(e) => {
                    self.timed(tx.batch_execute("ROLLBACK TO SAVEPOINT p")).await?;
                    tracing::warn!(partition = %name, code = %e.code, error = %e.message, "Could not drop partition; trying again at the next run.");
                    failed.get_or_insert(e);
                }
            }
        }
        // Rows of months whose partitions are dropped, held by the default partition.
        let before = month_start(cutoff.year(), cutoff.month());
        match self
            .timed(tx.execute("DELETE FROM probe_results_default WHERE scheduled_at < $1", &[&before]))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "Deleted default-partition rows past retention."),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
        Ok(())
    }

    /// Creates partition `name` for `[from, to)`, moves that range's rows out of the default
    /// partition into it and attaches it; returns how many rows moved.
    async fn create_partition(
        &self,
        tx: &Transaction<'_>,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        // The default partition is locked first, so that no row of the range lands in it
        // between the move and the attach (which would then fail its check).
        self.timed(tx.batch_execute(&format!(
            "CREATE TABLE {name} (LIKE probe_results INCLUDING DEFAULTS INCLUDING CONSTRAINTS); \
             LOCK TABLE probe_results_default IN ACCESS EXCLUSIVE MODE"
        )))
        .await?;
        let moved = self
            .timed(tx.execute(
                &format!(
                    "WITH moved AS (DELETE FROM probe_results_default WHERE scheduled_at >= $1 AND scheduled_at < $2 \
                     RETURNING *) INSERT INTO {name} SELECT * FROM moved"
                ),
                &[&from, &to],
            ))
            .await?;
        self.timed(tx.batch_execute(&format!(
            "ALTER TABLE probe_results ATTACH PARTITION {name} FOR VALUES FROM ('{}') TO ('{}')",
            utc_literal(from),
            utc_literal(to)
        )))
        .await?;
        Ok(moved)
    }
}

/// A `timestamptz` literal of `t` with an explicit UTC offset, read the same whatever the
/// session's `TimeZone`.
fn utc_literal(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

fn month_start(year: i32, month: u32) -> DateTime<Utc> {
    Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(year, month, 1)
            .expect("valid month")
            .and_hms_opt(0, 0, 0)
            .expect("midnight"),
    )
}

/// `probe_results_y2026m01` for January 2026.
pub fn partition_name(month: DateTime<Utc>) -> String {
    format!("probe_results_y{:04}m{:02}", month.year(), month.month())
}

fn parse_partition_name(name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix("probe_results_y")?;
    let (y, m) = rest.split_once('m')?;
    Some(month_start(
        y.parse().ok()?,
        m.parse().ok().filter(|m| (1..=12).contains(m))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_utc_literals() {
        assert_eq!(utc_literal(month_start(2026, 2)), "2026-02-01 00:00:00+00");
    }

    #[test]
    fn partition_names_round_trip() {
        let m = month_start(2026, 1);
        assert_eq!(partition_name(m), "probe_results_y2026m01");
        assert_eq!(parse_partition_name("probe_results_y2026m01"), Some(m));
        assert_eq!(parse_partition_name("probe_results_default"), None);
        assert_eq!(parse_partition_name("probe_results_y2026m13"), None);
    }
}
