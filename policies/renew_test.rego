# Tests for step `renew` (renew.rego): lifetime caps and what cannot be renewed.
# "high" sensitivity: TTL cap 1h, maximum lifetime 2h.
package stepgate.renew_test

import data.stepgate.renew

base := {
	"step": "renew",
	"subject": {"id": "spiffe://prod.example.com/ns/payments/sa/deployer", "kind": "service_account", "owner": "team-payments"},
	"caller": {"id": "spiffe://prod.example.com/ns/itsm/sa/jira", "authenticated": true, "via": "mtls"},
	"action": "issue_credential",
	"resource": {"type": "secret", "id": "prod/db/password", "attributes": {"environment": "prod", "sensitivity": "high"}},
	"workflow": {"id": "CHG-1234", "requester": "alice", "justification": "deploy payments 4.2", "emergency": false},
	"grant": {
		"id": "g-1",
		"state": "ACTIVE",
		"activated_at": "2026-11-23T09:00:00Z",
		"expires_at": "2026-11-23T10:00:00Z",
	},
	"requested_ttl_seconds": 1800,
	"context": {"time": "2026-11-23T09:50:00Z"},
}

allowed(inp) if count(renew.deny) == 0 with input as inp

denied(inp, msg) if msg in renew.deny with input as inp

obligations(inp) := o if o := renew.obligations with input as inp

test_renewal_within_lifetime_is_allowed if {
	allowed(base)
}

test_renewal_is_capped_by_lifetime_left if {
	# Activated 50 minutes ago: 70 minutes of the 2 hour lifetime are left,
	# more than the 1 hour TTL cap.
	obligations(base) == {"max_ttl_seconds": 3600}
	inp := object.union(base, {"context": {"time": "2026-11-23T10:30:00Z"}, "grant": {"expires_at": "2026-11-23T11:00:00Z"}})
	obligations(inp) == {"max_ttl_seconds": 1800}
}

test_renewal_without_requested_ttl_is_allowed if {
	allowed(json.remove(base, ["requested_ttl_seconds"]))
}

test_deny_renewal_beyond_lifetime if {
	inp := object.union(base, {"requested_ttl_seconds": 7200})
	denied(inp, "requested TTL of 7200s exceeds the 4200s left of the grant's maximum lifetime (7200s)")
}

test_deny_renewal_at_end_of_lifetime if {
	# A minute before the end, a renewal can have that minute and no more.
	near := object.union(base, {"context": {"time": "2026-11-23T10:59:00Z"}, "grant": {"expires_at": "2026-11-23T11:00:00Z"}})
	allowed(json.remove(near, ["requested_ttl_seconds"]))
	obligations(near) == {"max_ttl_seconds": 60}
	late := object.union(base, {"context": {"time": "2026-11-23T11:00:00Z"}, "grant": {"expires_at": "2026-11-23T11:30:00Z"}})
	denied(late, "grant has reached its maximum lifetime of 7200s")
}

test_deny_renewing_pending_grant if {
	denied(object.union(base, {"grant": {"state": "PENDING"}}), "grant is not active (state PENDING)")
}

test_deny_renewing_expired_grant if {
	denied(object.union(base, {"context": {"time": "2026-11-23T10:00:01Z"}}), "grant has expired")
}

test_deny_renewing_without_grant if {
	denied(json.remove(base, ["grant"]), "an active grant is required")
}

test_deny_renewing_without_activation_time if {
	denied(json.remove(base, ["grant/activated_at"]), "grant.activated_at is required")
}

test_deny_renewing_emergency_grant if {
	inp := object.union(base, {"workflow": {"emergency": true}})
	denied(inp, "emergency grants cannot be renewed; raise a new break-glass request")
}

test_deny_invalid_requested_ttl if {
	denied(object.union(base, {"requested_ttl_seconds": 0}), "requested_ttl_seconds must be a positive number")
}
