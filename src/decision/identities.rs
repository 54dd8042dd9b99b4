//! The identity fields of requests and input documents: each checked where a request
//! is validated (refused naming the field), raw OPA REST inputs put in canonical form
//! like every other adapter's, and the approver as a step on a grant shows it to the
//! policy. What is accepted, the canonical form and the key are [`crate::identity`]'s.

use std::borrow::Cow;

use regorus::Value;

use super::request::AgentCall;
use super::{
    InvalidField,
    input::{Entries, KEYS},
};
use crate::{grants::Grant, identity};

/// An identity field in its canonical form, or `field: <problem>`; empty passes.
pub(crate) fn accept_identity<'a>(
    value: &'a str,
    field: &str,
) -> Result<Cow<'a, str>, InvalidField> {
    identity::accept(value).map_err(|problem| InvalidField::new(field, problem.to_string()))
}

/// An identity field: refused as `field: <problem>` when [`identity::check`] refuses it
/// (whitespace at an end, a control, format, bidi or invisible character). Policies
/// see its [`identity::canonical`] form.
pub fn validate_identity(value: &str, field: &str) -> Result<(), InvalidField> {
    accept_identity(value, field).map(drop)
}

/// The identities of an agent call: `on_behalf_of` and each delegation chain entry.
pub(super) fn validate_agent_identities(agent: &AgentCall) -> Result<(), InvalidField> {
    validate_identity(&agent.on_behalf_of, "agent.on_behalf_of")?;
    for (i, entry) in agent.delegation_chain.iter().enumerate() {
        // The field's name is built only for a refusal: a chain is checked on every call.
        identity::check(entry).map_err(|problem| {
            InvalidField::new(format!("agent.delegation_chain[{i}]"), problem.to_string())
        })?;
    }
    Ok(())
}

/// A raw input document (OPA REST) with the identities where a `Check` would carry
/// them (`subject.id` and `owner`, `workflow.requester`, `approval.approver`,
/// `agent.on_behalf_of` and each `agent.delegation_chain` entry) checked and put in
/// canonical form, as every other adapter does. A value that is not a string is left
/// for the policy to judge; nothing is copied unless a name changes.
pub fn canonical_identities(mut input: Value) -> Result<Value, InvalidField> {
    let k = &*KEYS;
    let named = [
        (&k.subject, &k.id, "subject.id"),
        (&k.subject, &k.owner, "subject.owner"),
        (&k.workflow, &k.requester, "workflow.requester"),
        (&k.approval, &k.approver, "approval.approver"),
        (&k.agent, &k.on_behalf_of, "agent.on_behalf_of"),
    ];
    for (object, key, field) in named {
        canonicalize_at(&mut input, &[object, key], || field.to_string())?;
    }
    let chain_len = match &input[&k.agent][&k.delegation_chain] {
        Value::Array(chain) => chain.len(),
        _ => 0,
    };
    for i in 0..chain_len {
        let index = Value::from(i);
        canonicalize_at(&mut input, &[&k.agent, &k.delegation_chain, &index], || {
            format!("agent.delegation_chain[{i}]")
        })?;
    }
    Ok(input)
}

/// Checks the string at `path` in `input` (anything else is left for the policy) and
/// writes back its canonical form if that differs; `field` names it in a refusal.
fn canonicalize_at(
    input: &mut Value,
    path: &[&Value],
    field: impl FnOnce() -> String,
) -> Result<(), InvalidField> {
    let Value::String(name) = path.iter().fold(&*input, |v, key| &v[*key]) else {
        return Ok(());
    };
    let canonical = identity::accept(name)
        .map_err(|problem| InvalidField::new(field(), problem.to_string()))?;
    if let std::borrow::Cow::Owned(changed) = canonical {
        let slot = path.iter().try_fold(input, |v, key| member_mut(v, key));
        if let Some(slot) = slot {
            *slot = Value::from(changed);
        }
    }
    Ok(())
}

/// The member `key` of an object (or index of an array), unshared for writing.
fn member_mut<'a>(value: &'a mut Value, key: &Value) -> Option<&'a mut Value> {
    match value {
        Value::Object(object) => std::sync::Arc::make_mut(object).get_mut(key),
        Value::Array(array) => {
            let index = usize::try_from(key.as_u64().ok()?).ok()?;
            std::sync::Arc::make_mut(array).get_mut(index)
        }
        _ => None,
    }
}

