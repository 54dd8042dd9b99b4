//! Identities in the grant steps against the real server: malformed names are refused
//! naming the field and change nothing, grants keep the NFKC form, lookalike approvers
//! count as one person and the requester's lookalikes cannot approve; and Reject works
//! with the example policies over the Unix socket. (A Check's identities, on every
//! adapter, are API cases: `tests/cases/identities.toml`.)

use serde_json::json;
use stepgate::proto::v1::{
    AgentCall, ApproveRequest, GetGrantRequest, GrantResponse, GrantState, ListGrantsRequest,
    RejectRequest, RequestGrantRequest, RevalidateRequest, RevokeRequest, Subject, Workflow,
    grant_service_client::GrantServiceClient, revoke_request::Target,
};
use tonic::{Code, transport::Channel};

use super::example_policies::production_request;
use super::support::{Server, strukt};

async fn example_server() -> Server {
    let repo_policies = std::env::current_dir().unwrap().join("policies");
    Server::start_with(&[], |c| c.policies = repo_policies).await
}

/// A production grant of `sensitivity` under the example policies, PENDING.
async fn pending_grant(grants: &mut GrantServiceClient<Channel>, sensitivity: &str) -> String {
    let mut request = production_request();
    request.resource.as_mut().unwrap().attributes = Some(strukt(
        json!({"environment": "prod", "sensitivity": sensitivity}),
    ));
    let response = grants.request_grant(request).await.unwrap().into_inner();
    let grant = response.grant.expect("the request is allowed");
    assert_eq!(grant.state(), GrantState::Pending);
    grant.id
}

fn approve(id: &str, approver: &str) -> ApproveRequest {
    ApproveRequest {
        grant_id: id.into(),
        approver: approver.into(),
        role: "asset_owner".into(),
        ..Default::default()
    }
}

