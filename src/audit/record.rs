//! One decision-log record: the decision's evidence as one JSON line, secrets masked,
//! hash-chained to the record before it.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use opentelemetry::trace::{SpanId, TraceId};
use regorus::Value;
use uuid::Uuid;

use super::{
    chain::{self, Hash},
    json,
    mask::Masking,
};
use crate::{
    document::{KEYS, text},
    grants::{Grant, GrantState},
};

/// What a decision's record is made of, borrowed from the decision that just concluded.
/// The log's own type: the pipeline fills it in, so the log needs nothing of how a
/// decision is made.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The decision's id.
    pub id: Uuid,
    /// When the decision was made.
    pub decided_at: DateTime<Utc>,
    /// The final answer (after any overruling).
    pub allow: bool,
    /// Why (the policy's reasons, or why the decision failed closed).
    pub reasons: &'a [String],
    /// The policy's obligations (masked when written).
    pub obligations: &'a Value,
    /// The policy revision that decided.
    pub policy_revision: &'a Arc<str>,
    /// The bundle revision that policy revision came from, when it came from a bundle.
    pub bundle_revision: Option<&'a Arc<str>>,
    /// How long the policy evaluation took.
    pub eval_duration: Duration,
    /// The input document the policy saw (masked when written).
    pub input: &'a Value,
    /// The decision span's trace and span ids (or the caller's, when spans are off).
    pub trace: Option<(TraceId, SpanId)>,
    /// The grant the decision was about, after the step (its id and approvers).
    pub grant: Option<&'a Grant>,
}

/// Appends a string value, or `null` for anything else.
fn push_text_or_null(out: &mut String, value: &Value) {
    match text(value) {
        Some(s) => json::push_str(out, s),
        None => out.push_str("null"),
    }
}

/// Appends who or what an object names, in brief: `{"id":…,"<kind_name>":…}` with the
/// members that are strings (the whole of it, attributes included, is under `input`);
/// `null` when `value` is not an object.
fn push_named(out: &mut String, value: &Value, kind_key: &Value) {
    if !matches!(value, Value::Object(_)) {
        out.push_str("null");
        return;
    }
    out.push('{');
    let mut first = true;
    for key in [&KEYS.id, kind_key] {
        if let (Some(name), Some(s)) = (text(key), text(&value[key])) {
            if !first {
                out.push(',');
            }
            first = false;
            json::push_str(out, name);
            out.push(':');
            json::push_str(out, s);
        }
    }
    out.push('}');
}

/// Appends a UUID, hyphenated and lowercase, quoted.
fn push_uuid(out: &mut String, id: Uuid) {
    out.push('"');
    out.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    out.push('"');
}

/// Appends `"grant":{…}`: the grant the decision was about (after the step), else the one
/// a `Check`'s input carries (its id and state only); nothing when there is neither.
fn push_grant(out: &mut String, entry: &Entry<'_>) {
    if let Some(grant) = entry.grant {
        out.push_str(",\"grant\":{\"id\":");
        push_uuid(out, grant.id());
        out.push_str(",\"state\":");
        json::push_str(out, grant.state.as_str());
        out.push_str(",\"approvers\":[");
        for (i, approval) in grant.approvals.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"approver\":");
            json::push_str(out, &approval.approver);
            out.push_str(",\"role\":");
            json::push_str(out, &approval.role);
            out.push_str(",\"at\":");
            json::push_str(
                out,
                &approval.at.to_rfc3339_opts(SecondsFormat::Micros, true),
            );
            out.push('}');
        }
        out.push_str("]}");
        return;
    }
    let given = &entry.input[&KEYS.grant];
    let Some(id) = text(&given[&KEYS.id]) else {
        return;
    };
    let state = text(&given[&KEYS.state]);
    let state = GrantState::ALL
        .iter()
        .map(|s| s.as_str())
        .find(|s| Some(*s) == state)
        .unwrap_or("");
    out.push_str(",\"grant\":{\"id\":");
    json::push_str(out, id);
    out.push_str(",\"state\":");
    json::push_str(out, state);
    out.push_str(",\"approvers\":[]}");
}

/// A record rendered on the deciding thread, waiting for its place in the chain: the JSON
/// object up to the value of its last field, `prev_hash`, which only the writer knows.
///
/// Rendering where the decision was made spreads the work over the serving threads
/// (one writer thread would cap the rate on a many-core host) and frees the decision's
/// input where it was allocated; the writer only hashes and writes.
#[derive(Debug)]
pub(crate) struct Unchained(String);

impl Unchained {
    /// Chains the record to `prev`: the finished line (no newline) and its own hash.
    pub(crate) fn chain(mut self, prev: &Hash) -> (String, Hash) {
        prev.write_hex(&mut self.0);
        self.0.push_str("\"}");
        chain::seal(self.0)
    }
}

/// Records are about 2 KiB with a grant in the input: one allocation holds most whole.
const RECORD_CAPACITY: usize = 4096;

/// Renders `entry` with `masking` applied to its input, ready to be chained: the fields
/// in a fixed order (`decision_id`, `time`, `trace_id` and `span_id` when known,
/// `policy_revision`, `bundle_revision` when the set came from a bundle, `step`,
/// `caller`, `subject`, `action`, `resource`, `allow`, `reasons`, `obligations`, `grant`
/// when there is one, `eval_us`, `input`), then `prev_hash`, whose value the writer
/// appends.
pub(crate) fn render(entry: &Entry<'_>, masking: &Masking) -> Unchained {
    let input = entry.input;
    let mut out = String::with_capacity(RECORD_CAPACITY);
    out.push_str("{\"decision_id\":");
    push_uuid(&mut out, entry.id);
    out.push_str(",\"time\":");
    json::push_str(
        &mut out,
        &entry
            .decided_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    );
    if let Some((trace, span)) = entry.trace {
        out.push_str(",\"trace_id\":\"");
        json::push_hex(&mut out, &trace.to_bytes());
        out.push_str("\",\"span_id\":\"");
        json::push_hex(&mut out, &span.to_bytes());
        out.push('"');
    }
    out.push_str(",\"policy_revision\":");
    json::push_str(&mut out, entry.policy_revision);
    if let Some(bundle) = entry.bundle_revision {
        out.push_str(",\"bundle_revision\":");
        json::push_str(&mut out, bundle);
    }
    out.push_str(",\"step\":");
    push_text_or_null(&mut out, &input[&KEYS.step]);
    out.push_str(",\"caller\":");
    masking.push_by_key(&mut out, &input[&KEYS.caller]);
    out.push_str(",\"subject\":");
    push_named(&mut out, &input[&KEYS.subject], &KEYS.kind);
    out.push_str(",\"action\":");
    push_text_or_null(&mut out, &input[&KEYS.action]);
    out.push_str(",\"resource\":");
    push_named(&mut out, &input[&KEYS.resource], &KEYS.type_);
    out.push_str(if entry.allow {
        ",\"allow\":true,\"reasons\":["
    } else {
        ",\"allow\":false,\"reasons\":["
    });
    for (i, reason) in entry.reasons.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json::push_str(&mut out, reason);
    }
    out.push_str("],\"obligations\":");
    masking.push_by_key(&mut out, entry.obligations);
    push_grant(&mut out, entry);
    out.push_str(",\"eval_us\":");
    json::push_u64(
        &mut out,
        u64::try_from(entry.eval_duration.as_micros()).unwrap_or(u64::MAX),
    );
    out.push_str(",\"input\":");
    masking.push_input(&mut out, input);
    out.push_str(",\"prev_hash\":\"");
    Unchained(out)
}
