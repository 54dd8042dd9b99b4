# Tests for step `approve` (approve.rego): separation of duties and eligibility.
package stepgate.approve_test

import data.stepgate.approve

base := {
	"step": "approve",
	"subject": {
		"id": "spiffe://prod.example.com/ns/payments/sa/deployer",
		"kind": "service_account",
		"owner": "team-payments",
	},
	"caller": {"id": "spiffe://prod.example.com/ns/itsm/sa/jira", "authenticated": true, "via": "mtls"},
	"action": "issue_credential",
	"resource": {"type": "secret", "id": "prod/db/password", "attributes": {"environment": "prod", "sensitivity": "high"}},
	"workflow": {"id": "CHG-1234", "requester": "alice", "justification": "deploy payments 4.2"},
	"grant": {
		"id": "g-1",
		"state": "PENDING",
		"approvals": [],
		"required_approvals": 1,
		"created_at": "2026-11-23T09:50:00Z",
		"expires_at": "2026-11-23T10:20:00Z",
	},
	"approval": {"approver": "bob", "role": "asset_owner", "comment": "ok"},
	"context": {"time": "2026-11-23T10:00:00Z"},
}

by(approver, role) := object.union(base, {"approval": {"approver": approver, "role": role}})

allowed(inp) if count(approve.deny) == 0 with input as inp

denied(inp, msg) if msg in approve.deny with input as inp

test_eligible_independent_approver_is_allowed if {
	allowed(base)
}

test_second_distinct_approver_is_allowed if {
	inp := object.union(base, {"grant": {"approvals": [{"approver": "erin", "role": "security", "at": "2026-11-23T09:58:00Z"}]}})
	allowed(inp)
}

# --- separation of duties ------------------------------------------------------------

test_deny_requester_approving_own_request if {
	denied(by("alice", "asset_owner"), "separation of duties: the requester cannot approve their own request")
}

test_deny_requester_with_different_case if {
	denied(by("ALICE", "asset_owner"), "separation of duties: the requester cannot approve their own request")
}

test_deny_subject_approving_itself if {
	inp := by("spiffe://prod.example.com/ns/payments/sa/deployer", "asset_owner")
	denied(inp, "separation of duties: the subject cannot approve its own grant")
}

test_deny_owner_approving if {
	denied(by("team-payments", "asset_owner"), "separation of duties: the subject's owner cannot approve its grant")
}

test_deny_owning_team_member_approving if {
	denied(by("carol", "asset_owner"), "separation of duties: members of the subject's owning team cannot approve its grant")
}

test_deny_agent_principal_approving if {
	inp := object.union(by("frank", "asset_owner"), {"agent": {"on_behalf_of": "frank"}})
	denied(inp, "separation of duties: the user an agent acts for cannot approve its grant")
}

test_deny_duplicate_approval if {
	inp := object.union(base, {"grant": {"approvals": [{"approver": "bob", "role": "asset_owner", "at": "2026-11-23T09:58:00Z"}]}})
	denied(inp, "bob has already approved this grant")
}

# --- eligibility --------------------------------------------------------------------

test_deny_ineligible_role if {
	denied(by("bob", "developer"), "role \"developer\" is not eligible to approve high-sensitivity grants (eligible: asset_owner, security)")
}

test_team_lead_may_approve_medium if {
	inp := object.union(by("bob", "team_lead"), {"resource": {"attributes": {"sensitivity": "medium"}}})
	allowed(inp)
}

test_deny_team_lead_for_critical if {
	inp := object.union(by("bob", "team_lead"), {"resource": {"attributes": {"sensitivity": "critical"}}})
	denied(inp, "role \"team_lead\" is not eligible to approve critical-sensitivity grants (eligible: asset_owner, security)")
}

test_deny_missing_approver if {
	denied(json.remove(base, ["approval/approver"]), "approval.approver is required")
}

test_deny_missing_role if {
	denied(json.remove(base, ["approval/role"]), "approval.role is required")
}

# --- grant state and deadline ---------------------------------------------------------

test_deny_active_grant if {
	denied(object.union(base, {"grant": {"state": "ACTIVE"}}), "grant is not pending approval (state ACTIVE)")
}

test_deny_rejected_grant if {
	denied(object.union(base, {"grant": {"state": "REJECTED"}}), "grant is not pending approval (state REJECTED)")
}

test_deny_without_grant if {
	denied(json.remove(base, ["grant"]), "a pending grant is required")
}

test_deny_after_approval_deadline if {
	inp := object.union(base, {"context": {"time": "2026-11-23T10:20:00Z"}})
	denied(inp, "the approval deadline has passed")
}

# --- caller ------------------------------------------------------------------------

test_deny_unauthenticated_tcp_caller if {
	inp := object.union(base, {"caller": {"authenticated": false, "via": "tcp"}})
	denied(inp, "approvals require an authenticated caller")
}

test_unix_socket_caller_is_trusted if {
	allowed(object.union(base, {"caller": {"authenticated": false, "via": "uds"}}))
}

# --- reject (input.approval.verdict == "reject") ----------------------------------------

rejection(rejector) := object.union(base, {"approval": {"approver": rejector, "role": "", "comment": "no", "verdict": "reject"}})

test_reject_needs_no_role if {
	allowed(json.remove(rejection("bob"), ["approval/role"]))
}

test_reject_by_an_ineligible_role_is_allowed if {
	allowed(object.union(rejection("bob"), {"approval": {"role": "developer"}}))
}

test_requester_may_withdraw_their_request if {
	allowed(rejection("alice"))
}

test_owner_may_reject if {
	allowed(rejection("team-payments"))
}

test_earlier_approver_may_reject if {
	inp := object.union(rejection("bob"), {"grant": {"approvals": [{"approver": "bob", "role": "asset_owner", "at": "2026-11-23T09:58:00Z"}]}})
	allowed(inp)
}

test_deny_reject_without_approver if {
	denied(json.remove(rejection("bob"), ["approval/approver"]), "approval.approver is required")
}

test_deny_reject_by_unauthenticated_tcp_caller if {
	inp := object.union(rejection("bob"), {"caller": {"authenticated": false, "via": "tcp"}})
	denied(inp, "approvals require an authenticated caller")
}

test_deny_reject_of_active_grant if {
	denied(object.union(rejection("bob"), {"grant": {"state": "ACTIVE"}}), "grant is not pending approval (state ACTIVE)")
}

test_deny_reject_after_deadline if {
	inp := object.union(rejection("bob"), {"context": {"time": "2026-11-23T10:20:00Z"}})
	denied(inp, "the approval deadline has passed")
}

test_approve_verdict_still_needs_a_role if {
	inp := json.remove(object.union(base, {"approval": {"verdict": "approve"}}), ["approval/role"])
	denied(inp, "approval.role is required")
}

test_approve_verdict_keeps_separation_of_duties if {
	inp := object.union(by("alice", "asset_owner"), {"approval": {"verdict": "approve"}})
	denied(inp, "separation of duties: the requester cannot approve their own request")
}

# --- lookalikes (the server shows a lookalike as the person it looks like) ------------

test_lookalike_of_requester_shown_as_requester_is_denied if {
	inp := object.union(by("alice", "asset_owner"), {"approval": {"sent_as": "\u0430lice"}})
	denied(inp, "separation of duties: the requester cannot approve their own request")
}

