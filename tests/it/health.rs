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

#[tokio::test]
async fn shutdown_drains_in_flight_calls() {
    // A policy slow enough (~tens of ms in a debug build) to be in flight when shutdown starts.
    let slow = "package stepgate\ndecision := {\"allow\": count([x | some x in numbers.range(1, 200000); x > 0]) > 0}\n";
    let mut server = Server::start_with(&[("p.rego", slow)], |c| {
        c.policy.eval_limits.max_instructions = usize::MAX;
        c.policy.eval_limits.timeout = std::time::Duration::from_secs(30);
    })
    .await;
    let mut client = server.client().await;
    let in_flight = tokio::spawn(async move { client.check(request("read")).await });
    tokio::task::yield_now().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    server.app.take().unwrap().shutdown().await.unwrap();
    let decision = in_flight
        .await
        .unwrap()
        .expect("in-flight call completes")
        .into_inner()
        .decision
        .unwrap();
    assert!(decision.allow);
    // Nothing is accepted afterwards.
    assert!(
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .is_err()
    );
}
