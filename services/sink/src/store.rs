//! PostgreSQL: migrations, partition maintenance and batch writes. The only module that
//! issues SQL.
//!
//! A batch is written in one transaction: its rows by binary `COPY` into a session-local
//! staging table and `INSERT ... SELECT ... ON CONFLICT DO NOTHING` from it (or, with
//! [`WriteMethod::Unnest`], one `INSERT ... SELECT FROM UNNEST(...)`; neither has a
//! bind-parameter limit, and replays are absorbed), and its dead letters with `ON CONFLICT DO
//! NOTHING` on (topic, partition, offset). Errors are classified by SQLSTATE (PostgreSQL docs,
//! Appendix A "Error Codes") into transient (retry), data (split the batch, dead-letter the
//! bad rows) and fatal (stop).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use common::result::ProbeResult;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// A probe result with where it came from in Kafka.
#[derive(Debug, Clone)]
pub struct Row {
    /// The decoded result.
    pub result: ProbeResult,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
}

/// A message that could not be stored, with its origin and the reason.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Message key, raw.
    pub key: Option<Vec<u8>>,
    /// Message payload, raw.
    pub payload: Option<Vec<u8>>,
    /// `decode` (not a probe result) or `data` (PostgreSQL rejected the row: SQLSTATE class 22/23).
    pub error_class: String,
    /// The error text.
    pub error: String,
}

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
    /// Transactions committed.
    pub transactions: u64,
}

/// How to react to a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later: connection loss (08), serialization failure (40001), deadlock (40P01),
    /// insufficient resources (53), operator intervention (57), pool timeouts, I/O.
    Transient,
    /// The data is wrong: data exception (22), integrity constraint violation (23).
    Data,
    /// Configuration or schema is wrong (missing table, column, permission): stop.
    Fatal,
}

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// How to react.
    pub class: ErrorClass,
    /// SQLSTATE, when PostgreSQL sent one; `pool` or `io` otherwise. Used as a metric label.
    pub code: String,
    /// Description with the cause chain.
    pub message: String,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let message = common::telemetry::chain(&e);
        let Some(code) = e.code() else {
            // No SQLSTATE: the connection broke or was closed.
            return Self {
                class: ErrorClass::Transient,
                code: "io".into(),
                message,
            };
        };
        Self {
            class: classify(code),
            code: code.code().to_string(),
            message,
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(pg) => pg.into(),
            other => Self {
                class: ErrorClass::Transient,
                code: "pool".into(),
                message: common::telemetry::chain(&other),
            },
        }
    }
}

/// Classifies a SQLSTATE (PostgreSQL docs, Appendix A).
pub fn classify(code: &SqlState) -> ErrorClass {
    let c = code.code();
    match &c[..2] {
        "08" | "53" | "57" | "58" => ErrorClass::Transient,
        "40" => ErrorClass::Transient,
        "22" | "23" => ErrorClass::Data,
        _ if *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::QUERY_CANCELED => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

/// How a batch's rows reach `probe_results`; both end in one `INSERT ... ON CONFLICT DO
/// NOTHING` per batch and have no bind-parameter limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMethod {
    /// Binary `COPY` into a session-local staging table (`CREATE TEMP TABLE ... ON COMMIT
    /// DELETE ROWS`, created once per connection), then `INSERT ... SELECT` from it. The
    /// fastest measured (`make bench`, scenario `write`), but it keeps state in the session,
    /// so it needs session pooling if a pooler (PgBouncer) sits in between.
    #[default]
    Copy,
    /// `INSERT ... SELECT FROM UNNEST($1::uuid[], ...)`: one statement, no session state,
    /// safe behind a transaction-pooling PgBouncer.
    Unnest,
}

impl std::str::FromStr for WriteMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "copy" => Ok(Self::Copy),
            "unnest" => Ok(Self::Unnest),
            other => Err(format!("{other:?} is neither `copy` nor `unnest`")),
        }
    }
}

/// The PostgreSQL side of the sink.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    topic: String,
    method: WriteMethod,
    /// Woken when [`Store::ping`] succeeds: writes waiting out a backoff after a lost
    /// connection retry at once instead of at the end of their (up to 30 s) wait.
    reachable: Arc<Notify>,
}

