# For the load harness only: allows everything without looking at the input, so
# `POLICIES=benches/policies/constant benches/load.sh` measures the decision path with
# (almost) no evaluation work: the floor under any policy set. Never deploy it.
package stepgate

decision := {"allow": true, "reasons": ["allowed without a check (benchmark only)"], "obligations": {"max_ttl_seconds": 3600}}
