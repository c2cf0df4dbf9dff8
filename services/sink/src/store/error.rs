//! What a failed database operation was, and how the sink reacts to it.
//!
//! [`classify`] is the one place that reads SQLSTATE text: it turns PostgreSQL's code into a
//! [`SqlStateClass`] (PostgreSQL docs, Appendix A "PostgreSQL Error Codes") and an
//! [`ErrorClass`]. Everything else asks [`StoreError`] (`connection_lost`, `retry_label`,
//! `may_depend_on_rows`, ...) and never matches on code text. Never issues SQL.

use std::time::Duration;

use tokio_postgres::error::SqlState;

pub use super::sqlstate::SqlStateClass;

/// How to react to a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later: connection loss (08), serialization failure (40001), deadlock (40P01),
    /// insufficient resources (53), operator intervention (57), pool timeouts, I/O, no answer.
    Transient,
    /// Most likely the data: data exception (22), integrity constraint violation (23).
    /// [`crate::store::Store::write`] still checks with a canary before blaming the rows.
    Data,
    /// Any other SQLSTATE (a missing table or permission, a program limit). From
    /// [`crate::store::Store::write`] only when a canary write fails too: the error does not
    /// depend on the rows, nothing can be written until an operator acts, so stop.
    Fatal,
}

/// What failed: PostgreSQL's SQLSTATE, or what the client saw without one. The serialized
/// form (strum) of the variants without a SQLSTATE is their metric label.
#[derive(Debug, Clone, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum ErrorCode {
    /// PostgreSQL answered with this SQLSTATE.
    Sqlstate(SqlState),
    /// The connection broke or was closed (no SQLSTATE), TLS included.
    Io,
    /// The pool could not hand out a connection in time (deadpool's wait/create/recycle timeouts).
    Pool,
    /// PostgreSQL did not answer within the statement timeout plus a margin; the connection
    /// was dropped.
    Timeout,
    /// A migration failed (refinery).
    Migration,
}

impl std::fmt::Display for ErrorCode {
    /// The SQLSTATE (`23502`), or the client-side label (`io`, `pool`, ...).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlstate(s) => f.write_str(s.code()),
            other => f.write_str(other.into()),
        }
    }
}

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// How to react.
    pub class: ErrorClass,
    /// What failed; [`StoreError::retry_label`] turns it into a metric label.
    pub code: ErrorCode,
    /// Description with the cause chain.
    pub message: String,
}

impl StoreError {
    /// A transient error of `code` (a client-side failure such as [`ErrorCode::Io`]).
    pub fn transient(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Transient,
            code,
            message: message.into(),
        }
    }

    /// PostgreSQL did not answer within `within`.
    pub(crate) fn unanswered(within: Duration) -> Self {
        Self::transient(
            ErrorCode::Timeout,
            format!("PostgreSQL did not answer within {within:?}; the connection is presumed dead and dropped"),
        )
    }

    /// The SQLSTATE, when PostgreSQL sent one.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match &self.code {
            ErrorCode::Sqlstate(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is SQLSTATE `state`.
    pub fn is(&self, state: &SqlState) -> bool {
        self.sqlstate() == Some(state)
    }

    /// Whether the failure may come from the rows written: any error that is not transient,
    /// and a statement timeout (57014), which an oversized batch can cause.
    pub fn may_depend_on_rows(&self) -> bool {
        self.class != ErrorClass::Transient || self.is(&SqlState::QUERY_CANCELED)
    }

    /// `lock_timeout` expired (55P03).
    pub fn is_lock_timeout(&self) -> bool {
        self.is(&SqlState::LOCK_NOT_AVAILABLE)
    }

    /// Whether the connection to PostgreSQL is lost (I/O, pool, no answer, SQLSTATE class 08,
    /// or the server shutting down or refusing connections, 57P01 to 57P05): the next
    /// successful readiness ping, rather than the backoff, says when to retry.
    pub fn connection_lost(&self) -> bool {
        match &self.code {
            ErrorCode::Io | ErrorCode::Pool | ErrorCode::Timeout => true,
            ErrorCode::Sqlstate(s) => {
                SqlStateClass::of(s) == SqlStateClass::ConnectionException
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                        SqlState::DATABASE_DROPPED,
                        SqlState::IDLE_SESSION_TIMEOUT,
                    ]
                    .contains(s)
            }
            ErrorCode::Migration => false,
        }
    }

    /// The label of the retry metric: the SQLSTATE class (`08`, `40`, `53`, `57`, ...) or
    /// the client-side code (`io`, `pool`, `timeout`).
    pub fn retry_label(&self) -> &'static str {
        match &self.code {
            ErrorCode::Sqlstate(s) => SqlStateClass::of(s).as_str(),
            other => other.into(),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let message = common::telemetry::chain(&e);
        let Some(code) = e.code() else {
            // No SQLSTATE: the connection broke or was closed.
            return Self::transient(ErrorCode::Io, message);
        };
        Self {
            class: classify(code),
            code: ErrorCode::Sqlstate(code.clone()),
            message,
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(pg) => pg.into(),
            other => Self::transient(ErrorCode::Pool, common::telemetry::chain(&other)),
        }
    }
}

