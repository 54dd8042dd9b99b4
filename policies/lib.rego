# Shared helpers for every step: classification of the resource, time, the
# caller's channel, and the checks several steps have in common.
#
# Everything here is a value rule or a partial set of problem strings; a step
# includes the sets that apply to it. Nothing here decides on its own:
# data.stepgate.decision composes the steps.
#
# Conventions for every policy file (they keep the decision on the regorus
# RVM and in the microsecond range):
# - Refer to helpers by full path (data.stepgate.lib.x). An import alias
#   (import data.stepgate.lib; lib.x) makes the RVM evaluate the whole
#   package for every lookup.
# - Before `v := <ref that may be undefined>` followed by `not ...` or
#   sprintf, test the ref itself: the RVM binds an undefined value with `:=`
#   instead of failing the body, so `not f(v)` would be true.
# - On the issue/use path, prefer inline comparisons over helper rules and
#   functions: each rule or function call costs more than a comparison.
package stepgate.lib

# --- small predicates ---------------------------------------------------------

# A string with visible content. Undefined or non-string arguments fail.
non_empty(s) if {
	is_string(s)
	trim_space(s) != ""
}

positive_number(n) if {
	is_number(n)
	n > 0
}

# Identities are compared case-insensitively so that "Alice" cannot approve a
# request raised by "alice". (The server also sends identities in NFKC form and, at
# step approve, shows an approver who looks like someone the grant names, e.g.
# "аlice" with a Cyrillic а, as that person.)
same_identity(a, b) if lower(a) == lower(b)

# Set by the workflow system; it only ever relaxes the business-hours rule
# and is what break_glass requires. It never removes the need for a grant.
emergency if input.workflow.emergency == true

agent_involved if input.agent

agent_involved if input.subject.kind == "agent"

# --- resource classification -------------------------------------------------

is_production if input.resource.attributes.environment in data.stepgate_config.production_environments

# Unknown labels get the strictest level: a typo must not loosen a control.
sensitivity := s if {
	s := input.resource.attributes.sensitivity
	data.stepgate_config.sensitivity_levels[s]
} else := data.stepgate_config.unknown_sensitivity if {
	input.resource.attributes.sensitivity
} else := data.stepgate_config.default_sensitivity

level := data.stepgate_config.sensitivity_levels[sensitivity]

max_ttl_seconds := data.stepgate_config.sensitivity_levels[sensitivity].max_ttl_seconds

# Approvals are a production control; elsewhere a grant is active at once.
default required_approvals := 0

required_approvals := level.required_approvals if is_production

eligible_roles := level.eligible_roles

# --- time --------------------------------------------------------------------
# All times come from the server (context.time) or the grant store, so a
# malformed value is a server bug: the parse then errors and the server fails
# closed. The is_string guards keep a missing field from being a type error.

now_ns := time.parse_rfc3339_ns(input.context.time) if is_string(input.context.time)

grant_expires_ns := time.parse_rfc3339_ns(input.grant.expires_at) if is_string(input.grant.expires_at)

grant_activated_ns := time.parse_rfc3339_ns(input.grant.activated_at) if is_string(input.grant.activated_at)

within_business_hours if {
	hours := data.stepgate_config.business_hours
	time.weekday(now_ns) in hours.days
	clock := time.clock(now_ns)
	clock[0] >= hours.start_hour
	clock[0] < hours.end_hour
}

# --- the caller's channel -------------------------------------------------------

trusted_caller if input.caller.authenticated == true

trusted_caller if input.caller.via in data.stepgate_config.trusted_caller_transports

# --- checks shared by several steps ---------------------------------------------

subject_problems contains "subject.id is required" if not non_empty(input.subject.id)

subject_problems contains "subject.kind is required" if not non_empty(input.subject.kind)

subject_problems contains sprintf("subject kind \"%s\" is not recognised", [kind]) if {
	kind := input.subject.kind
	non_empty(kind)
	not kind in data.stepgate_config.subject_kinds
}

# Every non-human identity needs an accountable owner; humans answer for themselves.
subject_problems contains "subject.owner is required" if {
	not input.subject.kind == "human"
	not non_empty(input.subject.owner)
}

workflow_problems contains "workflow.requester is required" if not non_empty(input.workflow.requester)

workflow_problems contains "workflow.justification is required" if not non_empty(input.workflow.justification)

workflow_problems contains msg if {
	justification := input.workflow.justification
	non_empty(justification)
	minimum := data.stepgate_config.min_justification_length
	count(trim_space(justification)) < minimum
	msg := sprintf("workflow.justification must be at least %v characters", [minimum])
}

# A credential for prod must not be minted for a staging workload, and so on.
environment_problems contains msg if {
	subject_env := input.subject.attributes.environment
	resource_env := input.resource.attributes.environment
	subject_env != resource_env
	msg := sprintf("subject environment \"%s\" does not match resource environment \"%s\"", [subject_env, resource_env])
}

ttl_problems contains "requested_ttl_seconds must be a positive number" if {
	object.get(input, "requested_ttl_seconds", null) != null
	not positive_number(input.requested_ttl_seconds)
}

# Above the sensitivity cap a TTL is shortened (obligation max_ttl_seconds);
# only a request beyond any sane duration is refused outright.
ttl_problems contains msg if {
	ttl := input.requested_ttl_seconds
	positive_number(ttl)
	ttl > data.stepgate_config.absolute_max_ttl_seconds
	msg := sprintf("requested TTL of %vs exceeds the absolute maximum of %vs", [ttl, data.stepgate_config.absolute_max_ttl_seconds])
}

# The grant must exist, be ACTIVE and be unexpired *now*, not at the last sweep.
active_grant_problems contains "an active grant is required" if not input.grant

active_grant_problems contains msg if {
	input.grant
	state := object.get(input.grant, "state", "missing")
	state != "ACTIVE"
	msg := sprintf("grant is not active (state %s)", [state])
}

active_grant_problems contains "grant.expires_at is required" if {
	input.grant
	not is_string(input.grant.expires_at)
}

active_grant_problems contains "grant has expired" if grant_expires_ns <= now_ns
