# A policy the size of the ~30-line prototype in the performance notes, for the load
# harness only: `POLICIES=benches/policies/minimal benches/load.sh` runs the same
# requests through the same server with this set in place of `policies/`, which
# separates what policy evaluation costs from what the rest of the decision path costs.
# Not a policy to deploy: it checks a fraction of what `policies/` checks.
package stepgate

default decision := {"allow": false, "reasons": ["no rule allows this step"], "obligations": {}}

decision := {"allow": true, "reasons": ["request allowed"], "obligations": {"max_ttl_seconds": 28800}} if {
	input.step == "request"
	input.subject.owner != ""
	input.workflow.justification != ""
}

# An ACTIVE, unexpired grant naming this subject, action and resource; a credential
# minted under it lives at most an hour and never past the grant.
decision := {"allow": true, "reasons": [sprintf("%s allowed", [input.step])], "obligations": {"max_ttl_seconds": ttl}} if {
	input.step in {"issue", "use"}
	grant := input.grant
	grant.state == "ACTIVE"
	grant.subject.id == input.subject.id
	grant.action == input.action
	grant.resource.id == input.resource.id
	now := time.parse_rfc3339_ns(input.context.time)
	expires := time.parse_rfc3339_ns(grant.expires_at)
	expires > now
	ttl := min([3600, floor((expires - now) / 1000000000)])
}