/// A grant's state and number of approvals, as GetGrant shows them.
async fn state_and_approvals(
    grants: &mut GrantServiceClient<Channel>,
    id: &str,
) -> (GrantState, usize) {
    let grant = grants
        .get_grant(GetGrantRequest {
            grant_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (grant.state(), grant.approvals.len())
}

/// Every grant as ListGrants shows it, to compare before and after refused calls.
async fn all_grants(grants: &mut GrantServiceClient<Channel>) -> Vec<stepgate::proto::v1::Grant> {
    grants
        .list_grants(ListGrantsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants
}

/// An approval that reached the policy: its response, or the status it was refused with.
fn outcome(
    result: Result<tonic::Response<GrantResponse>, tonic::Status>,
) -> Result<GrantResponse, tonic::Status> {
    result.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn lookalike_approvers_count_once_and_the_grant_stays_pending() {
    let server = example_server().await;
    let mut uds = GrantServiceClient::new(server.uds_channel().await);
    // Critical sensitivity in production: two distinct approvers.
    let id = pending_grant(&mut uds, "critical").await;
    let first = uds.approve(approve(&id, "bob")).await.unwrap().into_inner();
    assert!(first.decision.unwrap().allow);
    assert_eq!(first.grant.unwrap().state(), GrantState::Pending);

    // Each lookalike of bob is refused as malformed or denied as bob again: never a
    // second person.
    for lookalike in [
        "bob ",
        " bob",
        "bob\u{200B}",
        "bob\u{00A0}",
        "b\u{200D}ob",
        "ｂob",
        "BOB",
        "b\u{043E}b",
        "Ｂ\u{041E}Ｂ",
    ] {
        match outcome(uds.approve(approve(&id, lookalike)).await) {
            Err(status) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{lookalike:?}");
                assert!(status.message().starts_with("approver: "), "{status:?}");
            }
            Ok(response) => {
                let decision = response.decision.unwrap();
                assert!(!decision.allow, "{lookalike:?} approved as a second person");
                assert!(
                    decision
                        .reasons
                        .iter()
                        .any(|r| r == "bob has already approved this grant"),
                    "{lookalike:?}: {:?}",
                    decision.reasons
                );
                assert_eq!(response.grant.unwrap().state(), GrantState::Pending);
            }
        }
    }
    assert_eq!(
        state_and_approvals(&mut uds, &id).await,
        (GrantState::Pending, 1)
    );

    // A second person does activate it.
    let second = uds
        .approve(approve(&id, "erin"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.grant.unwrap().state(), GrantState::Active);
    server.stop().await;
}

#[tokio::test]
async fn the_requesters_lookalikes_cannot_approve() {
    let server = example_server().await;
    let mut uds = GrantServiceClient::new(server.uds_channel().await);
    let id = pending_grant(&mut uds, "high").await;
    for lookalike in [
        " alice",
        "alice\u{200B}",
        "\u{2066}alice",
        "ａlice",
        "ALICE",
        "\u{0430}lice",
        "\u{0430}lic\u{0435}",
    ] {
        match outcome(uds.approve(approve(&id, lookalike)).await) {
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{lookalike:?}"),
            Ok(response) => {
                let decision = response.decision.unwrap();
                assert!(!decision.allow, "the requester approved as {lookalike:?}");
                assert!(
                    decision.reasons.iter().any(|r| r
                        == "separation of duties: the requester cannot approve their own request"),
                    "{lookalike:?}: {:?}",
                    decision.reasons
                );
            }
        }
    }
    assert_eq!(
        state_and_approvals(&mut uds, &id).await,
        (GrantState::Pending, 0)
    );
    server.stop().await;
}

/// A name with a character of each refused class, and the problem the server names.
const BAD_NAMES: [(&str, &str); 11] = [
    ("bob ", "leading or trailing whitespace"),
    ("\tbob", "leading or trailing whitespace"),
    ("bob\u{00A0}", "leading or trailing whitespace"),
    ("bob\u{0085}", "leading or trailing whitespace"),
    ("b\u{0085}ob", "control character U+0085"),
    ("b\u{007F}ob", "control character U+007F"),
    ("b\tob", "control character U+0009"),
    ("bob\u{200B}", "invisible or format character U+200B"),
    ("b\u{200D}ob", "invisible or format character U+200D"),
    ("\u{202E}bob", "invisible or format character U+202E"),
    ("bo\u{2066}b", "invisible or format character U+2066"),
];

/// Every grant step refuses a malformed identity naming the field, and changes nothing
/// (a Check's refusals, on every adapter, are API cases: `tests/cases/identities.toml`).
#[tokio::test]
async fn malformed_identities_are_invalid_argument_naming_the_field_and_change_nothing() {
    let server = example_server().await;
    let mut uds = GrantServiceClient::new(server.uds_channel().await);
    let id = pending_grant(&mut uds, "high").await;
    let before = all_grants(&mut uds).await;

    for (name, problem) in BAD_NAMES {
        let named = |field: &str| format!("{field}: {problem}");
        let grant_request = |mutate: fn(&mut RequestGrantRequest, &str)| {
            let mut request = production_request();
            request.subject = Some(Subject {
                id: "svc".into(),
                kind: "agent".into(),
                ..Default::default()
            });
            request.agent = Some(AgentCall::default());
            mutate(&mut request, name);
            request
        };
        let requests: [(RequestGrantRequest, &str); 5] = [
            (
                grant_request(|r, n| r.subject.as_mut().unwrap().id = n.into()),
                "subject.id",
            ),
            (
                grant_request(|r, n| r.subject.as_mut().unwrap().owner = n.into()),
                "subject.owner",
            ),
            (
                grant_request(|r, n| r.workflow.as_mut().unwrap().requester = n.into()),
                "workflow.requester",
            ),
            (
                grant_request(|r, n| r.agent.as_mut().unwrap().on_behalf_of = n.into()),
                "agent.on_behalf_of",
            ),
            (
                grant_request(|r, n| {
                    r.agent.as_mut().unwrap().delegation_chain = vec!["alice".into(), n.into()]
                }),
                "agent.delegation_chain[1]",
            ),
        ];
        let mut refusals: Vec<(tonic::Status, String)> = Vec::new();
        for (request, field) in requests {
            refusals.push((uds.request_grant(request).await.unwrap_err(), named(field)));
        }
        refusals.push((
            uds.approve(approve(&id, name)).await.unwrap_err(),
            named("approver"),
        ));
        refusals.push((
            uds.reject(RejectRequest {
                grant_id: id.clone(),
                approver: name.into(),
                reason: "no".into(),
            })
            .await
            .unwrap_err(),
            named("approver"),
        ));
        refusals.push((
            uds.revoke(RevokeRequest {
                target: Some(Target::GrantId(id.clone())),
                revoked_by: name.into(),
                reason: "r".into(),
            })
            .await
            .unwrap_err(),
            named("revoked_by"),
        ));
        refusals.push((
            uds.revoke(RevokeRequest {
                target: Some(Target::SubjectId(name.into())),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            named("subject_id"),
        ));
        refusals.push((
            uds.revalidate(RevalidateRequest {
                grant_id: id.clone(),
                agent: Some(AgentCall {
                    on_behalf_of: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            named("agent.on_behalf_of"),
        ));
        for (status, expected) in refusals {
            assert_eq!(status.code(), Code::InvalidArgument, "{name:?} {expected}");
            assert_eq!(status.message(), expected, "{name:?}");
        }
    }
    assert_eq!(
        all_grants(&mut uds).await,
        before,
        "refused calls change nothing"
    );
    server.stop().await;
}

/// Echoes the identities the policy sees.
const ECHO: &str = r#"package stepgate

decision := {"allow": true, "reasons": [
	input.subject.id,
	input.subject.owner,
	input.workflow.requester,
	input.agent.on_behalf_of,
	concat(",", input.agent.delegation_chain),
], "obligations": {"max_ttl_seconds": 60}}
"#;

/// A grant keeps the NFKC form and is found by it (what a Check's policy sees is an API
/// case: `tests/cases/identities.toml`).
#[tokio::test]
async fn policies_and_grants_see_the_nfkc_form() {
    let server = Server::start(&[("p.rego", ECHO)]).await;
    let mut grants = GrantServiceClient::new(server.uds_channel().await);
    let subject = Subject {
        id: "ｓｖｃ-ａ".into(),
        kind: "agent".into(),
        owner: "team\u{FF0D}ops".into(),
        attributes: None,
    };
    let workflow = Workflow {
        id: "W".into(),
        requester: "ａlice".into(),
        ..Default::default()
    };
    let agent = AgentCall {
        on_behalf_of: "ｂob".into(),
        delegation_chain: vec!["ｂob".into(), "jose\u{0301}".into(), "ﬁona".into()],
        ..Default::default()
    };
    let expected = ["svc-a", "team-ops", "alice", "bob", "bob,josé,fiona"];
    let mut request = production_request();
    request.subject = Some(subject);
    request.workflow = Some(workflow);
    request.agent = Some(agent);
    let response = grants.request_grant(request).await.unwrap().into_inner();
    assert_eq!(response.decision.unwrap().reasons, expected);
    let grant = response.grant.unwrap();
    let subject = grant.subject.as_ref().unwrap();
    assert_eq!(
        (
            subject.id.as_str(),
            subject.owner.as_str(),
            grant.workflow.as_ref().unwrap().requester.as_str()
        ),
        ("svc-a", "team-ops", "alice"),
        "the grant keeps the canonical form"
    );
    // Listing by the fullwidth subject finds it under its canonical id.
    let listed = grants
        .list_grants(ListGrantsRequest {
            subject_id: "ｓｖｃ-ａ".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.grants.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn reject_works_with_the_example_policies_over_the_unix_socket() {
    let server = example_server().await;
    let mut uds = GrantServiceClient::new(server.uds_channel().await);
    for rejector in ["bob", "alice"] {
        // By an approver, and by the requester withdrawing the request.
        let id = pending_grant(&mut uds, "high").await;
        let rejected = uds
            .reject(RejectRequest {
                grant_id: id.clone(),
                approver: rejector.into(),
                reason: "not needed".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let decision = rejected.decision.unwrap();
        assert!(decision.allow, "{rejector}: {:?}", decision.reasons);
        let grant = rejected.grant.unwrap();
        assert_eq!(grant.state(), GrantState::Rejected, "{rejector}");
        assert_eq!(grant.ended_by, rejector);

        let late = uds
            .approve(approve(&id, "erin"))
            .await
            .unwrap()
            .into_inner();
        assert!(!late.decision.unwrap().allow);
        assert_eq!(
            state_and_approvals(&mut uds, &id).await,
            (GrantState::Rejected, 0),
            "a rejected grant is never activated"
        );
    }
    // An anonymous TCP caller cannot reject.
    let id = pending_grant(&mut uds, "high").await;
    let mut tcp = GrantServiceClient::new(server.tcp_channel().await);
    let refused = tcp
        .reject(RejectRequest {
            grant_id: id.clone(),
            approver: "bob".into(),
            reason: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.decision.unwrap().allow);
    assert_eq!(refused.grant.unwrap().state(), GrantState::Pending);
    server.stop().await;
}