const INSERT_ROWS: &str = "
INSERT INTO probe_results (
    check_id, scheduled_at, started_at, target_name, url, instance_id, schema_version, success,
    error_kind, error, status_code, first_status_code, duration_seconds, lateness_seconds,
    timeout_seconds, resolve_seconds, connect_seconds, tls_seconds, processing_seconds,
    transfer_seconds, redirects, final_url, http_version, ip_address, ip_family, regex_matched,
    body_bytes, content_length, tls_version, tls_cipher, tls_leaf_not_after,
    tls_earliest_not_after, tls_leaf_subject, kafka_partition, kafka_offset)
SELECT * FROM UNNEST(
    $1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::bool[],
    $9::text[], $10::text[], $11::int4[], $12::int4[], $13::float8[], $14::float8[],
    $15::float8[], $16::float8[], $17::float8[], $18::float8[], $19::float8[],
    $20::float8[], $21::int4[], $22::text[], $23::text[], $24::inet[], $25::text[], $26::bool[],
    $27::int8[], $28::int8[], $29::text[], $30::text[], $31::timestamptz[],
    $32::timestamptz[], $33::text[], $34::int4[], $35::int8[])
ON CONFLICT DO NOTHING";

/// The columns of `probe_results` the sink writes (all but `inserted_at`), in [`COPY_TYPES`]
/// order.
pub const COLUMNS: &str =
    "check_id, scheduled_at, started_at, target_name, url, instance_id, schema_version, success, \
    error_kind, error, status_code, first_status_code, duration_seconds, lateness_seconds, timeout_seconds, \
    resolve_seconds, connect_seconds, tls_seconds, processing_seconds, transfer_seconds, redirects, final_url, \
    http_version, ip_address, ip_family, regex_matched, body_bytes, content_length, tls_version, tls_cipher, \
    tls_leaf_not_after, tls_earliest_not_after, tls_leaf_subject, kafka_partition, kafka_offset";

/// The session's staging table for [`WriteMethod::Copy`], emptied at every commit.
const CREATE_STAGE: &str =
    "CREATE TEMP TABLE IF NOT EXISTS probe_results_stage (LIKE probe_results INCLUDING DEFAULTS) ON COMMIT DELETE ROWS";

static STAGE_COPY: LazyLock<String> =
    LazyLock::new(|| format!("COPY probe_results_stage ({COLUMNS}) FROM STDIN (FORMAT binary)"));
static STAGE_INSERT: LazyLock<String> = LazyLock::new(|| {
    format!("INSERT INTO probe_results ({COLUMNS}) SELECT {COLUMNS} FROM probe_results_stage ON CONFLICT DO NOTHING")
});

/// PostgreSQL types of [`COLUMNS`], for the binary COPY encoder.
pub const COPY_TYPES: [Type; 35] = [
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::BOOL,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT4,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::INET,
    Type::TEXT,
    Type::BOOL,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
];

const INSERT_DEAD_LETTERS: &str = "
INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, message_key, payload, error_class, error)
SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[], $7::text[])
ON CONFLICT DO NOTHING";

