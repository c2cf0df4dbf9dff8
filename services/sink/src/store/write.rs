//! One batch in one transaction: its rows (binary COPY through the staging table, or UNNEST)
//! and its dead letters, committed or, for a canary, rolled back. [`Store::write`] decides
//! what to do when PostgreSQL refuses a batch; the pieces it uses for that are in `reject`.

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;

use std::sync::atomic::Ordering;

use super::columns::{copy_row, Columns, COPY_TYPES, CREATE_STAGE, DIRECT_COPY, INSERT_ROWS, STAGE_COPY, STAGE_INSERT};
use super::{DeadLetter, ErrorClass, ErrorCode, Row, Store, StoreError, WriteMethod, DIRECT_COPY_PAUSE};

/// What a successful write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Rows offered.
    pub offered: u64,
    /// Rows inserted (offered minus duplicates absorbed).
    pub inserted: u64,
    /// Dead letters written (new ones; replays are absorbed too).
    pub dead_letters: u64,
    /// Rows moved to dead letters because PostgreSQL rejected them.
    pub rejected_rows: u64,
    /// Dead letters skipped because PostgreSQL refused even their bare form (no key, no
    /// payload, short error) while a canary passed; their messages stay in the topic until its
    /// retention. Not expected to happen: logged at error level.
    pub skipped_dead_letters: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// Rows written by the direct COPY (part of `inserted`; the others went through the
    /// staging table or UNNEST).
    pub copied_directly: u64,
}

impl std::ops::Add for WriteOutcome {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            offered: self.offered + o.offered,
            inserted: self.inserted + o.inserted,
            dead_letters: self.dead_letters + o.dead_letters,
            rejected_rows: self.rejected_rows + o.rejected_rows,
            skipped_dead_letters: self.skipped_dead_letters + o.skipped_dead_letters,
            transactions: self.transactions + o.transactions,
            copied_directly: self.copied_directly + o.copied_directly,
        }
    }
}

/// Part of a batch: rows and dead letters.
type Part<'a> = (&'a [Row], &'a [DeadLetter]);

/// How a write transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finish {
    Commit,
    /// A canary: written, then rolled back.
    Rollback,
}

/// Adds locations a batch holds that `locations` may not have yet, with the earliest slot
/// of the batch for each as `first_seen`.
const INSERT_LOCATIONS: &str = "
INSERT INTO locations (name, first_seen)
SELECT * FROM UNNEST($1::text[], $2::timestamptz[])
ON CONFLICT DO NOTHING";

const INSERT_DEAD_LETTERS: &str = "
INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, message_key, payload, error_class, error)
SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[], $7::text[])
ON CONFLICT DO NOTHING";

impl Store {
    /// Writes `rows` and `dead` in one transaction, or, when PostgreSQL refuses the batch for
    /// its data, in several, with the rows at fault as dead letters:
    /// - a transient error (other than a statement timeout) is returned for the caller to retry;
    /// - any other error (and a statement timeout) is checked with a canary: the same write
    ///   path with a known-good row (and/or dead letter) in a transaction rolled back. If the
    ///   canary fails too, the error does not depend on the rows: returned as
    ///   [`ErrorClass::Fatal`] (or transient, when the canary's error is);
    /// - otherwise the batch is split (rows apart from dead letters, then in halves) until the
    ///   rows at fault are alone (a lone row refused for a statement timeout is written once
    ///   more first, since the canary passing says a lock it waited behind may be gone); each
    ///   becomes a dead letter of class
    ///   [`super::DeadLetterClass::Data`] with the
    ///   message's raw key and payload and the SQLSTATE and message as error;
    /// - a dead letter refused alone is stored with its error text shortened, then, if refused
    ///   again, without its key and payload (the error says so; the message stays in the
    ///   topic until its retention). That bare form is the canary's own shape, so refusing it
    ///   after a canary passed is not expected: it is then skipped, logged at error level and
    ///   counted in [`WriteOutcome::skipped_dead_letters`], rather than stop consumption.
    ///
    /// # Errors
    /// A transient or fatal [`StoreError`]; nothing of the failed transaction is kept (parts
    /// committed before are absorbed when the caller retries the whole batch).
    pub async fn write(&self, rows: &[Row], dead: &[DeadLetter]) -> Result<WriteOutcome, StoreError> {
        let e = match self.write_tx(rows, dead, Finish::Commit).await {
            Ok(out) => return Ok(out),
            Err(e) if !e.may_depend_on_rows() => return Err(e),
            Err(e) => e,
        };
        self.canary(!rows.is_empty(), !dead.is_empty()).await?;
        let (first, second): (Part<'_>, Part<'_>) = match (rows, dead) {
            ([], []) => {
                return Err(StoreError {
                    class: ErrorClass::Fatal,
                    ..e
                })
            }
            ([row], []) => {
                // A lone row whose statement timed out may only have waited behind a lock
                // the canary no longer met (the lock was released meanwhile): once more
                // before blaming its data. A row slow by itself times out again.
                let e = if e.is(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
                    match self.write_tx(rows, &[], Finish::Commit).await {
                        Ok(out) => return Ok(out),
                        Err(again) if !again.may_depend_on_rows() => return Err(again),
                        Err(again) => again,
                    }
                } else {
                    e
                };
                return self.reject_row(row, &e).await;
            }
            ([], [letter]) => return self.reject_dead_letter(letter, &e).await,
            ([_, ..], [_, ..]) => ((rows, &[]), (&[], dead)),
            (_, []) => {
                let (a, b) = rows.split_at(rows.len() / 2);
                ((a, &[]), (b, &[]))
            }
            _ => {
                let (a, b) = dead.split_at(dead.len() / 2);
                ((&[], a), (&[], b))
            }
        };
        tracing::debug!(code = %e.code, rows = rows.len(), dead_letters = dead.len(), "PostgreSQL refused a batch for its data; splitting it.");
        let a = Box::pin(self.write(first.0, first.1)).await?;
        let b = Box::pin(self.write(second.0, second.1)).await?;
        Ok(a + b)
    }

