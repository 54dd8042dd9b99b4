//! One decision-log record: the decision's evidence as one JSON line, secrets masked,
//! hash-chained to the record before it.

use std::sync::Arc;

use chrono::SecondsFormat;
use opentelemetry::trace::{SpanId, TraceId};
use regorus::Value;
use serde::Serialize;
use serde_json::Value as Json;

use super::chain::{self, Hash};
use crate::{decision::Decision, grants::Grant};

/// What the pipeline hands the log: everything is turned into JSON on the writer thread,
/// off the decision path.
#[derive(Debug)]
pub struct Entry {
    /// The final decision (after any overruling).
    pub decision: Decision,
    /// The input document the policy saw (masked when written).
    pub input: Value,
    /// The decision span's trace and span ids (or the caller's, when spans are off).
    pub trace: Option<(TraceId, SpanId)>,
    /// The grant the decision was about, after the step (its id and approvers).
    pub grant: Option<Arc<Grant>>,
}

/// The value that replaces a masked one.
pub const MASKED: &str = "[masked]";

/// Which input values are masked: JSON pointers, and every value under an object key
/// that contains one of `keys` (case-insensitive, `-` read as `_`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masks {
    /// JSON pointers into the input document, e.g. `/agent/arguments/query`.
    pub pointers: Vec<String>,
    /// Key fragments, lowercase, e.g. `password`.
    pub keys: Vec<String>,
}

/// The default key fragments.
pub const DEFAULT_MASK_KEYS: [&str; 6] = [
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
];

impl Default for Masks {
    fn default() -> Self {
        Self {
            pointers: Vec::new(),
            keys: DEFAULT_MASK_KEYS.iter().map(|k| k.to_string()).collect(),
        }
    }
}

impl Masks {
    /// Masks `value` in place.
    pub fn apply(&self, value: &mut Json) {
        for pointer in &self.pointers {
            if let Some(found) = value.pointer_mut(pointer) {
                *found = Json::from(MASKED);
            }
        }
        if !self.keys.is_empty() {
            self.mask_keys(value);
        }
    }

    fn mask_keys(&self, value: &mut Json) {
        match value {
            Json::Object(map) => {
                for (key, item) in map.iter_mut() {
                    let key = key.to_ascii_lowercase().replace('-', "_");
                    if self.keys.iter().any(|k| key.contains(k.as_str())) {
                        *item = Json::from(MASKED);
                    } else {
                        self.mask_keys(item);
                    }
                }
            }
            Json::Array(items) => items.iter_mut().for_each(|i| self.mask_keys(i)),
            _ => {}
        }
    }
}

#[derive(Serialize)]
struct Approver<'a> {
    approver: &'a str,
    role: &'a str,
    at: String,
}

#[derive(Serialize)]
struct GrantPart<'a> {
    id: String,
    state: &'static str,
    approvers: Vec<Approver<'a>>,
}

#[derive(Serialize)]
struct Record<'a> {
    decision_id: String,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
    policy_revision: &'a str,
    step: &'a Json,
    caller: &'a Json,
    subject: &'a Json,
    action: &'a Json,
    resource: &'a Json,
    allow: bool,
    reasons: &'a [String],
    obligations: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    grant: Option<GrantPart<'a>>,
    eval_us: u64,
    input: &'a Json,
    prev_hash: &'a str,
}

/// Renders `entry` as one line (no newline) chained to `prev`, and returns it with its
/// own hash.
pub(crate) fn render(entry: &Entry, masks: &Masks, prev: &Hash) -> (String, Hash) {
    let mut input = serde_json::to_value(&entry.input).unwrap_or(Json::Null);
    masks.apply(&mut input);
    let mut obligations = serde_json::to_value(&entry.decision.obligations).unwrap_or(Json::Null);
    masks.apply(&mut obligations);
    let field = |name: &str| input.get(name).unwrap_or(&Json::Null);
    let grant = entry.grant.as_deref().map(|g| GrantPart {
        id: g.id().to_string(),
        state: g.state.as_str(),
        approvers: g
            .approvals
            .iter()
            .map(|a| Approver {
                approver: &a.approver,
                role: &a.role,
                at: a.at.to_rfc3339_opts(SecondsFormat::Micros, true),
            })
            .collect(),
    });
    // A check naming a grant carries it in its input only.
    let grant = grant.or_else(|| {
        let id = input.pointer("/grant/id")?.as_str()?.to_string();
        Some(GrantPart {
            id,
            state: "",
            approvers: Vec::new(),
        })
    });
    let prev_hex = prev.to_hex();
    let record = Record {
        decision_id: entry.decision.id.to_string(),
        time: entry
            .decision
            .decided_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
        trace_id: entry.trace.map(|(t, _)| t.to_string()),
        span_id: entry.trace.map(|(_, s)| s.to_string()),
        policy_revision: &entry.decision.policy_revision,
        step: field("step"),
        caller: field("caller"),
        subject: field("subject"),
        action: field("action"),
        resource: field("resource"),
        allow: entry.decision.allow,
        reasons: &entry.decision.reasons,
        obligations,
        grant,
        eval_us: u64::try_from(entry.decision.eval_duration.as_micros()).unwrap_or(u64::MAX),
        input: &input,
        prev_hash: &prev_hex,
    };
    // Serialising plain JSON values and strings cannot fail.
    let body = serde_json::to_string(&record).unwrap_or_default();
    chain::seal(body)
}
