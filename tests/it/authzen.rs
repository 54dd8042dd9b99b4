//! AuthZEN Authorization API 1.0 over real HTTP, with the AuthZEN specification's own
//! examples, mapped onto a Check as spec Appendix C says.

use serde_json::{Value, json};

use super::support::{HttpReply, Server, http_request};

/// Alice may read the documents and the account of the examples; the reasons say what
/// the policy saw, so the mapping is visible.
const POLICY: &str = r#"package stepgate

readable := {"boxcarring.md", "123"}

seen := [
	input.step,
	input.subject.kind,
	object.get(input.subject, ["attributes", "department"], "-"),
	object.get(input, ["resource", "type"], "-"),
	object.get(input, ["context", "attributes", "time"], "-"),
	input.caller.id,
]

default decision := {"allow": false, "reasons": ["not allowed"]}

decision := {"allow": true, "reasons": seen} if {
	input.subject.id == "alice@acmecorp.com"
	input.action == "can_read"
	input.resource.id in readable
}
"#;

async fn post(server: &Server, path: &str, body: &Value) -> HttpReply {
    http_request(
        server.http.unwrap(),
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("x-request-id", "req-42"),
        ],
        &body.to_string(),
    )
    .await
}

#[tokio::test]
async fn the_access_evaluation_example() {
    let server = Server::start(&[("p.rego", POLICY)]).await;
    // AuthZEN 1.0, "Access Evaluation API", example request.
    let request = json!({
        "subject": {"type": "user", "id": "alice@acmecorp.com", "properties": {"department": "Sales"}},
        "resource": {"type": "account", "id": "123"},
        "action": {"name": "can_read", "properties": {"method": "GET"}},
        "context": {"time": "1985-10-26T01:22-07:00"}
    });
    let reply = post(&server, "/access/v1/evaluation", &request).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.headers["x-request-id"], "req-42");
    let body = reply.json();
    assert_eq!(body["decision"], json!(true));
    assert_eq!(
        body["context"]["reasons"],
        json!([
            "use",
            "user",
            "Sales",
            "account",
            "1985-10-26T01:22-07:00",
            "anonymous"
        ])
    );
    assert_eq!(body["context"]["decision_id"].as_str().unwrap().len(), 36);

    // context.step chooses the step; a denial is a 200 with decision false.
    let mut request = request;
    request["context"]["step"] = json!("request");
    request["resource"]["id"] = json!("456");
    let body = post(&server, "/access/v1/evaluation", &request)
        .await
        .json();
    assert_eq!(body["decision"], json!(false));
    assert_eq!(body["context"]["reasons"], json!(["not allowed"]));
    server.stop().await;
}

#[tokio::test]
async fn the_access_evaluations_example_and_semantics() {
    let server = Server::start(&[("p.rego", POLICY)]).await;
    // AuthZEN 1.0, "Access Evaluations API", example request: defaults plus overrides.
    let request = json!({
        "subject": {"type": "user", "id": "alice@acmecorp.com"},
        "action": {"name": "can_read"},
        "evaluations": [
            {"resource": {"type": "document", "id": "boxcarring.md"}},
            {"resource": {"type": "document", "id": "subject-search.md"}},
            {"action": {"name": "can_edit"}, "resource": {"type": "document", "id": "boxcarring.md"}}
        ]
    });
    let reply = post(&server, "/access/v1/evaluations", &request).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let decisions: Vec<Value> = reply.json()["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"].clone())
        .collect();
    assert_eq!(decisions, [json!(true), json!(false), json!(false)]);

    let mut short = request.clone();
    short["options"] = json!({"evaluations_semantic": "deny_on_first_deny"});
    let body = post(&server, "/access/v1/evaluations", &short).await.json();
    assert_eq!(body["evaluations"].as_array().unwrap().len(), 2, "{body}");
    short["options"] = json!({"evaluations_semantic": "permit_on_first_permit"});
    let body = post(&server, "/access/v1/evaluations", &short).await.json();
    assert_eq!(body["evaluations"].as_array().unwrap().len(), 1, "{body}");

    // Without evaluations it is a single evaluation of the defaults.
    let mut single = request.clone();
    single.as_object_mut().unwrap().remove("evaluations");
    single["resource"] = json!({"type": "account", "id": "123"});
    let body = post(&server, "/access/v1/evaluations", &single)
        .await
        .json();
    assert_eq!(body["decision"], json!(true), "{body}");
    server.stop().await;
}

