//! Cases whose input is an HTTP request as Envoy's ext_authz filter describes it, over
//! `envoy.service.auth.v3.Authorization/Check`. The Envoy policy reads the OPA-Envoy
//! input document, not stepgate's Check, so these cases run on ext_authz alone.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use serde::Deserialize;

use super::super::ext_authz::envoy_request;
use super::{
    Tally,
    model::{Adapter, CaseFile},
    outcome::{code_name, grpc_code},
    start,
};

/// The request Envoy asks about (the rest of the CheckRequest is `envoy_request`'s).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "get")]
    method: String,
    #[serde(default = "root")]
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn get() -> String {
    "GET".into()
}

fn root() -> String {
    "/".into()
}

/// What Envoy must be told.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `status` OK (`true`) or PERMISSION_DENIED (`false`).
    allowed: Option<bool>,
    /// Whether there is an `http_response` (none when the policy returned a boolean).
    http_response: Option<bool>,
    /// The denied response's HTTP status.
    http_status: Option<u16>,
    /// A part of the denied response's body.
    body: Option<String>,
    /// The call fails: a part of the gRPC error's message...
    error: Option<String>,
    /// ...and its code.
    code: Option<String>,
}

/// Runs `tests/cases/<name>` over ext_authz.
pub async fn run_file(name: &str) {
    let file: CaseFile<Input, Expect> = CaseFile::load(name, &[Adapter::ExtAuthz]);
    let mut tally = Tally::new(name, &file.about);
    for (key, cases) in file.by_server() {
        let (server, _) = start(&key).await;
        let mut client = AuthorizationClient::new(server.tcp_channel().await);
        for case in cases {
            if let Some(why) = file.skipped(case, Adapter::ExtAuthz) {
                tally.skip(&case.name, Adapter::ExtAuthz, why);
                continue;
            }
            let input = &case.input;
            let headers: Vec<(&str, &str)> = input
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let request = envoy_request(&input.method, &input.path, &headers, &input.body);
            let answer = client.check(request).await.map(|r| r.into_inner());
            let result = compare(case.expected(Adapter::ExtAuthz), &answer);
            tally.record(&case.name, Adapter::ExtAuthz, result);
        }
        server.stop().await;
    }
    tally.finish();
}

/// Checks Envoy's answer against `expect`: `Err` says what differs.
fn compare(expect: &Expect, answer: &Result<CheckResponse, tonic::Status>) -> Result<(), String> {
    let response = match (answer, &expect.error) {
        (Err(status), Some(part)) => {
            let code = grpc_code(expect.code.as_deref().ok_or("an error needs its code")?)?;
            // An error names its decision, which the decision log keeps.
            let named = status.message().starts_with("decision ");
            if status.code() != code || !named || !status.message().contains(part.as_str()) {
                return Err(format!(
                    "expected {} \"decision <id>: ...\" containing {part:?}, got {} {:?}",
                    code_name(code),
                    code_name(status.code()),
                    status.message()
                ));
            }
            return Ok(());
        }
        (Err(status), None) => {
            return Err(format!(
                "expected a response, got {} {:?}",
                code_name(status.code()),
                status.message()
            ));
        }
        (Ok(response), Some(part)) => {
            return Err(format!(
                "expected an error containing {part:?}, got {response:?}"
            ));
        }
        (Ok(response), None) => response,
    };
    let allowed = expect.allowed.ok_or("give allowed or error")?;
    let code = response.status.as_ref().map_or(-1, |s| s.code);
    let want = if allowed { 0 } else { 7 };
    if code != want {
        return Err(format!("expected status {want}, got {code}: {response:?}"));
    }
    let denied = match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => Some(denied),
        _ => None,
    };
    if let Some(present) = expect.http_response
        && present != response.http_response.is_some()
    {
        return Err(format!(
            "expected an http_response: {present}, got {response:?}"
        ));
    }
    if let Some(status) = expect.http_status {
        let got = denied.and_then(|d| d.status.as_ref()).map(|s| s.code);
        if got != Some(i32::from(status)) {
            return Err(format!("expected a {status} denial, got {response:?}"));
        }
    }
    if let Some(part) = &expect.body
        && !denied.is_some_and(|d| d.body.contains(part.as_str()))
    {
        return Err(format!(
            "expected a denial body containing {part:?}, got {response:?}"
        ));
    }
    let id = response
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get("decision_id"));
    if id.is_none() {
        return Err(format!("no decision_id in dynamic_metadata: {response:?}"));
    }
    Ok(())
}
