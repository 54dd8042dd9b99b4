package gate

# The boolean form, at a non-default entrypoint (`data.gate.allow`).

default allow := false

allow if input.attributes.request.http.method == "GET"