/// AuthZEN's own malformed requests (a Check's, on every adapter, are API cases:
/// `tests/cases/validation.toml`).
#[tokio::test]
async fn malformed_requests_name_the_field() {
    let server = Server::start(&[("p.rego", POLICY)]).await;
    for (path, body, field) in [
        (
            "/access/v1/evaluation",
            json!({"action": {"name": "x"}}),
            "subject",
        ),
        (
            "/access/v1/evaluation",
            json!({"subject": {"id": "a", "properties": [1]}, "action": {"name": "x"}}),
            "subject.properties",
        ),
        (
            "/access/v1/evaluations",
            json!({"subject": {"id": "a"}, "evaluations": [{"action": {"name": "x"}}, {"resource": {"id": "r"}}]}),
            "evaluations[1].action",
        ),
    ] {
        let reply = post(&server, path, &body).await;
        assert_eq!(reply.status, 400, "{body}: {reply:?}");
        let error = reply.json();
        assert_eq!(error["code"], "invalid_parameter");
        assert!(
            error["message"].as_str().unwrap().starts_with(field),
            "{field}: {error}"
        );
    }
    let reply = http_request(
        server.http.unwrap(),
        "POST",
        "/access/v1/evaluation",
        &[],
        "{",
    )
    .await;
    assert_eq!(reply.status, 400);
    server.stop().await;
}

/// A batch is refused before any of it is decided: its size first (named as AuthZEN
/// names the list), before an evaluation is read; then each evaluation and the options.
#[tokio::test]
async fn a_batch_is_refused_before_any_of_it_is_decided() {
    let server = Server::start(&[("p.rego", POLICY)]).await;
    let allowed = json!({
        "subject": {"type": "user", "id": "alice@acmecorp.com"},
        "action": {"name": "can_read"},
        "resource": {"id": "123"},
    });
    let refused = |body: Value, message: &'static str| {
        let server = &server;
        async move {
            let reply = post(server, "/access/v1/evaluations", &body).await;
            assert_eq!(reply.status, 400, "{body}: {reply:?}");
            assert_eq!(reply.json()["message"], message, "{body}");
        }
    };
    // The test server's maximum is 8; the malformed first item is never read.
    let mut evaluations = vec![allowed.clone(); 9];
    evaluations[0] = json!({"subject": "alice"});
    refused(
        json!({ "evaluations": evaluations }),
        "evaluations: 9 evaluations is over the maximum of 8",
    )
    .await;
    evaluations.pop();
    refused(
        json!({ "evaluations": evaluations }),
        "evaluations[0].subject: must be an object",
    )
    .await;
    refused(
        json!({"evaluations": vec![allowed.clone(); 8], "options": {"evaluations_semantic": "all"}}),
        "options.evaluations_semantic: must be execute_all, deny_on_first_deny or permit_on_first_permit",
    )
    .await;
    let scrape = server.http_get("/metrics").await.body;
    for result in ["allow", "deny"] {
        let none = format!("stepgate_decisions_total{{result=\"{result}\",step=\"use\"}} 0\n");
        assert!(
            scrape.contains(&none),
            "nothing refused was decided: {scrape}"
        );
    }

    let reply = post(
        &server,
        "/access/v1/evaluations",
        &json!({"evaluations": vec![allowed; 8]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let answers = reply.json()["evaluations"].clone();
    assert_eq!(answers.as_array().unwrap().len(), 8);
    assert_eq!(answers[7]["decision"], json!(true), "{answers}");
    server.stop().await;
}
