# Tests for steps `revoke` and `close` (revoke.rego).
package stepgate.revoke_test

import data.stepgate.revoke

base := {
	"step": "revoke",
	"subject": {"id": "spiffe://prod.example.com/ns/payments/sa/deployer", "kind": "service_account"},
	"caller": {"id": "spiffe://prod.example.com/ns/itsm/sa/jira", "authenticated": true, "via": "mtls"},
	"action": "revoke",
	"workflow": {"id": "CHG-1234"},
}

closing := object.union(base, {"step": "close"})

allowed(inp) if count(revoke.deny) == 0 with input as inp

denied(inp, msg) if msg in revoke.deny with input as inp

test_authenticated_caller_may_revoke if {
	allowed(base)
}

test_unix_socket_caller_may_revoke if {
	allowed(object.union(base, {"caller": {"id": "uds:uid=1000", "authenticated": false, "via": "uds"}}))
}

test_deny_anonymous_tcp_revoke if {
	inp := object.union(base, {"caller": {"id": "anonymous", "authenticated": false, "via": "tcp"}})
	denied(inp, "revoke and close require an authenticated caller")
}

test_deny_revoke_without_caller if {
	denied(json.remove(base, ["caller"]), "revoke and close require an authenticated caller")
}

test_any_trusted_caller_may_close_when_no_ticket_systems_are_listed if {
	allowed(closing)
}

test_listed_ticket_system_may_close if {
	count(revoke.deny) == 0 with input as closing
		with data.stepgate_config.close_callers as ["spiffe://prod.example.com/ns/itsm/sa/jira"]
}

test_deny_close_by_unlisted_caller if {
	msg := "caller \"spiffe://prod.example.com/ns/itsm/sa/jira\" may not close workflows (not a listed ticket system)"
	msg in revoke.deny with input as closing
		with data.stepgate_config.close_callers as ["spiffe://prod.example.com/ns/itsm/sa/servicenow"]
}

test_close_list_does_not_restrict_revoke if {
	count(revoke.deny) == 0 with input as base
		with data.stepgate_config.close_callers as ["spiffe://prod.example.com/ns/itsm/sa/servicenow"]
}
