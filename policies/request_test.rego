# Tests for step `request` (request.rego).
package stepgate.request_test

import data.stepgate.request

base := {
	"step": "request",
	"subject": {
		"id": "spiffe://prod.example.com/ns/payments/sa/deployer",
		"kind": "service_account",
		"owner": "team-payments",
		"attributes": {"environment": "prod"},
	},
	"caller": {"id": "spiffe://prod.example.com/ns/ci/sa/pipeline", "authenticated": true, "via": "mtls"},
	"action": "issue_credential",
	"resource": {"type": "secret", "id": "prod/db/password", "attributes": {"environment": "prod", "sensitivity": "high"}},
	"workflow": {"id": "CHG-1234", "requester": "alice", "justification": "deploy payments 4.2", "emergency": false},
	"requested_ttl_seconds": 3600,
	"context": {"time": "2026-11-23T10:00:00Z"},
}

with_resource(attributes) := object.union(base, {"resource": {"attributes": attributes}})

# Each helper also checks the fast path of data.stepgate.decision (see
# decision.rego): it gives the full rules' decision on an allowed input, their
# obligations wherever it answers, and never answers a denied input.
allowed(inp) if {
	count(request.deny) == 0 with input as inp
	data.stepgate.decision == data.stepgate.full_decision with input as inp
}

denied(inp, msg) if {
	msg in request.deny with input as inp
	not request.fast_obligations with input as inp
}

obligations(inp) := o if {
	o := request.obligations with input as inp
	fast_obligations_agree(inp, o)
}

fast_obligations_agree(inp, _) if not request.fast_obligations with input as inp

fast_obligations_agree(inp, o) if o == request.fast_obligations with input as inp

# --- allowed requests and their obligations ------------------------------------------

test_prod_high_request_needs_one_approval_and_one_hour if {
	allowed(base)
	obligations(base) == {
		"max_ttl_seconds": 3600,
		"required_approvals": 1,
		"eligible_roles": ["asset_owner", "security"],
		"approval_timeout_seconds": 1800,
	}
}

test_prod_critical_request_needs_two_approvals_and_limits_uses if {
	inp := with_resource({"environment": "prod", "sensitivity": "critical"})
	allowed(inp)
	obligations(inp) == {
		"max_ttl_seconds": 900,
		"required_approvals": 2,
		"eligible_roles": ["asset_owner", "security"],
		"approval_timeout_seconds": 1800,
		"max_uses": 10,
	}
}

test_non_prod_request_is_active_at_once if {
	inp := object.union(
		with_resource({"environment": "staging", "sensitivity": "low"}),
		{"subject": {"attributes": {"environment": "staging"}}},
	)
	allowed(inp)
	obligations(inp) == {"max_ttl_seconds": 28800, "required_approvals": 0}
}

test_missing_sensitivity_means_medium if {
	inp := json.remove(base, ["resource/attributes/sensitivity"])
	allowed(inp)
	o := obligations(inp)
	o.max_ttl_seconds == 14400
	o.eligible_roles == ["asset_owner", "team_lead", "security"]
}

test_production_alias_counts_as_prod if {
	inp := object.union(
		with_resource({"environment": "production", "sensitivity": "high"}),
		{"subject": {"attributes": {"environment": "production"}}},
	)
	obligations(inp).required_approvals == 1
}

test_ttl_above_the_cap_is_shortened_not_refused if {
	inp := object.union(base, {"requested_ttl_seconds": 28800})
	allowed(inp)
	obligations(inp).max_ttl_seconds == 3600
}

test_human_subject_needs_no_owner if {
	inp := json.remove(object.union(base, {"subject": {"kind": "human"}}), ["subject/owner"])
	allowed(inp)
}

test_request_without_ttl_is_allowed if {
	allowed(json.remove(base, ["requested_ttl_seconds"]))
}

# --- subject ---------------------------------------------------------------------

test_deny_missing_owner if {
	denied(json.remove(base, ["subject/owner"]), "subject.owner is required")
}

test_deny_blank_owner if {
	denied(object.union(base, {"subject": {"owner": "  "}}), "subject.owner is required")
}

test_deny_missing_subject_id if {
	denied(json.remove(base, ["subject/id"]), "subject.id is required")
}

test_deny_missing_subject_kind if {
	denied(json.remove(base, ["subject/kind"]), "subject.kind is required")
}

test_deny_unknown_subject_kind if {
	denied(object.union(base, {"subject": {"kind": "robot"}}), "subject kind \"robot\" is not recognised")
}

test_deny_environment_mismatch if {
	inp := object.union(base, {"subject": {"attributes": {"environment": "staging"}}})
	denied(inp, "subject environment \"staging\" does not match resource environment \"prod\"")
}

# --- workflow ----------------------------------------------------------------------

test_deny_missing_justification if {
	denied(json.remove(base, ["workflow/justification"]), "workflow.justification is required")
}

test_deny_blank_justification if {
	denied(object.union(base, {"workflow": {"justification": "   "}}), "workflow.justification is required")
}

test_deny_short_justification if {
	inp := object.union(base, {"workflow": {"justification": "fix"}})
	denied(inp, "workflow.justification must be at least 10 characters")
}

test_deny_missing_requester if {
	denied(json.remove(base, ["workflow/requester"]), "workflow.requester is required")
}

# --- resource and TTL ---------------------------------------------------------------

test_deny_unknown_sensitivity if {
	inp := with_resource({"environment": "prod", "sensitivity": "hgh"})
	denied(inp, "resource sensitivity \"hgh\" is not one of: critical, high, low, medium")
}

test_deny_non_numeric_ttl if {
	denied(object.union(base, {"requested_ttl_seconds": "1h"}), "requested_ttl_seconds must be a positive number")
}

test_deny_negative_ttl if {
	denied(object.union(base, {"requested_ttl_seconds": -5}), "requested_ttl_seconds must be a positive number")
}

test_deny_absurd_ttl if {
	inp := object.union(base, {"requested_ttl_seconds": 604800})
	denied(inp, "requested TTL of 604800s exceeds the absolute maximum of 86400s")
}

test_all_problems_are_reported_together if {
	inp := json.remove(base, ["workflow/justification", "workflow/requester", "subject/owner"])
	count(request.deny) == 3 with input as inp
}
