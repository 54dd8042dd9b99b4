//! Malformed requests on the wire, sent as raw gRPC frames: every gRPC service answers a
//! body that is not its request message with `INVALID_ARGUMENT` naming what failed (and
//! changes nothing), and a request that is not gRPC with HTTP 415.

use bytes::{Buf, BufMut};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest as EnvoyCheckRequest, attribute_context,
};
use prost::Message;
use prost_types::{Struct, Value, value::Kind};
use stepgate::proto::v1::{BatchCheckRequest, Context, RequestGrantRequest, Resource, Subject};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{Service, http},
    transport::Channel,
};
use tonic_health::pb::HealthCheckRequest;

use tower::ServiceExt;

use super::support::{ECHO_POLICY, Server, request};

/// The decision policy, and an Envoy one allowing everything.
const POLICIES: [(&str, &str); 2] = [
    ("p.rego", ECHO_POLICY),
    ("envoy.rego", "package envoy.authz\n\nallow := true\n"),
];

/// Passes bytes through as the message, so a test can send any body in a valid frame.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A unary call of `path` with `body` as the message.
async fn call(channel: &Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    grpc.unary(
        Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The string every valid request below carries, to corrupt or cut it.
const MARKER: &[u8] = b"marker-string";

/// A `Struct` of `depth` levels of `Struct`, the outermost included.
fn nested(depth: usize) -> Struct {
    let mut inner = Struct::default();
    for _ in 1..depth {
        inner = Struct {
            fields: [(
                "a".to_string(),
                Value {
                    kind: Some(Kind::StructValue(inner)),
                },
            )]
            .into(),
        };
    }
    inner
}

fn marker() -> String {
    String::from_utf8(MARKER.to_vec()).unwrap()
}

fn check(attributes: Option<Struct>) -> stepgate::proto::v1::CheckRequest {
    let mut check = request(&marker());
    check.context = Some(Context {
        attributes,
        ..Context::default()
    });
    check
}

fn grant_request(attributes: Option<Struct>) -> RequestGrantRequest {
    RequestGrantRequest {
        subject: Some(Subject {
            id: "svc-a".into(),
            ..Subject::default()
        }),
        action: "read".into(),
        resource: Some(Resource {
            r#type: "db".into(),
            id: marker(),
            attributes,
        }),
        ..RequestGrantRequest::default()
    }
}

fn envoy_check(attributes: Option<Struct>) -> Vec<u8> {
    let mut bytes = EnvoyCheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: format!("/{}", marker()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
    .encode_to_vec();
    if let Some(attributes) = attributes {
        // envoy-types' `Struct` cannot hold what prost refuses to decode: the Struct goes
        // in through mirrors of the fields that lead to it, merged into `attributes` as
        // protobuf merges a message field given twice.
        bytes.extend(
            EnvoyAttributesWire {
                attributes: Some(AttributeContextWire {
                    metadata_context: Some(MetadataWire {
                        filter_metadata: [("x".to_string(), attributes)].into(),
                    }),
                }),
            }
            .encode_to_vec(),
        );
    }
    bytes
}

/// `CheckRequest.attributes` (field 1) of Envoy's CheckRequest.
#[derive(Clone, PartialEq, Message)]
struct EnvoyAttributesWire {
    #[prost(message, optional, tag = "1")]
    attributes: Option<AttributeContextWire>,
}

/// `AttributeContext.metadata_context` (field 11).
#[derive(Clone, PartialEq, Message)]
struct AttributeContextWire {
    #[prost(message, optional, tag = "11")]
    metadata_context: Option<MetadataWire>,
}

/// `Metadata.filter_metadata` (field 1).
#[derive(Clone, PartialEq, Message)]
struct MetadataWire {
    #[prost(map = "string, message", tag = "1")]
    filter_metadata: std::collections::HashMap<String, Struct>,
}

/// A service's method and its request, valid, carrying [`MARKER`] and, when the message
/// can hold one, a `Struct` nested `depth` levels.
struct Target {
    path: &'static str,
    valid: fn(Option<Struct>) -> Vec<u8>,
    /// How deep a `Struct` in the request may nest.
    nests: Nests,
}

/// How deep a request's `Struct` may nest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nests {
    /// The request has no `Struct`.
    No,
    /// As deep as prost decodes (Envoy's attributes, which stepgate does not validate).
    UpToProstsLimit,
    /// 32 levels: stepgate.v1's documented limit.
    UpTo32,
}

const TARGETS: [Target; 5] = [
    Target {
        path: "/stepgate.v1.DecisionService/Check",
        valid: |s| check(s).encode_to_vec(),
        nests: Nests::UpTo32,
    },
    Target {
        path: "/stepgate.v1.DecisionService/BatchCheck",
        valid: |s| {
            BatchCheckRequest {
                checks: vec![check(s)],
            }
            .encode_to_vec()
        },
        nests: Nests::UpTo32,
    },
    Target {
        path: "/stepgate.v1.GrantService/RequestGrant",
        valid: |s| grant_request(s).encode_to_vec(),
        nests: Nests::UpTo32,
    },
    Target {
        path: "/envoy.service.auth.v3.Authorization/Check",
        valid: envoy_check,
        nests: Nests::UpToProstsLimit,
    },
    Target {
        path: "/grpc.health.v1.Health/Check",
        valid: |_| HealthCheckRequest { service: marker() }.encode_to_vec(),
        nests: Nests::No,
    },
];

/// Where [`MARKER`] starts in `bytes`.
fn marker_at(bytes: &[u8]) -> usize {
    bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("the request carries the marker")
}

/// 64 bytes from a fixed xorshift sequence: what a confused or hostile peer sends.
fn random_bytes() -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..64)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// `valid` with an unknown field (95) of 101 groups nested in each other: past prost's
/// recursion limit in any message.
fn with_nested_groups(mut valid: Vec<u8>) -> Vec<u8> {
    const DEPTH: usize = 101;
    for _ in 0..DEPTH {
        valid.extend_from_slice(&[0xFB, 0x05]); // field 95, start group
    }
    for _ in 0..DEPTH {
        valid.extend_from_slice(&[0xFC, 0x05]); // field 95, end group
    }
    valid
}

/// The malformed bodies for `target`, each with the fragment its refusal must carry.
fn malformed(target: &Target) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let valid = (target.valid)(None);
    let at = marker_at(&valid);
    let mut invalid_utf8 = valid.clone();
    invalid_utf8[at + 1] = 0xFF;
    let mut cases = vec![
        (
            "random bytes",
            random_bytes(),
            "request: invalid protobuf: ",
        ),
        (
            "truncated",
            valid[..at + 3].to_vec(),
            "request: invalid protobuf: buffer underflow",
        ),
        (
            "invalid UTF-8",
            invalid_utf8,
            "request: invalid UTF-8 in a string field (at ",
        ),
        (
            "groups nested past prost's limit",
            with_nested_groups(valid.clone()),
            "request: nested too deeply",
        ),
    ];
    if target.nests != Nests::No {
        let past_prost = (target.valid)(Some(nested(60)));
        cases.push((
            "Struct nested past prost's limit",
            past_prost,
            "nested too deeply",
        ));
    }
    if target.nests == Nests::UpTo32 {
        let past_32 = (target.valid)(Some(nested(33)));
        cases.push(("Struct nested 33 deep", past_32, "nested too deeply"));
    }
    cases
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_on_every_service() {
    let server = Server::start(&POLICIES).await;
    let channel = server.uds_channel().await;
    for target in &TARGETS {
        // The valid request is decoded (health answers NOT_FOUND for the unknown
        // service it names), so a refusal below is the body's doing.
        if let Err(status) = call(&channel, target.path, (target.valid)(None)).await {
            assert_eq!(status.code(), Code::NotFound, "{}: {status:?}", target.path);
        }
        for (case, body, fragment) in malformed(target) {
            let status = call(&channel, target.path, body)
                .await
                .map(|_| panic!("{} with {case}: answered", target.path))
                .unwrap_err();
            assert_eq!(
                (status.code(), status.message().contains(fragment)),
                (Code::InvalidArgument, true),
                "{} with {case}: {status:?} (expected {fragment:?})",
                target.path,
            );
        }
    }
    // The valid RequestGrant made the one grant; no malformed one changed anything.
    assert_eq!(server.app().grants().stats().grants, 1);
    server.stop().await;
}

/// Sends `messages` on server reflection's stream at `path`: the responses, or how the
/// call ended.
async fn reflect(
    channel: &Channel,
    path: &'static str,
    messages: Vec<Vec<u8>>,
) -> Result<usize, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let mut responses = grpc
        .streaming(
            Request::new(tokio_stream::iter(messages)),
            http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await?
        .into_inner();
    let mut count = 0;
    while responses.message().await?.is_some() {
        count += 1;
    }
    Ok(count)
}

#[tokio::test]
async fn malformed_reflection_requests_are_invalid_argument() {
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request};
    let server = Server::start(&POLICIES).await;
    let channel = server.uds_channel().await;
    let list = ServerReflectionRequest {
        host: marker(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    }
    .encode_to_vec();
    let mut invalid_utf8 = list.clone();
    invalid_utf8[marker_at(&list) + 1] = 0xFF;
    for path in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        // v1alpha's request has v1's wire format.
        let answered = reflect(&channel, path, vec![list.clone()]).await;
        assert_eq!(answered.ok(), Some(1), "{path}");
        for (case, body, fragment) in [
            (
                "random bytes",
                random_bytes(),
                "request: invalid protobuf: ",
            ),
            (
                "invalid UTF-8",
                invalid_utf8.clone(),
                "request: invalid UTF-8",
            ),
            (
                "nested groups",
                with_nested_groups(list.clone()),
                "request: nested too deeply",
            ),
        ] {
            let status = reflect(&channel, path, vec![list.clone(), body])
                .await
                .map(|_| panic!("{path} with {case}: answered"))
                .unwrap_err();
            assert_eq!(
                (status.code(), status.message().contains(fragment)),
                (Code::InvalidArgument, true),
                "{path} with {case}: {status:?}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_struct_32_levels_deep_is_accepted() {
    let server = Server::start(&POLICIES).await;
    let channel = server.uds_channel().await;
    for target in TARGETS.iter().filter(|t| t.nests != Nests::No) {
        call(&channel, target.path, (target.valid)(Some(nested(32))))
            .await
            .unwrap_or_else(|status| panic!("{}: {status:?}", target.path));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_is_not_grpc_is_refused_with_415() {
    let server = Server::start(&POLICIES).await;
    for channel in [server.tcp_channel().await, server.uds_channel().await] {
        for content_type in [Some("text/plain"), Some("application/json"), None] {
            let mut request = http::Request::builder()
                .method("POST")
                .uri(format!("http://localhost{}", TARGETS[0].path))
                .header("te", "trailers");
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let body = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(
                check(None).encode_to_vec(),
            )));
            let response = channel
                .clone()
                .ready_oneshot()
                .await
                .unwrap()
                .call(request.body(body).unwrap())
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}"
            );
            assert_eq!(response.headers()["grpc-status"], "3");
        }
    }
    server.stop().await;
}
