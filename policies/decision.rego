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
# Hot-path rules: no `with`, `walk`, `http.send`, `print` or partial-object
# rules here, so the decision compiles to the regorus RVM. The dispatch is an
# else-chain so that one step costs one lookup, hot steps first.
package stepgate

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

# --- the decision ----------------------------------------------------------------

default allow := false

allow if count(deny) == 0

default decision := {"allow": false, "reasons": ["policy error: no decision"], "obligations": {}}

decision := {"allow": true, "reasons": [sprintf("%s allowed", [input.step])], "obligations": step_obligations} if allow

decision := {"allow": false, "reasons": sort(deny), "obligations": {}} if not allow
