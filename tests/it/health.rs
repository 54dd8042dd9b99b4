//! Health transitions, reflection, and graceful drain.

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use super::support::{ECHO_POLICY, Server, request};

async fn status(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> ServingStatus {
    let response = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

#[tokio::test]
async fn health_is_serving_only_once_policies_are_loaded() {
    let mut server = Server::bound(&[("p.rego", ECHO_POLICY)], |_| {}).await;
    let mut health = HealthClient::new(server.tcp_channel().await);
    for service in ["", "stepgate.v1.DecisionService"] {
        assert_eq!(
            status(&mut health, service).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );

    server.app.as_mut().unwrap().load_policies().await.unwrap();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    for service in ["", "stepgate.v1.DecisionService"] {
        assert_eq!(
            status(&mut health, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Shutdown reports NOT_SERVING to watchers before the listeners close; the open
    // watch stream cannot hold shutdown past its grace period.
    let app = server.app.take().unwrap();
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(app.shutdown());
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    stopping.await.unwrap().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_rejected_initial_set_leaves_health_not_serving() {
    let mut server =
        Server::bound(&[("p.rego", "package stepgate\ndecision := {\n")], |_| {}).await;
    let err = server
        .app
        .as_mut()
        .unwrap()
        .load_policies()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("p.rego:"), "{err}");
    let mut health = HealthClient::new(server.tcp_channel().await);
    assert_eq!(status(&mut health, "").await, ServingStatus::NotServing);
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_and_describes_the_services() {
    let server = Server::start(&[("p.rego", ECHO_POLICY)]).await;
    let mut reflection = ServerReflectionClient::new(server.tcp_channel().await);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "stepgate.v1.GrantService".into(),
            )),
        },
    ];
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "stepgate.v1.DecisionService",
        "stepgate.v1.GrantService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a file descriptor");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    server.stop().await;
}

/// `message` as one gRPC length-prefixed message.
fn grpc_frame(message: &impl prost::Message) -> hyper::body::Bytes {
    let body = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&body);
    frame.into()
}

#[tokio::test]
async fn shutdown_drains_in_flight_calls() {
    let mut server = Server::start(&[("p.rego", ECHO_POLICY)]).await;
    let mut health = HealthClient::new(server.tcp_channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    // A Check opened on its own HTTP/2 connection, its message held back.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (calls, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut ping_pong = connection
        .ping_pong()
        .expect("the connection's only ping_pong");
    tokio::spawn(connection);
    let mut calls = calls.ready().await.unwrap();
    let check = http::Request::post(format!(
        "http://{}/stepgate.v1.DecisionService/Check",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut message) = calls.send_request(check, false).unwrap();
    // The server acknowledges a PING only after every frame sent before it: the call's
    // HEADERS are in, so the call is in flight before shutdown starts.
    ping_pong.ping(h2::Ping::opaque()).await.unwrap();

    let stopping = tokio::spawn(server.app.take().unwrap().shutdown());
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32,
        "shutdown has begun"
    );
    // Only now does the call's message go out: its answer can only come from a drain.
    message
        .send_data(grpc_frame(&request("read")), true)
        .unwrap();
    let response = response.await.expect("the in-flight call is answered");
    // Its trailers are still to come, so a shutdown that drains is still waiting for it.
    assert!(
        !stopping.is_finished(),
        "shutdown returned with a call in flight"
    );
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("gRPC trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    let reply = <stepgate::proto::v1::CheckResponse as prost::Message>::decode(
        bytes.get(5..).expect("a length-prefixed message"),
    )
    .unwrap();
    assert!(reply.decision.unwrap().allow);
    stopping.await.unwrap().unwrap();

    // Nothing is accepted afterwards.
    assert!(
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .is_err()
    );
}