    /// One transaction: the rows, then the dead letters; committed or, for a canary, rolled
    /// back. A connection that does not answer in time is dropped.
    pub(super) async fn write_tx(
        &self,
        rows: &[Row],
        dead: &[DeadLetter],
        finish: Finish,
    ) -> Result<WriteOutcome, StoreError> {
        let mut client = self.pool.get().await?;
        let result = self.write_on(&mut client, rows, dead, finish).await;
        if result.as_ref().is_err_and(|e| e.code == ErrorCode::Timeout) {
            self.discard(client);
        }
        result
    }

    /// [`Store::write_tx`] on `client`.
    async fn write_on(
        &self,
        client: &mut deadpool_postgres::Client,
        rows: &[Row],
        dead: &[DeadLetter],
        finish: Finish,
    ) -> Result<WriteOutcome, StoreError> {
        // Prepared outside the transaction: a missing staging table (a new session) fails
        // the PREPARE alone, not the transaction.
        let stage_insert = if self.method == WriteMethod::Copy && !rows.is_empty() {
            match self.timed(client.prepare_cached(&STAGE_INSERT)).await {
                Ok(stmt) => Some(stmt),
                Err(e) if e.is(&SqlState::UNDEFINED_TABLE) => {
                    self.timed(client.batch_execute(CREATE_STAGE)).await?;
                    Some(self.timed(client.prepare_cached(&STAGE_INSERT)).await?)
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let unseen = self.unseen_locations(rows);
        let tx = self.timed(client.transaction()).await?;
        self.timed(tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            self.statement_timeout.as_millis()
        )))
        .await?;
        if !unseen.is_empty() {
            let names: Vec<&str> = unseen.iter().map(|(n, _)| *n).collect();
            let first: Vec<chrono::DateTime<chrono::Utc>> = unseen.iter().map(|(_, t)| *t).collect();
            let stmt = self.timed(tx.prepare_cached(INSERT_LOCATIONS)).await?;
            self.timed(tx.execute(&stmt, &[&names, &first])).await?;
        }
        let mut copied_directly = 0;
        let inserted = match stage_insert {
            Some(stmt) => {
                if self.direct_copy_due() {
                    // PostgreSQL's fastest path; a replayed row aborts it (23505), and the
                    // savepoint keeps the rest of the transaction.
                    self.timed(tx.batch_execute("SAVEPOINT direct_copy")).await?;
                    match self.timed(copy_rows(&tx, &DIRECT_COPY, rows)).await {
                        Ok(n) => {
                            self.timed(tx.batch_execute("RELEASE SAVEPOINT direct_copy")).await?;
                            copied_directly = n;
                        }
                        Err(e) if e.is(&SqlState::UNIQUE_VIOLATION) => {
                            tracing::debug!(
                                rows = rows.len(),
                                "A batch holds rows already stored; writing it through the staging table."
                            );
                            self.timed(tx.batch_execute("ROLLBACK TO SAVEPOINT direct_copy"))
                                .await?;
                            self.direct_copy_pause.store(DIRECT_COPY_PAUSE, Ordering::Relaxed);
                        }
                        Err(e) => return Err(e),
                    }
                }
                if copied_directly > 0 {
                    copied_directly
                } else {
                    self.timed(copy_rows(&tx, &STAGE_COPY, rows)).await?;
                    self.timed(tx.execute(&stmt, &[])).await?
                }
            }
            None if !rows.is_empty() => {
                let c = Columns::from_rows(rows);
                let stmt = self.timed(tx.prepare_cached(&INSERT_ROWS)).await?;
                self.timed(tx.execute(&stmt, &c.params())).await?
            }
            None => 0,
        };
        super::rollup::mark_rows(self, &tx, rows).await?;
        let dead_inserted = if dead.is_empty() {
            0
        } else {
            self.insert_dead_letters(&tx, dead).await?
        };
        match finish {
            Finish::Commit => {
                self.timed(tx.commit()).await?;
                let mut known = self.known_locations.lock().expect("lock");
                known.extend(unseen.iter().map(|(n, _)| (*n).to_string()));
            }
            Finish::Rollback => self.timed(tx.rollback()).await?,
        }
        Ok(WriteOutcome {
            offered: rows.len() as u64,
            inserted,
            dead_letters: dead_inserted,
            rejected_rows: 0,
            skipped_dead_letters: 0,
            transactions: u64::from(finish == Finish::Commit),
            copied_directly,
        })
    }

    /// Whether this batch tries the direct COPY: not in the [`DIRECT_COPY_PAUSE`] batches
    /// after one met a stored row (counted down here).
    fn direct_copy_due(&self) -> bool {
        self.direct_copy_pause
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
            .is_err()
    }

    /// The locations of `rows` this process has not written to `locations` yet, in name
    /// order (concurrent batches then lock the rows in one order), each with its earliest
    /// `scheduled_at` in `rows`. Empty on the hot path.
    fn unseen_locations<'a>(&self, rows: &'a [Row]) -> Vec<(&'a str, chrono::DateTime<chrono::Utc>)> {
        let known = self.known_locations.lock().expect("lock");
        let mut unseen: std::collections::BTreeMap<&str, chrono::DateTime<chrono::Utc>> = Default::default();
        for r in rows.iter().map(|r| &r.result) {
            if !known.contains(&r.location) {
                let first = unseen.entry(&r.location).or_insert(r.scheduled_at);
                *first = (*first).min(r.scheduled_at);
            }
        }
        unseen.into_iter().collect()
    }

