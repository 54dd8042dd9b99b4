# Steps `revoke` and `close`: ending access.
#
# Revoking only ever removes access, so the bar is low but not zero: the
# caller must be authenticated (or reach stepgate over mTLS or the Unix
# socket), otherwise anyone who can reach the port could revoke everyone's
# grants. Closing a ticket revokes all of its grants at once, so when
# close_callers lists ticket systems, only they may close; an empty list
# leaves close open to any trusted caller.
#
# No obligations. Composed by data.stepgate.decision for "revoke" and "close".
package stepgate.revoke

deny contains "revoke and close require an authenticated caller" if not data.stepgate.lib.trusted_caller

deny contains msg if {
	input.step == "close"
	allowed := data.stepgate_config.close_callers
	count(allowed) > 0
	caller := object.get(input, ["caller", "id"], "")
	not caller in allowed
	msg := sprintf("caller \"%s\" may not close workflows (not a listed ticket system)", [caller])
}
