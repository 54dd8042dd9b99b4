//! Why a decision was refused without a policy's allow: every deny the pipeline or a
//! grant step makes on its own is one of these, never a free-form string.

use crate::{audit::LOG_FULL_DENY, grants::TransitionError, policy::EvalError};

/// Reasons given when a decision fails closed.
pub(crate) mod fail_closed {
    pub(crate) const NO_POLICY: &str = "no policy revision is loaded (fail closed)";
    pub(crate) const INTERNAL: &str = "internal error (fail closed)";
    pub(crate) const UNDEFINED: &str = "policy result is undefined (fail closed)";
    pub(crate) const NOT_OBJECT: &str = "policy result is not an object (fail closed)";
    pub(crate) const NO_ALLOW: &str = "policy result has no boolean \"allow\" (fail closed)";
    pub(crate) const BAD_REASONS: &str =
        "policy result \"reasons\" is not an array of strings (fail closed)";
    pub(crate) const BAD_OBLIGATIONS: &str =
        "policy result \"obligations\" is not an object (fail closed)";
}

/// Why a decision is a deny that no policy result allowed. Its text is the decision's
/// reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// No policy revision is loaded.
    #[error("{}", fail_closed::NO_POLICY)]
    NoPolicy,
    /// The decision log is required and cannot take the record.
    #[error("{LOG_FULL_DENY}")]
    LogFull,
    /// The evaluation produced no result: a limit stopped it, the engine failed, the
    /// entrypoint is missing (typed by the policy engine, see [`EvalError`]).
    #[error(transparent)]
    Evaluation(#[from] EvalError),
    /// The adapter could not build an input document from the request (the adapter's
    /// own words, e.g. an ext_authz path escape).
    #[error("{0}")]
    Input(String),
    /// A step named a grant that does not exist.
    #[error("grant {0} not found")]
    GrantNotFound(String),
    /// The named grant cannot be used now (expired, not active, ...).
    #[error(transparent)]
    GrantUnusable(#[from] TransitionError),
    /// The decision could not be made (a batch task that failed).
    #[error("{}", fail_closed::INTERNAL)]
    Internal,
}
