//! `stepgate.v1` request messages → the core's request types ([`crate::decision`]'s
//! `CheckRequest`, `Subject`, ...). Attributes (`google.protobuf.Struct`) are turned
//! into regorus values here, once: the input document is built from those values.
//!
//! The conversions are `From` impls, so the parts of the core that still hold
//! `stepgate.v1` messages (a grant's terms, the grant workflow's requests) reach them
//! without naming this module.

use prost_types::{Struct, value::Kind};
use regorus::{Value, value::Object};

use super::convert::value_as_double;
use crate::{decision, proto::v1};

impl From<v1::CheckRequest> for decision::CheckRequest {
    fn from(req: v1::CheckRequest) -> Self {
        Self {
            step: req.step,
            subject: req.subject.map(Into::into),
            action: req.action,
            resource: req.resource.map(Into::into),
            workflow: req.workflow.map(Into::into),
            agent: req.agent.map(Into::into),
            context: req.context.map(Into::into),
            grant_id: req.grant_id,
        }
    }
}

impl From<v1::Subject> for decision::Subject {
    fn from(subject: v1::Subject) -> Self {
        Self {
            id: subject.id,
            kind: subject.kind,
            owner: subject.owner,
            attributes: subject.attributes.as_ref().map(attributes),
        }
    }
}

impl From<v1::Resource> for decision::Resource {
    fn from(resource: v1::Resource) -> Self {
        Self {
            r#type: resource.r#type,
            id: resource.id,
            attributes: resource.attributes.as_ref().map(attributes),
        }
    }
}

impl From<v1::Workflow> for decision::Workflow {
    fn from(workflow: v1::Workflow) -> Self {
        Self {
            id: workflow.id,
            requester: workflow.requester,
            justification: workflow.justification,
            emergency: workflow.emergency,
            attributes: workflow.attributes.as_ref().map(attributes),
        }
    }
}

impl From<v1::AgentCall> for decision::AgentCall {
    fn from(agent: v1::AgentCall) -> Self {
        Self {
            tool: agent.tool,
            arguments: agent.arguments.as_ref().map(attributes),
            on_behalf_of: agent.on_behalf_of,
            delegation_chain: agent.delegation_chain,
        }
    }
}

impl From<v1::Context> for decision::Context {
    fn from(context: v1::Context) -> Self {
        Self {
            source_ip: context.source_ip,
            attributes: context.attributes.as_ref().map(attributes),
        }
    }
}

/// A borrowed agent call (a Revalidate's): its strings copied, its arguments converted
/// from the message in place, so the request is not cloned first.
impl From<&v1::AgentCall> for decision::AgentCall {
    fn from(agent: &v1::AgentCall) -> Self {
        Self {
            tool: agent.tool.clone(),
            arguments: agent.arguments.as_ref().map(attributes),
            on_behalf_of: agent.on_behalf_of.clone(),
            delegation_chain: agent.delegation_chain.clone(),
        }
    }
}

/// A borrowed context (a Revalidate's), converted in place.
impl From<&v1::Context> for decision::Context {
    fn from(context: &v1::Context) -> Self {
        Self {
            source_ip: context.source_ip.clone(),
            attributes: context.attributes.as_ref().map(attributes),
        }
    }
}

/// A Check's attributes: a non-finite number is marked [`decision::NOT_FINITE`], for
/// validation to refuse by its field.
fn attributes(s: &Struct) -> Value {
    object(s, &decision::NOT_FINITE)
}

/// A protobuf `Struct` as a regorus object (Envoy's metadata). A non-finite number,
/// which JSON cannot carry, is `null`.
pub(crate) fn struct_to_value(s: &Struct) -> Value {
    object(s, &Value::Null)
}

/// `s` as an object, with `non_finite` for each number JSON cannot carry.
fn object(s: &Struct, non_finite: &Value) -> Value {
    let map = s
        .fields
        .iter()
        .map(|(key, value)| (Value::from(key.as_str()), member(value, non_finite)))
        .collect::<std::collections::BTreeMap<_, _>>();
    if map.is_empty() {
        return Object::new().into_value();
    }
    // A `Struct`'s fields are already in key order: the map is built in one pass and
    // wrapped as it is (see `decision`'s `Entries`).
    Value::Object(regorus::Rc::new(Object::from(map)))
}

