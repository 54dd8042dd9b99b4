//! Envoy ext_authz `Authorization/Check` over real gRPC with realistic Envoy
//! CheckRequests, against OPA-Envoy style policies: the input document, the response
//! fields, the decision log. (Allow, deny, failure and dry-run answers are API cases:
//! `tests/cases/ext_authz.toml`.)

use std::collections::HashMap;

use envoy_types::pb::{
    envoy::{
        config::core::v3::{Address, Metadata, SocketAddress, address, socket_address},
        service::auth::v3::{
            AttributeContext, CheckRequest, CheckResponse, attribute_context,
            authorization_client::AuthorizationClient, check_response::HttpResponse,
        },
    },
    google::protobuf::{self as pb, Timestamp},
};
use prost::Message;
use serde_json::{Value as Json, json};
use tonic::transport::Channel;

use super::support::{Server, strukt};

/// Echoes the whole input document into dynamic_metadata so the test can see exactly
/// what a policy sees; allows /books paths.
const ECHO: &str = r#"package envoy.authz

allow := {
	"allowed": input.parsed_path[0] == "books",
	"dynamic_metadata": {"input": input},
}
"#;

/// Exercises every response field of the object form (also used by the API cases).
const SHAPING: &str = include_str!("../cases/policies/envoy_shaping.rego");

fn envoy_struct(value: Json) -> pb::Struct {
    pb::Struct::decode(strukt(value).encode_to_vec().as_slice()).unwrap()
}

fn to_json(value: &pb::Value) -> Json {
    use pb::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(to_json).collect()),
    }
}

fn struct_json(s: &pb::Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect(),
    )
}

