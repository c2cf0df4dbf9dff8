//! PostgreSQL: migrations, partition maintenance and batch writes. The only module that
//! issues SQL.
//!
//! A batch is written in one transaction: its rows by binary `COPY` into a session-local
//! staging table and `INSERT ... SELECT ... ON CONFLICT DO NOTHING` from it (or, with
//! [`WriteMethod::Unnest`], one `INSERT ... SELECT FROM UNNEST(...)`; neither has a
//! bind-parameter limit, and replays are absorbed), and its dead letters with `ON CONFLICT DO
//! NOTHING` on (topic, partition, offset).
//!
//! When a batch fails, the error is transient (a lost connection, a serialization failure:
//! SQLSTATE classes 08, 40, 53, 57, 58; the caller retries the batch) or it is not. An error
//! that is not transient may depend on the data (a value out of range, a check constraint, an
//! index row over the B-tree limit, a statement timeout of an oversized batch) or not (a
//! missing table or permission), whatever its SQLSTATE: the same write with a known-good
//! canary row instead of the batch, in a transaction rolled back, tells them apart. If the
//! canary fails too, the error does not depend on the rows and is fatal (the sink stops). If
//! it passes, the batch is split in halves until the rows at fault are isolated; each becomes
//! a dead letter of class `data` holding the message's raw key and payload, and the rest is
//! written. A dead letter PostgreSQL refuses is stored with its error text shortened, then,
//! if still refused, without its key and payload (see [`Store::write`]), so nothing a producer
//! can put in the topic stops consumption.
//!
//! Every transaction runs with `SET LOCAL statement_timeout` ([`Store::with_statement_timeout`],
//! server side); the client gives up on a statement PostgreSQL has not answered
//! [`ANSWER_MARGIN`] after that (a host gone without a reset), drops the connection and
//! reports a transient error `timeout`. TCP keepalives and `TCP_USER_TIMEOUT` close dead
//! connections in seconds (see [`Store::new`]).

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
    /// The message's key, raw (kept for the dead letter should PostgreSQL refuse the row).
    pub key: Option<Vec<u8>>,
    /// The message's payload, raw, as the dead letter keeps it. `None` for a row built in
    /// memory rather than read from a message (tests, bench): its dead letter then holds the
    /// result serialized again and the target name as key.
    pub payload: Option<Vec<u8>>,
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
    /// `decode` (not a probe result, or one holding a value the schema cannot hold:
    /// [`crate::decode`]) or `data` (PostgreSQL refused the row for its own data, whatever
    /// the SQLSTATE, while a canary row passed).
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
    /// Dead letters skipped because PostgreSQL refused even their bare form (no key, no
    /// payload, short error) while a canary passed; their messages stay in the topic until its
    /// retention. Not expected to happen: logged at error level.
    pub skipped_dead_letters: u64,
    /// Transactions committed.
    pub transactions: u64,
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
        }
    }
}

/// How to react to a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later: connection loss (08), serialization failure (40001), deadlock (40P01),
    /// insufficient resources (53), operator intervention (57), pool timeouts, I/O, no answer.
    Transient,
    /// Most likely the data: data exception (22), integrity constraint violation (23).
    /// [`Store::write`] still checks with a canary before blaming the rows.
    Data,
    /// Any other SQLSTATE (a missing table or permission, a program limit). From
    /// [`Store::write`] only when a canary write fails too: the error does not depend on the
    /// rows, nothing can be written until an operator acts, so stop.
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

impl StoreError {
    /// Whether the failure may come from the rows written: any error that is not transient,
    /// and a statement timeout (57014), which an oversized batch can cause.
    fn may_depend_on_rows(&self) -> bool {
        self.class != ErrorClass::Transient || self.code == SqlState::QUERY_CANCELED.code()
    }

    /// `lock_timeout` expired (55P03).
    fn is_lock_timeout(&self) -> bool {
        self.code == SqlState::LOCK_NOT_AVAILABLE.code()
    }

