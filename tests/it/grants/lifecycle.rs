//! A grant from request to confirmed revocation: separation of duties at approval, uses
//! re-decided and counted, renewal caps, no way back after revocation, one event per step.

use super::*;

/// A grant alice requests for svc-a with two approvals, approved by bob (asset owner)
/// and, five minutes later, by carol (security): its id, ACTIVE from the returned time.
async fn active_grant(
    server: &Server,
    client: &mut GrantServiceClient<Channel>,
) -> (String, chrono::DateTime<chrono::Utc>) {
    let requested = client
        .request_grant(grant_request("CHG-1", "svc-a", 2, 0))
        .await
        .unwrap()
        .into_inner();
    let id = requested.grant.unwrap().id;
    let first = client
        .approve(approve(&id, "bob", "asset_owner"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.decision.unwrap().allow);
    server.clock.advance(TimeDelta::minutes(5));
    let second = client
        .approve(approve(&id, "carol", "security"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&second), GrantState::Active);
    (id, server.clock_now())
}

/// A request with two required approvals is PENDING until its deadline; the requester,
/// the subject's owner and an ineligible role are refused (the refusals are evidence),
/// one person counts once, and the second approval activates it for the capped TTL.
#[tokio::test]
async fn approvals_keep_separation_of_duties_and_count_each_person_once() {
    let server = server().await;
    let mut client = grants(&server).await;
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
    server.stop().await;
}

/// Every use of an active grant is re-decided and counted (a denied use is not), a Check
/// naming the grant sees its record, and a renewal is capped by policy and may not
/// shorten the grant.
#[tokio::test]
async fn uses_are_re_decided_and_counted_and_renewals_are_capped() {
    let server = server().await;
    let mut client = grants(&server).await;
    let (id, activated) = active_grant(&server, &mut client).await;

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
    server.stop().await;
}

/// A revocation is final (no use, no renewal, a second revoke is a no-op) and is
/// confirmed with evidence; every step of the lifecycle is one event, in order.
#[tokio::test]
async fn a_revocation_is_final_and_every_step_is_an_event() {
    let server = server().await;
    let mut client = grants(&server).await;
    let mut events = client
        .watch_grants(WatchGrantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (id, _) = active_grant(&server, &mut client).await;
    let used = client
        .revalidate(revalidate(&id))
        .await
        .unwrap()
        .into_inner();
    assert!(used.decision.unwrap().allow);
    server.clock.advance(TimeDelta::seconds(3300));
    let renewed = client
        .renew(RenewRequest {
            grant_id: id.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.decision.unwrap().allow);

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