/// A CheckRequest as Envoy's HTTP ext_authz filter sends it (with_request_body on), from
/// the workload `spiffe://cluster.local/ns/shop/sa/frontend`.
pub(super) fn envoy_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> CheckRequest {
    let peer = |ip: &str, port: u32, principal: &str| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        principal: principal.into(),
        ..Default::default()
    };
    let mut all_headers: HashMap<String, String> = [
        (":authority", "books.shop.svc"),
        (":method", method),
        (":path", path),
        ("x-request-id", "7d3c1d6e-5e9a-4f0e-9d0e-6d1f2c3b4a59"),
        ("user-agent", "curl/8.5.0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in headers {
        all_headers.insert(k.to_string(), v.to_string());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(
                "10.1.2.3",
                51234,
                "spiffe://cluster.local/ns/shop/sa/frontend",
            )),
            destination: Some(peer(
                "10.1.9.9",
                8080,
                "spiffe://cluster.local/ns/shop/sa/books",
            )),
            request: Some(attribute_context::Request {
                time: Some(Timestamp {
                    seconds: 1_795_428_000,
                    nanos: 5,
                }),
                http: Some(attribute_context::HttpRequest {
                    id: "12345".into(),
                    method: method.into(),
                    headers: all_headers,
                    path: path.into(),
                    host: "books.shop.svc".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    size: body.len() as i64,
                    body: body.into(),
                    ..Default::default()
                }),
            }),
            context_extensions: [("virtual_host".to_string(), "books".to_string())].into(),
            metadata_context: Some(Metadata {
                filter_metadata: [(
                    "envoy.filters.http.jwt_authn".to_string(),
                    envoy_struct(json!({"payload": {"sub": "alice", "scope": ["read"]}})),
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn client(server: &Server) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(server.tcp_channel().await)
}

async fn check(server: &Server, request: CheckRequest) -> Result<CheckResponse, tonic::Status> {
    client(server)
        .await
        .check(request)
        .await
        .map(|r| r.into_inner())
}

fn code(response: &CheckResponse) -> i32 {
    response.status.as_ref().map_or(-1, |s| s.code)
}

fn decision_id(response: &CheckResponse) -> String {
    let metadata = response
        .dynamic_metadata
        .as_ref()
        .expect("dynamic_metadata");
    match to_json(&metadata.fields["decision_id"]) {
        Json::String(id) => id,
        other => panic!("decision_id is {other}"),
    }
}

#[tokio::test]
async fn the_input_is_the_opa_envoy_plugins_and_the_caller_is_the_transports() {
    let server = Server::start(&[("envoy.rego", ECHO)]).await;
    let body = r#"{"title": "Dune", "pages": 412}"#;
    let length = body.len().to_string();
    let mut request = envoy_request(
        "POST",
        "/books/new%20releases?limit=10&tag=sci-fi&tag=classic&q=a+b",
        &[
            ("content-type", "application/json"),
            ("content-length", &length),
            // Spoofing attempts: none of these may become input.caller.
            (
                "x-forwarded-client-cert",
                "By=spiffe://evil;URI=spiffe://cluster.local/ns/admin/sa/root",
            ),
            ("x-spiffe-id", "spiffe://cluster.local/ns/admin/sa/root"),
            ("authorization", "Bearer admin"),
        ],
        body,
    );
    let mut client = client(&server).await;
    let mut call = tonic::Request::new(request.clone());
    call.metadata_mut().insert(
        "x-spiffe-id",
        "spiffe://cluster.local/ns/admin/sa/root".parse().unwrap(),
    );
    call.metadata_mut().insert(
        "x-forwarded-client-cert",
        "URI=spiffe://cluster.local/ns/admin/sa/root"
            .parse()
            .unwrap(),
    );
    let response = client.check(call).await.unwrap().into_inner();
    assert_eq!(code(&response), 0, "{response:?}");
    let metadata = struct_json(response.dynamic_metadata.as_ref().unwrap());
    let input = &metadata["input"];

    let attributes = &input["attributes"];
    let http = &attributes["request"]["http"];
    assert_eq!(http["method"], "POST");
    assert_eq!(http["headers"]["content-type"], "application/json");
    assert_eq!(http["headers"][":authority"], "books.shop.svc");
    assert_eq!(
        http["path"],
        "/books/new%20releases?limit=10&tag=sci-fi&tag=classic&q=a+b"
    );
    assert_eq!(http["size"], json!(body.len()));
    assert_eq!(http["body"], body);
    assert_eq!(http["protocol"], "HTTP/1.1");
    assert_eq!(
        attributes["source"]["principal"],
        "spiffe://cluster.local/ns/shop/sa/frontend"
    );
    assert_eq!(
        attributes["source"]["address"]["socketAddress"],
        json!({"address": "10.1.2.3", "portValue": 51234})
    );
    assert_eq!(
        attributes["request"]["time"],
        json!({"seconds": 1_795_428_000, "nanos": 5})
    );
    assert_eq!(
        attributes["contextExtensions"],
        json!({"virtual_host": "books"})
    );
    assert_eq!(
        attributes["metadataContext"]["filterMetadata"]["envoy.filters.http.jwt_authn"]["payload"]
            ["sub"],
        "alice"
    );
    assert_eq!(input["parsed_path"], json!(["books", "new releases"]));
    assert_eq!(
        input["parsed_query"],
        json!({"limit": ["10"], "tag": ["sci-fi", "classic"], "q": ["a b"]})
    );
    assert_eq!(input["parsed_body"], json!({"title": "Dune", "pages": 412}));
    assert_eq!(input["truncated_body"], json!(false));
    assert_eq!(
        input["version"],
        json!({"ext_authz": "v3", "encoding": "protojson"})
    );
    assert_eq!(
        input["source_principal"],
        "spiffe://cluster.local/ns/shop/sa/frontend"
    );
    // The caller is the plaintext TCP peer: anonymous, whatever the request says.
    assert_eq!(
        input["caller"],
        json!({"id": "anonymous", "authenticated": false, "via": "tcp"})
    );
    assert!(!decision_id(&response).is_empty());

    // A body cut short by Envoy's max_request_bytes is flagged, not parsed; form
    // bodies are parsed into lists of values.
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers
        .insert("content-length".into(), "100000".into());
    let response = check(&server, request.clone()).await.unwrap();
    let input = &struct_json(response.dynamic_metadata.as_ref().unwrap())["input"];
    assert_eq!(
        (&input["truncated_body"], &input["parsed_body"]),
        (&json!(true), &Json::Null)
    );
    let form = envoy_request(
        "POST",
        "/books",
        &[("content-type", "application/x-www-form-urlencoded")],
        "title=Dune&tag=a&tag=b+c",
    );
    let response = check(&server, form).await.unwrap();
    let input = &struct_json(response.dynamic_metadata.as_ref().unwrap())["input"];
    assert_eq!(
        input["parsed_body"],
        json!({"title": ["Dune"], "tag": ["a", "b c"]})
    );
    server.stop().await;
}

#[tokio::test]
async fn the_object_form_shapes_allowed_and_denied_responses() {
    let server = Server::start(&[("envoy.rego", SHAPING)]).await;
    let allowed = check(
        &server,
        envoy_request(
            "GET",
            "/books?debug=1",
            &[("authorization", "Bearer good")],
            "",
        ),
    )
    .await
    .unwrap();
    assert_eq!(code(&allowed), 0);
    let Some(HttpResponse::OkResponse(ok)) = &allowed.http_response else {
        panic!("no ok_response: {allowed:?}");
    };
    let headers: Vec<(&str, &str)> = ok
        .headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.as_str(), h.value.as_str())
        })
        .collect();
    assert_eq!(
        headers,
        [
            ("x-user", "alice"),
            ("x-role", "reader"),
            ("x-role", "auditor")
        ]
    );
    assert_eq!(ok.headers_to_remove, ["x-debug"]);
    let added = ok.response_headers_to_add[0].header.as_ref().unwrap();
    assert_eq!(
        (added.key.as_str(), added.value.as_str()),
        ("x-served-by", "stepgate")
    );
    let set: Vec<(&str, &str)> = ok
        .query_parameters_to_set
        .iter()
        .map(|q| (q.key.as_str(), q.value.as_str()))
        .collect();
    assert_eq!(set, [("tag", "a"), ("tag", "b"), ("tenant", "t1")]);
    assert_eq!(ok.query_parameters_to_remove, ["debug"]);
    let metadata = struct_json(allowed.dynamic_metadata.as_ref().unwrap());
    assert_eq!(metadata["policy"], "shaping");
    assert!(
        !decision_id(&allowed).is_empty(),
        "decision id beside the policy's metadata"
    );

    let denied = check(&server, envoy_request("GET", "/books", &[], ""))
        .await
        .unwrap();
    assert_eq!(code(&denied), 7, "PERMISSION_DENIED");
    let Some(HttpResponse::DeniedResponse(no)) = &denied.http_response else {
        panic!("no denied_response: {denied:?}");
    };
    assert_eq!(no.status.as_ref().unwrap().code, 401);
    assert_eq!(no.body, "login first");
    assert_eq!(
        no.headers[0].header.as_ref().unwrap().key,
        "www-authenticate"
    );
    assert_ne!(decision_id(&denied), decision_id(&allowed));
    server.stop().await;
}

#[tokio::test]
async fn every_adapters_decisions_reach_the_decision_log() {
    use stepgate::audit::Destination;
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("decisions.jsonl");
    let log = path.clone();
    let authzen_policy = "package stepgate\n\ndecision := {\"allow\": input.action == \"can_read\", \"reasons\": [\"authzen\"]}\n";
    let server = Server::start_with(
        &[("envoy.rego", SHAPING), ("stepgate.rego", authzen_policy)],
        move |config| {
            config.envoy_dry_run = true;
            config.audit.destination = Destination::File(log);
        },
    )
    .await;
    // Envoy, in dry run: Envoy is told OK, the log keeps the real deny.
    let envoy = check(&server, envoy_request("GET", "/books", &[], ""))
        .await
        .unwrap();
    assert_eq!(code(&envoy), 0);
    let envoy_id = decision_id(&envoy);
    // The OPA REST Data API and AuthZEN.
    let http = server.http.unwrap();
    let opa = super::support::http_request(
        http,
        "POST",
        "/v1/data/envoy/authz/allow",
        &[("content-type", "application/json")],
        r#"{"input": {"attributes": {"request": {"http": {"headers": {"authorization": "Bearer good"}}}}}}"#,
    )
    .await
    .json();
    assert_eq!(opa["result"]["allowed"], json!(true));
    let authzen = super::support::http_request(
        http,
        "POST",
        "/access/v1/evaluation",
        &[("content-type", "application/json")],
        r#"{"subject": {"type": "user", "id": "alice"}, "action": {"name": "can_read"}}"#,
    )
    .await
    .json();
    assert_eq!(authzen["decision"], json!(true));
    server.stop().await;

    let records: Vec<Json> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let record = |id: &str| {
        records
            .iter()
            .find(|r| r["decision_id"] == id)
            .unwrap_or_else(|| panic!("decision {id} not logged: {records:?}"))
    };
    let envoy_record = record(&envoy_id);
    assert_eq!(
        envoy_record["allow"],
        json!(false),
        "the real decision is recorded"
    );
    assert_eq!(envoy_record["caller"]["id"], "anonymous");
    assert_eq!(
        record(opa["decision_id"].as_str().unwrap())["allow"],
        json!(true)
    );
    let authzen_record = record(authzen["context"]["decision_id"].as_str().unwrap());
    assert_eq!(authzen_record["step"], "use");
    assert_eq!(authzen_record["reasons"], json!(["authzen"]));
}

/// A request the input cannot be built from is answered with the plugin's 400 denial and
/// logged as the deny it is: its reason, an empty input, no evaluation time (the policy,
/// which allows everything, was not asked).
#[tokio::test]
async fn a_request_without_an_input_is_logged_as_a_deny_and_not_evaluated() {
    use stepgate::audit::Destination;
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("decisions.jsonl");
    let log = path.clone();
    let server = Server::start_with(
        &[("envoy.rego", "package envoy.authz\n\nallow := true\n")],
        move |config| config.audit.destination = Destination::File(log),
    )
    .await;
    let denied = check(&server, envoy_request("GET", "/books%zz", &[], ""))
        .await
        .unwrap();
    assert_eq!(code(&denied), 7);
    let id = decision_id(&denied);
    server.stop().await;

    let records = std::fs::read_to_string(&path).unwrap();
    let record: Json = records
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .find(|r| r["decision_id"] == id.as_str())
        .unwrap_or_else(|| panic!("decision {id} not logged: {records}"));
    assert_eq!(record["allow"], json!(false));
    assert_eq!(
        record["reasons"],
        json!(["attributes.request.http.path: invalid URL escape in the path"])
    );
    assert_eq!(record["input"], json!({}));
    assert_eq!(record["eval_us"], json!(0));
}
