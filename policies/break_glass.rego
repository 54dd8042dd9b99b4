# Step `break_glass`: emergency access without waiting for approvers.
#
# Allowed only for a workflow flagged as an emergency, with a requester and a
# justification, and never for AI agents (an agent must not escalate itself).
# The price is in the obligations: a short TTL, no approvals, mandatory
# post-use review and a notification to the people who will do that review.
#
# Composed by data.stepgate.decision only when input.step == "break_glass".
package stepgate.break_glass

settings := data.stepgate_config.break_glass

deny contains "break-glass requires workflow.emergency to be true" if not data.stepgate.lib.emergency

deny contains msg if some msg in data.stepgate.lib.subject_problems

deny contains msg if some msg in data.stepgate.lib.workflow_problems

deny contains msg if some msg in data.stepgate.lib.ttl_problems

deny contains msg if {
	kind := input.subject.kind
	kind in settings.forbidden_subject_kinds
	msg := sprintf("subject kind \"%s\" cannot use break-glass access", [kind])
}

obligations := {
	"max_ttl_seconds": settings.max_ttl_seconds,
	"required_approvals": 0,
	"post_use_review": true,
	"notify": settings.notify,
}
