# Tests for steps `issue` and `use` (access.rego).
# 2026-11-23 is a Monday; 2026-11-28 is a Saturday.
package stepgate.access_test

import data.stepgate.access

grant := {
	"id": "g-1",
	"state": "ACTIVE",
	"subject": {"id": "spiffe://prod.example.com/ns/payments/sa/deployer"},
	"action": "issue_credential",
	"resource": {"id": "prod/db/password"},
	"approvals": [{"approver": "bob", "role": "asset_owner", "at": "2026-11-23T09:55:00Z"}],
	"activated_at": "2026-11-23T09:55:00Z",
	"expires_at": "2026-11-23T10:55:00Z",
	"uses": 3,
	"max_uses": 0,
}

base := {
	"step": "issue",
	"subject": {
		"id": "spiffe://prod.example.com/ns/payments/sa/deployer",
		"kind": "service_account",
		"owner": "team-payments",
		"attributes": {"environment": "prod"},
	},
	"caller": {"id": "spiffe://prod.example.com/ns/vault/sa/issuer", "authenticated": true, "via": "mtls"},
	"action": "issue_credential",
	"resource": {"type": "secret", "id": "prod/db/password", "attributes": {"environment": "prod", "sensitivity": "high"}},
	"workflow": {"id": "CHG-1234", "requester": "alice", "justification": "deploy payments 4.2", "emergency": false},
	"grant": grant,
	"context": {"time": "2026-11-23T10:00:00Z"},
}

staging := {
	"step": "issue",
	"subject": {"id": "ci-runner", "kind": "workload", "owner": "team-ci", "attributes": {"environment": "staging"}},
	"action": "issue_credential",
	"resource": {"type": "secret", "id": "staging/db/password", "attributes": {"environment": "staging", "sensitivity": "low"}},
	"context": {"time": "2026-11-28T23:00:00Z"},
}

at(time) := object.union(base, {"context": {"time": time}})

# Each helper also checks the fast path of data.stepgate.decision (see
# decision.rego): it gives the full rules' decision on an allowed input, their
# obligations wherever it answers, and never answers a denied input.
allowed(inp) if {
	count(access.deny) == 0 with input as inp
	data.stepgate.decision == data.stepgate.full_decision with input as inp
}

denied(inp, msg) if {
	msg in access.deny with input as inp
	not access.fast_ns_left with input as inp
}

obligations(inp) := o if {
	o := access.obligations with input as inp
	fast_obligations_agree(inp, o)
}

fast_obligations_agree(inp, _) if not access.fast_ns_left with input as inp

fast_obligations_agree(inp, o) if {
	inp.step == "use"
	access.fast_ns_left with input as inp
	o == {}
}

fast_obligations_agree(inp, o) if {
	inp.step == "issue"
	ttl := access.fast_issue_ttl with input as inp
	o == {"max_ttl_seconds": ttl}
}

# --- allowed ------------------------------------------------------------------------

test_issue_with_active_grant_in_business_hours if {
	allowed(base)
}

test_issued_credential_never_outlives_the_grant if {
	# 55 minutes of grant left, under the 1 hour cap for "high".
	obligations(base) == {"max_ttl_seconds": 3300}
}

test_issued_credential_is_capped_by_sensitivity if {
	inp := object.union(base, {"grant": {"expires_at": "2026-11-23T18:00:00Z"}})
	obligations(inp) == {"max_ttl_seconds": 3600}
}

test_use_has_no_ttl_obligation if {
	inp := object.union(base, {"step": "use"})
	allowed(inp)
	obligations(inp) == {}
}

test_non_prod_needs_no_grant_nor_business_hours if {
	allowed(staging)
	obligations(staging) == {"max_ttl_seconds": 28800}
}

test_last_business_minute_is_allowed if {
	inp := object.union(at("2026-11-23T18:59:59Z"), {"grant": {"expires_at": "2026-11-23T19:30:00Z"}})
	allowed(inp)
}

