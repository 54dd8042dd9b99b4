# Step `renew`: may an active grant be extended, and for how long?
#
# A grant's total lifetime (from activation to its new end, now + TTL) is
# capped per sensitivity (max_lifetime_seconds, twice the TTL cap by default):
# renewing cannot turn just-in-time access into standing access. A renewal
# that asks for more than the lifetime left is refused; one that asks for
# nothing gets obligation max_ttl_seconds = min(sensitivity cap, lifetime left).
# Emergency grants are never renewed: a new break-glass request is needed.
#
# Composed by data.stepgate.decision only when input.step == "renew".
package stepgate.renew

max_lifetime_seconds := data.stepgate.lib.level.max_lifetime_seconds

lifetime_left_seconds := max_lifetime_seconds - floor((data.stepgate.lib.now_ns - data.stepgate.lib.grant_activated_ns) / 1000000000)

deny contains msg if some msg in data.stepgate.lib.active_grant_problems

deny contains msg if some msg in data.stepgate.lib.ttl_problems

deny contains "emergency grants cannot be renewed; raise a new break-glass request" if data.stepgate.lib.emergency

deny contains "grant.activated_at is required" if {
	input.grant
	not is_string(input.grant.activated_at)
}

deny contains msg if {
	lifetime_left_seconds <= 0
	msg := sprintf("grant has reached its maximum lifetime of %vs", [max_lifetime_seconds])
}

deny contains msg if {
	ttl := input.requested_ttl_seconds
	data.stepgate.lib.positive_number(ttl)
	lifetime_left_seconds > 0
	ttl > lifetime_left_seconds
	msg := sprintf("requested TTL of %vs exceeds the %vs left of the grant's maximum lifetime (%vs)", [ttl, lifetime_left_seconds, max_lifetime_seconds])
}

obligations := {"max_ttl_seconds": min([data.stepgate.lib.max_ttl_seconds, lifetime_left_seconds])}
