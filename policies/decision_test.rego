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

# Every decision tested here is also checked against the full rules: the fast
# path (see decision.rego) must give the same answer.
decide(inp) := d if {
	d := data.stepgate.decision with input as inp
	d == data.stepgate.full_decision with input as inp
}

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

# --- fast path --------------------------------------------------------------------------

# A grant record as the server builds it, naming its subject, action and resource.
issue_grant := object.union(issue, {"grant": {
	"subject": {"id": issue.subject.id},
	"action": issue.action,
	"resource": {"id": issue.resource.id},
}})

use_grant := object.union(issue_grant, {"step": "use"})

agent_use_grant := object.union(agent_use, {"grant": issue_grant.grant})

agent_call(tool, arguments) := object.union(agent_use_grant, {
	"subject": {"attributes": {"agent_kind": "coding"}},
	"agent": {"tool": tool, "arguments": arguments},
})

agent_sql(sql) := object.union(agent_use_grant, {"agent": {"arguments": {"sql": sql}}})

at(inp, time) := object.union(inp, {"context": {"time": time}})

# The common allowed cases are answered by the fast paths, not the full rules.
test_fast_paths_answer_the_common_cases if {
	data.stepgate.access.fast_issue_ttl == 3300 with input as issue_grant
	data.stepgate.access.fast_ns_left with input as use_grant
	data.stepgate.agent.fast_ok with input as agent_use_grant
	data.stepgate.agent.fast_ok with input as agent_call("http.get", {"url": "https://api.github.com/repos"})
	data.stepgate.agent.fast_ok with input as agent_call("repo.read", {})
	data.stepgate.request.fast_obligations with input as request
}

test_fast_paths_decide_as_the_full_rules if {
	decide(issue_grant) == {"allow": true, "reasons": ["issue allowed"], "obligations": {"max_ttl_seconds": 3300}}
	decide(agent_use_grant) == {"allow": true, "reasons": ["use allowed"], "obligations": {}}
}

# Inputs near every edge a fast path checks: decide() compares the fast path
# with the full rules on each (two per test, to stay well within the time limit).

all_agree(inputs) if {
	every inp in inputs {
		decide(inp)
	}
}

test_fast_path_agrees_on_read_only_sql if all_agree([agent_sql("SELECT 1"), agent_sql("  select id from t ")])

test_fast_path_agrees_on_ctes_and_explain if all_agree([agent_sql("WITH x AS (SELECT 1) SELECT * FROM x"), agent_sql("EXPLAIN SELECT 1")])

test_fast_path_agrees_on_words_containing_keywords if all_agree([agent_sql("SELECT updated_at, created_at, deleted FROM t"), agent_sql("SELECT todo, undo, dodo FROM t")])

test_fast_path_agrees_on_keywords_joined_to_words if all_agree([agent_sql("SELECT drop_, _drop, 1drop, drop1 FROM t"), agent_sql("SELECTDROP")])

test_fast_path_agrees_on_keywords_at_the_end if all_agree([agent_sql("SELECT * FROM t FOR UPDATE"), agent_sql("SELECT 1 EXECUTE")])

test_fast_path_agrees_on_keywords_as_words if all_agree([agent_sql("SELECT exec"), agent_sql("SELECT * INTO t2 FROM t")])

test_fast_path_agrees_on_hidden_keywords if all_agree([agent_sql("SELECT DELETE/**/FROM t"), agent_sql("SELECT x -- DROP")])

test_fast_path_agrees_on_keywords_in_punctuation if all_agree([agent_sql("SELECT (grant)"), agent_sql("SELECT a.copy")])

test_fast_path_agrees_on_stacked_or_empty_sql if all_agree([agent_sql("SELECT 1; SELECT 2"), agent_sql("")])

test_fast_path_agrees_on_non_ascii_before_keywords if all_agree([agent_sql("SELECT \u00e9DROP"), agent_sql("SELECT \u0131NSERT")])

test_fast_path_agrees_on_non_ascii_after_keywords if all_agree([agent_sql("SELECT DROP\u00e9"), agent_sql("SELECT pragma\u00a0merge\u2003x")])

test_fast_path_agrees_on_control_characters_next_to_keywords if all_agree([agent_sql("SELECT \u0001DROP\u0001x"), agent_sql("SELECT DROP\u0001")])

test_fast_path_agrees_on_allowed_urls if all_agree([
	agent_call("http.get", {"url": "https://API.GITHUB.COM:443/x"}),
	agent_call("http.get", {"url": "https://docs.example.com"}),
])

test_fast_path_agrees_on_other_ports_and_schemes if all_agree([
	agent_call("http.get", {"url": "https://api.github.com:8443/x"}),
	agent_call("http.get", {"url": "http://api.github.com/x"}),
])

test_fast_path_agrees_on_lookalike_hosts if all_agree([
	agent_call("http.get", {"url": "https://api.github.com@evil.test/"}),
	agent_call("http.get", {"url": "ftp://api.github.com"}),
])

