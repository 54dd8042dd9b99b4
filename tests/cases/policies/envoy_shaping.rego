package envoy.authz

# Exercises every response field of the object form: a denial with its status, body and
# headers, an allow that shapes the request.

default allow := {"allowed": false, "http_status": 401, "body": "login first", "headers": {"www-authenticate": "Bearer"}}

allow := {
	"allowed": true,
	"headers": [{"x-user": "alice"}, {"x-role": ["reader", "auditor"]}],
	"request_headers_to_remove": ["x-debug"],
	"response_headers_to_add": {"x-served-by": "stepgate"},
	"query_parameters_to_set": {"tenant": "t1", "tag": ["a", "b"]},
	"query_parameters_to_remove": ["debug"],
	"dynamic_metadata": {"policy": "shaping"},
} if input.attributes.request.http.headers.authorization == "Bearer good"
