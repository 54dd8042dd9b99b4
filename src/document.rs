//! The input document's vocabulary, shared by the code that builds documents (the
//! decision pipeline) and the code that reads them after the decision (its span's
//! attributes, the decision-log record): the object keys, interned once ([`KEYS`]), and
//! [`text`], reading a string member cheaply. Neutral ground, so that reading a
//! document never means reaching into the pipeline.

use std::sync::LazyLock;

use regorus::Value;

macro_rules! keys {
    ($($field:ident = $name:literal),* $(,)?) => {
        /// Interned object keys of the input document (and of a policy's decision).
        pub(crate) struct Keys { $(pub(crate) $field: Value),* }
        /// The keys, built once.
        pub(crate) static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys { $($field: Value::from($name)),* });
    };
}

keys! {
    step = "step", subject = "subject", id = "id", kind = "kind", owner = "owner",
    attributes = "attributes", caller = "caller", authenticated = "authenticated", via = "via",
    action = "action", resource = "resource", type_ = "type", workflow = "workflow",
    requester = "requester", justification = "justification", emergency = "emergency",
    grant = "grant", agent = "agent", tool = "tool", arguments = "arguments",
    on_behalf_of = "on_behalf_of", delegation_chain = "delegation_chain", context = "context",
    time = "time", source_ip = "source_ip", state = "state", scope = "scope",
    approvals = "approvals", approver = "approver", role = "role", at = "at",
    required_approvals = "required_approvals", created_at = "created_at",
    activated_at = "activated_at", expires_at = "expires_at", ttl_seconds = "ttl_seconds",
    uses = "uses", max_uses = "max_uses", approval = "approval", comment = "comment",
    verdict = "verdict", sent_as = "sent_as", requested_ttl_seconds = "requested_ttl_seconds",
    // The decision object a policy returns.
    allow = "allow", reasons = "reasons", obligations = "obligations",
}

/// A string value's text; `None` for any other value. (regorus's `as_string` builds an
/// error, with a backtrace when `RUST_BACKTRACE` is set, for every value that is not
/// one: too dear for the decision path, which asks of optional fields.)
pub(crate) fn text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        _ => None,
    }
}