test_use_under_the_limit_is_allowed if {
	allowed(object.union(base, {"step": "use", "grant": {"uses": 9, "max_uses": 10}}))
}

# --- the grant ----------------------------------------------------------------------

test_deny_prod_without_grant if {
	denied(json.remove(base, ["grant"]), "an active grant is required")
}

test_deny_pending_grant if {
	denied(object.union(base, {"grant": {"state": "PENDING"}}), "grant is not active (state PENDING)")
}

test_deny_revoked_grant if {
	denied(object.union(base, {"grant": {"state": "REVOKED"}}), "grant is not active (state REVOKED)")
}

test_deny_expired_grant_even_before_the_sweep if {
	# Still ACTIVE in the store, but past expires_at: never honoured.
	denied(at("2026-11-23T10:55:00Z"), "grant has expired")
}

test_deny_grant_without_expiry if {
	denied(json.remove(base, ["grant/expires_at"]), "grant.expires_at is required")
}

test_deny_expired_grant_outside_prod_too if {
	inp := object.union(staging, {"grant": {"state": "ACTIVE", "expires_at": "2026-11-28T22:00:00Z"}})
	denied(inp, "grant has expired")
}

test_deny_grant_for_another_subject if {
	inp := object.union(base, {"grant": {"subject": {"id": "spiffe://prod.example.com/ns/other/sa/x"}}})
	denied(inp, "grant was issued to a different subject")
}

test_deny_grant_for_another_action if {
	denied(object.union(base, {"action": "rotate_credential"}), "action does not match the grant")
}

test_deny_grant_for_another_resource if {
	denied(object.union(base, {"resource": {"id": "prod/db/admin-password"}}), "resource does not match the grant")
}

test_deny_exhausted_grant if {
	inp := object.union(base, {"step": "use", "grant": {"uses": 10, "max_uses": 10}})
	denied(inp, "grant use limit reached (10 of 10)")
}

test_zero_max_uses_means_unlimited if {
	allowed(object.union(base, {"step": "use", "grant": {"uses": 100000, "max_uses": 0}}))
}

# --- context ------------------------------------------------------------------------

test_deny_prod_on_saturday if {
	denied(at("2026-11-28T10:00:00Z"), "production access is limited to business hours unless workflow.emergency is set")
}

test_deny_prod_before_seven if {
	denied(at("2026-11-23T06:59:00Z"), "production access is limited to business hours unless workflow.emergency is set")
}

test_deny_prod_from_seven_pm if {
	denied(at("2026-11-23T19:00:00Z"), "production access is limited to business hours unless workflow.emergency is set")
}

test_emergency_lifts_business_hours_but_requires_review if {
	inp := object.union(at("2026-11-28T10:00:00Z"), {
		"workflow": {"emergency": true},
		"grant": {"activated_at": "2026-11-28T09:55:00Z", "expires_at": "2026-11-28T10:55:00Z"},
	})
	allowed(inp)
	obligations(inp) == {"max_ttl_seconds": 3300, "post_use_review": true}
}

test_emergency_does_not_replace_the_grant if {
	inp := json.remove(object.union(base, {"workflow": {"emergency": true}}), ["grant"])
	denied(inp, "an active grant is required")
}

test_deny_environment_mismatch if {
	inp := object.union(base, {"subject": {"attributes": {"environment": "dev"}}})
	denied(inp, "subject environment \"dev\" does not match resource environment \"prod\"")
}

test_deny_ownerless_subject_without_grant if {
	denied(json.remove(staging, ["subject/owner"]), "subject.owner is required")
}

test_emergency_use_out_of_hours_requires_review if {
	inp := object.union(at("2026-11-28T10:00:00Z"), {
		"step": "use",
		"workflow": {"emergency": true},
		"grant": {"activated_at": "2026-11-28T09:55:00Z", "expires_at": "2026-11-28T10:55:00Z"},
	})
	allowed(inp)
	obligations(inp) == {"post_use_review": true}
}
