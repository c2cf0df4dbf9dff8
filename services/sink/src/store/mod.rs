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
//! reports a transient error [`ErrorCode::Timeout`]. TCP keepalives and `TCP_USER_TIMEOUT`
//! close dead connections in seconds (see [`Store::new`]).
//!
//! Files: [`columns`] (the one table of `probe_results` columns and the statements generated
//! from it), [`error`] (what failed and how to react; `sqlstate`, the SQLSTATE classes),
//! `write` (a batch in one transaction), `reject` (the canary and the rows at fault),
//! `partitions` (monthly partitions and retention). Row and dead letter types live with
//! their decoding in [`crate::decode`] and are re-exported here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;

pub mod columns;
pub mod error;
pub mod histogram;
mod pages;
mod partitions;
mod reject;
mod rollup;
mod sqlstate;
pub mod status;
mod targets;
mod write;

pub use crate::decode::{DeadLetter, DeadLetterClass, Row};
pub use columns::{copy_row, COLUMNS, COPY_TYPES};
pub use error::{classify, ErrorClass, ErrorCode, SqlStateClass, StoreError};
pub use partitions::partition_name;
pub use rollup::{MARKS_PER_PASS, ROLLUP_LOCK};
pub use write::WriteOutcome;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Batches written through the staging table after a direct COPY met a row already stored.
pub const DIRECT_COPY_PAUSE: u32 = 16;

/// How a batch's rows reach `probe_results`; neither stores a row twice, and neither has a
/// bind-parameter limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMethod {
    /// Binary `COPY` straight into `probe_results` inside a savepoint; when a row is already
    /// there (a replay: SQLSTATE 23505), back to the savepoint and the replay-proof path:
    /// binary `COPY` into a session-local staging table (`CREATE TEMP TABLE ... ON COMMIT
    /// DELETE ROWS`, created once per connection), then `INSERT ... SELECT ... ON CONFLICT DO
    /// NOTHING` from it, for that batch and the next [`DIRECT_COPY_PAUSE`] (replays come in
    /// runs). The fastest measured (`make bench`, scenarios `sink` and `write`), but it keeps
    /// state in the session, so it needs session pooling if a pooler (PgBouncer) sits in
    /// between.
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
    /// The locations this process knows are in `locations` (written, or found there): a
    /// batch adds a location to the table only when it holds one missing from this set, so
    /// the hot path gains no statement.
    known_locations: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Batches left before [`WriteMethod::Copy`] tries the direct COPY again, after one met
    /// a row already stored (see [`Store::write`]'s fast path).
    direct_copy_pause: Arc<std::sync::atomic::AtomicU32>,
}

impl Store {
    /// Creates the connection pool (connections are opened lazily).
    ///
    /// # Errors
    /// The DSN does not parse (URL or libpq `key=value` form, PostgreSQL docs §34.1.1), or its
    /// TLS parameters are invalid or name unusable files ([`crate::pg_tls::connect_config`]).
    pub fn new(dsn: &str, pool_size: usize, topic: &str) -> Result<Self, String> {
        Self::build(dsn, pool_size, topic, None)
    }

    /// A store whose sessions are read-only (`default_transaction_read_only`, set when each
    /// connection opens, so no statement on them can write) with `statement_timeout` as the
    /// session's `statement_timeout` (so every statement is bounded server side, in a
    /// transaction or not), its own pool of `pool_size` connections and `application_name`
    /// `healthcheck-sink-status`: what the status server ([`crate::status`]) reads through,
    /// so that a page load never takes a writer's connection.
    ///
    /// # Errors
    /// As [`Store::new`].
    pub fn read_only(dsn: &str, pool_size: usize, topic: &str, statement_timeout: Duration) -> Result<Self, String> {
        Ok(Self::build(dsn, pool_size, topic, Some(statement_timeout))?.with_statement_timeout(statement_timeout))
    }

    /// The pool; with `read_only`, read-only sessions with that statement timeout.
    fn build(dsn: &str, pool_size: usize, topic: &str, read_only: Option<Duration>) -> Result<Self, String> {
        let crate::pg_tls::PgConnect {
            config: mut pg, tls, ..
        } = crate::pg_tls::connect_config(dsn).map_err(|e| e.to_string())?;
        if let Some(timeout) = read_only {
            // Appended to the DSN's own `options`, if any (libpq's `-c name=value` form).
            let ours = format!(
                "-c default_transaction_read_only=on -c statement_timeout={}",
                timeout.as_millis().max(1)
            );
            let options = match pg.get_options() {
                Some(o) if !o.trim().is_empty() => format!("{o} {ours}"),
                _ => ours,
            };
            pg.options(&options);
            if pg.get_application_name().is_none() {
                pg.application_name("healthcheck-sink-status");
            }
        }
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
            known_locations: Arc::default(),
            direct_copy_pause: Arc::default(),
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
            code: ErrorCode::Migration,
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
}

/// How long a transaction of `rows` took, for metrics.
pub fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
