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
