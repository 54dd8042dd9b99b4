//! stepgate's own request types: what a decision is asked about, as the core sees it.
//!
//! Every adapter maps its wire form onto these in `api/` (gRPC's `stepgate.v1`
//! messages, AuthZEN's JSON). Attributes are held as the regorus [`Value`]s the input
//! document is made of, converted once at the edge, so building an input copies no
//! attribute a second time. They are validated (depth, finite numbers) by the pipeline.

use regorus::Value;

/// What an attribute holds where its wire form had a number JSON cannot carry (NaN or
/// ±infinity: a protobuf double can be either). regorus has no such number, and nothing
/// else puts `Undefined` into attributes, so validation finds the mark and refuses the
/// field (`numbers must be finite`).
pub const NOT_FINITE: Value = Value::Undefined;

/// A decision request: `input.step`, `input.subject`, ... of the input document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckRequest {
    /// The lifecycle step (`issue`, `use`, a custom one).
    pub step: String,
    /// Who wants to act.
    pub subject: Option<Subject>,
    /// What they want to do.
    pub action: String,
    /// What they act on.
    pub resource: Option<Resource>,
    /// The change or ticket the action belongs to.
    pub workflow: Option<Workflow>,
    /// The agent acting for someone, if any.
    pub agent: Option<AgentCall>,
    /// Request context (`context.time` is always the server's).
    pub context: Option<Context>,
    /// A grant the request relies on (empty: none).
    pub grant_id: String,
}

/// `input.subject`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    /// The subject's identity.
    pub id: String,
    /// What kind of subject it is (`user`, `service_account`, ...).
    pub kind: String,
    /// Who answers for it.
    pub owner: String,
    /// Free-form attributes (an object).
    pub attributes: Option<Value>,
}

/// `input.resource`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resource {
    /// The resource's type.
    pub r#type: String,
    /// The resource's id.
    pub id: String,
    /// Free-form attributes (an object).
    pub attributes: Option<Value>,
}

/// `input.workflow`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workflow {
    /// The change or ticket id.
    pub id: String,
    /// Who asked.
    pub requester: String,
    /// Why.
    pub justification: String,
    /// Break-glass.
    pub emergency: bool,
    /// Free-form attributes (an object).
    pub attributes: Option<Value>,
}

/// `input.agent`: a tool call made by an agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentCall {
    /// The tool called.
    pub tool: String,
    /// Its arguments (an object).
    pub arguments: Option<Value>,
    /// The person the agent acts for.
    pub on_behalf_of: String,
    /// The delegation chain, outermost first.
    pub delegation_chain: Vec<String>,
}

/// `input.context`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// The client's address as the caller reports it.
    pub source_ip: String,
    /// Free-form attributes (an object).
    pub attributes: Option<Value>,
}
