//! The decision record and the fail-closed mapping from a policy result to it.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use regorus::Value;
use uuid::Uuid;

use super::{
    RawVerdict, Refusal,
    input::{KEYS, text},
    refusal::fail_closed,
};
use crate::{
    audit::Entry,
    grants::Grant,
    policy::{EvalError, Provenance},
};

/// One decision: the answer and its evidence. Its fields are private and its
/// constructors typed, so an allow can only come from reading a policy's result
/// ([`Decision::from_evaluation`], or a raw result's [`RawVerdict`] read from a
/// [`PolicyResult`](super::PolicyResult)); every other decision is a deny for a
/// [`Refusal`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    id: Uuid,
    allow: bool,
    reasons: Vec<String>,
    obligations: Value,
    policy_revision: Arc<str>,
    bundle_revision: Option<Arc<str>>,
    decided_at: DateTime<Utc>,
    eval_duration: Duration,
}

/// An allow or a deny with its reasons and obligations, before it becomes a decision.
/// `allow: true` is written in [`Verdict::allowing`] alone, whose callers each read a
/// policy's result (or, for a revocation's confirmation, no policy at all: see
/// [`Decision::revocation_confirmed`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    allow: bool,
    reasons: Vec<String>,
    obligations: Value,
}

impl Verdict {
    pub(super) fn allowing(reasons: Vec<String>, obligations: Value) -> Self {
        Self {
            allow: true,
            reasons,
            obligations,
        }
    }

    pub(super) fn denying(reasons: Vec<String>) -> Self {
        Self {
            allow: false,
            reasons,
            obligations: Value::new_object(),
        }
    }

    /// The same verdict with other reasons.
    pub(super) fn with_reasons(self, reasons: Vec<String>) -> Self {
        Self { reasons, ..self }
    }
}

/// A decision document read: its verdict (a deny with the problems appended when it is
/// malformed), and the problems alone.
pub(super) struct Read {
    pub(super) verdict: Verdict,
    pub(super) problems: Vec<&'static str>,
}

impl Decision {
    /// Maps an evaluation outcome to a decision. Anything but a well-formed
    /// `{"allow": true, ...}` is a deny whose reasons say why.
    pub fn from_evaluation(
        outcome: Result<Value, EvalError>,
        provenance: Provenance,
        decided_at: DateTime<Utc>,
        eval_duration: Duration,
    ) -> Self {
        let verdict = match outcome {
            Err(err) => Verdict::denying(vec![err.to_string()]),
            Ok(result) => read_decision(&result).verdict,
        };
        Self::new(verdict, provenance, decided_at, eval_duration)
    }

    /// A deny made without a policy's allow (no policy loaded, a full required log, a
    /// grant missing, ...), with no evaluation time.
    pub fn refused(refusal: Refusal, provenance: Provenance, decided_at: DateTime<Utc>) -> Self {
        Self::new(
            Verdict::denying(vec![refusal.to_string()]),
            provenance,
            decided_at,
            Duration::ZERO,
        )
    }

    /// The record of a raw evaluation: its verdict as the adapter read it.
    pub(super) fn from_raw(
        verdict: RawVerdict,
        provenance: Provenance,
        decided_at: DateTime<Utc>,
        eval_duration: Duration,
    ) -> Self {
        Self::new(verdict.0, provenance, decided_at, eval_duration)
    }

    /// The record of a revocation's confirmation: the one step no policy decides (an
    /// admin reports evidence; the allow-list is its guard), recorded as accepted so it
    /// is observed like every decision. A required log that is full still denies it.
    pub fn revocation_confirmed(provenance: Provenance, decided_at: DateTime<Utc>) -> Self {
        Self::new(
            Verdict::allowing(vec!["revocation confirmed".into()], Value::new_object()),
            provenance,
            decided_at,
            Duration::ZERO,
        )
    }

    fn new(
        verdict: Verdict,
        provenance: Provenance,
        decided_at: DateTime<Utc>,
        eval_duration: Duration,
    ) -> Self {
        let Verdict {
            allow,
            reasons,
            obligations,
        } = verdict;
        Self {
            id: Uuid::now_v7(),
            allow,
            reasons,
            obligations,
            policy_revision: provenance.revision,
            bundle_revision: provenance.bundle_revision,
            decided_at,
            eval_duration,
        }
    }

    /// Unique, time-ordered (UUIDv7).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// True only when a policy's well-formed result allowed.
    pub fn allow(&self) -> bool {
        self.allow
    }

    /// The policy's reasons, or why the decision failed closed.
    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    /// The reasons, taken (for an answer built from the decision).
    pub fn into_reasons(self) -> Vec<String> {
        self.reasons
    }

    /// The policy's obligations (always an object).
    pub fn obligations(&self) -> &Value {
        &self.obligations
    }

    /// The policy revision that decided (`none` when no policy was loaded).
    pub fn policy_revision(&self) -> &Arc<str> {
        &self.policy_revision
    }

    /// The revision of the OPA bundle that revision came from (its manifest's), when it
    /// came from a bundle.
    pub fn bundle_revision(&self) -> Option<&Arc<str>> {
        self.bundle_revision.as_ref()
    }

    /// When the decision was made.
    pub fn decided_at(&self) -> DateTime<Utc> {
        self.decided_at
    }

    /// How long the policy evaluation took.
    pub fn eval_duration(&self) -> Duration {
        self.eval_duration
    }