/// `input.approval` of an `approve` step (an approval or a rejection).
pub(crate) struct ApprovalInput<'a> {
    pub(crate) approver: &'a str,
    pub(crate) role: &'a str,
    pub(crate) comment: &'a str,
    pub(crate) verdict: &'a str,
}

impl ApprovalInput<'_> {
    /// `input.approval` for a step on `grant`. A lookalike of someone the grant names
    /// (see [`judged_as`]) is shown to the policy as that person, so every rule that
    /// compares the approver with the requester, the subject, its owner or an earlier
    /// approver treats the lookalike as the person it looks like; the name as sent is
    /// kept beside it in `sent_as`.
    pub(crate) fn extra(&self, grant: &Grant) -> Vec<(&'static Value, Value)> {
        let k = &*KEYS;
        let judged = judged_as(self.approver, grant);
        let mut approval = Entries::new();
        approval.insert(
            k.approver.clone(),
            Value::from(judged.as_deref().unwrap_or(self.approver)),
        );
        approval.insert(k.comment.clone(), Value::from(self.comment));
        approval.insert(k.role.clone(), Value::from(self.role));
        if judged.is_some() {
            approval.insert(k.sent_as.clone(), Value::from(self.approver));
        }
        approval.insert(k.verdict.clone(), Value::from(self.verdict));
        vec![(&k.approval, approval.into_value())]
    }
}

