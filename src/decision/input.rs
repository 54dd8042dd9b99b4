//! The input document (`input` in Rego), built straight into a regorus [`Value`], and the
//! validation of the fields a decision needs.
//!
//! Object keys are interned once ([`KEYS`], the document's vocabulary in
//! [`crate::document`]): building an input clones `Arc`s instead of allocating a string
//! per key per call.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, SecondsFormat, Utc};
use regorus::{Value, value::Object};

use super::{
    Caller,
    identities::{validate_agent_identities, validate_identity},
    nesting::validate_attributes,
    request::{AgentCall, CheckRequest, Context, Resource, Subject, Workflow},
    spec_values::SpecValues,
};
pub(crate) use crate::document::{KEYS, text};
use crate::{
    grants::{Grant, Terms},
    identity,
};

/// A request field that is missing or malformed; the API maps it to `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// Path of the field, e.g. `checks[2].subject.id`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl InvalidField {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same problem, with `prefix.` in front of the field path.
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}.{}", self.field),
            problem: self.problem,
        }
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for InvalidField {}

/// Longest accepted step name.
const MAX_STEP_BYTES: usize = 64;

/// Checks what every decision needs: a step, a subject id, an action, and attribute
/// values that JSON can carry.
pub fn validate_check(req: &CheckRequest) -> Result<(), InvalidField> {
    validate_step(&req.step)?;
    let subject = req
        .subject
        .as_ref()
        .ok_or_else(|| InvalidField::new("subject", "required"))?;
    if subject.id.is_empty() {
        return Err(InvalidField::new("subject.id", "required"));
    }
    validate_identity(&subject.id, "subject.id")?;
    validate_identity(&subject.owner, "subject.owner")?;
    if req.action.is_empty() {
        return Err(InvalidField::new("action", "required"));
    }
    validate_attributes(subject.attributes.as_ref(), "subject.attributes")?;
    if let Some(resource) = &req.resource {
        validate_attributes(resource.attributes.as_ref(), "resource.attributes")?;
    }
    if let Some(workflow) = &req.workflow {
        validate_identity(&workflow.requester, "workflow.requester")?;
        validate_attributes(workflow.attributes.as_ref(), "workflow.attributes")?;
    }
    if let Some(agent) = &req.agent {
        validate_agent(agent)?;
    }
    if let Some(context) = &req.context {
        validate_attributes(context.attributes.as_ref(), "context.attributes")?;
    }
    Ok(())
}

/// The identities of an agent call (`on_behalf_of`, each delegation chain entry) and
/// its arguments.
pub(crate) fn validate_agent(agent: &AgentCall) -> Result<(), InvalidField> {
    validate_agent_identities(agent)?;
    validate_attributes(agent.arguments.as_ref(), "agent.arguments")
}

