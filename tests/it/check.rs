//! Check and BatchCheck over real gRPC: decisions, the input document, fail-closed
//! cases, validation, limits, batch order.

use stepgate::proto::v1::{
    BatchCheckRequest, CheckRequest, Context, Subject,
    decision_service_client::DecisionServiceClient,
};
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

#[tokio::test]
async fn every_fail_closed_path_denies_with_its_reason() {
    let policy = r#"package stepgate

decision := {"allow": true} if input.action == "ok"
decision := "yes" if input.action == "string"
decision := {"allow": "true"} if input.action == "not_bool"
decision := {"allow": true, "reasons": "x"} if input.action == "bad_reasons"
decision := {"allow": count([x | some x in numbers.range(1, 1000000)]) > 0} if input.action == "loop"
decision := {"allow": input.subject.attributes.n + "a"} if input.action == "error"
"#;
    let server = Server::start_with(&[("p.rego", policy)], |c| {
        c.policy.eval_limits.max_instructions = 10_000
    })
    .await;
    let mut client = server.client().await;
    let cases = [
        ("undefined", "undefined"),
        ("string", "not an object"),
        ("not_bool", "boolean \"allow\""),
        ("bad_reasons", "\"reasons\""),
        ("loop", "limit exceeded"),
        ("error", ""),
    ];
    for (action, reason) in cases {
        let mut req = request(action);
        req.subject.as_mut().unwrap().attributes = Some(strukt(serde_json::json!({"n": 1})));
        let decision = client
            .check(req)
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap();
        assert!(!decision.allow, "{action} must deny");
        assert!(!decision.reasons.is_empty(), "{action} must say why");
        assert!(
            decision.reasons.iter().any(|r| r.contains(reason)),
            "{action}: {:?}",
            decision.reasons
        );
    }
    let ok = decide(&mut client, "ok").await;
    assert!(ok.allow, "the same server still allows what policy allows");
    server.stop().await;
}

#[tokio::test]
async fn a_missing_entrypoint_denies() {
    let server = Server::start(&[("p.rego", "package other\nx := 1\n")]).await;
    let decision = decide(&mut server.client().await, "read").await;
    assert!(!decision.allow);
    assert_eq!(
        decision.reasons,
        ["entrypoint data.stepgate.decision is not defined by the policy set"]
    );
    server.stop().await;
}

fn nested(depth: usize) -> serde_json::Value {
    (0..depth).fold(serde_json::json!(1), |inner, _| serde_json::json!([inner]))
}

#[tokio::test]
async fn each_invalid_field_is_named() {
    let server = Server::start(&[("p.rego", ECHO_POLICY)]).await;
    let mut client = server.client().await;
    let cases: Vec<(CheckRequest, &str)> = vec![
        (
            CheckRequest {
                step: String::new(),
                ..request("read")
            },
            "step: required",
        ),
        (
            CheckRequest {
                step: "Issue".into(),
                ..request("read")
            },
            "step: must be",
        ),
        (
            CheckRequest {
                subject: None,
                ..request("read")
            },
            "subject: required",
        ),
        (
            CheckRequest {
                subject: Some(Subject::default()),
                ..request("read")
            },
            "subject.id: required",
        ),
        (
            CheckRequest {
                action: String::new(),
                ..request("read")
            },
            "action: required",
        ),
        (
            CheckRequest {
                context: Some(Context {
                    attributes: Some(strukt(serde_json::json!({"deep": nested(40)}))),
                    ..Default::default()
                }),
                ..request("read")
            },
            "context.attributes: nested too deeply",
        ),
    ];
    for (req, expected) in cases {
        let status = client.check(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{expected}");
        assert!(
            status.message().starts_with(expected),
            "{} vs {expected}",
            status.message()
        );
    }

    let mut batch = vec![request("read"), request("read"), request("")];
    let status = client
        .batch_check(BatchCheckRequest {
            checks: batch.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "checks[2].action: required")
    );

    batch = (0..9).map(|_| request("read")).collect();
    let status = client
        .batch_check(BatchCheckRequest { checks: batch })
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
async fn oversized_messages_are_refused_by_the_transport() {
    let server =
        Server::start_with(&[("p.rego", ECHO_POLICY)], |c| c.max_message_bytes = 4096).await;
    let mut client = server.client().await;
    let mut big = request("read");
    big.subject.as_mut().unwrap().owner = "x".repeat(8192);
    let status = client.check(big).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    // The connection and the server are fine afterwards.
    assert!(decide(&mut client, "read").await.allow);
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