/// Column arrays for [`INSERT_ROWS`], built in one pass over the rows; text borrows from the
/// rows (no copies).
struct Columns<'a> {
    check_id: Vec<Uuid>,
    scheduled_at: Vec<DateTime<Utc>>,
    started_at: Vec<DateTime<Utc>>,
    target: Vec<&'a str>,
    url: Vec<&'a str>,
    instance_id: Vec<&'a str>,
    schema_version: Vec<i32>,
    success: Vec<bool>,
    error_kind: Vec<Option<&'a str>>,
    error: Vec<Option<&'a str>>,
    status_code: Vec<Option<i32>>,
    first_status_code: Vec<Option<i32>>,
    duration: Vec<f64>,
    lateness: Vec<f64>,
    timeout: Vec<f64>,
    resolve: Vec<Option<f64>>,
    connect: Vec<Option<f64>>,
    tls: Vec<Option<f64>>,
    processing: Vec<Option<f64>>,
    transfer: Vec<Option<f64>>,
    redirects: Vec<i32>,
    final_url: Vec<Option<&'a str>>,
    http_version: Vec<Option<&'a str>>,
    ip_address: Vec<Option<IpAddr>>,
    ip_family: Vec<Option<&'a str>>,
    regex_matched: Vec<Option<bool>>,
    body_bytes: Vec<Option<i64>>,
    content_length: Vec<Option<i64>>,
    tls_version: Vec<Option<&'a str>>,
    tls_cipher: Vec<Option<&'a str>>,
    tls_leaf_not_after: Vec<Option<DateTime<Utc>>>,
    tls_earliest_not_after: Vec<Option<DateTime<Utc>>>,
    tls_leaf_subject: Vec<Option<&'a str>>,
    partition: Vec<i32>,
    offset: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn from_rows(rows: &'a [Row]) -> Self {
        let n = rows.len();
        let mut c = Columns {
            check_id: Vec::with_capacity(n),
            scheduled_at: Vec::with_capacity(n),
            started_at: Vec::with_capacity(n),
            target: Vec::with_capacity(n),
            url: Vec::with_capacity(n),
            instance_id: Vec::with_capacity(n),
            schema_version: Vec::with_capacity(n),
            success: Vec::with_capacity(n),
            error_kind: Vec::with_capacity(n),
            error: Vec::with_capacity(n),
            status_code: Vec::with_capacity(n),
            first_status_code: Vec::with_capacity(n),
            duration: Vec::with_capacity(n),
            lateness: Vec::with_capacity(n),
            timeout: Vec::with_capacity(n),
            resolve: Vec::with_capacity(n),
            connect: Vec::with_capacity(n),
            tls: Vec::with_capacity(n),
            processing: Vec::with_capacity(n),
            transfer: Vec::with_capacity(n),
            redirects: Vec::with_capacity(n),
            final_url: Vec::with_capacity(n),
            http_version: Vec::with_capacity(n),
            ip_address: Vec::with_capacity(n),
            ip_family: Vec::with_capacity(n),
            regex_matched: Vec::with_capacity(n),
            body_bytes: Vec::with_capacity(n),
            content_length: Vec::with_capacity(n),
            tls_version: Vec::with_capacity(n),
            tls_cipher: Vec::with_capacity(n),
            tls_leaf_not_after: Vec::with_capacity(n),
            tls_earliest_not_after: Vec::with_capacity(n),
            tls_leaf_subject: Vec::with_capacity(n),
            partition: Vec::with_capacity(n),
            offset: Vec::with_capacity(n),
        };
        for Row {
            result: r,
            partition,
            offset,
        } in rows
        {
            let tls = r.tls.as_ref();
            c.check_id.push(r.check_id);
            c.scheduled_at.push(r.scheduled_at);
            c.started_at.push(r.started_at);
            c.target.push(&r.target);
            c.url.push(&r.url);
            c.instance_id.push(&r.instance_id);
            c.schema_version
                .push(i32::try_from(r.schema_version).unwrap_or(i32::MAX));
            c.success.push(r.success);
            c.error_kind.push(r.error_kind.as_deref());
            c.error.push(r.error.as_deref());
            c.status_code.push(r.status_code.map(i32::from));
            c.first_status_code.push(r.first_status_code.map(i32::from));
            c.duration.push(r.duration_seconds);
            c.lateness.push(r.lateness_seconds);
            c.timeout.push(r.timeout_seconds);
            c.resolve.push(r.phases.resolve);
            c.connect.push(r.phases.connect);
            c.tls.push(r.phases.tls);
            c.processing.push(r.phases.processing);
            c.transfer.push(r.phases.transfer);
            c.redirects.push(i32::try_from(r.redirects).unwrap_or(i32::MAX));
            c.final_url.push(r.final_url.as_deref());
            c.http_version.push(r.http_version.as_deref());
            c.ip_address.push(r.ip_address.as_deref().and_then(|a| a.parse().ok()));
            c.ip_family.push(r.ip_family.as_deref());
            c.regex_matched.push(r.regex_matched);
            c.body_bytes
                .push(r.body_bytes.map(|n| i64::try_from(n).unwrap_or(i64::MAX)));
            c.content_length
                .push(r.content_length.map(|n| i64::try_from(n).unwrap_or(i64::MAX)));
            c.tls_version.push(tls.and_then(|t| t.version.as_deref()));
            c.tls_cipher.push(tls.and_then(|t| t.cipher.as_deref()));
            c.tls_leaf_not_after.push(tls.and_then(|t| t.leaf_not_after));
            c.tls_earliest_not_after.push(tls.and_then(|t| t.earliest_not_after));
            c.tls_leaf_subject.push(tls.and_then(|t| t.leaf_subject.as_deref()));
            c.partition.push(*partition);
            c.offset.push(*offset);
        }
        c
    }
}