    /// This decision's decision-log entry, made on `input`, about `grant` (after the
    /// step), with no trace yet.
    pub fn entry<'a>(&'a self, input: &'a Value, grant: Option<&'a Grant>) -> Entry<'a> {
        Entry {
            id: self.id,
            decided_at: self.decided_at,
            allow: self.allow,
            reasons: &self.reasons,
            obligations: &self.obligations,
            policy_revision: &self.policy_revision,
            bundle_revision: self.bundle_revision.as_ref(),
            eval_duration: self.eval_duration,
            input,
            trace: None,
            grant,
        }
    }

    /// This decision turned into a deny after the fact (policy allowed, but the grant's
    /// state machine refused, or the obligations were unusable); same id and evidence.
    pub fn overruled(mut self, reason: impl Into<String>) -> Self {
        self.allow = false;
        self.reasons.push(reason.into());
        self
    }

    /// This decision (same id) as a deny for `reason` alone: for a record made without
    /// evaluating whose premise turned out false.
    pub(super) fn replaced_by_deny(mut self, reason: String) -> Self {
        self.allow = false;
        self.reasons = vec![reason];
        self
    }
}

/// Reads a decision document (the decision entrypoint's result).
pub(super) fn read_decision(result: &Value) -> Read {
    let Value::Object(object) = result else {
        let reason = if *result == Value::Undefined {
            fail_closed::UNDEFINED
        } else {
            fail_closed::NOT_OBJECT
        };
        return Read {
            verdict: Verdict::denying(vec![reason.into()]),
            problems: vec![reason],
        };
    };
    let mut problems = Vec::new();
    let allow = match object.get(&KEYS.allow) {
        Some(Value::Bool(allow)) => *allow,
        _ => {
            problems.push(fail_closed::NO_ALLOW);
            false
        }
    };
    // An array of strings, or a set of them (`deny contains msg` is a natural way to
    // collect reasons in Rego).
    let reasons = match object.get(&KEYS.reasons) {
        None => Some(Vec::new()),
        Some(Value::Array(items)) => strings(items.iter()),
        Some(Value::Set(items)) => strings(items.iter()),
        Some(_) => None,
    };
    let mut reasons = reasons.unwrap_or_else(|| {
        problems.push(fail_closed::BAD_REASONS);
        Vec::new()
    });
    let obligations = match object.get(&KEYS.obligations) {
        None => Value::new_object(),
        Some(o @ Value::Object(_)) => o.clone(),
        Some(_) => {
            problems.push(fail_closed::BAD_OBLIGATIONS);
            Value::new_object()
        }
    };
    let verdict = if !problems.is_empty() {
        reasons.extend(problems.iter().map(|p| (*p).to_string()));
        Verdict {
            obligations,
            ..Verdict::denying(reasons)
        }
    } else if allow {
        Verdict::allowing(reasons, obligations)
    } else {
        Verdict {
            obligations,
            ..Verdict::denying(reasons)
        }
    };
    Read { verdict, problems }
}

/// The texts of `items` when every one is a string.
fn strings<'a>(items: impl Iterator<Item = &'a Value>) -> Option<Vec<String>> {
    items.map(|item| text(item).map(str::to_owned)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LimitKind;

    fn decide(json: &str) -> Decision {
        let value = if json.is_empty() {
            Value::Undefined
        } else {
            Value::from_json_str(json).unwrap()
        };
        Decision::from_evaluation(Ok(value), "rev".into(), Utc::now(), Duration::ZERO)
    }

    #[test]
    fn well_formed_results_map_through() {
        let d = decide(
            r#"{"allow": true, "reasons": ["ok"], "obligations": {"max_ttl_seconds": 900}}"#,
        );
        assert!(d.allow);
        assert_eq!(d.reasons, ["ok"]);
        assert_eq!(d.obligations["max_ttl_seconds"], Value::from(900u64));
        let d = decide(r#"{"allow": false, "reasons": ["justification is required"]}"#);
        assert!(!d.allow);
        assert_eq!(d.reasons, ["justification is required"]);
    }

    #[test]
    fn every_malformed_result_fails_closed_with_its_reason() {
        let cases = [
            ("", fail_closed::UNDEFINED),
            ("true", fail_closed::NOT_OBJECT),
            (r#"[1]"#, fail_closed::NOT_OBJECT),
            (r#"{}"#, fail_closed::NO_ALLOW),
            (r#"{"allow": "yes"}"#, fail_closed::NO_ALLOW),
            (
                r#"{"allow": true, "reasons": "ok"}"#,
                fail_closed::BAD_REASONS,
            ),
            (
                r#"{"allow": true, "reasons": [1]}"#,
                fail_closed::BAD_REASONS,
            ),
            (
                r#"{"allow": true, "obligations": []}"#,
                fail_closed::BAD_OBLIGATIONS,
            ),
        ];
        for (json, reason) in cases {
            let d = decide(json);
            assert!(!d.allow, "{json}");
            assert!(
                d.reasons.iter().any(|r| r == reason),
                "{json}: {:?}",
                d.reasons
            );
        }
    }

    #[test]
    fn evaluation_errors_fail_closed() {
        let d = Decision::from_evaluation(
            Err(EvalError::Limit {
                kind: LimitKind::Instructions,
                detail: "more than 10".into(),
            }),
            "rev".into(),
            Utc::now(),
            Duration::ZERO,
        );
        assert!(!d.allow);
        assert_eq!(
            d.reasons,
            ["evaluation limit exceeded: instructions: more than 10"]
        );
    }

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let a = decide(r#"{"allow": true}"#);
        let b = decide(r#"{"allow": true}"#);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.get_version_num(), 7);
        assert!(a.id < b.id);
    }
}
