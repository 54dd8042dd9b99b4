# The entrypoint, data.stepgate.decision: one answer for every input.
#
#   {"allow": bool, "reasons": [string], "obligations": {...}}
#
# Each step's rules live in their own package; the dispatch below consults
# only the package for input.step (plus the agent rules when an agent is
# involved). Allowed: reasons is ["<step> allowed"] and obligations are the
# step's. Denied: reasons are the sorted deny messages and obligations are
# empty. A missing or unknown step is denied: a step nobody wrote rules for
# must not pass by default.
#
# Two ways to the same answer:
# - full_decision builds every deny reason of the step and its obligations.
#   It decides every input and is the reference.
# - decision first tries the step's fast path (access.fast_ns_left or
#   access.fast_issue_ttl, request.fast_obligations, and agent.fast_ok): a
#   handful of inline checks, defined only when none of the deny rules of the
#   step (and of the agent rules) can fire. The common allowed `use`, `issue`
#   and `request` are answered there in a few microseconds; anything else
#   falls through to full_decision. A fast path may be stricter than the rules
#   but never looser, and must give the same obligations: the tests compare
#   decision with full_decision (see README.md). Change a fast path together
#   with the deny rules it mirrors.
#
# Hot-path rules: no `with`, `walk`, `http.send`, `print` or partial-object
# rules here, so the decision compiles to the regorus RVM. Both dispatches are
# else-chains so that one step costs one lookup, hot steps first.
package stepgate

default decision := {"allow": false, "reasons": ["policy error: no decision"], "obligations": {}}

# The fast paths, hottest first (an agent's `use` is decided for every tool call).
decision := {"allow": true, "reasons": ["use allowed"], "obligations": {}} if {
	input.step == "use"
	data.stepgate.agent.fast_ok
	data.stepgate.access.fast_ns_left
} else := {"allow": true, "reasons": ["issue allowed"], "obligations": {"max_ttl_seconds": ttl}} if {
	input.step == "issue"
	ttl := data.stepgate.access.fast_issue_ttl
	ttl
	data.stepgate.agent.fast_ok
} else := {"allow": true, "reasons": ["request allowed"], "obligations": obligations} if {
	input.step == "request"
	obligations := data.stepgate.request.fast_obligations
	obligations
	data.stepgate.agent.fast_ok
} else := full_decision

# --- the full rules --------------------------------------------------------------

step_deny := data.stepgate.access.deny if {
	input.step == "use"
} else := data.stepgate.access.deny if {
	input.step == "issue"
} else := data.stepgate.request.deny if {
	input.step == "request"
} else := data.stepgate.approve.deny if {
	input.step == "approve"
} else := data.stepgate.renew.deny if {
	input.step == "renew"
} else := data.stepgate.revoke.deny if {
	input.step == "revoke"
} else := data.stepgate.revoke.deny if {
	input.step == "close"
} else := data.stepgate.break_glass.deny if {
	input.step == "break_glass"
} else := {"input.step is required"} if {
	not data.stepgate.lib.non_empty(input.step)
} else := {sprintf("unknown step \"%s\": no policy decides it", [input.step])}

step_obligations := data.stepgate.access.obligations if {
	input.step == "use"
} else := data.stepgate.access.obligations if {
	input.step == "issue"
} else := data.stepgate.request.obligations if {
	input.step == "request"
} else := data.stepgate.renew.obligations if {
	input.step == "renew"
} else := data.stepgate.break_glass.obligations if {
	input.step == "break_glass"
} else := {} if {
	input.step in {"approve", "revoke", "close"}
}

# --- deny reasons ----------------------------------------------------------------

deny contains msg if some msg in step_deny

deny contains msg if {
	data.stepgate.lib.agent_involved
	input.step in {"use", "issue", "request"}
	some msg in data.stepgate.agent.deny
}

# Ending access (revoke, close) must never be blocked by a clock problem.
deny contains "context.time is required" if {
	not is_string(input.context.time)
	input.step in {"use", "issue", "request", "approve", "renew", "break_glass"}
}

# Steps that shape a grant must say how; if their terms cannot be computed
# (say, a data file lost a key) the answer is no, never "allowed, no limits".
deny contains sprintf("policy error: obligations for step \"%s\" could not be computed", [input.step]) if {
	not step_obligations
	input.step in {"use", "issue", "request", "renew", "break_glass"}
}

default allow := false

allow if count(deny) == 0

default full_decision := {"allow": false, "reasons": ["policy error: no decision"], "obligations": {}}

full_decision := {"allow": true, "reasons": [sprintf("%s allowed", [input.step])], "obligations": step_obligations} if allow

full_decision := {"allow": false, "reasons": sort(deny), "obligations": {}} if not allow