/// A step is a lowercase identifier: one of the known steps or a custom one.
pub(crate) fn validate_step(step: &str) -> Result<(), InvalidField> {
    if step.is_empty() {
        return Err(InvalidField::new("step", "required"));
    }
    if step.len() > MAX_STEP_BYTES
        || !step
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(InvalidField::new(
            "step",
            format!("must be lowercase letters, digits and '_', at most {MAX_STEP_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The entries of one object of the input, collected before the object is made.
///
/// regorus builds an object from sorted entries in one pass, where inserting key by key
/// pays a tree search and node shuffle each time: on the `Check` path that was a fifth
/// of the server's instructions per call. Later entries win over earlier ones with the
/// same key, as with `insert`. Entries inserted in key order cost one comparison each
/// to sort, so the builders below insert their fixed keys alphabetically.
#[derive(Debug, Default)]
pub(crate) struct Entries(Vec<(Value, Value)>);

impl Entries {
    pub(crate) fn new() -> Self {
        Self(Vec::with_capacity(8))
    }

    pub(crate) fn insert(&mut self, key: Value, value: Value) {
        self.0.push((key, value));
    }

    /// Inserts `value` under `key` when there is one.
    fn insert_some(&mut self, key: &Value, value: Option<&Value>) {
        if let Some(value) = value {
            self.0.push((key.clone(), value.clone()));
        }
    }

    pub(crate) fn into_value(self) -> Value {
        if self.0.is_empty() {
            return Object::new().into_value();
        }
        // `BTreeMap::from_iter` sorts (already sorted input costs one comparison per
        // entry), keeps the last of equal keys, and bulk-builds the nodes. The map is
        // wrapped as it is: `Object::into_value` would copy it once more into a compact
        // slice, which a document read once and dropped does not repay.
        let map: BTreeMap<Value, Value> = self.0.into_iter().collect();
        Value::Object(regorus::Rc::new(Object::from(map)))
    }
}

/// The parts of an input document. Every step's document is built from one of these,
/// so every adapter and every grant step produce the same shape.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// `input.step`.
    pub step: &'a str,
    /// `input.subject`.
    pub subject: Option<&'a Subject>,
    /// `input.caller` (from the transport).
    pub caller: &'a Caller,
    /// `input.action`.
    pub action: &'a str,
    /// `input.resource`.
    pub resource: Option<&'a Resource>,
    /// `input.workflow`.
    pub workflow: Option<&'a Workflow>,
    /// `input.agent`.
    pub agent: Option<&'a AgentCall>,
    /// `input.context` (its `time` is always the server's).
    pub context: Option<&'a Context>,
}

impl StepInput<'_> {
    /// The input document at `now`, with `grant` as `input.grant` and `extra` top-level
    /// fields (`approval`, `requested_ttl_seconds`, ...). Empty strings and unset
    /// messages are left out ("fields that do not apply are absent").
    pub fn build(
        &self,
        now: DateTime<Utc>,
        grant: Option<Value>,
        extra: &[(&Value, Value)],
    ) -> Value {
        let parts = TermValues {
            subject: self.subject.map(subject_value),
            action: (!self.action.is_empty()).then(|| Value::from(self.action)),
            resource: self.resource.map(resource_value),
            workflow: self.workflow.map(workflow_value),
        };
        self.assemble(&parts, now, grant, extra)
    }

    /// The document from the subject, action, resource and workflow already turned into
    /// values (the other fields from `self`).
    fn assemble(
        &self,
        parts: &TermValues,
        now: DateTime<Utc>,
        grant: Option<Value>,
        extra: &[(&Value, Value)],
    ) -> Value {
        let k = &*KEYS;
        // In key order (see `Entries`); the extra fields go where the sort puts them.
        let mut input = Entries::new();
        input.insert_some(&k.action, parts.action.as_ref());
        if let Some(agent) = self.agent {
            input.insert(k.agent.clone(), agent_value(agent));
        }
        input.insert(k.caller.clone(), caller_value(self.caller));
        input.insert(k.context.clone(), context_value(self.context, now));
        if let Some(grant) = grant {
            input.insert(k.grant.clone(), grant);
        }
        input.insert_some(&k.resource, parts.resource.as_ref());
        input.insert(k.step.clone(), Value::from(self.step));
        input.insert_some(&k.subject, parts.subject.as_ref());
        input.insert_some(&k.workflow, parts.workflow.as_ref());
        for (key, value) in extra {
            input.insert((*key).clone(), value.clone());
        }
        input.into_value()
    }
}

/// The subject, action, resource and workflow of a request or a grant, as input values
/// (absent when not given).
#[derive(Debug, Clone, Default)]
pub(super) struct TermValues {
    pub(super) subject: Option<Value>,
    pub(super) action: Option<Value>,
    pub(super) resource: Option<Value>,
    pub(super) workflow: Option<Value>,
}

impl TermValues {
    /// A grant's terms as values.
    pub(super) fn of(terms: &Terms) -> Self {
        // The terms are still `stepgate.v1` messages (see `grants::Terms`): turned into
        // the core's types by `api`'s conversions, once per spec and thread.
        Self {
            subject: Some(subject_value(&Subject::from(terms.subject.clone()))),
            action: (!terms.action.is_empty()).then(|| Value::from(terms.action.as_str())),
            resource: terms
                .resource
                .clone()
                .map(|resource| resource_value(&Resource::from(resource))),
            workflow: terms
                .workflow
                .clone()
                .map(|workflow| workflow_value(&Workflow::from(workflow))),
        }
    }
}

/// The input document of a step on an existing grant: the grant's own subject, action,
/// resource and workflow (so one set of rules can reason about every step) and the
/// grant as `input.grant`. The grant's terms are turned into values once per spec (see
/// [`SpecValues`]): `input.subject` and `input.grant.subject` share them.
#[derive(Debug, Clone, Copy)]
pub struct GrantStepInput<'a> {
    /// `input.step`.
    pub step: &'a str,
    /// `input.caller` (from the transport).
    pub caller: &'a Caller,
    /// `input.agent`.
    pub agent: Option<&'a AgentCall>,
    /// `input.context` (its `time` is always the server's).
    pub context: Option<&'a Context>,
}

impl GrantStepInput<'_> {
    /// The document at `now` for `grant`, with `extra` top-level fields.
    pub fn build(&self, grant: &Grant, now: DateTime<Utc>, extra: &[(&Value, Value)]) -> Value {
        let spec = SpecValues::of(&grant.spec);
        let record = grant_object(grant, &spec);
        let step = StepInput {
            step: self.step,
            subject: None,
            caller: self.caller,
            // Subject, action, resource and workflow come from the spec's values.
            action: "",
            resource: None,
            workflow: None,
            agent: self.agent,
            context: self.context,
        };
        step.assemble(&spec.terms, now, Some(record), extra)
    }
}