fn member(value: &prost_types::Value, non_finite: &Value) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => number_value(*n).unwrap_or_else(|| non_finite.clone()),
        Some(Kind::StringValue(s)) => Value::from(s.as_str()),
        Some(Kind::BoolValue(b)) => Value::from(*b),
        Some(Kind::StructValue(s)) => object(s, non_finite),
        Some(Kind::ListValue(l)) => Value::from(
            l.values
                .iter()
                .map(|v| member(v, non_finite))
                .collect::<Vec<_>>(),
        ),
    }
}

/// A JSON value (AuthZEN's `properties`, `context`) as a Check's attributes: every
/// number as a protobuf number (a double) would carry it, so that an attribute reaches
/// policy the same through every adapter.
pub(crate) fn json_attributes(value: &Value) -> Value {
    match value {
        Value::Number(_) => number_value(value_as_double(value)).unwrap_or(decision::NOT_FINITE),
        Value::Array(items) => Value::from(items.iter().map(json_attributes).collect::<Vec<_>>()),
        Value::Object(object) => {
            let map = object
                .iter()
                .map(|(key, value)| (key.clone(), json_attributes(value)))
                .collect::<std::collections::BTreeMap<_, _>>();
            Value::Object(regorus::Rc::new(Object::from(map)))
        }
        other => other.clone(),
    }
}

