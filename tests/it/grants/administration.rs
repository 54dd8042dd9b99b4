//! Ending and finding grants in bulk, refusing bad requests without a change, who may
//! call the admin RPCs, and a watcher too slow to keep up.

use super::*;

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