/// The person a grant names (its requester, subject, subject owner or an earlier
/// approver, in that order) that `approver` is a lookalike of: a different string with
/// the same [`identity::key`]. `None` when `approver` is one of them exactly or looks
/// like none of them.
fn judged_as(approver: &str, grant: &Grant) -> Option<String> {
    let terms = grant.spec.terms.decode();
    let requester = terms.workflow.as_ref().map(|w| w.requester.as_str());
    let named: Vec<&str> = [
        requester,
        Some(&terms.subject.id),
        Some(&terms.subject.owner),
    ]
    .into_iter()
    .flatten()
    .chain(grant.approvals.iter().map(|a| &*a.approver))
    .filter(|name| !name.is_empty())
    .collect();
    if named.contains(&approver) {
        return None;
    }
    let key = identity::key(approver);
    named
        .into_iter()
        .find(|name| identity::key(name) == key)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::decision::{
        Caller, CheckRequest, check_input,
        input::tests::{example, wire_example},
        validate_check,
    };

    fn json(value: &Value) -> serde_json::Value {
        serde_json::from_str(&value.to_json_str().unwrap()).unwrap()
    }

    #[test]
    fn a_raw_input_has_its_identities_checked_and_made_canonical() {
        let raw = |text: &str| Value::from_json_str(text).unwrap();
        let input = canonical_identities(raw(
            r#"{"subject": {"id": "ｓvc", "owner": 3}, "workflow": {"requester": "ａlice"},
                "approval": {"approver": "bob"}, "agent": {"delegation_chain": ["ａ", 1, "b"]},
                "other": "ａ"}"#,
        ))
        .unwrap();
        assert_eq!(
            json(&input),
            serde_json::json!({"subject": {"id": "svc", "owner": 3},
                "workflow": {"requester": "alice"}, "approval": {"approver": "bob"},
                "agent": {"delegation_chain": ["a", 1, "b"]}, "other": "ａ"})
        );
        for (text, expected) in [
            (
                r#"{"approval": {"approver": "bob "}}"#,
                "approval.approver: leading or trailing whitespace",
            ),
            (
                r#"{"agent": {"delegation_chain": ["a", "b\u200b"]}}"#,
                "agent.delegation_chain[1]: invisible or format character U+200B",
            ),
            (
                r#"{"subject": {"id": "\u202eabc"}}"#,
                "subject.id: invisible or format character U+202E",
            ),
        ] {
            assert_eq!(
                canonical_identities(raw(text)).unwrap_err().to_string(),
                expected
            );
        }
        assert_eq!(
            canonical_identities(Value::from(3)).unwrap(),
            Value::from(3)
        );
    }

    #[test]
    fn identity_fields_are_refused_by_name_and_seen_in_nfkc() {
        type Mutation = fn(&mut CheckRequest);
        let cases: [(Mutation, &str); 7] = [
            (
                |r| r.subject.as_mut().unwrap().id.push(' '),
                "subject.id: leading or trailing whitespace",
            ),
            (
                |r| r.subject.as_mut().unwrap().owner.push('\u{200B}'),
                "subject.owner: invisible or format character U+200B",
            ),
            (
                |r| r.workflow.as_mut().unwrap().requester.insert(0, '\u{202E}'),
                "workflow.requester: invisible or format character U+202E",
            ),
            (
                |r| r.workflow.as_mut().unwrap().requester.insert(1, '\u{7F}'),
                "workflow.requester: control character U+007F",
            ),
            (
                |r| {
                    r.agent = Some(AgentCall {
                        on_behalf_of: "alice\u{00A0}".into(),
                        ..Default::default()
                    })
                },
                "agent.on_behalf_of: leading or trailing whitespace",
            ),
            (
                |r| {
                    r.agent = Some(AgentCall {
                        delegation_chain: vec!["alice".into(), "plan\u{2066}ner".into()],
                        ..Default::default()
                    })
                },
                "agent.delegation_chain[1]: invisible or format character U+2066",
            ),
            (
                |r| r.subject.as_mut().unwrap().owner.insert(2, '\u{0085}'),
                "subject.owner: control character U+0085",
            ),
        ];
        for (mutate, expected) in cases {
            let mut req = example();
            mutate(&mut req);
            assert_eq!(validate_check(&req).unwrap_err().to_string(), expected);
        }

        let mut req = example();
        req.workflow.as_mut().unwrap().requester = "ａlice".into();
        req.subject.as_mut().unwrap().owner = "ｔeam-payments".into();
        req.agent = Some(AgentCall {
            on_behalf_of: "ｂob".into(),
            delegation_chain: vec!["ｂob".into(), "planner".into()],
            ..Default::default()
        });
        validate_check(&req).unwrap();
        let input = json(&check_input(&req, &Caller::anonymous(), Utc::now(), None));
        assert_eq!(input["workflow"]["requester"], "alice");
        assert_eq!(input["subject"]["owner"], "team-payments");
        assert_eq!(input["agent"]["on_behalf_of"], "bob");
        assert_eq!(input["agent"]["delegation_chain"][0], "bob");
    }

    #[test]
    fn a_lookalike_approver_is_shown_as_the_person_the_grant_names() {
        use crate::grants::{Approval, GrantRequest};
        let now = Utc::now();
        let req = wire_example();
        let mut grant = Grant::new(
            GrantRequest {
                subject: req.subject.unwrap(),
                action: req.action,
                resource: None,
                scope: Vec::new(),
                workflow: req.workflow,
                required_approvals: 2,
                approval_deadline: now + chrono::TimeDelta::hours(1),
                ttl: chrono::TimeDelta::hours(1),
                max_uses: 0,
                policy_revision: "r".into(),
                decision_id: uuid::Uuid::now_v7(),
            },
            now,
        )
        .unwrap();
        grant.approvals = std::sync::Arc::new([Approval {
            approver: "bob".into(),
            role: "asset_owner".into(),
            at: now,
            decision_id: uuid::Uuid::now_v7(),
            comment: "".into(),
        }]);
        for (sent, judged) in [
            ("alice", None),
            ("ALICE", Some("alice")),
            ("\u{0430}lice", Some("alice")),
            ("TEAM-PAYMENTS", Some("team-payments")),
            (
                "SPIFFE://PROD/NS/PAYMENTS/SA/DEPLOYER",
                Some("spiffe://prod/ns/payments/sa/deployer"),
            ),
            ("b\u{043E}b", Some("bob")),
            ("bob", None),
            ("erin", None),
        ] {
            assert_eq!(judged_as(sent, &grant).as_deref(), judged, "{sent:?}");
        }
        let approval = ApprovalInput {
            approver: "BOB",
            role: "security",
            comment: "ok",
            verdict: "approve",
        };
        let extra = approval.extra(&grant);
        assert_eq!(
            json(&extra[0].1),
            serde_json::json!({"approver": "bob", "sent_as": "BOB", "role": "security",
                "comment": "ok", "verdict": "approve"})
        );
        let approval = ApprovalInput {
            approver: "erin",
            ..approval
        };
        assert_eq!(json(&approval.extra(&grant)[0].1).get("sent_as"), None);
    }
}