/// A number as a protobuf (a double) carries it. Whole numbers stay integers so that
/// `x == 3` and `sprintf("%d", [x])` behave in Rego, and keep their exact value: every
/// double past 2^53 is whole, and as a float regorus writes it to JSON (the decision
/// log, OPA's API) as its shortest digits padded with zeros, which read back as another
/// integer (540431955284459520 as ...500).
/// `None` for a number JSON cannot carry.
fn number_value(n: f64) -> Option<Value> {
    const I64_RANGE: f64 = 9_223_372_036_854_775_808.0; // 2^63
    if !n.is_finite() {
        return None;
    }
    if n.fract() != 0.0 {
        return Some(Value::from(n));
    }
    if n.abs() < I64_RANGE {
        return Some(Value::from(n as i64));
    }
    // `{:.0}` writes a double's exact decimal expansion, which reads as an exact integer.
    Some(Value::from_json_str(&format!("{n:.0}")).unwrap_or_else(|_| Value::from(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"n": n, ...}` as a protobuf `Struct`.
    fn numbers(pairs: &[(&str, f64)]) -> Struct {
        Struct {
            fields: pairs
                .iter()
                .map(|(k, n)| {
                    let value = prost_types::Value {
                        kind: Some(Kind::NumberValue(*n)),
                    };
                    (k.to_string(), value)
                })
                .collect(),
        }
    }

    #[test]
    fn large_whole_numbers_keep_their_exact_value_through_json() {
        // Found by the check_request fuzz target: 540431955284459520 (a double) reached
        // policy as that number and the JSON of the input as 540431955284459500.
        for n in [
            540_431_955_284_459_520.0,
            -1.234_567_890_123_456_7e25,
            9_223_372_036_854_775_808.0,
            f64::MAX,
        ] {
            let v = struct_to_value(&numbers(&[("n", n)]));
            assert_eq!(v["n"], Value::from(n), "{n:e} keeps its value");
            let text = v.to_json_str().unwrap();
            assert_eq!(Value::from_json_str(&text).unwrap(), v, "{text}");
        }
        let text = struct_to_value(&numbers(&[("n", 540_431_955_284_459_520.0)]))
            .to_json_str()
            .unwrap();
        assert!(text.contains("540431955284459520"), "{text}");
    }

    #[test]
    fn whole_numbers_stay_integers() {
        let v = struct_to_value(&numbers(&[("n", 3.0), ("f", 0.5)]));
        assert_eq!(v["n"], Value::from(3i64));
        assert_eq!(v["f"], Value::from(0.5));
    }

    #[test]
    fn a_borrowed_agent_call_and_context_convert_as_owned_ones_do() {
        let agent = v1::AgentCall {
            tool: "sql".into(),
            arguments: Some(numbers(&[("limit", 10.0), ("bad", f64::NAN)])),
            on_behalf_of: "carol".into(),
            delegation_chain: vec!["dave".into()],
        };
        let context = v1::Context {
            source_ip: "10.0.0.1".into(),
            attributes: Some(numbers(&[("n", 1.0)])),
        };
        assert_eq!(
            decision::AgentCall::from(&agent),
            decision::AgentCall::from(agent.clone())
        );
        assert_eq!(
            decision::Context::from(&context),
            decision::Context::from(context.clone())
        );
    }

    #[test]
    fn a_check_request_keeps_every_field() {
        let req = v1::CheckRequest {
            step: "issue".into(),
            subject: Some(v1::Subject {
                id: "alice".into(),
                kind: "user".into(),
                owner: "team".into(),
                attributes: Some(numbers(&[("tier", 1.0)])),
            }),
            action: "read".into(),
            resource: Some(v1::Resource {
                r#type: "db".into(),
                id: "orders".into(),
                attributes: None,
            }),
            workflow: Some(v1::Workflow {
                id: "CHG-1".into(),
                requester: "bob".into(),
                justification: "why".into(),
                emergency: true,
                attributes: None,
            }),
            agent: Some(v1::AgentCall {
                tool: "sql".into(),
                arguments: Some(numbers(&[("limit", 10.0)])),
                on_behalf_of: "carol".into(),
                delegation_chain: vec!["dave".into()],
            }),
            context: Some(v1::Context {
                source_ip: "10.0.0.1".into(),
                attributes: Some(Struct::default()),
            }),
            grant_id: "g1".into(),
        };
        let core = decision::CheckRequest::from(req);
        let subject = core.subject.as_ref().unwrap();
        assert_eq!(
            (&*subject.id, &*subject.kind, &*subject.owner),
            ("alice", "user", "team")
        );
        assert_eq!(subject.attributes.as_ref().unwrap()["tier"], Value::from(1));
        let workflow = core.workflow.as_ref().unwrap();
        assert_eq!(
            (&*workflow.justification, workflow.emergency),
            ("why", true)
        );
        let agent = core.agent.as_ref().unwrap();
        assert_eq!((&*agent.tool, &*agent.on_behalf_of), ("sql", "carol"));
        assert_eq!(agent.delegation_chain, ["dave"]);
        assert_eq!(agent.arguments.as_ref().unwrap()["limit"], Value::from(10));
        let context = core.context.as_ref().unwrap();
        assert_eq!(context.attributes, Some(Value::new_object()));
        assert_eq!(
            (&*core.step, &*core.action, &*core.grant_id),
            ("issue", "read", "g1")
        );
        assert_eq!(core.resource.as_ref().unwrap().r#type, "db");
    }

    #[test]
    fn json_attributes_carry_numbers_as_a_struct_does() {
        let json = r#"{"a": [3.0, 0.5, 9007199254740993, "x", null], "b": {"c": true}}"#;
        let value = Value::from_json_str(json).unwrap();
        let through_struct = struct_to_value(&super::super::convert::value_to_struct(&value));
        assert_eq!(json_attributes(&value), through_struct);
        assert_eq!(
            json_attributes(&value)["a"][2],
            Value::from(9_007_199_254_740_992i64)
        );
    }

    #[test]
    fn a_non_finite_number_is_null_in_metadata_and_marked_in_attributes() {
        for n in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let s = numbers(&[("n", n)]);
            assert_eq!(struct_to_value(&s)["n"], Value::Null);
            let mut marked = Object::new();
            marked.insert(Value::from("n"), decision::NOT_FINITE);
            assert_eq!(attributes(&s), marked.into_value());
        }
    }
}
