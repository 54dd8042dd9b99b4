# Tests for AI-agent tool calls (agent.rego).
package stepgate.agent_test

import data.stepgate.agent

base := {
	"step": "use",
	"subject": {
		"id": "spiffe://prod.example.com/ns/support/agent/triage-bot",
		"kind": "agent",
		"owner": "team-support",
		"attributes": {"agent_kind": "support"},
	},
	"action": "tool.call",
	"resource": {"type": "database", "id": "prod/support/tickets-replica", "attributes": {"environment": "prod"}},
	"agent": {
		"tool": "db.query",
		"arguments": {"sql": "SELECT id, status, updated_at FROM tickets WHERE customer_id = $1"},
		"on_behalf_of": "alice",
		"delegation_chain": ["alice", "support-planner", "triage-bot"],
	},
	"context": {"time": "2026-11-23T10:00:00Z"},
}

coding := object.union(base, {"subject": {"attributes": {"agent_kind": "coding"}}})

sql(query) := object.union(base, {"agent": {"arguments": {"sql": query}}})

fetch(url) := object.union(coding, {"agent": {"tool": "http.get", "arguments": {"url": url}}})

# Each helper also checks the fast path of data.stepgate.decision (see
# decision.rego): it gives the full rules' decision on an allowed input and
# never answers a denied one.
allowed(inp) if {
	count(agent.deny) == 0 with input as inp
	data.stepgate.decision == data.stepgate.full_decision with input as inp
}

denied(inp, msg) if {
	msg in agent.deny with input as inp
	not agent.fast_ok with input as inp
}

# --- principal and delegation ---------------------------------------------------------

test_read_only_query_for_a_user_is_allowed if {
	allowed(base)
}

test_deny_without_principal if {
	denied(json.remove(base, ["agent/on_behalf_of"]), "agent.on_behalf_of is required")
}

test_deny_agent_subject_without_agent_call if {
	denied(json.remove(base, ["agent"]), "agent.on_behalf_of is required")
}

test_deny_agent_acting_for_itself if {
	inp := object.union(base, {"agent": {
		"on_behalf_of": "spiffe://prod.example.com/ns/support/agent/triage-bot",
		"delegation_chain": [],
	}})
	denied(inp, "an agent cannot act on behalf of itself")
}

test_deny_long_delegation_chain if {
	inp := object.union(base, {"agent": {"delegation_chain": ["alice", "planner", "router", "triage-bot"]}})
	denied(inp, "delegation chain of 4 entries exceeds the maximum of 3")
}

test_deny_chain_not_headed_by_principal if {
	inp := object.union(base, {"agent": {"delegation_chain": ["mallory", "triage-bot"]}})
	denied(inp, "delegation chain must start with agent.on_behalf_of")
}

test_deny_chain_that_is_not_a_list if {
	inp := object.union(base, {"agent": {"delegation_chain": "alice,triage-bot"}})
	denied(inp, "agent.delegation_chain must be a list")
}

test_missing_chain_is_a_direct_delegation if {
	allowed(json.remove(base, ["agent/delegation_chain"]))
}

# --- tool allow-list ---------------------------------------------------------------

test_deny_use_without_tool if {
	denied(json.remove(base, ["agent/tool"]), "agent.tool is required at step use")
}

test_issue_without_tool_is_allowed if {
	allowed(json.remove(object.union(base, {"step": "issue"}), ["agent/tool"]))
}

test_deny_tool_outside_the_allow_list if {
	inp := object.union(base, {"agent": {"tool": "repo.open_pull_request"}})
	denied(inp, "tool \"repo.open_pull_request\" is not allowed for support agents")
}

test_coding_agent_may_open_pull_requests if {
	allowed(object.union(coding, {"agent": {"tool": "repo.open_pull_request", "arguments": {}}}))
}

test_deny_unknown_agent_kind if {
	inp := object.union(base, {"subject": {"attributes": {"agent_kind": "autonomous"}}})
	denied(inp, "agent kind \"autonomous\" is not recognised")
}

test_deny_tool_call_without_agent_kind if {
	inp := json.remove(base, ["subject/attributes/agent_kind"])
	denied(inp, "subject.attributes.agent_kind is required for agent tool calls")
}

