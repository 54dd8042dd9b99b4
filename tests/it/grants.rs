//! GrantService over real gRPC: the lifecycle, separation of duties, expiry with and
//! without a sweep, max_uses, revocation by grant / workflow / subject, idempotence, no
//! resurrection, watch events, admin callers, restart from the journal.

use std::time::Duration;

use chrono::TimeDelta;
use stepgate::proto::v1::{
    ApproveRequest, CheckRequest, ConfirmRevocationRequest, GetGrantRequest, GrantEvent,
    GrantResponse, GrantState, ListGrantsRequest, RejectRequest, RenewRequest, RequestGrantRequest,
    Resource, RevalidateRequest, RevokeRequest, Subject, WatchGrantsRequest, Workflow,
    decision_service_client::DecisionServiceClient, grant_service_client::GrantServiceClient,
    revoke_request::Target,
};
use tonic::{Code, Streaming, transport::Channel};

use super::support::{Server, my_uid, request, strukt};

/// Grant mechanics under a small policy: approvals and uses come from the resource's
/// attributes; separation of duties and eligible roles at `approve`; `close` refused for
/// workflow LOCKED; a use refused when the context says so.
const GRANT_POLICY: &str = r#"package stepgate

default decision := {"allow": false, "reasons": ["no rule allows this step"]}

attrs := object.get(input, ["resource", "attributes"], {})

decision := {"allow": true, "reasons": ["requested"], "obligations": {
	"required_approvals": object.get(attrs, "approvals", 0),
	"max_ttl_seconds": 3600,
	"approval_timeout_seconds": 1800,
	"max_uses": object.get(attrs, "max_uses", 0),
}} if input.step == "request"

approver := object.get(input, ["approval", "approver"], "")

sod_violations contains "approver is the requester" if approver == object.get(input, ["workflow", "requester"], "")

sod_violations contains "approver owns the subject" if approver == object.get(input, ["subject", "owner"], "")

sod_violations contains "role not eligible" if {
	input.approval.verdict == "approve"
	not object.get(input, ["approval", "role"], "") in {"asset_owner", "security"}
}

decision := {"allow": count(sod_violations) == 0, "reasons": sod_violations} if input.step == "approve"

decision := {"allow": true, "reasons": ["use", input.grant.state, sprintf("%d", [input.grant.uses])]} if {
	input.step == "use"
	not object.get(input, ["context", "attributes", "deny"], false)
}

decision := {"allow": false, "reasons": ["context says no"]} if {
	input.step == "use"
	object.get(input, ["context", "attributes", "deny"], false)
}

decision := {"allow": true, "obligations": {"max_ttl_seconds": 600}} if input.step == "renew"

decision := {"allow": true} if input.step == "revoke"

decision := {"allow": object.get(input, ["workflow", "id"], "") != "LOCKED"} if input.step == "close"

# Check with a grant_id sees the grant.
decision := {"allow": object.get(input, ["grant", "state"], "none") == "ACTIVE", "reasons": [object.get(input, ["grant", "state"], "none")]} if input.step == "issue"
"#;

async fn server() -> Server {
    Server::start_with(&[("p.rego", GRANT_POLICY)], |c| {
        c.grants.sweep_interval = Duration::from_millis(20)
    })
    .await
}

async fn grants(server: &Server) -> GrantServiceClient<Channel> {
    GrantServiceClient::new(server.tcp_channel().await)
}