/// Encodes one result and its Kafka origin as a binary COPY row of [`COLUMNS`] / [`COPY_TYPES`].
///
/// # Errors
/// The COPY stream failed (the connection or the server rejected the data).
pub async fn copy_row(
    writer: Pin<&mut BinaryCopyInWriter>,
    r: &ProbeResult,
    partition: i32,
    offset: i64,
) -> Result<(), tokio_postgres::Error> {
    let tls = r.tls.as_ref();
    let schema_version = i32::try_from(r.schema_version).unwrap_or(i32::MAX);
    let status_code = r.status_code.map(i32::from);
    let first_status_code = r.first_status_code.map(i32::from);
    let redirects = i32::try_from(r.redirects).unwrap_or(i32::MAX);
    let ip_address: Option<IpAddr> = r.ip_address.as_deref().and_then(|a| a.parse().ok());
    let body_bytes = r.body_bytes.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let content_length = r.content_length.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let tls_version = tls.and_then(|t| t.version.as_deref());
    let tls_cipher = tls.and_then(|t| t.cipher.as_deref());
    let tls_leaf_not_after = tls.and_then(|t| t.leaf_not_after);
    let tls_earliest_not_after = tls.and_then(|t| t.earliest_not_after);
    let tls_leaf_subject = tls.and_then(|t| t.leaf_subject.as_deref());
    let values: [&(dyn ToSql + Sync); 35] = [
        &r.check_id,
        &r.scheduled_at,
        &r.started_at,
        &r.target,
        &r.url,
        &r.instance_id,
        &schema_version,
        &r.success,
        &r.error_kind,
        &r.error,
        &status_code,
        &first_status_code,
        &r.duration_seconds,
        &r.lateness_seconds,
        &r.timeout_seconds,
        &r.phases.resolve,
        &r.phases.connect,
        &r.phases.tls,
        &r.phases.processing,
        &r.phases.transfer,
        &redirects,
        &r.final_url,
        &r.http_version,
        &ip_address,
        &r.ip_family,
        &r.regex_matched,
        &body_bytes,
        &content_length,
        &tls_version,
        &tls_cipher,
        &tls_leaf_not_after,
        &tls_earliest_not_after,
        &tls_leaf_subject,
        &partition,
        &offset,
    ];
    writer.write(&values).await
}

