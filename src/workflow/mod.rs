//! The grant workflow: each `GrantService` call (request, approve, reject, use, renew,
//! revoke, confirm) decided by policy through the [`DecisionPipeline`] at its step, then
//! applied to the grant store.
//!
//! It sits between [`decision`](crate::decision) (the pipeline, which knows nothing of
//! a grant's life) and [`grants`](crate::grants) (the data layer, which evaluates no
//! policy), and uses both.
//!
//! [`DecisionPipeline`]: crate::decision::DecisionPipeline

mod revoke;
mod steps;
mod terms;

pub use steps::{GrantStepError, GrantSteps, RevokeOutcome, StepOutcome};
