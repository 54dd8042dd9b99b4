# Step `approve`: may this person approve (or reject) this pending grant?
#
# Separation of duties: nobody who benefits from the grant may approve it: not
# the requester, not the subject itself, not the subject's owner (or a member
# of the owning team), not the user an agent acts for. The approver's role
# must be eligible for the resource's sensitivity, and each approver counts once.
#
# A rejection (Reject: input.approval.verdict is "reject") can only take access
# away, so it needs the same authority to act on the grant (an authenticated
# caller, a named approver, a pending grant before its deadline) but neither an
# eligible role nor separation of duties: the requester may withdraw their own
# request, and an owner may refuse access for its subject.
#
# The server shows an approver who looks like someone the grant names (same
# confusable-safe key: "BOB", "bоb" with a Cyrillic о) as that person, so the
# comparisons below catch lookalikes; input.approval.sent_as is the name sent.
#
# input.subject, input.resource and input.workflow are the grant's own here.
# Composed by data.stepgate.decision only when input.step == "approve".
package stepgate.approve

approver := input.approval.approver

rejecting if input.approval.verdict == "reject"

# Approvals change state, so they must arrive over an authenticated channel.
deny contains "approvals require an authenticated caller" if not data.stepgate.lib.trusted_caller

deny contains "approval.approver is required" if not data.stepgate.lib.non_empty(input.approval.approver)

deny contains "approval.role is required" if {
	not rejecting
	not data.stepgate.lib.non_empty(input.approval.role)
}

deny contains "a pending grant is required" if not input.grant

deny contains msg if {
	input.grant
	state := object.get(input.grant, "state", "missing")
	state != "PENDING"
	msg := sprintf("grant is not pending approval (state %s)", [state])
}

# For a PENDING grant, expires_at is the approval deadline.
deny contains "the approval deadline has passed" if data.stepgate.lib.grant_expires_ns <= data.stepgate.lib.now_ns

deny contains "separation of duties: the requester cannot approve their own request" if {
	not rejecting
	data.stepgate.lib.same_identity(approver, input.workflow.requester)
}

deny contains "separation of duties: the subject cannot approve its own grant" if {
	not rejecting
	data.stepgate.lib.same_identity(approver, input.subject.id)
}

deny contains "separation of duties: the subject's owner cannot approve its grant" if {
	not rejecting
	data.stepgate.lib.same_identity(approver, input.subject.owner)
}

deny contains "separation of duties: members of the subject's owning team cannot approve its grant" if {
	not rejecting
	some member in data.stepgate_config.team_members[input.subject.owner]
	data.stepgate.lib.same_identity(approver, member)
}

deny contains "separation of duties: the user an agent acts for cannot approve its grant" if {
	not rejecting
	data.stepgate.lib.same_identity(approver, input.agent.on_behalf_of)
}

deny contains msg if {
	not rejecting
	some earlier in input.grant.approvals
	data.stepgate.lib.same_identity(approver, earlier.approver)
	msg := sprintf("%s has already approved this grant", [approver])
}

deny contains msg if {
	not rejecting
	role := input.approval.role
	data.stepgate.lib.non_empty(role)
	not role in data.stepgate.lib.eligible_roles
	msg := sprintf("role \"%s\" is not eligible to approve %s-sensitivity grants (eligible: %s)", [role, data.stepgate.lib.sensitivity, concat(", ", data.stepgate.lib.eligible_roles)])
}
