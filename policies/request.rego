# Step `request`: may this subject ask for a just-in-time grant, and on what terms?
#
# The obligations shape the grant the server creates:
#   max_ttl_seconds           the server grants min(requested, this)
#   required_approvals        0 → ACTIVE at once; N → PENDING until N eligible approvers agree
#   eligible_roles            roles whose approval counts (present when approvals are required)
#   approval_timeout_seconds  how long a PENDING grant waits (present when approvals are required)
#   max_uses                  present only when the sensitivity level limits uses
#
# Composed by data.stepgate.decision only when input.step == "request".
package stepgate.request

deny contains msg if some msg in data.stepgate.lib.subject_problems

deny contains msg if some msg in data.stepgate.lib.workflow_problems

deny contains msg if some msg in data.stepgate.lib.environment_problems

deny contains msg if some msg in data.stepgate.lib.ttl_problems

# Refused rather than mapped to the strictest level: at request time a typo is
# better fixed than silently turned into two approvals and a 15 minute TTL.
deny contains msg if {
	input.resource.attributes.sensitivity
	label := input.resource.attributes.sensitivity
	not data.stepgate_config.sensitivity_levels[label]
	known := concat(", ", sort([name | data.stepgate_config.sensitivity_levels[name]]))
	msg := sprintf("resource sensitivity \"%s\" is not one of: %s", [label, known])
}

default approval_terms := {"required_approvals": 0}

approval_terms := {
	"required_approvals": data.stepgate.lib.required_approvals,
	"eligible_roles": data.stepgate.lib.eligible_roles,
	"approval_timeout_seconds": data.stepgate_config.approval_timeout_seconds,
} if {
	data.stepgate.lib.required_approvals > 0
}

default use_terms := {}

use_terms := {"max_uses": n} if {
	n := data.stepgate.lib.level.max_uses
	n > 0
}

obligations := object.union(
	object.union({"max_ttl_seconds": data.stepgate.lib.max_ttl_seconds}, approval_terms),
	use_terms,
)

# --- fast path -------------------------------------------------------------------
# data.stepgate.decision answers the common allowed request from fast_obligations
# without building the deny set (see decision.rego). It is defined only when no
# rule above can deny, and is then `obligations`, computed without the helper
# rules. It may be stricter than the rules above (a human without an owner, a
# null requested_ttl_seconds take the full rules) but never looser: change it
# together with them.
fast_obligations := object.union(object.union({"max_ttl_seconds": level.max_ttl_seconds}, approvals), uses) if {
	subject := input.subject
	is_string(subject.id)
	trim_space(subject.id) != ""
	is_string(subject.kind)
	trim_space(subject.kind) != ""
	subject.kind in data.stepgate_config.subject_kinds
	is_string(subject.owner)
	trim_space(subject.owner) != ""
	workflow := input.workflow
	is_string(workflow.requester)
	trim_space(workflow.requester) != ""
	is_string(workflow.justification)
	justification := trim_space(workflow.justification)
	justification != ""
	count(justification) >= data.stepgate_config.min_justification_length
	not subject.attributes.environment != input.resource.attributes.environment
	ttl := object.get(input, "requested_ttl_seconds", 1)
	is_number(ttl)
	ttl > 0
	ttl <= data.stepgate_config.absolute_max_ttl_seconds
	is_string(input.context.time)

	# A known sensitivity label, or none (the default level).
	level := data.stepgate_config.sensitivity_levels[object.get(input, ["resource", "attributes", "sensitivity"], data.stepgate_config.default_sensitivity)]
	level

	# approval_terms and use_terms, each with its default ({false: x} picks x
	# when the condition is false, else the third argument).
	production := input.resource.attributes.environment in data.stepgate_config.production_environments
	required := object.get({false: 0}, production, level.required_approvals)
	approvals := object.get({false: {"required_approvals": 0}}, required > 0, {
		"required_approvals": required,
		"eligible_roles": level.eligible_roles,
		"approval_timeout_seconds": data.stepgate_config.approval_timeout_seconds,
	})
	uses := object.get({false: {}}, level.max_uses > 0, {"max_uses": level.max_uses})
}
