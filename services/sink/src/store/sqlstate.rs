//! SQLSTATE classes (PostgreSQL docs, Appendix A "PostgreSQL Error Codes"): the one reading
//! of a SQLSTATE's text, used by [`super::error::classify`] and for metric labels.

use tokio_postgres::error::SqlState;

/// A SQLSTATE class: the code's first two characters (PostgreSQL docs, Appendix A). The
/// serialized form (strum) is the class code, e.g. `"08"`; it is the retry metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::EnumIter)]
#[allow(missing_docs)] // The variants are Appendix A's class names.
pub enum SqlStateClass {
    #[strum(serialize = "00")]
    SuccessfulCompletion,
    #[strum(serialize = "01")]
    Warning,
    #[strum(serialize = "02")]
    NoData,
    #[strum(serialize = "03")]
    SqlStatementNotYetComplete,
    #[strum(serialize = "08")]
    ConnectionException,
    #[strum(serialize = "09")]
    TriggeredActionException,
    #[strum(serialize = "0A")]
    FeatureNotSupported,
    #[strum(serialize = "0B")]
    InvalidTransactionInitiation,
    #[strum(serialize = "0F")]
    LocatorException,
    #[strum(serialize = "0L")]
    InvalidGrantor,
    #[strum(serialize = "0P")]
    InvalidRoleSpecification,
    #[strum(serialize = "0Z")]
    DiagnosticsException,
    #[strum(serialize = "20")]
    CaseNotFound,
    #[strum(serialize = "21")]
    CardinalityViolation,
    #[strum(serialize = "22")]
    DataException,
    #[strum(serialize = "23")]
    IntegrityConstraintViolation,
    #[strum(serialize = "24")]
    InvalidCursorState,
    #[strum(serialize = "25")]
    InvalidTransactionState,
    #[strum(serialize = "26")]
    InvalidSqlStatementName,
    #[strum(serialize = "27")]
    TriggeredDataChangeViolation,
    #[strum(serialize = "28")]
    InvalidAuthorizationSpecification,
    #[strum(serialize = "2B")]
    DependentPrivilegeDescriptorsStillExist,
    #[strum(serialize = "2D")]
    InvalidTransactionTermination,
    #[strum(serialize = "2F")]
    SqlRoutineException,
    #[strum(serialize = "34")]
    InvalidCursorName,
    #[strum(serialize = "38")]
    ExternalRoutineException,
    #[strum(serialize = "39")]
    ExternalRoutineInvocationException,
    #[strum(serialize = "3B")]
    SavepointException,
    #[strum(serialize = "3D")]
    InvalidCatalogName,
    #[strum(serialize = "3F")]
    InvalidSchemaName,
    #[strum(serialize = "40")]
    TransactionRollback,
    #[strum(serialize = "42")]
    SyntaxErrorOrAccessRuleViolation,
    #[strum(serialize = "44")]
    WithCheckOptionViolation,
    #[strum(serialize = "53")]
    InsufficientResources,
    #[strum(serialize = "54")]
    ProgramLimitExceeded,
    #[strum(serialize = "55")]
    ObjectNotInPrerequisiteState,
    #[strum(serialize = "57")]
    OperatorIntervention,
    #[strum(serialize = "58")]
    SystemError,
    #[strum(serialize = "72")]
    SnapshotFailure,
    #[strum(serialize = "F0")]
    ConfigurationFileError,
    #[strum(serialize = "HV")]
    ForeignDataWrapperError,
    #[strum(serialize = "P0")]
    PlpgsqlError,
    #[strum(serialize = "XX")]
    InternalError,
    /// A class Appendix A does not list (a newer server).
    #[strum(serialize = "other", disabled)]
    Other,
}

impl SqlStateClass {
    /// The class of `code`.
    pub fn of(code: &SqlState) -> Self {
        code.code().get(..2).and_then(|c| c.parse().ok()).unwrap_or(Self::Other)
    }

    /// The class code, e.g. `"08"` (`"other"` for [`SqlStateClass::Other`]).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator;

    use super::*;

    #[test]
    fn class_labels_are_the_code_prefix() {
        for class in SqlStateClass::iter().filter(|c| *c != SqlStateClass::Other) {
            let code = SqlState::from_code(&format!("{}000", class.as_str()));
            assert_eq!(SqlStateClass::of(&code), class);
        }
        assert_eq!(SqlStateClass::of(&SqlState::from_code("ZZ999")), SqlStateClass::Other);
        assert_eq!(SqlStateClass::of(&SqlState::from_code("ot000")), SqlStateClass::Other);
    }
}
