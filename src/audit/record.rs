//! One decision-log record: the decision's evidence as one JSON line, secrets masked,
//! hash-chained to the record before it.

use std::fmt;

use aho_corasick::AhoCorasick;
use chrono::SecondsFormat;
use opentelemetry::trace::{SpanId, TraceId};
use regorus::Value;
use serde::Serialize;
use uuid::Uuid;

use super::chain::{self, Hash};
use crate::{
    decision::Decision,
    grants::{Grant, GrantState},
};

/// What a decision's record is made of, borrowed from the decision that just concluded.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The final decision (after any overruling).
    pub decision: &'a Decision,
    /// The input document the policy saw (masked when written).
    pub input: &'a Value,
    /// The decision span's trace and span ids (or the caller's, when spans are off).
    pub trace: Option<(TraceId, SpanId)>,
    /// The grant the decision was about, after the step (its id and approvers).
    pub grant: Option<&'a Grant>,
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
    /// The pointers split into unescaped segments (`~1` is `/`, `~0` is `~`).
    fn segments(&self) -> Vec<Vec<String>> {
        self.pointers
            .iter()
            .map(|p| {
                p.split('/')
                    .skip(1)
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect()
            })
            .collect()
    }
}

/// A string value, if it is one.
fn text(value: &Value) -> Option<&str> {
    value.as_string().ok().map(|s| &**s)
}

/// The masks prepared for one decision log: pointers pre-split, key fragments compiled
/// into one case-insensitive automaton (it runs for every key of every record).
#[derive(Debug)]
pub(crate) struct Masking {
    pointers: Vec<Vec<String>>,
    fragments: Option<AhoCorasick>,
    /// Bytes of the shortest fragment: a shorter key (`id`, `kind`, `step`, ...) holds
    /// none, and most keys of an input are short.
    shortest: usize,
}

impl Masking {
    pub(crate) fn new(masks: Masks) -> Self {
        // `-` and `_` are the same in a key: each fragment is searched in both spellings.
        let mut patterns: Vec<String> = Vec::new();
        for key in masks.keys.iter().filter(|k| !k.is_empty()) {
            for spelling in [key.replace('-', "_"), key.replace('_', "-")] {
                if !patterns.contains(&spelling) {
                    patterns.push(spelling);
                }
            }
        }
        let fragments = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(&patterns)
                .ok()
        };
        Self {
            pointers: masks.segments(),
            fragments,
            shortest: patterns.iter().map(String::len).min().unwrap_or(0),
        }
    }

    /// Whether values under `key` are masked: it contains a fragment.
    pub(crate) fn masks_key(&self, key: &str) -> bool {
        key.len() >= self.shortest
            && self
                .fragments
                .as_ref()
                .is_some_and(|automaton| automaton.is_match(key))
    }
}

/// A regorus value serialised as JSON with masks applied on the way (no intermediate
/// JSON tree). `live` holds the pointers whose segments matched the path so far (a bit
/// per pointer, up to 64); `depth` is the path length.
struct Masked<'a> {
    value: &'a Value,
    masking: &'a Masking,
    live: u64,
    depth: usize,
}

impl Masked<'_> {
    /// The pointers still matching after one more segment, and whether one ends there.
    fn step(&self, segment: &dyn Fn(&str) -> bool) -> (u64, bool) {
        let mut live = 0;
        let mut ends = false;
        for (i, pointer) in self.masking.pointers.iter().enumerate().take(64) {
            if self.live & (1 << i) != 0 && pointer.get(self.depth).is_some_and(|s| segment(s)) {
                if pointer.len() == self.depth + 1 {
                    ends = true;
                } else {
                    live |= 1 << i;
                }
            }
        }
        (live, ends)
    }

    fn child<'b>(&'b self, value: &'b Value, live: u64) -> Masked<'b> {
        Masked {
            value,
            masking: self.masking,
            live,
            depth: self.depth + 1,
        }
    }
}

impl Serialize for Masked<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.value {
            Value::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields.iter() {
                    let owned;
                    let key: &str = match key {
                        Value::String(s) => s,
                        other => {
                            owned = other.to_json_str().unwrap_or_default();
                            &owned
                        }
                    };
                    let (live, ends) = if self.live == 0 {
                        (0, false)
                    } else {
                        self.step(&|segment| segment == key)
                    };
                    if ends || self.masking.masks_key(key) {
                        map.serialize_entry(key, MASKED)?;
                    } else {
                        map.serialize_entry(key, &self.child(value, live))?;
                    }
                }
                map.end()
            }
            Value::Array(items) => self.sequence(items.iter(), items.len(), serializer),
            Value::Set(items) => self.sequence(items.iter(), items.len(), serializer),
            leaf => leaf.serialize(serializer),
        }
    }
}

