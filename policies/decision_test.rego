# Tests for the entrypoint data.stepgate.decision (decision.rego): its shape,
# how steps are dispatched, and that it is defined for any input.
package stepgate.decision_test

issue := {
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
	"grant": {
		"id": "g-1",
		"state": "ACTIVE",
		"approvals": [{"approver": "bob", "role": "asset_owner", "at": "2026-11-23T09:55:00Z"}],
		"activated_at": "2026-11-23T09:55:00Z",
		"expires_at": "2026-11-23T10:55:00Z",
		"uses": 0,
		"max_uses": 0,
	},
	"context": {"time": "2026-11-23T10:00:00Z"},
}

request := object.union(json.remove(issue, ["grant"]), {"step": "request", "requested_ttl_seconds": 7200})

agent_use := object.union(issue, {
	"step": "use",
	"subject": {"kind": "agent", "attributes": {"agent_kind": "support"}},
	"agent": {
		"tool": "db.query",
		"arguments": {"sql": "SELECT 1"},
		"on_behalf_of": "alice",
		"delegation_chain": ["alice"],
	},
})

decide(inp) := d if d := data.stepgate.decision with input as inp

# --- shape ---------------------------------------------------------------------------

test_allowed_decision_shape if {
	decide(issue) == {"allow": true, "reasons": ["issue allowed"], "obligations": {"max_ttl_seconds": 3300}}
}

test_denied_decision_has_sorted_reasons_and_no_obligations if {
	inp := json.remove(issue, ["grant", "subject/owner"])
	decide(inp) == {
		"allow": false,
		"reasons": ["an active grant is required", "subject.owner is required"],
		"obligations": {},
	}
}

test_request_decision_carries_grant_terms if {
	decide(request) == {
		"allow": true,
		"reasons": ["request allowed"],
		"obligations": {
			"max_ttl_seconds": 3600,
			"required_approvals": 1,
			"eligible_roles": ["asset_owner", "security"],
			"approval_timeout_seconds": 1800,
		},
	}
}

test_break_glass_decision if {
	inp := object.union(request, {"step": "break_glass", "workflow": {"emergency": true}})
	d := decide(inp)
	d.allow == true
	d.obligations.post_use_review == true
	d.obligations.max_ttl_seconds == 900
}

test_revoke_and_close_decisions if {
	decide({"step": "revoke", "caller": {"id": "uds:uid=0", "via": "uds"}}).allow == true
	decide({"step": "close", "caller": {"id": "anonymous", "authenticated": false, "via": "tcp"}}) == {
		"allow": false,
		"reasons": ["revoke and close require an authenticated caller"],
		"obligations": {},
	}
}

# --- always defined, fails closed -----------------------------------------------------

test_empty_input_is_denied if {
	decide({}) == {"allow": false, "reasons": ["input.step is required"], "obligations": {}}
}

test_missing_input_is_denied if {
	d := data.stepgate.decision
	d.allow == false
}

test_unknown_step_is_denied if {
	decide(object.union(issue, {"step": "escalate"})) == {
		"allow": false,
		"reasons": ["unknown step \"escalate\": no policy decides it"],
		"obligations": {},
	}
}

test_non_string_step_is_denied if {
	decide(object.union(issue, {"step": 7})).reasons == ["input.step is required"]
}

test_missing_clock_is_denied if {
	d := decide(json.remove(issue, ["context"]))
	d.allow == false
	"context.time is required" in d.reasons
}

test_revoke_does_not_need_the_clock if {
	decide({"step": "revoke", "caller": {"authenticated": true}}).allow == true
}

test_lost_configuration_denies_instead_of_granting_without_limits if {
	d := data.stepgate.decision with input as request with data.stepgate_config.sensitivity_levels as {}
	d.allow == false
	"policy error: obligations for step \"request\" could not be computed" in d.reasons
}

# --- dispatch --------------------------------------------------------------------------

test_agent_rules_apply_at_use if {
	decide(agent_use).allow == true
	inp := object.union(agent_use, {"agent": {"arguments": {"sql": "DROP TABLE tickets"}}})
	d := decide(inp)
	d.allow == false
	"db.query accepts only queries that start with SELECT or WITH" in d.reasons
}

test_agent_rules_apply_at_request if {
	inp := object.union(request, {"subject": {"kind": "agent", "attributes": {"agent_kind": "support"}}})
	decide(inp).reasons == ["agent.on_behalf_of is required"]
}

test_agent_rules_do_not_apply_at_revoke if {
	decide(object.union(agent_use, {"step": "revoke"})).allow == true
}

test_other_steps_rules_are_not_consulted if {
	# A request-only rule (justification) does not block `use`.
	inp := object.union(json.remove(issue, ["workflow/justification"]), {"step": "use"})
	decide(inp).allow == true
}