/// Builds the input document of a `Check`. `context.time` is `now`; `caller` is the
/// transport's; `grant` is the grant record when the request named one.
pub fn check_input(
    req: &CheckRequest,
    caller: &Caller,
    now: DateTime<Utc>,
    grant: Option<Value>,
) -> Value {
    StepInput::of_check(req, caller).build(now, grant, &[])
}

impl<'a> StepInput<'a> {
    /// The parts of a `Check` request, with the transport's caller.
    pub fn of_check(req: &'a CheckRequest, caller: &'a Caller) -> Self {
        Self {
            step: &req.step,
            subject: req.subject.as_ref(),
            caller,
            action: &req.action,
            resource: req.resource.as_ref(),
            workflow: req.workflow.as_ref(),
            agent: req.agent.as_ref(),
            context: req.context.as_ref(),
        }
    }
}

/// A grant as `input.grant`: state as its short name, times as RFC 3339 strings.
pub fn grant_value(grant: &Grant) -> Value {
    grant_object(grant, &SpecValues::of(&grant.spec))
}

/// `input.grant` from the grant and the values of its spec.
fn grant_object(grant: &Grant, spec: &SpecValues) -> Value {
    let k = &*KEYS;
    let terms = &spec.terms;
    let approvals = grant
        .approvals
        .iter()
        .map(|a| {
            let mut approval = Entries::new();
            // Canonical, also for a name journaled before names were checked.
            approval.insert(
                k.approver.clone(),
                Value::from(identity::canonical(&a.approver).as_ref()),
            );
            approval.insert(k.at.clone(), rfc3339(a.at));
            insert_str(&mut approval, &k.role, &a.role);
            approval.into_value()
        })
        .collect::<Vec<_>>();
    // In key order (see `Entries`).
    let mut o = Entries::new();
    o.insert_some(&k.action, terms.action.as_ref());
    if let Some(at) = grant.activated_at {
        o.insert(k.activated_at.clone(), rfc3339(at));
    }
    o.insert(k.approvals.clone(), Value::from(approvals));
    o.insert(k.created_at.clone(), spec.created_at.clone());
    o.insert(k.expires_at.clone(), rfc3339(grant.expires_at));
    o.insert(k.id.clone(), spec.id.clone());
    o.insert(k.max_uses.clone(), spec.max_uses.clone());
    o.insert(
        k.required_approvals.clone(),
        spec.required_approvals.clone(),
    );
    o.insert_some(&k.resource, terms.resource.as_ref());
    o.insert(k.scope.clone(), spec.scope.clone());
    o.insert(k.state.clone(), Value::from(grant.state.as_str()));
    o.insert_some(&k.subject, terms.subject.as_ref());
    o.insert(k.ttl_seconds.clone(), spec.ttl_seconds.clone());
    o.insert(k.uses.clone(), Value::from(grant.uses));
    o.insert_some(&k.workflow, terms.workflow.as_ref());
    o.into_value()
}

