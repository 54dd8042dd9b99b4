//! Decisions: the input document a policy sees, the one pipeline every adapter calls,
//! and the decision record that is the audit evidence.
//!
//! Data flows one way: an adapter validates nothing itself and hands a request and the
//! transport's [`Caller`] to [`DecisionPipeline`], which builds the input, evaluates the
//! policy and maps the result to a fail-closed [`Decision`].

mod caller;
mod gate;
mod identities;
mod input;
mod nesting;
mod pipeline;
mod raw;
mod record;
mod refusal;
mod request;
mod spec_values;

pub use caller::{Caller, Transport};
pub use gate::{EvalGate, EvalPermit};
pub(crate) use identities::{ApprovalInput, accept_identity};
pub use identities::{canonical_identities, validate_identity};
pub use input::{
    GrantStepInput, InvalidField, StepInput, check_input, grant_value, validate_check,
    with_server_facts,
};
pub(crate) use input::{caller_value, validate_agent, validate_step};
pub use nesting::validate_input_depth;
pub use pipeline::{DecisionPipeline, Pending};
pub use raw::{PolicyResult, RawTarget, RawVerdict};
pub use record::Decision;
pub use refusal::Refusal;
pub use request::{AgentCall, CheckRequest, Context, NOT_FINITE, Resource, Subject, Workflow};
