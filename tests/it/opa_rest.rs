//! The OPA REST API over raw HTTP (shapes, status codes, parameters), over mTLS, and
//! driven by OPA's own TypeScript SDK (`@styra/opa`) in Node.

use std::time::Duration;

use serde_json::json;

use super::{
    pki::{TlsServer, tls_connect},
    support::{ECHO_POLICY, Server, http_request, http_request_over},
};

pub const EXAMPLE: &str = r#"package example

default allow := false

allow if input.user == "alice"

greeting := sprintf("hello %s", [input.user])

caller_seen := input.caller

context_seen := input.context

conflict := 1 if input.clash

conflict := 2 if input.clash
"#;

pub const ROLES: &str = r#"{"roles": {"alice": ["admin"], "bob": ["viewer"]}}"#;

async fn start() -> Server {
    Server::start(&[
        ("example.rego", EXAMPLE),
        ("data.json", ROLES),
        ("stepgate.rego", ECHO_POLICY),
    ])
    .await
}

async fn post(server: &Server, path: &str, body: &str) -> super::support::HttpReply {
    http_request(
        server.http.unwrap(),
        "POST",
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// `input.context.time` is the server's clock on REST as on gRPC: set when absent,
/// replaced when the client sends one, other context fields kept.
#[tokio::test]
async fn rest_inputs_get_the_servers_time_as_grpc_inputs_do() {
    let server = start().await;
    let now = "2026-11-23T10:00:00Z";
    let cases = [
        (json!({"user": "alice"}), json!({"time": now})),
        (json!({"context": {}}), json!({"time": now})),
        (
            json!({"context": {"time": "1999-01-01T00:00:00Z", "source_ip": "10.1.2.3"}}),
            json!({"time": now, "source_ip": "10.1.2.3"}),
        ),
    ];
    for (input, context) in cases {
        for path in [
            "/v1/data/example/context_seen",
            "/v0/data/example/context_seen",
        ] {
            let body = if path.starts_with("/v1") {
                json!({ "input": input }).to_string()
            } else {
                input.to_string()
            };
            let reply = post(&server, path, &body).await;
            assert_eq!(reply.status, 200, "{path} {input}: {reply:?}");
            let result = reply.json();
            let result = if path.starts_with("/v1") {
                &result["result"]
            } else {
                &result
            };
            assert_eq!(*result, context, "{path} {input}");
        }
    }
    // A context that is not an object is left alone: policy finds no time there.
    let reply = post(
        &server,
        "/v1/data/example/context_seen",
        r#"{"input": {"context": "now"}}"#,
    )
    .await;
    assert_eq!(reply.json()["result"], json!("now"));
}

#[tokio::test]
async fn the_data_api_answers_as_opa_does() {
    let server = start().await;
    let reply = post(
        &server,
        "/v1/data/example/allow",
        r#"{"input": {"user": "alice"}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.headers["content-type"], "application/json");
    let body = reply.json();
    assert_eq!(body["result"], json!(true));
    let id = body["decision_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");

    // Undefined: 200 without "result".
    let body = post(&server, "/v1/data/example/greeting", "{}")
        .await
        .json();
    assert!(body.get("result").is_none(), "{body}");
    assert!(body["decision_id"].is_string());
    let body = post(&server, "/v1/data/nothing/here", "").await.json();
    assert!(body.get("result").is_none(), "{body}");

    // Data documents, packages, GET with ?input=, percent-encoded segments.
    let get = async |path: &str| server.http_get(path).await.json();
    assert_eq!(
        get("/v1/data/roles/alice").await["result"],
        json!(["admin"])
    );
    assert_eq!(
        get("/v1/data/example/allow?input=%7B%22user%22%3A%22alice%22%7D").await["result"],
        json!(true)
    );
    assert_eq!(get("/v1/data/example/allow").await["result"], json!(false));
    assert_eq!(
        get("/v1/data/ro%6Ces/bob").await["result"],
        json!(["viewer"])
    );
    let package = post(&server, "/v1/data/example", r#"{"input": {"user": "bob"}}"#)
        .await
        .json();
    assert_eq!(package["result"]["greeting"], "hello bob");
    assert_eq!(package["result"]["allow"], json!(false));

    // input.caller is the transport's, whatever the client sent.
    let spoof =
        r#"{"input": {"caller": {"id": "spiffe://admin", "authenticated": true, "via": "mtls"}}}"#;
    let body = post(&server, "/v1/data/example/caller_seen", spoof)
        .await
        .json();
    assert_eq!(
        body["result"],
        json!({"id": "anonymous", "authenticated": false, "via": "tcp"})
    );

    // ?pretty, ?metrics, ?provenance.
    let reply = post(
        &server,
        "/v1/data/example/allow?pretty=true&metrics&provenance",
        r#"{"input": {"user": "alice"}}"#,
    )
    .await;
    assert!(reply.body.contains("\n  \""), "not pretty: {}", reply.body);
    let body = reply.json();
    assert!(
        body["metrics"]["timer_rego_query_eval_ns"].is_u64(),
        "{body}"
    );
    assert!(
        body["metrics"]["timer_server_handler_ns"].is_u64(),
        "{body}"
    );
    let revision = body["provenance"]["revision"].as_str().unwrap();
    assert!(revision.starts_with("sha256:"), "{revision}");
    assert!(
        !post(&server, "/v1/data/example/allow", "{}")
            .await
            .body
            .contains('\n')
    );
    server.stop().await;
}

#[tokio::test]
async fn errors_have_opas_shape_and_status() {
    let server = start().await;
    let reply = post(&server, "/v1/data/example/allow", "{not json").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["code"], "invalid_parameter");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("malformed input"),
        "{body}"
    );
    let reply = post(&server, "/v1/data/example/allow", "[1]").await;
    assert_eq!(
        (reply.status, reply.json()["code"].clone()),
        (400, json!("invalid_parameter"))
    );

    let reply = post(
        &server,
        "/v1/data/example/conflict",
        r#"{"input": {"clash": true}}"#,
    )
    .await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(reply.json()["code"], "internal_error");

    let reply = post(&server, "/v0/data/example/greeting", "{}").await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.json()["code"], "undefined_document");
    server.stop().await;
}

#[tokio::test]
async fn v0_the_default_decision_and_the_policy_list() {
    let server = start().await;
    let reply = post(&server, "/v0/data/example/greeting", r#"{"user": "bob"}"#).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), json!("hello bob"));

    // POST /: the decision entrypoint (data.stepgate.decision) on the bare input.
    let reply = post(
        &server,
        "/",
        r#"{"step": "use", "action": "read", "subject": {"id": "svc-a"}, "context": {"time": "t"}, "caller": {"id": "spiffe://admin"}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let decision = reply.json();
    assert_eq!(decision["allow"], json!(true));
    assert_eq!(
        decision["reasons"][0], "anonymous",
        "the transport's caller"
    );

    let reply = server.http_get("/v1/policies").await;
    assert_eq!(reply.status, 200);
    let modules = reply.json()["result"].as_array().unwrap().clone();
    let example = modules
        .iter()
        .find(|m| m["id"] == "example.rego")
        .expect("example.rego listed");
    assert!(example["raw"].as_str().unwrap().contains("package example"));
    server.stop().await;
}

#[tokio::test]
async fn decision_callers_and_mtls_apply_to_http_too() {
    let trusted = "spiffe://cluster.local/ns/agents/sa/gateway";
    let TlsServer {
        pki,
        server,
        dir: _dir,
        ..
    } = TlsServer::start(&[("example.rego", EXAMPLE)], true, |config| {
        config.service_callers.decision = Some(vec![trusted.to_string()]);
    })
    .await;
    let addr = server.http.unwrap();
    let http1: &[&[u8]] = &[b"http/1.1"];
    // The trusted identity in headers, and a spoofed input.caller in the body.
    let headers = [
        ("content-type", "application/json"),
        ("x-spiffe-id", trusted),
        (
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/agents/sa/gateway",
        ),
    ];
    let post_as = async |cn: &str, spiffe: &str, path: &str| {
        let issued = pki.client(cn, Some(spiffe));
        let stream = tls_connect(addr, pki.client_config(Some(&issued), http1))
            .await
            .unwrap();
        let spoof = r#"{"input": {"caller": {"id": "x"}}}"#;
        http_request_over(stream, addr, "POST", path, &headers, spoof).await
    };

    let reply = post_as("gateway", trusted, "/v1/data/example/caller_seen").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["result"],
        json!({"id": trusted, "authenticated": true, "via": "mtls"})
    );
    // Another workload, even with the trusted identity in its headers, is refused.
    let other = "spiffe://cluster.local/ns/shop/sa/frontend";
    let reply = post_as("frontend", other, "/v1/data/example/allow").await;
    assert_eq!(reply.status, 403, "{reply:?}");

    // No client certificate: no HTTP at all.
    let refused = match tls_connect(addr, pki.client_config(None, http1)).await {
        Err(_) => true,
        Ok(stream) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = stream;
            let _ = stream
                .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                .await;
            let mut buf = [0u8; 16];
            !matches!(
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
                Ok(Ok(n)) if n > 0
            )
        }
    };
    assert!(refused, "an HTTPS client without a certificate was served");
    server.stop().await;
}

/// The record of a REST query of the decision entrypoint reads the result as a Check
/// does: `{"allow": true, "reasons": "x"}` is answered as the document it is (as OPA
/// answers) and recorded as the deny a Check would be; a well-formed allow is recorded
/// as an allow. The same document at another path is read by its `allow` flag.
#[tokio::test]
async fn a_malformed_decision_document_is_answered_raw_and_recorded_as_a_deny() {
    use stepgate::audit::Destination;
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("decisions.jsonl");
    let log = path.clone();
    let policy = r#"package stepgate

decision := {"allow": true, "reasons": "x"} if input.action == "malformed"

decision := {"allow": true, "reasons": ["ok"]} if input.action == "fine"

other := {"allow": true, "reasons": "x"}
"#;
    let server = Server::start_with(&[("stepgate.rego", policy)], move |config| {
        config.audit.destination = Destination::File(log);
    })
    .await;
    let asked = [
        ("/", r#"{"action": "malformed"}"#),
        (
            "/v1/data/stepgate/decision",
            r#"{"input": {"action": "malformed"}}"#,
        ),
        ("/", r#"{"action": "fine"}"#),
        ("/v1/data/stepgate/other", "{}"),
    ];
    let mut ids = Vec::new();
    for (path, body) in asked {
        let reply = post(&server, path, body).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        let answer = reply.json();
        let (document, id) = if path == "/" {
            let id = reply.headers["x-decision-id"].to_str().unwrap().to_string();
            (answer, id)
        } else {
            let id = answer["decision_id"].as_str().unwrap().to_string();
            (answer["result"].clone(), id)
        };
        assert_eq!(document["allow"], json!(true), "{path}: the raw document");
        ids.push(id);
    }
    server.stop().await;

    let records: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let record = |id: &str| {
        records
            .iter()
            .find(|r| r["decision_id"] == id)
            .unwrap_or_else(|| panic!("decision {id} not logged: {records:?}"))
            .clone()
    };
    let malformed = json!([
        "queried data.stepgate.decision",
        "policy result \"reasons\" is not an array of strings (fail closed)"
    ]);
    for id in &ids[..2] {
        let denied = record(id);
        assert_eq!(denied["allow"], json!(false), "{denied}");
        assert_eq!(denied["reasons"], malformed);
    }
    let allowed = record(&ids[2]);
    assert_eq!(allowed["allow"], json!(true), "{allowed}");
    assert_eq!(
        allowed["reasons"],
        json!(["queried data.stepgate.decision"])
    );
    let other = record(&ids[3]);
    assert_eq!(other["allow"], json!(true), "{other}");
}
