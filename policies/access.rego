# Steps `issue` (mint a credential) and `use` (revalidate before each use).
#
# Every use is re-decided in the current context: production needs an ACTIVE,
# unexpired grant for exactly this subject, action and resource, and only
# during business hours unless the workflow is an emergency. A grant that is
# present outside production is checked just the same. Without a grant the
# subject itself is checked (with one, it was checked when the grant was
# requested, and the grant must name this subject).
#
# Obligations: at `issue`, max_ttl_seconds so a minted credential never
# outlives its grant (nor the sensitivity cap); post_use_review when an
# emergency lifted the business-hours rule.
#
# This is the hot path (every credential mint and every use): the common
# allowed case is answered by the fast path at the end of this file, the rules
# above decide the rest.
# Composed by data.stepgate.decision only when input.step is "issue" or "use".
package stepgate.access

deny contains msg if {
	not input.grant
	some msg in data.stepgate.lib.subject_problems
}

deny contains msg if some msg in data.stepgate.lib.environment_problems

deny contains msg if {
	input.grant
	some msg in data.stepgate.lib.active_grant_problems
}

deny contains "an active grant is required" if {
	not input.grant
	data.stepgate.lib.is_production
}

# A grant is for one subject, one action and one resource: reusing it for
# anything else is refused. Checked when the grant record carries them.
deny contains "grant was issued to a different subject" if {
	input.grant.subject.id != object.get(input, ["subject", "id"], "")
}

deny contains "action does not match the grant" if {
	input.grant.action != object.get(input, "action", "")
}

deny contains "resource does not match the grant" if {
	input.grant.resource.id != object.get(input, ["resource", "id"], "")
}

# max_uses 0 means unlimited; `uses` counts earlier allowed uses.
deny contains msg if {
	input.grant.max_uses > 0
	used := object.get(input.grant, "uses", 0)
	used >= input.grant.max_uses
	msg := sprintf("grant use limit reached (%v of %v)", [used, input.grant.max_uses])
}

deny contains "production access is limited to business hours unless workflow.emergency is set" if {
	not input.workflow.emergency == true
	data.stepgate.lib.is_production
	not data.stepgate.lib.within_business_hours
}

# --- obligations -----------------------------------------------------------------

# The credential may live as long as the grant has left, capped by sensitivity.
ttl_cap := min([data.stepgate.lib.max_ttl_seconds, remaining]) if {
	data.stepgate.lib.grant_expires_ns
	data.stepgate.lib.now_ns
	remaining := floor((data.stepgate.lib.grant_expires_ns - data.stepgate.lib.now_ns) / 1000000000)
} else := data.stepgate.lib.max_ttl_seconds

out_of_hours_emergency if {
	input.workflow.emergency == true
	data.stepgate.lib.is_production
	not data.stepgate.lib.within_business_hours
}

obligations := {"max_ttl_seconds": ttl_cap, "post_use_review": true} if {
	input.step == "issue"
	out_of_hours_emergency
} else := {"max_ttl_seconds": ttl_cap} if {
	input.step == "issue"
} else := {"post_use_review": true} if {
	out_of_hours_emergency
} else := {}

# --- fast path -------------------------------------------------------------------
# data.stepgate.decision answers the common allowed issue and use from these two
# rules without building the deny set (see decision.rego). fast_ns_left is
# defined only when no rule above can deny, and no emergency review is due:
# an ACTIVE, unexpired grant naming this subject, action and resource, with
# uses left, in matching environments, outside production or within business
# hours. It is then the nanoseconds the grant has left. It may be stricter than
# the rules above (a grant record without subject, action or resource takes the
# full rules) but never looser: change it together with them.
fast_ns_left := expires_ns - now_ns if {
	grant := input.grant
	grant.state == "ACTIVE"
	subject := input.subject
	resource := input.resource
	grant.subject.id == subject.id
	grant.action == input.action
	grant.resource.id == resource.id
	environment := resource.attributes.environment
	not subject.attributes.environment != environment

	# Unlimited (max_uses 0), or uses left.
	object.get({0: true}, grant.max_uses, grant.uses < grant.max_uses)

	now := input.context.time
	expires := grant.expires_at
	is_string(now)
	is_string(expires)
	now_ns := time.parse_rfc3339_ns(now)
	expires_ns := time.parse_rfc3339_ns(expires)
	expires_ns > now_ns

	# [production, weekday, after start, before end]: all true, or not production.
	hours := data.stepgate_config.business_hours
	hour := time.clock(now_ns)[0]
	[
		environment in data.stepgate_config.production_environments,
		time.weekday(now_ns) in hours.days,
		hour >= hours.start_hour,
		hour < hours.end_hour,
	] in {
		[true, true, true, true],
		[false, false, false, false], [false, false, false, true], [false, false, true, false], [false, false, true, true],
		[false, true, false, false], [false, true, false, true], [false, true, true, false], [false, true, true, true],
	}
}

# ttl_cap, for a resource whose sensitivity label is known or absent.
fast_issue_ttl := min([cap, floor(ns_left / 1000000000)]) if {
	ns_left := fast_ns_left
	ns_left
	cap := data.stepgate_config.sensitivity_levels[object.get(input, ["resource", "attributes", "sensitivity"], data.stepgate_config.default_sensitivity)].max_ttl_seconds
}
