package envoy.authz

# Results the OPA-Envoy plugin refuses, chosen by the request's method.

allow := "yes" if input.attributes.request.http.method == "GET"

allow := {"allowed": true, "request_headers_to_remove": "x-debug"} if input.attributes.request.http.method == "PUT"

allow := {"allowed": false, "http_status": 999} if input.attributes.request.http.method == "DELETE"