impl Masked<'_> {
    fn sequence<'v, S: serde::Serializer>(
        &self,
        items: impl Iterator<Item = &'v Value>,
        len: usize,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(len))?;
        for (index, item) in items.enumerate() {
            let (live, ends) = if self.live == 0 {
                (0, false)
            } else {
                self.step(&|segment| segment.parse::<usize>() == Ok(index))
            };
            if ends {
                seq.serialize_element(MASKED)?;
            } else {
                seq.serialize_element(&self.child(item, live))?;
            }
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct Approver<'a> {
    approver: &'a str,
    role: &'a str,
    at: String,
}

/// A grant's id: its own (a step on the grant) or the text a `Check`'s input carries.
enum GrantId<'a> {
    Own(Uuid),
    Given(&'a str),
}

impl fmt::Display for GrantId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Own(id) => id.fmt(f),
            Self::Given(id) => f.write_str(id),
        }
    }
}

#[derive(Serialize)]
struct GrantPart<'a> {
    id: Shown<GrantId<'a>>,
    state: &'static str,
    approvers: Vec<Approver<'a>>,
}

/// Who or what, in brief (the whole of it, attributes included, is under `input`).
#[derive(Serialize)]
struct Named<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "type")]
    type_: Option<&'a str>,
}

impl<'a> Named<'a> {
    fn of(value: &'a Value, kind_key: &str) -> Option<Self> {
        if !matches!(value, Value::Object(_)) {
            return None;
        }
        let kind = text(&value[kind_key]);
        Some(if kind_key == "type" {
            Self {
                id: text(&value["id"]),
                kind: None,
                type_: kind,
            }
        } else {
            Self {
                id: text(&value["id"]),
                kind,
                type_: None,
            }
        })
    }
}

/// A value serialised as the string its `Display` writes, straight into the record (no
/// `String` in between: records are rendered on the decision path).
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

#[derive(Serialize)]
struct Record<'a> {
    decision_id: Shown<Uuid>,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<Shown<TraceId>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<Shown<SpanId>>,
    policy_revision: &'a str,
    step: Option<&'a str>,
    caller: Masked<'a>,
    subject: Option<Named<'a>>,
    action: Option<&'a str>,
    resource: Option<Named<'a>>,
    allow: bool,
    reasons: &'a [String],
    obligations: Masked<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grant: Option<GrantPart<'a>>,
    eval_us: u64,
    input: Masked<'a>,
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

/// Renders `entry` with `masking` applied to its input, ready to be chained.
pub(crate) fn render(entry: &Entry<'_>, masking: &Masking) -> Unchained {
    let input = entry.input;
    let all = if masking.pointers.is_empty() {
        0
    } else {
        u64::MAX
    };
    let masked = |value| Masked {
        value,
        masking,
        live: all,
        depth: 0,
    };
    let grant = entry.grant.map(|g| GrantPart {
        id: Shown(GrantId::Own(g.id())),
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
        let id = Shown(GrantId::Given(text(&input["grant"]["id"])?));
        let given = text(&input["grant"]["state"]);
        let state = GrantState::ALL
            .iter()
            .map(|s| s.as_str())
            .find(|s| Some(*s) == given)
            .unwrap_or("");
        Some(GrantPart {
            id,
            state,
            approvers: Vec::new(),
        })
    });
    // Masks apply to the input's own paths; the caller sub-document is masked by key.
    let caller = Masked {
        value: &input["caller"],
        masking,
        live: 0,
        depth: 1,
    };
    let obligations = Masked {
        value: &entry.decision.obligations,
        masking,
        live: 0,
        depth: 0,
    };
    let record = Record {
        decision_id: Shown(entry.decision.id),
        time: entry
            .decision
            .decided_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
        trace_id: entry.trace.map(|(t, _)| Shown(t)),
        span_id: entry.trace.map(|(_, s)| Shown(s)),
        policy_revision: &entry.decision.policy_revision,
        step: text(&input["step"]),
        caller,
        subject: Named::of(&input["subject"], "kind"),
        action: text(&input["action"]),
        resource: Named::of(&input["resource"], "type"),
        allow: entry.decision.allow,
        reasons: &entry.decision.reasons,
        obligations,
        grant,
        eval_us: u64::try_from(entry.decision.eval_duration.as_micros()).unwrap_or(u64::MAX),
        input: masked(input),
    };
    let mut body = Vec::with_capacity(RECORD_CAPACITY);
    // Serialising strings and regorus values into a Vec cannot fail, and serde_json
    // writes UTF-8 only.
    let _ = serde_json::to_writer(&mut body, &record);
    let mut body = String::from_utf8(body).unwrap_or_default();
    body.pop(); // the closing brace: `prev_hash` comes last
    body.push_str(",\"prev_hash\":\"");
    Unchained(body)
}
