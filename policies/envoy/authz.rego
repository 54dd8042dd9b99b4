# An OPA-Envoy style policy: Envoy's ext_authz filter asks stepgate (as it would
# ask OPA with the Envoy plugin) whether an HTTP request may pass. The entrypoint
# is data.envoy.authz.allow (--envoy-entrypoint). It may be a boolean; this one
# is an object, so it can also shape the request and the denial:
#
#   allowed                      the answer
#   headers                      added upstream when allowed, sent back when denied
#   request_headers_to_remove    stripped before the request goes upstream
#   response_headers_to_add      added to the upstream's response
#   http_status, body            the denial's status (403 if absent) and body
#   dynamic_metadata             for Envoy's access log (stepgate adds decision_id)
#
# The caller principal is the peer certificate identity Envoy saw
# (input.attributes.source.principal); input.caller is the Envoy proxy itself.
package envoy.authz

# Workloads (SPIFFE IDs) that may read and write the books API.
readers := {
	"spiffe://cluster.local/ns/shop/sa/frontend",
	"spiffe://cluster.local/ns/shop/sa/reports",
}

writers := {"spiffe://cluster.local/ns/shop/sa/frontend"}

http_request := input.attributes.request.http

default principal := ""

principal := input.attributes.source.principal

default allow := {
	"allowed": false,
	"http_status": 403,
	"headers": {"content-type": "application/json"},
	"body": "{\"error\": \"forbidden\"}",
}

allow := {
	"allowed": true,
	"headers": {"x-authz-principal": principal},
	"request_headers_to_remove": ["x-internal-debug"],
	"dynamic_metadata": {"rule": rule},
} if {
	some rule
	permitted[rule]
}

# Anyone may probe health.
permitted contains "health" if {
	http_request.method == "GET"
	input.parsed_path == ["health"]
}

# Readers may list and read books.
permitted contains "read" if {
	http_request.method == "GET"
	input.parsed_path[0] == "books"
	principal in readers
}

# Writers may add a book with a title; a truncated body cannot be judged.
permitted contains "write" if {
	http_request.method == "POST"
	input.parsed_path == ["books"]
	principal in writers
	not input.truncated_body
	is_string(input.parsed_body.title)
}