impl Store {
    /// Creates the connection pool (connections are opened lazily).
    ///
    /// # Errors
    /// The DSN does not parse (URL or libpq `key=value` form, PostgreSQL docs §34.1.1), or its
    /// TLS parameters are invalid or name unusable files ([`crate::pg_tls::connect_config`]).
    pub fn new(dsn: &str, pool_size: usize, topic: &str) -> Result<Self, String> {
        let crate::pg_tls::PgConnect {
            config: mut pg, tls, ..
        } = crate::pg_tls::connect_config(dsn).map_err(|e| e.to_string())?;
        if pg.get_application_name().is_none() {
            pg.application_name("healthcheck-sink");
        }
        pg.connect_timeout(Duration::from_secs(5));
        let mgr = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            pool,
            topic: topic.to_string(),
            method: WriteMethod::default(),
            reachable: Arc::default(),
        })
    }

    /// The same store writing rows with `method`.
    #[must_use]
    pub fn with_method(self, method: WriteMethod) -> Self {
        Self { method, ..self }
    }

    /// Applies the embedded migrations (refinery), serialized across replicas by an advisory lock.
    ///
    /// # Errors
    /// The database is unreachable or a migration fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut obj = self.pool.get().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        client.execute("SELECT pg_advisory_lock(7355608)", &[]).await?;
        let report = embedded::migrations::runner().run_async(client).await;
        client.execute("SELECT pg_advisory_unlock(7355608)", &[]).await?;
        let report = report.map_err(|e| StoreError {
            class: ErrorClass::Fatal,
            code: "migration".into(),
            message: e.to_string(),
        })?;
        for m in report.applied_migrations() {
            tracing::info!(version = m.version(), name = m.name(), "Applied migration.");
        }
        Ok(())
    }

    /// Resolves at the next successful [`Store::ping`].
    pub async fn reachable(&self) {
        self.reachable.notified().await;
    }

    /// `SELECT 1` on a pooled connection: the database half of readiness. Wakes
    /// [`Store::reachable`] waiters when it succeeds.
    ///
    /// # Errors
    /// The pool cannot hand out a working connection.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        self.reachable.notify_waiters();
        Ok(())
    }

    /// Writes `rows` and `dead` in one transaction. When PostgreSQL rejects the data (SQLSTATE
    /// class 22 or 23), the batch is split in halves until the rejected rows are isolated; those
    /// become dead letters of class `data` and the rest is written.
    ///
    /// # Errors
    /// A transient or fatal [`StoreError`]; nothing of the failed transaction is kept.
    pub async fn write(&self, rows: &[Row], dead: &[DeadLetter]) -> Result<WriteOutcome, StoreError> {
        match self.write_tx(rows, dead).await {
            Err(e) if e.class == ErrorClass::Data && !rows.is_empty() => {
                if rows.len() == 1 {
                    let r = &rows[0];
                    let letter = DeadLetter {
                        topic: self.topic.clone(),
                        partition: r.partition,
                        offset: r.offset,
                        key: Some(r.result.target.as_bytes().to_vec()),
                        payload: serde_json::to_vec(&r.result).ok(),
                        error_class: "data".into(),
                        error: format!("SQLSTATE {}: {}", e.code, e.message),
                    };
                    tracing::warn!(partition = r.partition, offset = r.offset, error = %e, "PostgreSQL rejected a row; dead-lettering it.");
                    let mut all = dead.to_vec();
                    all.push(letter);
                    let mut out = Box::pin(self.write(&[], &all)).await?;
                    out.offered = 1;
                    out.rejected_rows = 1;
                    return Ok(out);
                }
                let (a, b) = rows.split_at(rows.len() / 2);
                let first = Box::pin(self.write(a, dead)).await?;
                let second = Box::pin(self.write(b, &[])).await?;
                Ok(WriteOutcome {
                    offered: first.offered + second.offered,
                    inserted: first.inserted + second.inserted,
                    dead_letters: first.dead_letters + second.dead_letters,
                    rejected_rows: first.rejected_rows + second.rejected_rows,
                    transactions: first.transactions + second.transactions,
                })
            }
            other => other,
        }
    }

    async fn write_tx(&self, rows: &[Row], dead: &[DeadLetter]) -> Result<WriteOutcome, StoreError> {
        let mut client = self.pool.get().await?;
        // Prepared outside the transaction: a missing staging table (a new session) fails
        // the PREPARE alone, not the transaction.
        let stage_insert = if self.method == WriteMethod::Copy && !rows.is_empty() {
            match client.prepare_cached(&STAGE_INSERT).await {
                Ok(stmt) => Some(stmt),
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                    client.batch_execute(CREATE_STAGE).await?;
                    Some(client.prepare_cached(&STAGE_INSERT).await?)
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let tx = client.transaction().await?;
        let mut inserted = 0;
        if let Some(stmt) = stage_insert {
            let sink = tx.copy_in(&*STAGE_COPY).await?;
            let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
            let mut writer = std::pin::pin!(writer);
            for row in rows {
                copy_row(writer.as_mut(), &row.result, row.partition, row.offset).await?;
            }
            writer.finish().await?;
            inserted = tx.execute(&stmt, &[]).await?;
        } else if !rows.is_empty() {
            let c = Columns::from_rows(rows);
            let stmt = tx.prepare_cached(INSERT_ROWS).await?;
            inserted = tx
                .execute(
                    &stmt,
                    &[
                        &c.check_id,
                        &c.scheduled_at,
                        &c.started_at,
                        &c.target,
                        &c.url,
                        &c.instance_id,
                        &c.schema_version,
                        &c.success,
                        &c.error_kind,
                        &c.error,
                        &c.status_code,
                        &c.first_status_code,
                        &c.duration,
                        &c.lateness,
                        &c.timeout,
                        &c.resolve,
                        &c.connect,
                        &c.tls,
                        &c.processing,
                        &c.transfer,
                        &c.redirects,
                        &c.final_url,
                        &c.http_version,
                        &c.ip_address,
                        &c.ip_family,
                        &c.regex_matched,
                        &c.body_bytes,
                        &c.content_length,
                        &c.tls_version,
                        &c.tls_cipher,
                        &c.tls_leaf_not_after,
                        &c.tls_earliest_not_after,
                        &c.tls_leaf_subject,
                        &c.partition,
                        &c.offset,
                    ],
                )
                .await?;
        }
        let mut dead_inserted = 0;
        if !dead.is_empty() {
            let topic: Vec<&str> = dead.iter().map(|d| d.topic.as_str()).collect();
            let partition: Vec<i32> = dead.iter().map(|d| d.partition).collect();
            let offset: Vec<i64> = dead.iter().map(|d| d.offset).collect();
            let key: Vec<Option<&[u8]>> = dead.iter().map(|d| d.key.as_deref()).collect();
            let payload: Vec<Option<&[u8]>> = dead.iter().map(|d| d.payload.as_deref()).collect();
            let class: Vec<&str> = dead.iter().map(|d| d.error_class.as_str()).collect();
            // PostgreSQL text cannot hold NUL; the error text is ours to shorten.
            let error: Vec<String> = dead.iter().map(|d| d.error.replace('\0', "")).collect();
            let stmt = tx.prepare_cached(INSERT_DEAD_LETTERS).await?;
            dead_inserted = tx
                .execute(&stmt, &[&topic, &partition, &offset, &key, &payload, &class, &error])
                .await?;
        }
        tx.commit().await?;
        Ok(WriteOutcome {
            offered: rows.len() as u64,
            inserted,
            dead_letters: dead_inserted,
            rejected_rows: 0,
            transactions: 1,
        })
    }

    /// Creates the monthly partitions from last month to `months_ahead` months ahead, and drops
    /// monthly partitions that ended before `now - retention` (`None`: keep everything).
    /// Dropping a partition removes its rows without the bloat of `DELETE`.
    ///
    /// # Errors
    /// A database error; an existing overlapping partition is logged, not an error.
    pub async fn maintain_partitions(
        &self,
        now: DateTime<Utc>,
        months_ahead: u32,
        retention: Option<Duration>,
    ) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // One maintainer at a time across replicas; released at commit.
        tx.execute("SELECT pg_advisory_xact_lock(7355609)", &[]).await?;
        let first = month_start(now.year(), now.month()) - chrono::Months::new(1);
        for i in 0..=months_ahead + 1 {
            let from = first + chrono::Months::new(i);
            let to = from + chrono::Months::new(1);
            let name = partition_name(from);
            let exists: bool = tx
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await?
                .get(0);
            if exists {
                continue;
            }
            let sql = format!(
                "CREATE TABLE {name} PARTITION OF probe_results FOR VALUES FROM ('{}') TO ('{}')",
                from.format("%Y-%m-%d"),
                to.format("%Y-%m-%d")
            );
            tx.batch_execute("SAVEPOINT p").await?;
            match tx.batch_execute(&sql).await {
                Ok(()) => tracing::info!(partition = %name, "Created partition."),
                Err(e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT p").await?;
                    tracing::warn!(partition = %name, error = %common::telemetry::chain(&e), "Could not create partition (rows for this month may sit in probe_results_default).");
                }
            }
        }
        if let Some(retention) = retention {
            let cutoff = now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
            let parts = tx
                .query(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                     WHERE i.inhparent = 'probe_results'::regclass AND c.relname ~ '^probe_results_y[0-9]{4}m[0-9]{2}$'",
                    &[],
                )
                .await?;
            for row in parts {
                let name: String = row.get(0);
                let Some(start) = parse_partition_name(&name) else {
                    continue;
                };
                let end = start + chrono::Months::new(1);
                if end <= cutoff {
                    tx.batch_execute(&format!("DROP TABLE {name}")).await?;
                    tracing::info!(partition = %name, "Dropped partition past retention.");
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
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

/// How long a transaction of `rows` took, for metrics.
pub fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        assert_eq!(classify(&SqlState::ADMIN_SHUTDOWN), ErrorClass::Transient);
        assert_eq!(classify(&SqlState::CONNECTION_FAILURE), ErrorClass::Transient);
        assert_eq!(classify(&SqlState::T_R_SERIALIZATION_FAILURE), ErrorClass::Transient);
        assert_eq!(classify(&SqlState::T_R_DEADLOCK_DETECTED), ErrorClass::Transient);
        assert_eq!(classify(&SqlState::TOO_MANY_CONNECTIONS), ErrorClass::Transient);
        assert_eq!(classify(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE), ErrorClass::Data);
        assert_eq!(classify(&SqlState::CHECK_VIOLATION), ErrorClass::Data);
        assert_eq!(classify(&SqlState::UNDEFINED_TABLE), ErrorClass::Fatal);
        assert_eq!(classify(&SqlState::INSUFFICIENT_PRIVILEGE), ErrorClass::Fatal);
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