# --- db.query -----------------------------------------------------------------------

test_lower_case_select_and_cte_are_allowed if {
	allowed(sql("  select count(*) from tickets"))
	allowed(sql("WITH open AS (SELECT * FROM tickets WHERE status = 'open') SELECT count(*) FROM open"))
}

test_column_names_containing_keywords_are_allowed if {
	allowed(sql("SELECT updated_at, created_by, deleted FROM tickets"))
}

test_deny_write_statement if {
	denied(sql("DELETE FROM tickets"), "db.query accepts only queries that start with SELECT or WITH")
}

test_deny_stacked_statement if {
	denied(sql("SELECT 1; DROP TABLE tickets"), "db.query accepts a single statement (no ';')")
}

test_deny_writing_cte if {
	inp := sql("WITH gone AS (DELETE FROM tickets RETURNING id) SELECT * FROM gone")
	denied(inp, "db.query accepts read-only SQL only (no write, DDL or permission keywords)")
}

test_deny_keyword_hidden_behind_a_comment if {
	inp := sql("WITH x AS (UPDATE/**/tickets SET status = 'closed' RETURNING id) SELECT 1")
	denied(inp, "db.query accepts read-only SQL only (no write, DDL or permission keywords)")
}

test_deny_select_into if {
	denied(sql("SELECT * INTO backup FROM tickets"), "db.query accepts read-only SQL only (no write, DDL or permission keywords)")
}

test_deny_query_without_sql if {
	inp := object.union(json.remove(base, ["agent/arguments/sql"]), {"agent": {"arguments": {"query": "SELECT 1"}}})
	denied(inp, "db.query requires arguments.sql as a string")
}

# --- http.get -----------------------------------------------------------------------

test_allow_listed_host_is_allowed if {
	allowed(fetch("https://api.github.com/repos/example/app/pulls"))
	allowed(fetch("https://API.GitHub.com:443/rate_limit"))
	allowed(fetch("https://docs.example.com"))
}

test_deny_other_host if {
	denied(fetch("https://evil.example.net/x"), "http.get host \"evil.example.net\" is not allow-listed")
}

test_deny_lookalike_hosts if {
	denied(fetch("https://api.github.com.evil.test/x"), "http.get host \"api.github.com.evil.test\" is not allow-listed")
	denied(fetch("https://api.github.com@evil.test/x"), "http.get host \"api.github.com@evil.test\" is not allow-listed")
	denied(fetch("https://api.github.com:8443/x"), "http.get host \"api.github.com:8443\" is not allow-listed")
}

test_deny_plain_http if {
	denied(fetch("http://api.github.com/x"), "http.get requires an https:// URL in arguments.url")
}

test_deny_missing_url if {
	inp := object.union(coding, {"agent": {"tool": "http.get", "arguments": {}}})
	denied(inp, "http.get requires an https:// URL in arguments.url")
}

test_unknown_agent_kind_gives_one_clear_reason if {
	inp := object.union(base, {"subject": {"attributes": {"agent_kind": "autonomous"}}})
	agent.deny == {"agent kind \"autonomous\" is not recognised"} with input as inp
}

# The fast path's literal list of write keywords (agent.rego) covers every
# keyword of sql_write_keywords.
write_keywords := split(trim_suffix(trim_prefix(agent.sql_write_keywords, `(?-u:\b)(`), `)(?-u:\b)`), "|")

fast_path_refuses(keywords) if {
	every keyword in keywords {
		not agent.fast_ok with input as sql(concat(" ", ["SELECT 1 FROM tickets", keyword]))
	}
}

test_fast_path_knows_every_write_keyword if {
	count(write_keywords) == 23
	agent.fast_ok with input as sql("SELECT 1 FROM tickets")
	fast_path_refuses(array.slice(write_keywords, 0, 8))
}

test_fast_path_knows_every_write_keyword_continued if fast_path_refuses(array.slice(write_keywords, 8, 16))

test_fast_path_knows_every_write_keyword_to_the_end if fast_path_refuses(array.slice(write_keywords, 16, 23))
