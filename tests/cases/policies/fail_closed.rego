package stepgate

# A result for each way a decision can fail closed, chosen by the action.

decision := {"allow": true, "reasons": ["ok"]} if input.action == "ok"

decision := "yes" if input.action == "string"

decision := {"allow": "true"} if input.action == "not_bool"

decision := {"reasons": ["no allow"]} if input.action == "no_allow"

decision := {"allow": true, "reasons": "x"} if input.action == "bad_reasons"

decision := {"allow": true, "reasons": ["x", 1]} if input.action == "number_reasons"

decision := {"allow": true, "obligations": ["x"]} if input.action == "bad_obligations"

decision := {"allow": true, "reasons": {"set", "of", "reasons"}} if input.action == "set_reasons"

# Many small steps (no large builtin result): the instruction limit stops it.
decision := {"allow": count([1 | some x in numbers.range(1, 300); some y in numbers.range(1, 300); x == y]) > 0} if input.action == "loop"

decision := {"allow": input.subject.attributes.n + "a"} if input.action == "type_error"

decision := {"allow": true} if input.action == "conflict"

decision := {"allow": false} if input.action == "conflict"
