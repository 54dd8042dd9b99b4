# Tests for the OPA-Envoy style example (authz.rego), with inputs shaped as
# stepgate builds them from Envoy CheckRequests.
package envoy.authz_test

import data.envoy.authz

frontend := "spiffe://cluster.local/ns/shop/sa/frontend"

reports := "spiffe://cluster.local/ns/shop/sa/reports"

request(method, path, principal) := {
	"attributes": {
		"source": {"principal": principal},
		"request": {"http": {"method": method, "path": path, "headers": {}}},
	},
	"parsed_path": split(trim_left(path, "/"), "/"),
	"parsed_query": {},
	"parsed_body": null,
	"truncated_body": false,
}

test_anyone_probes_health if {
	authz.allow.allowed with input as request("GET", "/health", "")
}

test_reader_reads_books_and_gets_a_principal_header if {
	result := authz.allow with input as request("GET", "/books/42", reports)
	result.allowed
	result.headers["x-authz-principal"] == reports
	result.dynamic_metadata.rule == "read"
}

test_reader_cannot_write if {
	req := object.union(request("POST", "/books", reports), {"parsed_body": {"title": "Dune"}})
	not authz.allow.allowed with input as req
}

test_writer_adds_a_book_with_a_title if {
	req := object.union(request("POST", "/books", frontend), {"parsed_body": {"title": "Dune"}})
	authz.allow.allowed with input as req
}

test_a_book_without_a_title_or_truncated_is_refused if {
	untitled := object.union(request("POST", "/books", frontend), {"parsed_body": {"pages": 3}})
	not authz.allow.allowed with input as untitled
	truncated := object.union(request("POST", "/books", frontend), {"parsed_body": null, "truncated_body": true})
	not authz.allow.allowed with input as truncated
}

test_strangers_get_a_json_403 if {
	result := authz.allow with input as request("GET", "/books", "spiffe://elsewhere/sa/x")
	not result.allowed
	result.http_status == 403
	result.headers["content-type"] == "application/json"
}
