//! The raw-result entry's types: what an adapter that answers with the policy's raw
//! result (Envoy ext_authz, the OPA REST API) evaluates, the result it is handed, and the
//! verdict it gives the decision record. The record can allow only through a reading of
//! a [`PolicyResult`], which only the pipeline makes, from an evaluation.

use regorus::Value;

use super::{
    Refusal,
    record::{Verdict, read_decision},
};
use crate::policy::Entrypoint;

/// What a raw evaluation evaluates.
#[derive(Debug, Clone, Copy)]
pub enum RawTarget<'a> {
    /// A configured entrypoint (compiled; RVM where possible).
    Entrypoint(Entrypoint),
    /// The document at `data.<path>`, with the input or with `input` undefined.
    Data {
        /// The path below `data`.
        path: &'a [&'a str],
        /// Whether the input is given (else `input` is undefined, as OPA leaves it).
        has_input: bool,
    },
}

/// A policy's raw result, as the pipeline hands it to the adapter that asked for it.
/// Only the pipeline makes one (from an evaluation), so a verdict read from it was read
/// from policy.
#[derive(Debug)]
pub struct PolicyResult(Value);

impl PolicyResult {
    pub(super) fn new(value: Value) -> Self {
        Self(value)
    }

    /// The result.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// The result, for the adapter's answer.
    pub fn into_value(self) -> Value {
        self.0
    }

    /// The record's verdict on a decision document, read exactly as a Check reads the
    /// decision entrypoint's result: anything but a well-formed `{"allow": true, ...}`
    /// denies, with the fail-closed reasons after `note`.
    pub fn decision_verdict(&self, note: String) -> RawVerdict {
        let read = read_decision(&self.0);
        let mut reasons = vec![note];
        reasons.extend(read.problems.iter().map(|p| (*p).to_string()));
        RawVerdict(read.verdict.with_reasons(reasons))
    }

    /// The record's verdict on any other document: it allows when the result is `true`,
    /// or an object whose boolean at one of `flags` is `true` (OPA's and Envoy's allow
    /// fields); `reasons` say what was asked.
    pub fn flag_verdict(&self, flags: &[&str], reasons: Vec<String>) -> RawVerdict {
        let allows = match &self.0 {
            Value::Bool(allow) => *allow,
            Value::Object(object) => flags
                .iter()
                .any(|flag| object.get(&Value::from(*flag)) == Some(&Value::Bool(true))),
            _ => false,
        };
        RawVerdict(if allows {
            Verdict::allowing(reasons, Value::new_object())
        } else {
            Verdict::denying(reasons)
        })
    }
}

/// What the decision record of a raw evaluation says: an allow only when read from a
/// [`PolicyResult`]; a deny for the adapter's own reason or a [`Refusal`].
#[derive(Debug)]
pub struct RawVerdict(pub(super) Verdict);

impl RawVerdict {
    /// A deny for `reason` (the adapter found the result unusable).
    pub fn deny(reason: impl Into<String>) -> Self {
        Self(Verdict::denying(vec![reason.into()]))
    }

    /// A deny because there is no result.
    pub fn refused(refusal: &Refusal) -> Self {
        Self::deny(refusal.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::*;
    use crate::decision::Decision;

    fn result(json: &str) -> PolicyResult {
        PolicyResult::new(Value::from_json_str(json).unwrap())
    }

    /// The record a verdict makes.
    fn record(verdict: RawVerdict) -> Decision {
        Decision::from_raw(verdict, "rev".into(), Utc::now(), Duration::ZERO)
    }

    #[test]
    fn a_decision_document_is_read_as_a_check_reads_it() {
        let fine =
            record(result(r#"{"allow": true, "reasons": ["ok"]}"#).decision_verdict("q".into()));
        assert!(fine.allow());
        assert_eq!(fine.reasons(), ["q"]);
        let malformed =
            record(result(r#"{"allow": true, "reasons": "x"}"#).decision_verdict("q".into()));
        assert!(!malformed.allow());
        assert_eq!(
            malformed.reasons(),
            [
                "q",
                "policy result \"reasons\" is not an array of strings (fail closed)"
            ]
        );
        let undefined = record(PolicyResult::new(Value::Undefined).decision_verdict("q".into()));
        assert!(!undefined.allow());
    }

    #[test]
    fn other_documents_allow_by_their_flag_only_when_it_is_true() {
        let flags = ["allow", "allowed"];
        for (json, expected) in [
            ("true", true),
            ("false", false),
            (r#"{"allowed": true}"#, true),
            (r#"{"allow": true, "reasons": "x"}"#, true),
            (r#"{"allow": "true"}"#, false),
            (r#"{"other": true}"#, false),
            ("[true]", false),
            ("1", false),
        ] {
            let verdict = record(result(json).flag_verdict(&flags, Vec::new()));
            assert_eq!(verdict.allow(), expected, "{json}");
        }
        let envoy = record(result(r#"{"allow": true}"#).flag_verdict(&["allowed"], Vec::new()));
        assert!(!envoy.allow(), "Envoy reads `allowed` only");
        assert!(!record(RawVerdict::refused(&Refusal::NoPolicy)).allow());
    }
}