    /// PostgreSQL did not answer within `within`.
    fn unanswered(within: Duration) -> Self {
        Self {
            class: ErrorClass::Transient,
            code: "timeout".into(),
            message: format!(
                "PostgreSQL did not answer within {within:?}; the connection is presumed dead and dropped"
            ),
        }
    }
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

/// Idle time before the first TCP keepalive probe (`keepalives_idle`, libpq's name).
pub const KEEPALIVES_IDLE: Duration = Duration::from_secs(5);
/// Time between unanswered keepalive probes (`keepalives_interval`).
pub const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered keepalive probes before the connection is closed (`keepalives_count`).
pub const KEEPALIVES_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the kernel closes the connection
/// (`TCP_USER_TIMEOUT`, RFC 5482; Linux; libpq's `tcp_user_timeout`).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default server-side `statement_timeout` of the sink's transactions.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the statement timeout the client stops waiting for an answer.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(5);
/// How long readiness waits for `SELECT 1`.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// `lock_timeout` of partition maintenance: how long its DDL may wait for a lock (and so hold
/// up the inserts and queries queued behind it) before giving up until the next run.
pub const PARTITION_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest error text of a `data` dead letter, in bytes.
const MAX_ERROR_BYTES: usize = 4096;
/// The error text of a dead letter PostgreSQL refused as first written, in bytes.
const SHORT_ERROR_BYTES: usize = 512;

/// Part of a batch: rows and dead letters.
type Part<'a> = (&'a [Row], &'a [DeadLetter]);

/// How a write transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Commit,
    /// A canary: written, then rolled back.
    Rollback,
}