    /// Inserts `dead` in `tx`; returns how many were new.
    pub(super) async fn insert_dead_letters(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        dead: &[DeadLetter],
    ) -> Result<u64, StoreError> {
        let topic: Vec<&str> = dead.iter().map(|d| d.topic.as_str()).collect();
        let partition: Vec<i32> = dead.iter().map(|d| d.partition).collect();
        let offset: Vec<i64> = dead.iter().map(|d| d.offset).collect();
        let key: Vec<Option<&[u8]>> = dead.iter().map(|d| d.key.as_deref()).collect();
        let payload: Vec<Option<&[u8]>> = dead.iter().map(|d| d.payload.as_deref()).collect();
        let class: Vec<&str> = dead.iter().map(|d| d.error_class.as_str()).collect();
        // PostgreSQL text cannot hold NUL; the error text is ours to shorten.
        let error: Vec<String> = dead.iter().map(|d| d.error.replace('\0', "")).collect();
        let stmt = self.timed(tx.prepare_cached(INSERT_DEAD_LETTERS)).await?;
        self.timed(tx.execute(&stmt, &[&topic, &partition, &offset, &key, &payload, &class, &error]))
            .await
    }
}

/// Binary COPY of `rows` through `statement` (a `COPY ... FROM STDIN (FORMAT binary)` of
/// [`super::columns::COLUMNS`]); the rows copied.
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &str,
    rows: &[Row],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx.copy_in(statement).await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    let mut writer = std::pin::pin!(writer);
    for row in rows {
        copy_row(writer.as_mut(), &row.result, row.partition, row.offset).await?;
    }
    writer.finish().await
}
