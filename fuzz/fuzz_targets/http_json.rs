//! JSON bodies of the HTTP adapters (the OPA REST Data API and default decision, and
//! AuthZEN evaluation / evaluations) through the real axum router, in process, to a
//! decision by the example policies.
//!
//! The first byte picks the route; the rest is the body (or the `?input=` of a GET, or
//! for route 7 a `/v1/data` path up to the first newline, then the body).
//! Properties: no panic, no hang; every answer is JSON with a JSON content type; bad
//! input is a 400, never a 5xx (only OPA's routes answer an evaluation error, such as
//! a limit hit, with OPA's 500 `internal_error`).

#![no_main]

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use stepgate::api::{CallerAllowList, HttpState, http_router};
use tower::ServiceExt;

const ROUTES: [(&str, &str); 7] = [
    ("POST", "/v1/data/stepgate/decision"),
    ("POST", "/v0/data/stepgate/decision"),
    ("POST", "/"),
    ("POST", "/access/v1/evaluation"),
    ("POST", "/access/v1/evaluations"),
    ("GET", "/v1/data/stepgate/decision"),
    ("POST", "/v1/data"),
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

/// The request the input stands for, or `None` when it names no valid URI.
fn request(data: &[u8]) -> Option<Request<Body>> {
    let (&route, rest) = data.split_first()?;
    let (method, uri, body) = match route as usize % (ROUTES.len() + 1) {
        7 => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let path = std::str::from_utf8(&rest[..end]).ok()?;
            let body = rest.get(end + 1..).unwrap_or_default();
            ("POST", format!("/v1/data/{path}"), body.to_vec())
        }
        5 => {
            let input: String = url_encoded(rest);
            ("GET", format!("{}?input={input}", ROUTES[5].1), Vec::new())
        }
        i => (ROUTES[i].0, ROUTES[i].1.to_string(), rest.to_vec()),
    };
    let uri: http::Uri = uri.parse().ok()?;
    Request::builder()
        .method(Method::from_bytes(method.as_bytes()).ok()?)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .ok()
}

/// `bytes` percent-encoded for a query value.
fn url_encoded(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (*b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Bodies as OPA's and AuthZEN's clients send them, one per route.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let check = r#"{"step": "use", "subject": {"id": "alice", "kind": "user", "attributes": {"roles": ["sre"]}}, "action": "db:read", "resource": {"type": "database", "id": "payments"}, "context": {"attributes": {"n": 1e3}}}"#;
    let authzen = r#"{"subject": {"type": "user", "id": "alice", "properties": {"roles": ["sre"]}}, "action": {"name": "db:read"}, "resource": {"type": "database", "id": "payments", "properties": {"env": "prod"}}, "context": {"step": "use", "time": "2026-11-23T10:00:00Z"}}"#;
    let batch = r#"{"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"}, "evaluations": [{"resource": {"type": "doc", "id": "1"}}, {"action": {"name": "write"}, "context": {"step": "request"}}], "options": {"evaluations_semantic": "deny_on_first_deny"}}"#;
    let bodies = [
        format!(r#"{{"input": {check}}}"#),
        check.to_string(),
        check.to_string(),
        authzen.to_string(),
        batch.to_string(),
        check.to_string(),
        format!(r#"{{"input": {check}}}"#),
        format!("stepgate/decision/allow\n{{\"input\": {check}}}"),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(route, body)| {
            let mut bytes = vec![route as u8];
            bytes.extend(body.into_bytes());
            (format!("route{route}"), bytes)
        })
        .collect()
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let Some(request) = request(data) else {
        return;
    };
    let uri = request.uri().to_string();
    let router = http_router(HttpState {
        pipeline: common::pipeline().clone(),
        decision_callers: CallerAllowList::Anyone,
        max_body_bytes: 1 << 20,
    });
    let (status, content_type, body) = runtime().block_on(async {
        let response = router.oneshot(request).await.expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body is read");
        (status, content_type, body)
    });
    if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
        // A fuzzed path that names no route: axum's own answer.
        return;
    }
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let answer = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_else(|e| {
        panic!("{status}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
    });
    // OPA answers an evaluation error (a limit hit) with 500 internal_error; AuthZEN
    // answers it with a deny. Anything else the client sent is a 400.
    let opa_eval_error = status == StatusCode::INTERNAL_SERVER_ERROR
        && answer["code"] == "internal_error"
        && !uri.starts_with("/access/");
    assert!(
        status == StatusCode::OK || status == StatusCode::BAD_REQUEST || opa_eval_error,
        "{uri}: {status}: {answer}"
    );
});
