//! The decision record and the fail-closed mapping from a policy result to it.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use regorus::Value;
use uuid::Uuid;

use super::input::{KEYS, text};
use crate::{
    audit::Entry,
    grants::Grant,
    policy::{EvalError, Provenance},
};

/// One decision: the answer and its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Unique, time-ordered (UUIDv7).
    pub id: Uuid,
    /// True only when the policy returned `allow: true` in a well-formed result.
    pub allow: bool,
    /// The policy's reasons, or why the decision failed closed.
    pub reasons: Vec<String>,
    /// The policy's obligations (always an object).
    pub obligations: Value,
    /// The policy revision that decided (`none` when no policy was loaded).
    pub policy_revision: Arc<str>,
    /// The revision of the OPA bundle that revision came from (its manifest's), when it
    /// came from a bundle.
    pub bundle_revision: Option<Arc<str>>,
    /// When the decision was made.
    pub decided_at: DateTime<Utc>,
    /// How long the policy evaluation took.
    pub eval_duration: Duration,
}

/// Reasons given when a decision fails closed.
pub(crate) mod fail_closed {
    pub(crate) const NO_POLICY: &str = "no policy revision is loaded (fail closed)";
    pub(crate) const UNDEFINED: &str = "policy result is undefined (fail closed)";
    pub(crate) const NOT_OBJECT: &str = "policy result is not an object (fail closed)";
    pub(crate) const NO_ALLOW: &str = "policy result has no boolean \"allow\" (fail closed)";
    pub(crate) const BAD_REASONS: &str =
        "policy result \"reasons\" is not an array of strings (fail closed)";
    pub(crate) const BAD_OBLIGATIONS: &str =
        "policy result \"obligations\" is not an object (fail closed)";
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
        let (allow, reasons, obligations) = match outcome {
            Err(err) => (false, vec![err.to_string()], Value::new_object()),
            Ok(result) => map_result(&result),
        };
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

    /// A deny made without evaluating (no policy loaded, grant missing, ...).
    pub fn deny(
        reason: impl Into<String>,
        provenance: Provenance,
        decided_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            allow: false,
            reasons: vec![reason.into()],
            obligations: Value::new_object(),
            policy_revision: provenance.revision,
            bundle_revision: provenance.bundle_revision,
            decided_at,
            eval_duration: Duration::ZERO,
        }
    }
}

impl Decision {
    /// A record made without evaluating that accepts a call (a confirmation of evidence).
    pub fn accepted(
        reason: impl Into<String>,
        provenance: Provenance,
        decided_at: DateTime<Utc>,
    ) -> Self {
        Self {
            allow: true,
            ..Self::deny(reason, provenance, decided_at)
        }
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
}

fn map_result(result: &Value) -> (bool, Vec<String>, Value) {
    let Value::Object(object) = result else {
        let reason = if *result == Value::Undefined {
            fail_closed::UNDEFINED
        } else {
            fail_closed::NOT_OBJECT
        };
        return (false, vec![reason.into()], Value::new_object());
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
    if problems.is_empty() {
        (allow, reasons, obligations)
    } else {
        reasons.extend(problems.into_iter().map(String::from));
        (false, reasons, obligations)
    }
}

/// The texts of `items` when every one is a string.
fn strings<'a>(items: impl Iterator<Item = &'a Value>) -> Option<Vec<String>> {
    items.map(|item| text(item).map(str::to_owned)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Err(EvalError::LimitExceeded("instructions".into())),
            "rev".into(),
            Utc::now(),
            Duration::ZERO,
        );
        assert!(!d.allow);
        assert_eq!(d.reasons, ["evaluation limit exceeded: instructions"]);
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