/// `at` as an RFC 3339 string value in UTC, as chrono writes it with
/// [`SecondsFormat::AutoSi`] and `Z`:
/// no fraction for whole seconds, else 3, 6 or 9 digits. Written by hand for the years
/// 0 to 9999 (chrono's formatter costs a few hundred nanoseconds, and an input has up
/// to three of these); chrono writes any other.
pub(super) fn rfc3339(at: DateTime<Utc>) -> Value {
    let mut out = [0u8; 30];
    match write_rfc3339(at, &mut out).and_then(|len| std::str::from_utf8(&out[..len]).ok()) {
        Some(text) => Value::from(text),
        None => Value::from(at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

/// Writes `at` into `out` as [`rfc3339`] describes; its length, or `None` for what
/// chrono writes (years outside 0..=9999, a leap second).
fn write_rfc3339(at: DateTime<Utc>, out: &mut [u8; 30]) -> Option<usize> {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, at.month(), 2);
    put(8, at.day(), 2);
    put(11, at.hour(), 2);
    put(14, at.minute(), 2);
    put(17, at.second(), 2);
    let (fraction, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    put(20, fraction, digits);
    for (i, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        out[i] = separator;
    }
    let len = if digits > 0 {
        out[19] = b'.';
        20 + digits
    } else {
        19
    };
    out[len] = b'Z';
    Some(len + 1)
}

pub(crate) fn subject_value(subject: &Subject) -> Value {
    let k = &*KEYS;
    let mut o = Entries::new();
    insert_attributes(&mut o, &k.attributes, subject.attributes.as_ref());
    insert_identity(&mut o, &k.id, &subject.id);
    insert_str(&mut o, &k.kind, &subject.kind);
    insert_identity(&mut o, &k.owner, &subject.owner);
    o.into_value()
}

/// What the server, not the client, says about a JSON input (OPA REST): `caller` is
/// the transport's and `context.time` is `now`, as in every input stepgate builds. A
/// client's own values for both are replaced; `context` is created when absent. Inputs
/// that are not objects (and a `context` that is not one) are left as they are: policy
/// finds no time there and denies.
pub fn with_server_facts(input: Value, caller: &Caller, now: DateTime<Utc>) -> Value {
    let k = &*KEYS;
    let Value::Object(mut object) = input else {
        return input;
    };
    let fields = std::sync::Arc::make_mut(&mut object);
    fields.insert(k.caller.clone(), caller_value(caller));
    let context =
        fields.get_or_insert_with(k.context.clone(), || Value::Object(Default::default()));
    if let Value::Object(context) = context {
        std::sync::Arc::make_mut(context).insert(k.time.clone(), rfc3339(now));
    }
    Value::Object(object)
}

pub(crate) fn caller_value(caller: &Caller) -> Value {
    let k = &*KEYS;
    let mut o = Entries::new();
    o.insert(k.authenticated.clone(), Value::from(caller.authenticated));
    o.insert(k.id.clone(), Value::String(caller.id.clone()));
    o.insert(k.via.clone(), Value::from(caller.via.as_str()));
    o.into_value()
}

pub(crate) fn resource_value(resource: &Resource) -> Value {
    let k = &*KEYS;
    let mut o = Entries::new();
    insert_attributes(&mut o, &k.attributes, resource.attributes.as_ref());
    insert_str(&mut o, &k.id, &resource.id);
    insert_str(&mut o, &k.type_, &resource.r#type);
    o.into_value()
}

pub(crate) fn workflow_value(workflow: &Workflow) -> Value {
    let k = &*KEYS;
    let mut o = Entries::new();
    insert_attributes(&mut o, &k.attributes, workflow.attributes.as_ref());
    o.insert(k.emergency.clone(), Value::from(workflow.emergency));
    insert_str(&mut o, &k.id, &workflow.id);
    insert_str(&mut o, &k.justification, &workflow.justification);
    insert_identity(&mut o, &k.requester, &workflow.requester);
    o.into_value()
}

pub(crate) fn agent_value(agent: &AgentCall) -> Value {
    let k = &*KEYS;
    let mut o = Entries::new();
    insert_attributes(&mut o, &k.arguments, agent.arguments.as_ref());
    let chain: Vec<Value> = agent
        .delegation_chain
        .iter()
        .map(|s| Value::from(identity::canonical(s).as_ref()))
        .collect();
    o.insert(k.delegation_chain.clone(), Value::from(chain));
    insert_identity(&mut o, &k.on_behalf_of, &agent.on_behalf_of);
    insert_str(&mut o, &k.tool, &agent.tool);
    o.into_value()
}

pub(crate) fn context_value(context: Option<&Context>, now: DateTime<Utc>) -> Value {
    let k = &*KEYS;
    let mut o = Entries::new();
    if let Some(context) = context {
        insert_attributes(&mut o, &k.attributes, context.attributes.as_ref());
        insert_str(&mut o, &k.source_ip, &context.source_ip);
    }
    o.insert(k.time.clone(), rfc3339(now));
    o.into_value()
}

fn insert_str(o: &mut Entries, key: &Value, value: &str) {
    if !value.is_empty() {
        o.insert(key.clone(), Value::from(value));
    }
}

/// An identity as policies see it: its NFKC form (see [`identity::canonical`]).
fn insert_identity(o: &mut Entries, key: &Value, value: &str) {
    if !value.is_empty() {
        o.insert(
            key.clone(),
            Value::from(identity::canonical(value).as_ref()),
        );
    }
}

fn insert_attributes(o: &mut Entries, key: &Value, value: Option<&Value>) {
    if let Some(value) = value {
        o.insert(key.clone(), value.clone());
    }
}

#[cfg(test)]
#[path = "input_tests.rs"]
pub(super) mod tests;
