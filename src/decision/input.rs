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
pub(super) mod tests {
    use std::collections::BTreeMap;

    use prost_types::{Struct, value::Kind};

    use super::*;
    use crate::{decision::Transport, proto::v1};

    fn strukt(json: serde_json::Value) -> Struct {
        fn conv(v: serde_json::Value) -> prost_types::Value {
            let kind = match v {
                serde_json::Value::Null => Kind::NullValue(0),
                serde_json::Value::Bool(b) => Kind::BoolValue(b),
                serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
                serde_json::Value::String(s) => Kind::StringValue(s),
                serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                    values: a.into_iter().map(conv).collect(),
                }),
                serde_json::Value::Object(o) => Kind::StructValue(Struct {
                    fields: o
                        .into_iter()
                        .map(|(k, v)| (k, conv(v)))
                        .collect::<BTreeMap<_, _>>(),
                }),
            };
            prost_types::Value { kind: Some(kind) }
        }
        match conv(json).kind {
            Some(Kind::StructValue(s)) => s,
            _ => panic!("not an object"),
        }
    }

    /// A JSON object as an attributes value.
    fn attributes(json: serde_json::Value) -> Value {
        Value::from_json_str(&json.to_string()).unwrap()
    }

    /// [`example`] as it comes off the wire (a grant's terms are still `stepgate.v1`
    /// messages).
    pub(in crate::decision) fn wire_example() -> v1::CheckRequest {
        v1::CheckRequest {
            step: "issue".into(),
            subject: Some(v1::Subject {
                id: "spiffe://prod/ns/payments/sa/deployer".into(),
                kind: "service_account".into(),
                owner: "team-payments".into(),
                attributes: Some(strukt(
                    serde_json::json!({"tier": 1, "labels": ["a", null, 2.5]}),
                )),
            }),
            action: "issue_credential".into(),
            resource: Some(v1::Resource {
                r#type: "secret".into(),
                id: "prod/db/password".into(),
                attributes: None,
            }),
            workflow: Some(v1::Workflow {
                id: "CHG-1234".into(),
                requester: "alice".into(),
                ..Default::default()
            }),
            agent: None,
            context: Some(v1::Context {
                source_ip: "10.1.2.3".into(),
                attributes: None,
            }),
            grant_id: String::new(),
        }
    }

    /// A valid `issue` check with a subject, owner, resource, workflow and context.
    pub(in crate::decision) fn example() -> CheckRequest {
        wire_example().into()
    }

    #[test]
    fn entries_build_the_same_object_as_inserting_and_later_keys_win() {
        let mut entries = Entries::new();
        let mut object = Object::new();
        for (k, v) in [("b", 1), ("a", 2), ("c", 3), ("a", 4)] {
            entries.insert(Value::from(k), Value::from(v));
            object.insert(Value::from(k), Value::from(v));
        }
        let built = entries.into_value();
        assert_eq!(built, object.into_value());
        assert_eq!(built["a"], Value::from(4));
        assert_eq!(Entries::new().into_value(), Value::new_object());
    }

    #[test]
    fn input_document_matches_the_spec_shape() {
        let caller = Caller {
            id: "uds:uid=1000".into(),
            authenticated: true,
            via: Transport::Uds,
        };
        let now = "2026-11-23T10:00:00Z".parse().unwrap();
        let input = check_input(&example(), &caller, now, None);
        let expected = serde_json::json!({
            "step": "issue",
            "subject": {"id": "spiffe://prod/ns/payments/sa/deployer", "kind": "service_account",
                        "owner": "team-payments", "attributes": {"tier": 1, "labels": ["a", null, 2.5]}},
            "caller": {"id": "uds:uid=1000", "authenticated": true, "via": "uds"},
            "action": "issue_credential",
            "resource": {"type": "secret", "id": "prod/db/password"},
            "workflow": {"id": "CHG-1234", "requester": "alice", "emergency": false},
            "context": {"time": "2026-11-23T10:00:00Z", "source_ip": "10.1.2.3"}
        });
        let actual: serde_json::Value =
            serde_json::from_str(&input.to_json_str().unwrap()).unwrap();
        assert_eq!(actual, expected);
    }

    #[test]
    fn the_grant_record_becomes_input_grant() {
        let grant = Value::from_json_str(r#"{"id": "g1", "state": "ACTIVE"}"#).unwrap();
        let input = check_input(
            &example(),
            &Caller::anonymous(),
            Utc::now(),
            Some(grant.clone()),
        );
        assert_eq!(input["grant"], grant);
    }

    /// An ACTIVE grant for `example()`'s subject, action, resource and workflow, with
    /// one approval and three uses.
    fn example_grant(now: DateTime<Utc>) -> Grant {
        let req = wire_example();
        let mut grant = Grant::new(
            crate::grants::GrantRequest {
                subject: req.subject.unwrap(),
                action: req.action,
                resource: req.resource,
                scope: vec!["read".into()],
                workflow: req.workflow,
                required_approvals: 0,
                approval_deadline: now,
                ttl: chrono::TimeDelta::seconds(3600),
                max_uses: 10,
                policy_revision: "sha256:r1".into(),
                decision_id: uuid::Uuid::now_v7(),
            },
            now,
        )
        .unwrap();
        grant.approvals = std::sync::Arc::new([crate::grants::Approval {
            approver: "bob".into(),
            role: "asset_owner".into(),
            at: now,
            decision_id: uuid::Uuid::now_v7(),
            comment: "ok".into(),
        }]);
        grant.uses = 3;
        grant
    }

    fn json(value: &Value) -> serde_json::Value {
        serde_json::from_str(&value.to_json_str().unwrap()).unwrap()
    }

    #[test]
    fn input_grant_is_the_grants_current_record() {
        let now: DateTime<Utc> = "2026-11-23T10:00:00.250Z".parse().unwrap();
        let mut grant = example_grant(now);
        let expected = serde_json::json!({
            "id": grant.id().to_string(),
            "state": "ACTIVE",
            "subject": {"id": "spiffe://prod/ns/payments/sa/deployer", "kind": "service_account",
                        "owner": "team-payments", "attributes": {"tier": 1, "labels": ["a", null, 2.5]}},
            "action": "issue_credential",
            "resource": {"type": "secret", "id": "prod/db/password"},
            "workflow": {"id": "CHG-1234", "requester": "alice", "emergency": false},
            "scope": ["read"],
            "approvals": [{"approver": "bob", "role": "asset_owner", "at": "2026-11-23T10:00:00.250Z"}],
            "required_approvals": 0,
            "created_at": "2026-11-23T10:00:00.250Z",
            "activated_at": "2026-11-23T10:00:00.250Z",
            "expires_at": "2026-11-23T11:00:00.250Z",
            "ttl_seconds": 3600,
            "uses": 3,
            "max_uses": 10,
        });
        assert_eq!(json(&grant_value(&grant)), expected);

        // A later version of the same grant (its spec's values are kept per thread):
        // what changed is read from the grant, never from what was kept.
        grant.uses = 4;
        grant.expires_at += chrono::TimeDelta::seconds(60);
        let again = json(&grant_value(&grant));
        assert_eq!(again["uses"], 4);
        assert_eq!(again["expires_at"], "2026-11-23T11:01:00.250Z");
    }

    #[test]
    fn a_step_on_a_grant_sees_the_grants_own_terms() {
        let now: DateTime<Utc> = "2026-11-23T10:00:00Z".parse().unwrap();
        let grant = example_grant(now);
        let caller = Caller::anonymous();
        let step = GrantStepInput {
            step: "use",
            caller: &caller,
            agent: None,
            context: None,
        };
        let extra_key = Value::from("requested_ttl_seconds");
        let input = json(&step.build(&grant, now, &[(&extra_key, Value::from(60))]));
        for key in ["subject", "action", "resource", "workflow"] {
            assert_eq!(input[key], input["grant"][key], "{key}");
        }
        assert_eq!(input["step"], "use");
        assert_eq!(input["caller"]["id"], "anonymous");
        assert_eq!(
            input["context"],
            serde_json::json!({"time": "2026-11-23T10:00:00Z"})
        );
        assert_eq!(input["requested_ttl_seconds"], 60);
        assert_eq!(input["grant"]["uses"], 3);
    }

    #[test]
    fn rfc3339_is_written_as_chrono_writes_it() {
        let cases = [
            "2026-11-23T10:00:00Z",
            "2026-11-23T10:00:00.5Z",
            "2026-01-02T03:04:05.120Z",
            "2026-01-02T03:04:05.123456Z",
            "2026-01-02T03:04:05.000001Z",
            "2026-12-31T23:59:59.999999999Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2024-02-29T12:00:00.000000100Z",
        ];
        for case in cases {
            let at: DateTime<Utc> = case.parse().unwrap();
            assert_eq!(
                rfc3339(at),
                Value::from(at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                "{case}"
            );
        }
        let chrono =
            |at: DateTime<Utc>| Value::from(at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        let far = DateTime::<Utc>::from_timestamp(300_000_000_000, 7).unwrap();
        assert_eq!(rfc3339(far), chrono(far));
        let mut at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        for step in 0..2_000i64 {
            at += chrono::TimeDelta::nanoseconds(step * 7_919_003 + 13);
            assert_eq!(rfc3339(at), chrono(at));
        }
    }

    #[test]
    fn validation_names_each_missing_field() {
        type Mutation = fn(&mut CheckRequest);
        let cases: [(Mutation, &str); 5] = [
            (|r| r.step.clear(), "step: required"),
            (|r| r.step = "Use!".into(), "step: must be"),
            (|r| r.subject = None, "subject: required"),
            (
                |r| r.subject.as_mut().unwrap().id.clear(),
                "subject.id: required",
            ),
            (|r| r.action.clear(), "action: required"),
        ];
        for (mutate, expected) in cases {
            let mut req = example();
            mutate(&mut req);
            let err = validate_check(&req).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err} vs {expected}");
        }
        validate_check(&example()).unwrap();
    }

    #[test]
    fn validation_refuses_non_finite_and_deep_attributes() {
        let mut req = example();
        let mut nan = Object::new();
        nan.insert(Value::from("x"), crate::decision::NOT_FINITE);
        req.resource.as_mut().unwrap().attributes = Some(nan.into_value());
        assert_eq!(
            validate_check(&req).unwrap_err().field,
            "resource.attributes"
        );

        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!({"a": deep});
        }
        let mut req = example();
        req.context.as_mut().unwrap().attributes = Some(attributes(deep));
        let err = validate_check(&req).unwrap_err();
        assert_eq!(err.to_string(), "context.attributes: nested too deeply");
    }
}