fn grant_request(
    workflow: &str,
    subject: &str,
    approvals: u32,
    max_uses: u32,
) -> RequestGrantRequest {
    RequestGrantRequest {
        subject: Some(Subject {
            id: subject.into(),
            kind: "service_account".into(),
            owner: "team-owner".into(),
            attributes: None,
        }),
        action: "issue_credential".into(),
        resource: Some(Resource {
            r#type: "secret".into(),
            id: "prod/db".into(),
            attributes: Some(strukt(
                serde_json::json!({"approvals": approvals, "max_uses": max_uses}),
            )),
        }),
        scope: vec!["read".into()],
        workflow: Some(Workflow {
            id: workflow.into(),
            requester: "alice".into(),
            justification: "deploy".into(),
            ..Default::default()
        }),
        ttl: Some(prost_types::Duration {
            seconds: 7200,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn approve(id: &str, approver: &str, role: &str) -> ApproveRequest {
    ApproveRequest {
        grant_id: id.into(),
        approver: approver.into(),
        role: role.into(),
        ..Default::default()
    }
}

fn revalidate(id: &str) -> RevalidateRequest {
    RevalidateRequest {
        grant_id: id.into(),
        ..Default::default()
    }
}

fn state(response: &GrantResponse) -> GrantState {
    response.grant.as_ref().unwrap().state()
}

async fn next_event(events: &mut Streaming<GrantEvent>) -> GrantEvent {
    tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event arrives")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn the_whole_lifecycle_with_separation_of_duties() {
    let server = server().await;
    let mut client = grants(&server).await;
    let mut events = client
        .watch_grants(WatchGrantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let start = server.clock_now();

    let requested = client
        .request_grant(grant_request("CHG-1", "svc-a", 2, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(requested.decision.as_ref().unwrap().allow);
    let grant = requested.grant.clone().unwrap();
    let id = grant.id.clone();
    assert_eq!(grant.state(), GrantState::Pending);
    assert_eq!(grant.required_approvals, 2);
    assert_eq!(
        grant.expires_at.unwrap().seconds,
        (start + TimeDelta::seconds(1800)).timestamp(),
        "approval deadline"
    );
    assert_eq!(
        grant.ttl.unwrap().seconds,
        3600,
        "ttl capped by max_ttl_seconds"
    );
    assert_eq!(
        grant.decision_ids,
        [requested.decision.as_ref().unwrap().decision_id.clone()]
    );

    // The requester and the subject's owner may not approve; nothing changes but the trail.
    for (approver, reason) in [
        ("alice", "approver is the requester"),
        ("team-owner", "approver owns the subject"),
    ] {
        let denied = client
            .approve(approve(&id, approver, "asset_owner"))
            .await
            .unwrap()
            .into_inner();
        let decision = denied.decision.as_ref().unwrap();
        assert!(!decision.allow);
        assert!(
            decision.reasons.iter().any(|r| r == reason),
            "{:?}",
            decision.reasons
        );
        let after = denied.grant.unwrap();
        assert_eq!(
            (after.state(), after.approvals.len()),
            (GrantState::Pending, 0)
        );
        assert_eq!(
            after.decision_ids.last(),
            Some(&decision.decision_id),
            "a denied approval is evidence"
        );
    }
    let denied = client
        .approve(approve(&id, "mallory", "intern"))
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.decision.unwrap().allow);

    let first = client
        .approve(approve(&id, "bob", "asset_owner"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.decision.as_ref().unwrap().allow);
    assert_eq!(
        (state(&first), first.grant.as_ref().unwrap().approvals.len()),
        (GrantState::Pending, 1)
    );
    let again = client
        .approve(approve(&id, "bob", "asset_owner"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !again.decision.as_ref().unwrap().allow,
        "the same approver counts once"
    );
    assert_eq!(again.grant.as_ref().unwrap().approvals.len(), 1);

    server.clock.advance(TimeDelta::minutes(5));
    let second = client
        .approve(approve(&id, "carol", "security"))
        .await
        .unwrap()
        .into_inner();
    let active = second.grant.unwrap();
    assert_eq!(active.state(), GrantState::Active);
    let activated = start + TimeDelta::minutes(5);
    assert_eq!(active.activated_at.unwrap().seconds, activated.timestamp());
    assert_eq!(
        active.expires_at.unwrap().seconds,
        (activated + TimeDelta::seconds(3600)).timestamp()
    );

    // Every use is re-decided and counted.
    let used = client
        .revalidate(revalidate(&id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        used.decision.as_ref().unwrap().reasons,
        ["use", "ACTIVE", "0"]
    );
    assert_eq!(used.grant.unwrap().uses, 1);
    let mut refused = revalidate(&id);
    refused.context = Some(stepgate::proto::v1::Context {
        attributes: Some(strukt(serde_json::json!({"deny": true}))),
        ..Default::default()
    });
    let refused = client.revalidate(refused).await.unwrap().into_inner();
    assert!(!refused.decision.unwrap().allow);
    assert_eq!(
        refused.grant.unwrap().uses,
        1,
        "a denied use is not counted"
    );

    // A Check naming the grant sees its record.
    let mut decisions = DecisionServiceClient::new(server.tcp_channel().await);
    let check = CheckRequest {
        step: "issue".into(),
        grant_id: id.clone(),
        ..request("issue_credential")
    };
    assert!(
        decisions
            .check(check)
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap()
            .allow
    );

    let renewed = client
        .renew(RenewRequest {
            grant_id: id.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 7200,
                nanos: 0,
            }),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    // Renewal is policy-capped (600 s) and may not shorten the grant: refused here.
    assert!(!renewed.decision.unwrap().allow);
    assert_eq!(
        renewed.grant.unwrap().expires_at.unwrap().seconds,
        (activated + TimeDelta::seconds(3600)).timestamp()
    );
    server.clock.advance(TimeDelta::seconds(3300));
    let renewed = client
        .renew(RenewRequest {
            grant_id: id.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 7200,
                nanos: 0,
            }),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.decision.unwrap().allow);
    assert_eq!(
        renewed.grant.unwrap().expires_at.unwrap().seconds,
        (server.clock_now() + TimeDelta::seconds(600)).timestamp(),
        "capped at now + 600 s"
    );

    let revoked = client
        .revoke(RevokeRequest {
            target: Some(Target::GrantId(id.clone())),
            reason: "done".into(),
            revoked_by: "ops".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked.len(), 1);
    assert_eq!(
        (
            revoked.revoked[0].state(),
            revoked.revoked[0].ended_by.as_str()
        ),
        (GrantState::Revoked, "ops")
    );

    // No way back, and no use after revocation.
    assert!(
        !client
            .revalidate(revalidate(&id))
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap()
            .allow
    );
    let no_renew = client
        .renew(RenewRequest {
            grant_id: id.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!no_renew.decision.as_ref().unwrap().allow);
    assert_eq!(state(&no_renew), GrantState::Revoked);
    let again = client
        .revoke(RevokeRequest {
            target: Some(Target::GrantId(id.clone())),
            reason: "again".into(),
            revoked_by: "ops".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.revoked.is_empty(), "revoking twice is a no-op");

    let confirmed = client
        .confirm_revocation(ConfirmRevocationRequest {
            grant_id: id.clone(),
            evidence: "vault lease revoked".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let confirmed = confirmed.grant.unwrap();
    assert!(confirmed.revocation_confirmed);
    assert_eq!(confirmed.revocation_evidence, "vault lease revoked");

    let kinds: Vec<String> = {
        let mut kinds = Vec::new();
        for _ in 0..8 {
            kinds.push(next_event(&mut events).await.kind);
        }
        kinds
    };
    assert_eq!(
        kinds,
        [
            "requested",
            "approved",
            "approved",
            "activated",
            "used",
            "renewed",
            "revoked",
            "revocation_confirmed"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn pending_grants_expire_at_their_approval_deadline_without_a_sweep() {
    let server = Server::start_with(&[("p.rego", GRANT_POLICY)], |c| {
        c.grants.sweep_interval = Duration::from_secs(3600)
    })
    .await;
    let mut client = grants(&server).await;
    let id = client
        .request_grant(grant_request("CHG-2", "svc-b", 1, 0))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .id;
    server.clock.advance(TimeDelta::seconds(1801));
    let late = client
        .approve(approve(&id, "bob", "asset_owner"))
        .await
        .unwrap()
        .into_inner();
    assert!(!late.decision.as_ref().unwrap().allow);
    assert_eq!(state(&late), GrantState::Expired);
    let read = client
        .get_grant(GetGrantRequest { grant_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        read.state(),
        GrantState::Expired,
        "expired on read, before any sweep"
    );
    server.stop().await;
}

#[tokio::test]
async fn active_grants_expire_lazily_and_the_sweeper_reports_them() {
    let server = server().await;
    let mut client = grants(&server).await;
    let mut events = client
        .watch_grants(WatchGrantsRequest {
            subject_id: "svc-c".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let granted = client
        .request_grant(grant_request("CHG-3", "svc-c", 0, 0))
        .await
        .unwrap()
        .into_inner();
    let id = granted.grant.unwrap().id;
    assert!(
        client
            .revalidate(revalidate(&id))
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap()
            .allow
    );

    server.clock.advance(TimeDelta::seconds(3600));
    let expired = client
        .revalidate(revalidate(&id))
        .await
        .unwrap()
        .into_inner();
    let decision = expired.decision.unwrap();
    assert!(!decision.allow, "never honoured at or after expires_at");
    assert!(
        decision.reasons[0].contains("expired"),
        "{:?}",
        decision.reasons
    );

    assert_eq!(next_event(&mut events).await.kind, "requested");
    assert_eq!(next_event(&mut events).await.kind, "activated");
    assert_eq!(next_event(&mut events).await.kind, "used");
    let swept = next_event(&mut events).await;
    assert_eq!(
        (swept.kind.as_str(), swept.grant.unwrap().state()),
        ("expired", GrantState::Expired)
    );
    server.stop().await;
}

#[tokio::test]
async fn max_uses_is_enforced() {
    let server = server().await;
    let mut client = grants(&server).await;
    let id = client
        .request_grant(grant_request("CHG-4", "svc-d", 0, 2))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .id;
    for _ in 0..2 {
        assert!(
            client
                .revalidate(revalidate(&id))
                .await
                .unwrap()
                .into_inner()
                .decision
                .unwrap()
                .allow
        );
    }
    let exhausted = client
        .revalidate(revalidate(&id))
        .await
        .unwrap()
        .into_inner();
    assert!(!exhausted.decision.unwrap().reasons[0].is_empty());
    assert_eq!(exhausted.grant.unwrap().uses, 2);
    server.stop().await;
}

#[tokio::test]
async fn revoking_a_workflow_or_a_subject_ends_every_live_grant_of_it_once() {
    let server = server().await;
    let mut client = grants(&server).await;
    let mut ids = Vec::new();
    for (workflow, subject, approvals) in [
        ("CHG-5", "svc-e", 0),
        ("CHG-5", "svc-f", 1),
        ("CHG-6", "svc-e", 0),
        ("LOCKED", "svc-g", 0),
    ] {
        ids.push(
            client
                .request_grant(grant_request(workflow, subject, approvals, 0))
                .await
                .unwrap()
                .into_inner()
                .grant
                .unwrap()
                .id,
        );
    }
    let by_workflow = |id: &str| RevokeRequest {
        target: Some(Target::WorkflowId(id.into())),
        reason: "ticket closed".into(),
        revoked_by: String::new(),
    };
    let closed = client
        .revoke(by_workflow("CHG-5"))
        .await
        .unwrap()
        .into_inner();
    let mut revoked: Vec<_> = closed.revoked.iter().map(|g| g.id.clone()).collect();
    revoked.sort();
    assert_eq!(
        revoked,
        [ids[0].clone(), ids[1].clone()],
        "active and pending grants of the workflow"
    );
    assert!(
        closed.revoked.iter().all(|g| g.ended_by == "anonymous"),
        "revoked_by defaults to the caller"
    );
    assert!(
        client
            .revoke(by_workflow("CHG-5"))
            .await
            .unwrap()
            .into_inner()
            .revoked
            .is_empty()
    );

    let by_subject = RevokeRequest {
        target: Some(Target::SubjectId("svc-e".into())),
        reason: "offboarded".into(),
        revoked_by: "hr".into(),
    };
    let subject = client.revoke(by_subject).await.unwrap().into_inner();
    assert_eq!(
        subject
            .revoked
            .iter()
            .map(|g| g.id.clone())
            .collect::<Vec<_>>(),
        [ids[2].clone()]
    );

    // Policy may refuse a close: nothing is revoked.
    let refused = client
        .revoke(by_workflow("LOCKED"))
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.decision.unwrap().allow);
    assert!(refused.revoked.is_empty());
    let still = client
        .get_grant(GetGrantRequest {
            grant_id: ids[3].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.state(), GrantState::Active);

    let listed = client
        .list_grants(ListGrantsRequest {
            state: GrantState::Revoked as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.grants.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn listing_pages_through_every_grant_once() {
    let server = server().await;
    let mut client = grants(&server).await;
    for i in 0..7 {
        client
            .request_grant(grant_request("CHG-7", &format!("svc-{i}"), 0, 0))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_grants(ListGrantsRequest {
                workflow_id: "CHG-7".into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.grants.len() <= 3);
        seen.extend(page.grants.into_iter().map(|g| g.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (7, 7));
    let bad = client
        .list_grants(ListGrantsRequest {
            page_token: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn invalid_and_unknown_requests_are_refused_and_change_nothing() {
    let server = server().await;
    let mut client = grants(&server).await;
    let no_subject = RequestGrantRequest {
        subject: None,
        ..grant_request("CHG-8", "x", 0, 0)
    };
    let status = client.request_grant(no_subject).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "subject: required")
    );
    let zero_ttl = RequestGrantRequest {
        ttl: Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        }),
        ..grant_request("CHG-8", "x", 0, 0)
    };
    assert_eq!(
        client.request_grant(zero_ttl).await.unwrap_err().message(),
        "ttl: must be positive"
    );
    let no_approver = client
        .approve(approve("id", "", "asset_owner"))
        .await
        .unwrap_err();
    assert_eq!(no_approver.message(), "approver: required");
    assert_eq!(
        client
            .get_grant(GetGrantRequest {
                grant_id: "missing".into()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        client
            .approve(approve("missing", "bob", "asset_owner"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let no_target = client.revoke(RevokeRequest::default()).await.unwrap_err();
    assert_eq!(no_target.code(), Code::InvalidArgument);
    let bad_state = client
        .list_grants(ListGrantsRequest {
            state: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_state.code(), Code::InvalidArgument);

    // A missing grant at `use` is a deny, not an error: one path for callers.
    let missing = client
        .revalidate(revalidate("missing"))
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.decision.unwrap().allow);
    assert!(missing.grant.is_none());
    let all = client
        .list_grants(ListGrantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.grants.is_empty(), "no refused call created anything");
    server.stop().await;
}

#[tokio::test]
async fn admin_rpcs_are_limited_to_admin_callers() {
    let admin = format!("uds:uid={}", my_uid());
    let server = Server::start_with(&[("p.rego", GRANT_POLICY)], |c| {
        c.admin_callers = Some(vec![admin])
    })
    .await;
    let mut tcp = grants(&server).await;
    let mut uds = GrantServiceClient::new(server.uds_channel().await);
    let id = tcp
        .request_grant(grant_request("CHG-9", "svc-h", 1, 0))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .id;

    let denied = tcp
        .approve(approve(&id, "bob", "asset_owner"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("anonymous"),
        "{}",
        denied.message()
    );
    assert_eq!(
        tcp.reject(RejectRequest {
            grant_id: id.clone(),
            approver: "bob".into(),
            reason: "no".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
    let revoke = RevokeRequest {
        target: Some(Target::GrantId(id.clone())),
        ..Default::default()
    };
    assert_eq!(
        tcp.revoke(revoke.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        tcp.confirm_revocation(ConfirmRevocationRequest {
            grant_id: id.clone(),
            evidence: "x".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
    let unchanged = tcp
        .get_grant(GetGrantRequest {
            grant_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (unchanged.state(), unchanged.decision_ids.len()),
        (GrantState::Pending, 1),
        "refused calls change nothing"
    );

    let approved = uds
        .approve(approve(&id, "bob", "asset_owner"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&approved), GrantState::Active);
    let rejected = uds
        .reject(RejectRequest {
            grant_id: id.clone(),
            approver: "bob".into(),
            reason: "late".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !rejected.decision.unwrap().allow,
        "an ACTIVE grant cannot be rejected"
    );
    assert_eq!(
        uds.revoke(revoke).await.unwrap().into_inner().revoked.len(),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restart_replays_the_journal_including_grants_that_expired_while_down() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_path_buf();
    let first = Server::start_with(&[("p.rego", GRANT_POLICY)], |c| {
        c.grants.store.state_dir = Some(dir.clone())
    })
    .await;
    let mut client = grants(&first).await;
    let long = client
        .request_grant(grant_request("CHG-10", "svc-i", 1, 0))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .id;
    let short = client
        .request_grant(grant_request("CHG-10", "svc-j", 0, 0))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .id;
    let revoked = client
        .request_grant(grant_request("CHG-11", "svc-k", 0, 0))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .id;
    client
        .revoke(RevokeRequest {
            target: Some(Target::GrantId(revoked.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    let used = client
        .revalidate(revalidate(&short))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(used.grant.unwrap().uses, 1);
    let stopped_at = first.clock_now();
    drop(client);
    first.stop().await;

    let second = Server::start_with(&[("p.rego", GRANT_POLICY)], |c| {
        c.grants.store.state_dir = Some(dir.clone())
    })
    .await;
    // The active grant's hour passed while stepgate was down; the pending one's deadline did not.
    second.clock.set(stopped_at + TimeDelta::seconds(1700));
    let mut client = grants(&second).await;
    let get = async |client: &mut GrantServiceClient<Channel>, id: &str| {
        client
            .get_grant(GetGrantRequest {
                grant_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    assert_eq!(get(&mut client, &long).await.state(), GrantState::Pending);
    assert_eq!(get(&mut client, &short).await.uses, 1);
    assert_eq!(
        get(&mut client, &revoked).await.state(),
        GrantState::Revoked,
        "a revocation is never undone by replay"
    );
    second.stop().await;

    let third = Server::start_with(&[("p.rego", GRANT_POLICY)], |c| {
        c.grants.store.state_dir = Some(dir.clone());
    })
    .await;
    third.clock.set(stopped_at + TimeDelta::hours(2));
    let mut client = grants(&third).await;
    assert_eq!(get(&mut client, &short).await.state(), GrantState::Expired);
    assert_eq!(get(&mut client, &long).await.state(), GrantState::Expired);
    third.stop().await;
}

#[tokio::test]
async fn unconfirmed_revocations_are_reported_overdue_once() {
    let server = server().await;
    let mut client = grants(&server).await;
    let mut events = client
        .watch_grants(WatchGrantsRequest {
            workflow_id: "CHG-12".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = client
        .request_grant(grant_request("CHG-12", "svc-l", 0, 0))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
        .id;
    client
        .revoke(RevokeRequest {
            target: Some(Target::GrantId(id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    for kind in ["requested", "activated", "revoked"] {
        assert_eq!(next_event(&mut events).await.kind, kind);
    }
    server.clock.advance(TimeDelta::minutes(6));
    let overdue = next_event(&mut events).await;
    assert_eq!(
        (overdue.kind.as_str(), overdue.grant.unwrap().id),
        ("revocation_overdue", id.clone())
    );
    // Confirming afterwards is still accepted and is the next event; no second overdue.
    client
        .confirm_revocation(ConfirmRevocationRequest {
            grant_id: id,
            evidence: "late".into(),
        })
        .await
        .unwrap();
    assert_eq!(next_event(&mut events).await.kind, "revocation_confirmed");
    server.stop().await;
}

#[tokio::test]
async fn a_slow_watcher_is_told_it_lagged_and_the_store_is_not_held_back() {
    let server = Server::start_with(&[("p.rego", GRANT_POLICY)], |c| {
        c.grants.store.event_capacity = 4
    })
    .await;
    let mut client = grants(&server).await;
    let mut slow = client
        .watch_grants(WatchGrantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Far more events than the HTTP/2 windows and the channel hold, while the watcher
    // reads nothing: the store must not wait for it.
    let store = server.app.as_ref().unwrap().grants().clone();
    for i in 0..3000 {
        store
            .create(direct_grant(format!("svc-m{i}"), server.clock_now()))
            .unwrap();
    }
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted);
    assert!(status.message().contains("re-list"), "{}", status.message());
    server.stop().await;
}

/// A grant to create straight in the store (no RPC), to produce many events quickly.
fn direct_grant(subject: String, now: chrono::DateTime<chrono::Utc>) -> stepgate::grants::Grant {
    let request = stepgate::grants::GrantRequest {
        subject: Subject {
            id: subject,
            ..Default::default()
        },
        action: "read".into(),
        resource: None,
        scope: Vec::new(),
        workflow: None,
        required_approvals: 0,
        approval_deadline: now + TimeDelta::hours(1),
        ttl: TimeDelta::hours(1),
        max_uses: 0,
        policy_revision: "test".into(),
        decision_id: uuid::Uuid::now_v7(),
    };
    stepgate::grants::Grant::new(request, now).unwrap()
}
