//! Check and BatchCheck over real gRPC, what the API cases (`tests/cases`, run by
//! `cases.rs`) do not cover: a decision's evidence on the wire, the caller and time from
//! the transport, batch order, bounds and refused items, answers before a policy loads.

use stepgate::proto::v1::{BatchCheckRequest, decision_service_client::DecisionServiceClient};
use tonic::{Code, metadata::MetadataValue};

use super::support::{ECHO_POLICY, Server, decide, my_uid, request, strukt};

#[tokio::test]
async fn allow_and_deny_carry_evidence() {
    let server = Server::start(&[("p.rego", ECHO_POLICY)]).await;
    let mut client = server.client().await;

    let allowed = decide(&mut client, "read").await;
    assert!(allowed.allow);
    assert_eq!(
        allowed.obligations.as_ref().unwrap().fields["seen_subject"],
        strukt(serde_json::json!({"x": "svc-a"})).fields["x"]
    );
    assert!(allowed.policy_revision.starts_with("sha256:"));
    assert_eq!(
        uuid::Uuid::parse_str(&allowed.decision_id)
            .unwrap()
            .get_version_num(),
        7
    );
    assert_eq!(
        allowed.decided_at.unwrap().seconds,
        server.clock_now().timestamp()
    );

    let denied = decide(&mut client, "write").await;
    assert!(!denied.allow);
    assert_ne!(denied.decision_id, allowed.decision_id);
    server.stop().await;
}

#[tokio::test]
async fn the_server_sets_time_and_caller_from_the_transport() {
    let server = Server::start(&[("p.rego", ECHO_POLICY)]).await;

    // Plain TCP: anonymous, whatever the metadata claims.
    let mut tcp = server.client().await;
    let mut spoofed = tonic::Request::new(request("read"));
    for header in ["x-spiffe-id", "x-forwarded-client-cert", "authorization"] {
        spoofed
            .metadata_mut()
            .insert(header, MetadataValue::from_static("spiffe://evil/admin"));
    }
    let reasons = tcp
        .check(spoofed)
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap()
        .reasons;
    assert_eq!(reasons, ["anonymous", "tcp", "2026-11-23T10:00:00Z", "use"]);

    // Unix socket: the peer's uid.
    let mut uds = DecisionServiceClient::new(server.uds_channel().await);
    let reasons = decide(&mut uds, "read").await.reasons;
    assert_eq!(reasons[0], format!("uds:uid={}", my_uid()));
    assert_eq!(reasons[1], "uds");

    // Time moves with the server's clock, not the caller.
    server.clock.advance(chrono::TimeDelta::minutes(5));
    let reasons = decide(&mut tcp, "read").await.reasons;
    assert_eq!(reasons[2], "2026-11-23T10:05:00Z");
    server.stop().await;
}

/// What a case (`tests/cases`) cannot say: a refused item is named by its place in its
/// batch, and a batch has a maximum.
#[tokio::test]
async fn a_batch_names_its_refused_item_and_has_a_maximum() {
    let server = Server::start(&[("p.rego", ECHO_POLICY)]).await;
    let mut client = server.client().await;
    let checks = vec![request("read"), request("read"), request("")];
    let status = client
        .batch_check(BatchCheckRequest { checks })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "checks[2].action: required")
    );

    let checks = vec![request("read"); 9];
    let status = client
        .batch_check(BatchCheckRequest { checks })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "checks: 9 checks is over the maximum of 8"
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn batch_keeps_order_and_decides_each_independently() {
    let server = Server::start(&[("p.rego", ECHO_POLICY)]).await;
    let mut client = server.client().await;
    for size in [1usize, 3, 8] {
        let checks: Vec<_> = (0..size)
            .map(|i| {
                let mut req = request(if i % 3 == 0 { "read" } else { "write" });
                req.subject.as_mut().unwrap().id = format!("svc-{i}");
                req
            })
            .collect();
        let decisions = client
            .batch_check(BatchCheckRequest { checks })
            .await
            .unwrap()
            .into_inner()
            .decisions;
        assert_eq!(decisions.len(), size);
        for (i, decision) in decisions.iter().enumerate() {
            assert_eq!(decision.allow, i % 3 == 0, "item {i}");
            let seen = &decision.obligations.as_ref().unwrap().fields["seen_subject"];
            assert_eq!(
                seen.kind,
                Some(prost_types::value::Kind::StringValue(format!("svc-{i}")))
            );
        }
        let mut ids: Vec<_> = decisions.iter().map(|d| d.decision_id.clone()).collect();
        ids.dedup();
        assert_eq!(ids.len(), size, "every decision has its own id");
    }
    let empty = client
        .batch_check(BatchCheckRequest { checks: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.decisions.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn decisions_before_policies_load_deny() {
    let mut server = Server::bound(&[("p.rego", ECHO_POLICY)], |_| {}).await;
    let mut client = server.client().await;
    let decision = decide(&mut client, "read").await;
    assert!(!decision.allow);
    assert_eq!(decision.policy_revision, "none");
    server.app.as_mut().unwrap().load_policies().await.unwrap();
    assert!(decide(&mut client, "read").await.allow);
    server.stop().await;
}
