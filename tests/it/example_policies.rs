//! The example policy set in policies/ driving a real grant lifecycle over gRPC: a
//! production credential for a service account, approved by an eligible asset owner
//! over the Unix socket, used, and revoked when the ticket closes.

use stepgate::proto::v1::{
    ApproveRequest, GrantState, RequestGrantRequest, Resource, RevalidateRequest, RevokeRequest,
    Subject, Workflow, grant_service_client::GrantServiceClient, revoke_request::Target,
};

use super::support::{Server, strukt};

pub(super) fn production_request() -> RequestGrantRequest {
    RequestGrantRequest {
        subject: Some(Subject {
            id: "spiffe://prod.example.com/ns/payments/sa/deployer".into(),
            kind: "service_account".into(),
            owner: "team-payments".into(),
            attributes: Some(strukt(serde_json::json!({"environment": "prod"}))),
        }),
        action: "issue_credential".into(),
        resource: Some(Resource {
            r#type: "secret".into(),
            id: "prod/payments/db/password".into(),
            attributes: Some(strukt(
                serde_json::json!({"environment": "prod", "sensitivity": "high"}),
            )),
        }),
        workflow: Some(Workflow {
            id: "CHG-1234".into(),
            requester: "alice".into(),
            justification: "deploy payments 4.2 (schema migration)".into(),
            ..Default::default()
        }),
        ttl: Some(prost_types::Duration {
            seconds: 7200,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_production_grant_lives_its_whole_life_under_the_example_policies() {
    let repo_policies = std::env::current_dir().unwrap().join("policies");
    let server = Server::start_with(&[], |c| c.policies = repo_policies).await;
    // 2026-11-23 is a Monday; 10:00 UTC is within business hours.
    let mut tcp = GrantServiceClient::new(server.tcp_channel().await);
    let mut uds = GrantServiceClient::new(server.uds_channel().await);

    let requested = tcp
        .request_grant(production_request())
        .await
        .unwrap()
        .into_inner();
    let decision = requested.decision.unwrap();
    assert!(decision.allow, "{:?}", decision.reasons);
    let grant = requested.grant.unwrap();
    assert_eq!(
        grant.state(),
        GrantState::Pending,
        "production needs an approval"
    );
    assert_eq!(
        grant.ttl.unwrap().seconds,
        3600,
        "high sensitivity caps the ttl at 1 h"
    );

    let approve = |approver: &str| ApproveRequest {
        grant_id: grant.id.clone(),
        approver: approver.into(),
        role: "asset_owner".into(),
        ..Default::default()
    };
    // Separation of duties: the requester and the owning team's members cannot approve,
    // and an anonymous TCP caller cannot approve at all.
    for approver in ["alice", "carol"] {
        let denied = uds.approve(approve(approver)).await.unwrap().into_inner();
        assert!(
            !denied.decision.unwrap().allow,
            "{approver} must not approve"
        );
    }
    let anonymous = tcp
        .approve(approve("bob"))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert!(!anonymous.allow);
    assert!(
        anonymous
            .reasons
            .iter()
            .any(|r| r.contains("authenticated")),
        "{:?}",
        anonymous.reasons
    );

    let approved = uds.approve(approve("bob")).await.unwrap().into_inner();
    assert_eq!(approved.grant.unwrap().state(), GrantState::Active);

    let used = tcp
        .revalidate(RevalidateRequest {
            grant_id: grant.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        used.decision.as_ref().unwrap().allow,
        "{:?}",
        used.decision.unwrap().reasons
    );

    let closed = uds
        .revoke(RevokeRequest {
            target: Some(Target::WorkflowId("CHG-1234".into())),
            reason: "ticket closed".into(),
            revoked_by: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(closed.decision.unwrap().allow);
    assert_eq!(closed.revoked.len(), 1);
    let after = tcp
        .revalidate(RevalidateRequest {
            grant_id: grant.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !after.decision.unwrap().allow,
        "no use after the ticket closed"
    );
    server.stop().await;
}
