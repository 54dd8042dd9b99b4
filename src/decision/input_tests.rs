//! Tests of the input document: validation and building, for every kind of input.

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
    let actual: serde_json::Value = serde_json::from_str(&input.to_json_str().unwrap()).unwrap();
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
    let chrono = |at: DateTime<Utc>| Value::from(at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
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