test_fast_path_agrees_on_the_start_of_business_hours if all_agree([
	at(issue_grant, "2026-11-23T06:59:59Z"),
	at(issue_grant, "2026-11-23T07:00:00Z"),
])

test_fast_path_agrees_on_the_end_of_business_hours if all_agree([
	at(agent_use_grant, "2026-11-23T18:59:59Z"),
	at(agent_use_grant, "2026-11-23T19:00:00Z"),
])

test_fast_path_agrees_on_weekends if all_agree([
	at(use_grant, "2026-11-28T10:00:00Z"),
	at(object.union(use_grant, {"workflow": {"emergency": true}}), "2026-11-28T10:00:00Z"),
])

test_fast_path_agrees_on_the_clock_outside_production if {
	staging := object.union(issue_grant, {
		"subject": {"attributes": {"environment": "staging"}},
		"resource": {"attributes": {"environment": "staging"}},
	})
	all_agree([at(staging, "2026-11-28T10:00:00Z"), at(staging, "2026-11-23T10:00:00Z")])
}

test_fast_path_agrees_on_the_end_of_the_grant if all_agree([
	at(issue_grant, "2026-11-23T10:54:59.5Z"),
	at(issue_grant, "2026-11-23T10:55:00Z"),
])

test_fast_path_agrees_on_time_zones if all_agree([
	at(issue_grant, "2026-11-23T11:00:00+01:00"),
	at(issue_grant, "2026-11-23T06:30:00-01:00"),
])

test_fast_path_agrees_on_use_limits if all_agree([
	object.union(use_grant, {"grant": {"max_uses": 5, "uses": 4}}),
	object.union(use_grant, {"grant": {"max_uses": 5, "uses": 5}}),
])

test_fast_path_agrees_on_odd_use_limits if all_agree([
	object.union(use_grant, {"grant": {"max_uses": 2.5, "uses": 2}}),
	object.union(use_grant, {"grant": {"max_uses": "5", "uses": 1}}),
])

test_fast_path_agrees_on_the_grant_state if all_agree([
	object.union(issue_grant, {"grant": {"state": "PENDING"}}),
	object.union(issue_grant, {"grant": {"expires_at": 5}}),
])

test_fast_path_agrees_on_what_the_grant_names if all_agree([
	object.union(issue_grant, {"grant": {"subject": {"id": "other"}}}),
	object.union(issue_grant, {"grant": {"resource": {"id": "other"}}}),
])

test_fast_path_agrees_on_known_sensitivity if all_agree([
	object.union(issue_grant, {"resource": {"attributes": {"sensitivity": "critical"}}}),
	object.union(request, {"resource": {"attributes": {"sensitivity": "critical"}}}),
])

test_fast_path_agrees_on_unknown_sensitivity if all_agree([
	object.union(issue_grant, {"resource": {"attributes": {"sensitivity": "unknown"}}}),
	object.union(request, {"resource": {"attributes": {"sensitivity": false}}}),
])

test_fast_path_agrees_on_missing_sensitivity if all_agree([
	json.remove(issue_grant, ["resource/attributes/sensitivity"]),
	json.remove(request, ["resource/attributes/sensitivity"]),
])

test_fast_path_agrees_on_the_delegation_chain if all_agree([
	json.remove(agent_use_grant, ["agent/delegation_chain"]),
	object.union(agent_use_grant, {"agent": {"delegation_chain": []}}),
])

test_fast_path_agrees_on_odd_delegation_chains if all_agree([
	object.union(agent_use_grant, {"agent": {"delegation_chain": ["ALICE"]}}),
	object.union(agent_use_grant, {"agent": {"delegation_chain": [false]}}),
])

test_fast_path_agrees_on_the_principal if all_agree([
	object.union(agent_use_grant, {"agent": {"on_behalf_of": "  "}}),
	object.union(agent_use_grant, {"agent": {"on_behalf_of": "SPIFFE://prod.example.com/ns/payments/sa/deployer"}}),
])

# --- reject (step approve, verdict reject) ----------------------------------------------

# A Reject as the server builds it: no role. The requester withdrawing their own
# request is allowed; the same input as an approval is denied.
reject_by_requester := object.union(json.remove(issue, ["grant"]), {
	"step": "approve",
	"caller": {"id": "uds:uid=1000", "authenticated": true, "via": "uds"},
	"grant": {"id": "g-2", "state": "PENDING", "approvals": [], "expires_at": "2026-11-23T10:30:00Z"},
	"approval": {"approver": "alice", "role": "", "comment": "withdrawn", "verdict": "reject"},
})

test_reject_without_role_is_allowed if {
	decide(reject_by_requester) == {"allow": true, "reasons": ["approve allowed"], "obligations": {}}
}

test_the_same_input_as_an_approval_is_denied if {
	inp := object.union(reject_by_requester, {"approval": {"verdict": "approve"}})
	decide(inp) == {"allow": false, "reasons": [
		"approval.role is required",
		"separation of duties: the requester cannot approve their own request",
	], "obligations": {}}
}
