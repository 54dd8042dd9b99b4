//! The deployments' stepgate containers, run: the real binary with each container's
//! arguments and environment (paths moved into a temp dir, ports made ephemeral), called
//! the way the deployment's other parts call it.

use std::net::SocketAddr;

use serde_json::Value;
use stepgate::proto::v1::{CheckRequest, decision_service_client::DecisionServiceClient};
use tokio::process::Command;
use tonic::{Code, transport::Endpoint};

use super::{
    deploy::manifests::{ISTIO_POD, POD, container, kind, policy_configmap, yaml_docs},
    ext_authz::envoy_request,
    process::{BIN, ServeProcess},
    support::http_request,
};

/// The stepgate container of the Deployment in `manifest`.
fn stepgate_container(manifest: &str) -> Value {
    let docs = yaml_docs(manifest);
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    container(pod, "stepgate").clone()
}

/// Runs `container` as its image would (`stepgate` with its `args`), with its
/// `STEPGATE_*` variables and nothing else from the environment (spans are not
/// exported: there is no collector here). Policies come from the ConfigMap as kubectl
/// builds it, kept in `dir` with the socket and the state; a listener keeps its host
/// and gets an ephemeral port.
async fn run_as_deployed(container: &Value, dir: &tempfile::TempDir) -> ServeProcess {
    let policies = policy_configmap(dir.path());
    let dir = dir.path();
    let mut command = Command::new(BIN);
    command.env_clear();
    for arg in container["args"].as_array().unwrap() {
        command.arg(arg.as_str().unwrap());
    }
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = var["value"].as_str().unwrap();
        let value = match name {
            "STEPGATE_POLICIES" => policies.display().to_string(),
            "STEPGATE_GRPC_UDS" => dir.join("stepgate.sock").display().to_string(),
            "STEPGATE_STATE_DIR" => dir.join("state").display().to_string(),
            "STEPGATE_GRPC_ADDR" | "STEPGATE_HTTP_ADDR" if !value.is_empty() => {
                let addr: SocketAddr = value.parse().unwrap();
                SocketAddr::new(addr.ip(), 0).to_string()
            }
            _ if name.starts_with("STEPGATE_") => value.to_string(),
            _ => continue,
        };
        command.env(name, value);
    }
    ServeProcess::start(command).await
}

/// The address to call a listener bound to `addr` on (0.0.0.0 is reached on loopback).
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// The sidecar pod's stepgate on the pod IP: the kubelet gets `/health`, Prometheus
/// `/metrics`, and every decision API of that listener refuses the callers who can
/// reach it there (anonymous HTTP callers); gRPC has no TCP listener at all.
#[tokio::test]
async fn the_pods_http_listener_serves_probes_and_metrics_and_no_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let stepgate = run_as_deployed(&stepgate_container(POD), &dir).await;
    assert_eq!(stepgate.grpc, None, "{}", stepgate.log());
    let http = stepgate.http.expect("an HTTP listener");
    assert!(http.ip().is_unspecified(), "{http}");
    let http = reachable(http);

    let health = http_request(http, "GET", "/health", &[], "").await;
    assert_eq!((health.status, health.body.as_str()), (200, "{}"));
    let metrics = http_request(http, "GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("stepgate_decisions_total"));

    let input = r#"{"input": {"step": "use", "subject": {"id": "s"}, "action": "read"}}"#;
    for (method, path, body) in [
        ("POST", "/v1/data/stepgate/decision", input),
        ("GET", "/v1/data/stepgate/decision", ""),
        ("POST", "/v0/data/stepgate/decision", "{}"),
        ("POST", "/", "{}"),
        ("GET", "/v1/policies", ""),
        (
            "POST",
            "/access/v1/evaluation",
            r#"{"subject": {"type": "t", "id": "s"}, "action": {"name": "read"}, "resource": {"type": "t", "id": "r"}}"#,
        ),
        ("POST", "/access/v1/evaluations", r#"{"evaluations": []}"#),
    ] {
        let reply = http_request(http, method, path, &[], body).await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.body);
    }
    assert!(stepgate.stop().await.success());
}

/// The Istio example's stepgate, called as the istio-proxy calls it (plain TCP on
/// loopback, no client certificate): ext_authz answers are the policy's, allow and
/// deny alike, never the allow-list's refusal; the stepgate.v1 services stay shut to
/// that caller.
#[tokio::test]
async fn the_istio_proxy_gets_the_policys_answers() {
    let dir = tempfile::tempdir().unwrap();
    let stepgate = run_as_deployed(&stepgate_container(ISTIO_POD), &dir).await;
    let grpc = stepgate.grpc.expect("a gRPC TCP listener");
    assert!(grpc.ip().is_loopback(), "{grpc}");
    let channel = Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut authz =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            channel.clone(),
        );

    let reader = envoy_request("GET", "/books/42", &[], "");
    let reply = authz
        .check(reader.clone())
        .await
        .expect("no allow-list refusal");
    assert_eq!(reply.into_inner().status.unwrap().code, Code::Ok as i32);

    let mut stranger = reader;
    let source = stranger
        .attributes
        .as_mut()
        .unwrap()
        .source
        .as_mut()
        .unwrap();
    source.principal = "spiffe://cluster.local/ns/shop/sa/stranger".into();
    let reply = authz.check(stranger).await.expect("no allow-list refusal");
    let reply = reply.into_inner();
    assert_eq!(reply.status.unwrap().code, Code::PermissionDenied as i32);
    assert!(reply.http_response.is_some(), "the policy's denial");

    let refused = DecisionServiceClient::new(channel)
        .check(CheckRequest {
            step: "use".into(),
            action: "read".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(stepgate.stop().await.success());
}
