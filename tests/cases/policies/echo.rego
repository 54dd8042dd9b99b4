package stepgate

# Allows reads. The reasons are the input fields the policy saw, as `path=value` (absent
# and empty ones left out), so a case shows how each adapter's request reached the input
# document.

fields := [
	"step",
	"subject.id",
	"subject.kind",
	"subject.owner",
	"subject.attributes",
	"action",
	"resource.type",
	"resource.id",
	"resource.attributes",
	"workflow.id",
	"workflow.requester",
	"workflow.justification",
	"workflow.attributes",
	"agent.tool",
	"agent.on_behalf_of",
	"agent.delegation_chain",
	"agent.arguments",
	"context.source_ip",
	"context.attributes",
]

seen(path) := object.get(input, split(path, "."), null)

empty(value) if value == null

empty(value) if value == []

decision := {
	"allow": object.get(input, "action", null) == "read",
	"reasons": [sprintf("%s=%v", [path, seen(path)]) | some path in fields; not empty(seen(path))],
	"obligations": {"max_ttl_seconds": 900},
}
