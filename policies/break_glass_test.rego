# Tests for step `break_glass` (break_glass.rego).
package stepgate.break_glass_test

import data.stepgate.break_glass

base := {
	"step": "break_glass",
	"subject": {"id": "spiffe://prod.example.com/ns/payments/sa/deployer", "kind": "service_account", "owner": "team-payments"},
	"caller": {"id": "spiffe://prod.example.com/ns/pager/sa/oncall", "authenticated": true, "via": "mtls"},
	"action": "issue_credential",
	"resource": {"type": "secret", "id": "prod/db/password", "attributes": {"environment": "prod", "sensitivity": "critical"}},
	"workflow": {"id": "INC-77", "requester": "oncall-dana", "justification": "payments outage, INC-77", "emergency": true},
	"context": {"time": "2026-11-28T03:00:00Z"},
}

allowed(inp) if count(break_glass.deny) == 0 with input as inp

denied(inp, msg) if msg in break_glass.deny with input as inp

test_emergency_break_glass_is_allowed if {
	allowed(base)
}

test_break_glass_obligations_are_short_and_reviewed if {
	o := break_glass.obligations with input as base
	o == {
		"max_ttl_seconds": 900,
		"required_approvals": 0,
		"post_use_review": true,
		"notify": ["security-oncall"],
	}
}

test_deny_without_emergency_flag if {
	inp := object.union(base, {"workflow": {"emergency": false}})
	denied(inp, "break-glass requires workflow.emergency to be true")
	denied(json.remove(base, ["workflow/emergency"]), "break-glass requires workflow.emergency to be true")
}

test_deny_emergency_flag_that_is_not_a_boolean if {
	denied(object.union(base, {"workflow": {"emergency": "yes"}}), "break-glass requires workflow.emergency to be true")
}

test_deny_without_justification if {
	denied(json.remove(base, ["workflow/justification"]), "workflow.justification is required")
}

test_deny_without_requester if {
	denied(json.remove(base, ["workflow/requester"]), "workflow.requester is required")
}

test_deny_agents if {
	inp := object.union(base, {"subject": {"kind": "agent"}})
	denied(inp, "subject kind \"agent\" cannot use break-glass access")
}

test_deny_absurd_ttl if {
	inp := object.union(base, {"requested_ttl_seconds": 100000})
	denied(inp, "requested TTL of 100000s exceeds the absolute maximum of 86400s")
}
