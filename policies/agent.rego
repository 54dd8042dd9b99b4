# AI agents and tool calls: at `request`, `issue` and `use`, whenever the
# input carries an agent call or the subject is an agent.
#
# An agent always acts for an accountable principal (agent.on_behalf_of) who
# heads the delegation chain, and the chain is short. Tools come from an
# allow-list per agent kind (subject.attributes.agent_kind). Some tools have
# argument rules: db.query takes read-only SQL only, http.get reaches
# allow-listed HTTPS hosts only. These checks are defence in depth: give agents
# read-only database roles and an egress proxy as well.
#
# No obligations. Composed by data.stepgate.decision.
package stepgate.agent

# --- who the agent acts for ---------------------------------------------------

deny contains "agent.on_behalf_of is required" if not data.stepgate.lib.non_empty(input.agent.on_behalf_of)

deny contains "an agent cannot act on behalf of itself" if {
	lower(input.agent.on_behalf_of) == lower(input.subject.id)
}

deny contains "agent.delegation_chain must be a list" if {
	input.agent.delegation_chain
	not is_array(input.agent.delegation_chain)
}

deny contains msg if {
	count(input.agent.delegation_chain) > data.stepgate_config.agents.max_delegation_depth
	is_array(input.agent.delegation_chain)
	msg := sprintf("delegation chain of %v entries exceeds the maximum of %v", [count(input.agent.delegation_chain), data.stepgate_config.agents.max_delegation_depth])
}

# The chain reads from the accountable principal to the acting agent.
deny contains "delegation chain must start with agent.on_behalf_of" if {
	input.agent.delegation_chain[0]
	not lower(input.agent.delegation_chain[0]) == lower(input.agent.on_behalf_of)
}

# --- which tool --------------------------------------------------------------

deny contains "agent.tool is required at step use" if {
	input.step == "use"
	not data.stepgate.lib.non_empty(input.agent.tool)
}

deny contains "subject.attributes.agent_kind is required for agent tool calls" if {
	input.agent.tool
	not data.stepgate.lib.non_empty(input.subject.attributes.agent_kind)
}

deny contains msg if {
	kind := input.subject.attributes.agent_kind
	is_string(kind)
	not data.stepgate_config.agents.tools[kind]
	msg := sprintf("agent kind \"%s\" is not recognised", [kind])
}

deny contains msg if {
	tool := input.agent.tool
	kind := input.subject.attributes.agent_kind
	allowed_tools := data.stepgate_config.agents.tools[kind]
	is_string(tool)
	is_array(allowed_tools)
	not tool in allowed_tools
	msg := sprintf("tool \"%s\" is not allowed for %s agents", [tool, kind])
}

# --- db.query: read-only SQL ---------------------------------------------------

sql := upper(trim_space(input.agent.arguments.sql)) if is_string(input.agent.arguments.sql)

read_only_opener if startswith(sql, "SELECT")

read_only_opener if startswith(sql, "WITH")

# Words that write, change schema or permissions, or run code, as whole words:
# (?-u:\b) is an ASCII word boundary, so "updated_at" is not UPDATE while
# "DELETE/**/FROM" is. A blocklist is never complete (side-effecting functions
# exist), hence the read-only database role as well.
sql_write_keywords := `(?-u:\b)(INSERT|UPDATE|DELETE|MERGE|UPSERT|INTO|DROP|ALTER|CREATE|TRUNCATE|GRANT|REVOKE|CALL|EXEC|EXECUTE|DO|COPY|LOCK|ATTACH|DETACH|PRAGMA|VACUUM|REINDEX)(?-u:\b)`

deny contains "db.query requires arguments.sql as a string" if {
	input.agent.tool == "db.query"
	not sql
}

deny contains "db.query accepts only queries that start with SELECT or WITH" if {
	input.agent.tool == "db.query"
	sql
	not read_only_opener
}

# One statement only: a ';' could start a second, writing one.
deny contains "db.query accepts a single statement (no ';')" if {
	input.agent.tool == "db.query"
	contains(sql, ";")
}

deny contains "db.query accepts read-only SQL only (no write, DDL or permission keywords)" if {
	input.agent.tool == "db.query"
	regex.match(sql_write_keywords, sql)
}

# --- http.get: allow-listed HTTPS hosts --------------------------------------------
# The URL's authority (between "https://" and the next "/") must be exactly an
# allow-listed host, optionally with ":443". Exact matching needs no parser:
# "api.github.com@evil.test" or "api.github.com.evil.test" simply do not match.

url_authority := parts[0] if {
	url := input.agent.arguments.url
	is_string(url)
	lowered := lower(url)
	startswith(lowered, "https://")
	parts := split(trim_prefix(lowered, "https://"), "/")
}

deny contains "http.get requires an https:// URL in arguments.url" if {
	input.agent.tool == "http.get"
	not url_authority
}

deny contains msg if {
	input.agent.tool == "http.get"
	url_authority
	authority := url_authority
	not authority in data.stepgate_config.agents.http_allowed_hosts
	not trim_suffix(authority, ":443") in data.stepgate_config.agents.http_allowed_hosts
	msg := sprintf("http.get host \"%s\" is not allow-listed", [authority])
}

# --- fast path -------------------------------------------------------------------
# fast_ok is defined only when no rule above can deny (see decision.rego): when
# no agent is involved, or for an agent call that passes them all. It may be
# stricter than the rules above, never looser; change it together with them.
# lower() fails on the same values as in the rules above, so it needs no type
# guard; the other builtins only see values already known to be of their type.
fast_ok if {
	not input.agent
	not input.subject.kind == "agent"
}

fast_ok if {
	agent := input.agent
	principal := agent.on_behalf_of
	lower(principal) != lower(input.subject.id)
	trim_space(principal) != ""
	chain := agent.delegation_chain
	is_array(chain)
	count(chain) <= data.stepgate_config.agents.max_delegation_depth
	not chain[0] != principal
	kind := input.subject.attributes.agent_kind
	tool := agent.tool
	tool in data.stepgate_config.agents.tools[kind]
	is_string(tool)
	trim_space(tool) != ""
	trim_space(kind) != ""
	fast_arguments_ok
}

fast_arguments_ok if {
	input.agent.tool == "db.query"
	sql := input.agent.arguments.sql
	is_string(sql)
	query := upper(trim_space(sql))
	strings.any_prefix_match(query, ["SELECT", "WITH"])

	# Instead of sql_write_keywords (several microseconds): every write keyword
	# found as a substring becomes \x01 (a plain literal search; EXECUTE is
	# listed before EXEC). A keyword followed by a word character is part of a
	# longer word (UPDATED_AT) and cannot match sql_write_keywords; one followed
	# by anything else, or by the end, might, and leaves the decision to the
	# rules above, as does any ';'.
	not regex.match(`;|\x01(?:[^0-9A-Za-z_]|$)`, regex.replace(query, `INSERT|UPDATE|DELETE|MERGE|UPSERT|INTO|DROP|ALTER|CREATE|TRUNCATE|GRANT|REVOKE|CALL|EXECUTE|EXEC|DO|COPY|LOCK|ATTACH|DETACH|PRAGMA|VACUUM|REINDEX`, "\u0001"))
}

fast_arguments_ok if {
	input.agent.tool == "http.get"
	url_authority
	trim_suffix(url_authority, ":443") in data.stepgate_config.agents.http_allowed_hosts
}

fast_arguments_ok if not input.agent.tool in {"db.query", "http.get"}
