# Tests for the shared helpers (lib.rego).
package stepgate.lib_test

import data.stepgate.lib

test_sensitivity_defaults_to_medium if {
	lib.sensitivity == "medium" with input as {"resource": {"attributes": {}}}
}

test_unknown_sensitivity_gets_the_strictest_level if {
	lib.sensitivity == "critical" with input as {"resource": {"attributes": {"sensitivity": "hgh"}}}
}

test_known_sensitivity_is_kept if {
	lib.sensitivity == "low" with input as {"resource": {"attributes": {"sensitivity": "low"}}}
}

test_approvals_are_a_production_control if {
	lib.required_approvals == 0 with input as {"resource": {"attributes": {"environment": "dev", "sensitivity": "critical"}}}
	lib.required_approvals == 2 with input as {"resource": {"attributes": {"environment": "prod", "sensitivity": "critical"}}}
}

test_business_hours if {
	lib.within_business_hours with input as {"context": {"time": "2026-11-27T07:00:00Z"}}
	not lib.within_business_hours with input as {"context": {"time": "2026-11-22T12:00:00Z"}}
	not lib.within_business_hours with input as {"context": {"time": "2026-11-24T22:30:00Z"}}
}

test_business_hours_follow_configuration if {
	lib.within_business_hours with input as {"context": {"time": "2026-11-22T12:00:00Z"}}
		with data.stepgate_config.business_hours.days as ["Sunday"]
}

test_same_identity_ignores_case if {
	lib.same_identity("Alice", "alice")
	not lib.same_identity("alice", "alicia")
}

test_non_empty if {
	lib.non_empty("x")
	not lib.non_empty("  ")
	not lib.non_empty(42)
}

test_trusted_caller if {
	lib.trusted_caller with input as {"caller": {"authenticated": true, "via": "tcp"}}
	lib.trusted_caller with input as {"caller": {"authenticated": false, "via": "mtls"}}
	not lib.trusted_caller with input as {"caller": {"authenticated": false, "via": "tcp"}}
	not lib.trusted_caller with input as {}
}