/// The PostgreSQL side of the sink.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    topic: String,
    method: WriteMethod,
    statement_timeout: Duration,
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
            ..
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
        // A host that vanishes without a reset (a network black hole) is noticed in seconds,
        // not after the kernel's retransmissions (about 15 minutes): keepalives when the
        // connection is idle, TCP_USER_TIMEOUT when sent data stays unacknowledged.
        pg.keepalives(true)
            .keepalives_idle(KEEPALIVES_IDLE)
            .keepalives_interval(KEEPALIVES_INTERVAL)
            .keepalives_retries(KEEPALIVES_RETRIES)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
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
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            reachable: Arc::default(),
        })
    }

    /// The same store writing rows with `method`.
    #[must_use]
    pub fn with_method(self, method: WriteMethod) -> Self {
        Self { method, ..self }
    }

    /// The same store with `statement_timeout` (PostgreSQL's setting, `SET LOCAL` in every
    /// transaction; default [`DEFAULT_STATEMENT_TIMEOUT`]). The client waits
    /// [`ANSWER_MARGIN`] longer for each answer before dropping the connection.
    #[must_use]
    pub fn with_statement_timeout(self, statement_timeout: Duration) -> Self {
        Self {
            statement_timeout,
            ..self
        }
    }

    /// How long the client waits for PostgreSQL to answer a statement.
    fn answer_within(&self) -> Duration {
        self.statement_timeout + ANSWER_MARGIN
    }

    /// `fut`, given up after [`Store::answer_within`].
    async fn timed<T, E: Into<StoreError>>(
        &self,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.answer_within(), fut).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(StoreError::unanswered(self.answer_within())),
        }
    }

    /// Drops a connection that did not answer, and the idle ones (they most likely lead to
    /// the same unreachable host): the next write opens a new one.
    fn discard(&self, client: deadpool_postgres::Client) {
        drop(deadpool_postgres::Object::take(client));
        let dropped = self.pool.retain(|_, _| false).removed.len();
        tracing::warn!(
            idle_dropped = dropped,
            "Dropped a PostgreSQL connection that did not answer."
        );
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
        match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
            Ok(answer) => answer?,
            Err(_) => {
                self.discard(client);
                return Err(StoreError::unanswered(PING_TIMEOUT));
            }
        };
        self.reachable.notify_waiters();
        Ok(())
    }

    /// Writes `rows` and `dead` in one transaction, or, when PostgreSQL refuses the batch for
    /// its data, in several, with the rows at fault as dead letters:
    /// - a transient error (other than a statement timeout) is returned for the caller to retry;
    /// - any other error (and a statement timeout) is checked with a canary: the same write
    ///   path with a known-good row (and/or dead letter) in a transaction rolled back. If the
    ///   canary fails too, the error does not depend on the rows: returned as
    ///   [`ErrorClass::Fatal`] (or transient, when the canary's error is);
    /// - otherwise the batch is split (rows apart from dead letters, then in halves) until the
    ///   rows at fault are alone; each becomes a dead letter of class `data` with the
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
            ([row], []) => return self.reject_row(row, &e).await,
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

    /// Writes a canary row (when `row`) and a canary dead letter (when `dead_letter`), as a
    /// batch would be written, and rolls back.
    ///
    /// # Errors
    /// The canary's error: transient as classified, anything else as [`ErrorClass::Fatal`].
    async fn canary(&self, row: bool, dead_letter: bool) -> Result<(), StoreError> {
        let now = Utc::now();
        let rows: Vec<Row> = row
            .then(|| Row {
                result: canary_result(now),
                partition: -1,
                offset: -1,
                key: None,
                payload: None,
            })
            .into_iter()
            .collect();
        let dead: Vec<DeadLetter> = dead_letter
            .then(|| DeadLetter {
                topic: self.topic.clone(),
                partition: -1,
                offset: -1,
                key: None,
                payload: None,
                error_class: "canary".into(),
                error: "canary".into(),
            })
            .into_iter()
            .collect();
        match self.write_tx(&rows, &dead, Finish::Rollback).await {
            Ok(_) => Ok(()),
            Err(c) if c.class == ErrorClass::Transient => Err(c),
            Err(c) => Err(StoreError {
                class: ErrorClass::Fatal,
                message: format!(
                    "{} (a canary write fails too: the error does not depend on the rows)",
                    c.message
                ),
                ..c
            }),
        }
    }

    /// Dead-letters a row PostgreSQL refused alone while a canary passed.
    async fn reject_row(&self, row: &Row, e: &StoreError) -> Result<WriteOutcome, StoreError> {
        tracing::warn!(partition = row.partition, offset = row.offset, code = %e.code, error = %e.message, "PostgreSQL refused a row; dead-lettering it.");
        let (key, payload) = match &row.payload {
            Some(p) => (row.key.clone(), p.clone()),
            None => (
                Some(row.result.target.as_bytes().to_vec()),
                serde_json::to_vec(&row.result).unwrap_or_default(),
            ),
        };
        let letter = DeadLetter {
            topic: self.topic.clone(),
            partition: row.partition,
            offset: row.offset,
            key,
            payload: Some(payload),
            error_class: "data".into(),
            error: shorten(&format!("SQLSTATE {}: {}", e.code, e.message), MAX_ERROR_BYTES),
        };
        let out = Box::pin(self.write(&[], &[letter])).await?;
        Ok(WriteOutcome {
            offered: 1,
            rejected_rows: 1,
            ..out
        })
    }

    /// Stores a dead letter PostgreSQL refused alone while a canary passed: with its error
    /// text shortened, then without its key and payload, then not at all (see [`Store::write`]).
    async fn reject_dead_letter(&self, d: &DeadLetter, e: &StoreError) -> Result<WriteOutcome, StoreError> {
        tracing::warn!(partition = d.partition, offset = d.offset, code = %e.code, error = %e.message, "PostgreSQL refused a dead letter; storing it with its error text shortened.");
        let mut letter = DeadLetter {
            error: format!(
                "{} (error text shortened: PostgreSQL refused this dead letter, SQLSTATE {})",
                shorten(&d.error, SHORT_ERROR_BYTES),
                e.code
            ),
            ..d.clone()
        };
        let e = match self.write_tx(&[], std::slice::from_ref(&letter), Finish::Commit).await {
            Ok(out) => return Ok(out),
            Err(e) if !e.may_depend_on_rows() => return Err(e),
            Err(e) => e,
        };
        tracing::warn!(partition = d.partition, offset = d.offset, code = %e.code, error = %e.message, "PostgreSQL refused a dead letter again; storing it without key and payload.");
        letter.error = format!(
            "{} (key and payload of {} bytes not stored: PostgreSQL refused this dead letter, SQLSTATE {}; \
             the message stays at its topic, partition and offset until the topic's retention)",
            shorten(&d.error, SHORT_ERROR_BYTES),
            d.payload.as_ref().map_or(0, Vec::len),
            e.code
        );
        letter.key = None;
        letter.payload = None;
        match self.write_tx(&[], std::slice::from_ref(&letter), Finish::Commit).await {
            Ok(out) => Ok(out),
            Err(e) if !e.may_depend_on_rows() => Err(e),
            Err(e) => {
                tracing::error!(topic = %d.topic, partition = d.partition, offset = d.offset, code = %e.code, error = %e.message, "PostgreSQL refuses even the bare dead letter while a canary passes; skipping it (the message stays in the topic until its retention).");
                Ok(WriteOutcome {
                    skipped_dead_letters: 1,
                    ..WriteOutcome::default()
                })
            }
        }
    }

    /// One transaction: the rows, then the dead letters; committed or, for a canary, rolled
    /// back. A connection that does not answer in time is dropped.
    async fn write_tx(&self, rows: &[Row], dead: &[DeadLetter], finish: Finish) -> Result<WriteOutcome, StoreError> {
        let mut client = self.pool.get().await?;
        let result = self.write_on(&mut client, rows, dead, finish).await;
        if result.as_ref().is_err_and(|e| e.code == "timeout") {
            self.discard(client);
        }
        result
    }

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
                Err(e) if e.code == SqlState::UNDEFINED_TABLE.code() => {
                    self.timed(client.batch_execute(CREATE_STAGE)).await?;
                    Some(self.timed(client.prepare_cached(&STAGE_INSERT)).await?)
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let tx = self.timed(client.transaction()).await?;
        self.timed(tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            self.statement_timeout.as_millis()
        )))
        .await?;
        let mut inserted = 0;
        if let Some(stmt) = stage_insert {
            self.timed(async {
                let sink = tx.copy_in(&*STAGE_COPY).await?;
                let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
                let mut writer = std::pin::pin!(writer);
                for row in rows {
                    copy_row(writer.as_mut(), &row.result, row.partition, row.offset).await?;
                }
                writer.finish().await
            })
            .await?;
            inserted = self.timed(tx.execute(&stmt, &[])).await?;
        } else if !rows.is_empty() {
            let c = Columns::from_rows(rows);
            let stmt = self.timed(tx.prepare_cached(INSERT_ROWS)).await?;
            inserted = self
                .timed(tx.execute(
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
                ))
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
            let stmt = self.timed(tx.prepare_cached(INSERT_DEAD_LETTERS)).await?;
            dead_inserted = self
                .timed(tx.execute(&stmt, &[&topic, &partition, &offset, &key, &payload, &class, &error]))
                .await?;
        }
        match finish {
            Finish::Commit => self.timed(tx.commit()).await?,
            Finish::Rollback => self.timed(tx.rollback()).await?,
        }
        Ok(WriteOutcome {
            offered: rows.len() as u64,
            inserted,
            dead_letters: dead_inserted,
            rejected_rows: 0,
            skipped_dead_letters: 0,
            transactions: u64::from(finish == Finish::Commit),
        })
    }

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
            match self.create_partition(&tx, &name, from, to).await {
                Ok(moved) => tracing::info!(partition = %name, moved_from_default = moved, "Created partition."),
                Err(e) => {
                    self.timed(tx.batch_execute("ROLLBACK TO SAVEPOINT p")).await?;
                    tracing::warn!(partition = %name, code = %e.code, error = %e.message, "Could not create partition; trying again at the next run.");
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(retention) = retention {
            let cutoff = now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
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
        }
        self.timed(tx.commit()).await?;
        failed.map_or(Ok(()), Err)
    }

    /// Creates partition `name` for `[from, to)`, moves that range's rows out of the default
    /// partition into it and attaches it; returns how many rows moved.
    async fn create_partition(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
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

/// The canary of [`Store::write`]: a plain, successful result at `now` under a name no
/// target has (the write is rolled back anyway).
fn canary_result(now: DateTime<Utc>) -> ProbeResult {
    ProbeResult {
        schema_version: common::result::SCHEMA_VERSION,
        check_id: Uuid::new_v4(),
        instance_id: "healthcheck-sink".into(),
        target: "healthcheck-sink canary".into(),
        url: "http://canary.invalid/".into(),
        scheduled_at: now,
        started_at: now,
        lateness_seconds: 0.0,
        timeout_seconds: 1.0,
        duration_seconds: 0.001,
        success: true,
        error_kind: None,
        error: None,
        status_code: Some(200),
        first_status_code: Some(200),
        redirects: 0,
        final_url: None,
        http_version: Some("HTTP/1.1".into()),
        ip_address: Some("127.0.0.1".into()),
        ip_family: Some("ipv4".into()),
        regex_matched: None,
        body_bytes: Some(2),
        content_length: Some(2),
        phases: common::result::Phases::default(),
        tls: None,
    }
}

/// `s` cut to at most `max` bytes, at a character boundary, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
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
    fn shortened_text_ends_at_a_character_boundary() {
        assert_eq!(shorten("short", 10), "short");
        let cut = shorten(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut}");
        assert_eq!(cut.trim_end_matches('…'), "éééé");
    }

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