/// Classifies a SQLSTATE (PostgreSQL docs, Appendix A).
pub fn classify(code: &SqlState) -> ErrorClass {
    use SqlStateClass as C;
    match SqlStateClass::of(code) {
        C::ConnectionException | C::InsufficientResources | C::OperatorIntervention | C::SystemError => {
            ErrorClass::Transient
        }
        C::TransactionRollback => ErrorClass::Transient,
        C::DataException | C::IntegrityConstraintViolation => ErrorClass::Data,
        _ if *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::QUERY_CANCELED => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
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
        assert_eq!(classify(&SqlState::LOCK_NOT_AVAILABLE), ErrorClass::Transient);
        assert_eq!(classify(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE), ErrorClass::Data);
        assert_eq!(classify(&SqlState::CHECK_VIOLATION), ErrorClass::Data);
        assert_eq!(classify(&SqlState::UNDEFINED_TABLE), ErrorClass::Fatal);
        assert_eq!(classify(&SqlState::INSUFFICIENT_PRIVILEGE), ErrorClass::Fatal);
        assert_eq!(classify(&SqlState::PROGRAM_LIMIT_EXCEEDED), ErrorClass::Fatal);
        assert_eq!(classify(&SqlState::from_code("ZZ999")), ErrorClass::Fatal);
    }

    fn sql(state: SqlState) -> StoreError {
        StoreError {
            class: classify(&state),
            code: ErrorCode::Sqlstate(state),
            message: String::new(),
        }
    }

    #[test]
    fn retry_labels_and_lost_connections() {
        let cases = [
            (sql(SqlState::CONNECTION_FAILURE), "08", true),
            (sql(SqlState::ADMIN_SHUTDOWN), "57", true),
            (sql(SqlState::IDLE_SESSION_TIMEOUT), "57", true),
            (sql(SqlState::QUERY_CANCELED), "57", false),
            (sql(SqlState::T_R_SERIALIZATION_FAILURE), "40", false),
            (sql(SqlState::TOO_MANY_CONNECTIONS), "53", false),
            (StoreError::transient(ErrorCode::Io, ""), "io", true),
            (StoreError::transient(ErrorCode::Pool, ""), "pool", true),
            (StoreError::unanswered(Duration::from_secs(1)), "timeout", true),
        ];
        for (e, label, lost) in cases {
            assert_eq!((e.retry_label(), e.connection_lost()), (label, lost), "{}", e.code);
        }
    }

    #[test]
    fn what_may_depend_on_rows() {
        assert!(sql(SqlState::CHECK_VIOLATION).may_depend_on_rows());
        assert!(sql(SqlState::UNDEFINED_TABLE).may_depend_on_rows());
        assert!(sql(SqlState::QUERY_CANCELED).may_depend_on_rows(), "an oversized batch");
        assert!(!sql(SqlState::CONNECTION_FAILURE).may_depend_on_rows());
        assert!(!StoreError::transient(ErrorCode::Io, "").may_depend_on_rows());
    }

    #[test]
    fn codes_display_as_sqlstate_or_label() {
        assert_eq!(ErrorCode::Sqlstate(SqlState::NOT_NULL_VIOLATION).to_string(), "23502");
        assert_eq!(ErrorCode::Timeout.to_string(), "timeout");
        assert_eq!(ErrorCode::Migration.to_string(), "migration");
    }
}
