//! Time ends grants: approval deadlines and TTLs without a sweep, the sweeper's reports,
//! overdue revocation confirmations, and expiries that happened while stepgate was down.

use super::*;

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
