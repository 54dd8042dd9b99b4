use super::*;

fn t0() -> DateTime<Utc> {
    "2026-11-23T10:00:00Z".parse().unwrap()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

/// A recognisable decision id.
fn d(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const REQUEST: u128 = 1;

fn request(required: u32, max_uses: u64) -> GrantRequest {
    GrantRequest {
        subject: v1::Subject {
            id: "spiffe://prod/sa/deployer".into(),
            kind: "service_account".into(),
            owner: "team-payments".into(),
            attributes: None,
        },
        action: "issue_credential".into(),
        resource: Some(v1::Resource {
            r#type: "secret".into(),
            id: "prod/db/password".into(),
            attributes: None,
        }),
        scope: vec!["read".into()],
        workflow: Some(v1::Workflow {
            id: "CHG-1".into(),
            requester: "alice".into(),
            ..Default::default()
        }),
        required_approvals: required,
        approval_deadline: t0() + secs(600),
        ttl: secs(3600),
        max_uses,
        policy_revision: "rev1".into(),
        decision_id: d(REQUEST),
    }
}

fn approval(who: &str, n: u128, at: DateTime<Utc>) -> Approval {
    Approval {
        approver: who.into(),
        role: "asset_owner".into(),
        at,
        decision_id: d(n),
        comment: "".into(),
    }
}

fn pending(required: u32) -> Grant {
    Grant::new(request(required, 0), t0()).unwrap()
}

fn active(max_uses: u64) -> Grant {
    Grant::new(request(0, max_uses), t0()).unwrap()
}

fn revoked() -> Grant {
    let mut g = active(0);
    let _ = g.revoke(&Revocation::default(), t0() + secs(1)).unwrap();
    g
}

fn rejected() -> Grant {
    let mut g = pending(1);
    let _ = g.reject("bob", "no", None, t0() + secs(1)).unwrap();
    g
}

fn expired() -> Grant {
    let mut g = active(0);
    let _ = g.expire(t0() + secs(3600)).unwrap();
    g
}

/// Applies `f` to a copy and asserts it is refused and leaves the grant unchanged.
fn refused(
    g: &Grant,
    f: impl FnOnce(&mut Grant) -> Result<Transition, TransitionError>,
) -> TransitionError {
    let mut copy = g.clone();
    let err = f(&mut copy).expect_err("transition should be refused");
    assert_eq!(&copy, g, "a refused transition changed the grant");
    err
}

#[test]
fn new_grant_is_pending_with_deadline_or_active_at_once() {
    let p = pending(2);
    assert_eq!(p.state, GrantState::Pending);
    assert_eq!(p.expires_at, t0() + secs(600));
    assert_eq!(p.activated_at, None);
    assert_eq!(p.decision_ids.to_vec(), vec![d(REQUEST)]);
    assert_eq!(p.id().get_version_num(), 7);
    let a = active(0);
    assert_eq!(a.state, GrantState::Active);
    assert_eq!(a.activated_at, Some(t0()));
    assert_eq!(a.expires_at, t0() + secs(3600));
    assert_ne!(a.id(), p.id());
}

#[test]
fn new_grant_refuses_bad_ttl_deadline_and_overflow() {
    let mut r = request(0, 0);
    r.ttl = TimeDelta::zero();
    assert_eq!(Grant::new(r, t0()), Err(TransitionError::InvalidTtl));
    let mut r = request(1, 0);
    r.approval_deadline = t0();
    assert_eq!(
        Grant::new(r, t0()),
        Err(TransitionError::DeadlinePassed(t0()))
    );
    let mut r = request(0, 0);
    r.ttl = TimeDelta::MAX;
    assert_eq!(Grant::new(r, t0()), Err(TransitionError::TimeOutOfRange));
}

#[test]
fn the_nth_distinct_approval_activates() {
    let mut g = pending(2);
    let t = g
        .approve(approval("bob", 10, t0()), t0() + secs(5))
        .unwrap();
    assert_eq!(t, Transition::event(GrantEventKind::Approved));
    assert_eq!(g.state, GrantState::Pending);
    let err = refused(&g, |g| g.approve(approval("bob", 11, t0()), t0() + secs(6)));
    assert_eq!(err, TransitionError::AlreadyApproved("bob".into()));
    let err = refused(&g, |g| g.approve(approval("", 11, t0()), t0() + secs(6)));
    assert_eq!(err, TransitionError::MissingApprover);
    let t = g
        .approve(approval("carol", 12, t0()), t0() + secs(9))
        .unwrap();
    assert_eq!(
        t.events,
        &[GrantEventKind::Approved, GrantEventKind::Activated]
    );
    assert_eq!(g.state, GrantState::Active);
    assert_eq!(g.activated_at, Some(t0() + secs(9)));
    assert_eq!(g.expires_at, t0() + secs(9) + secs(3600));
    assert_eq!(g.approvals.len(), 2);
    assert_eq!(g.decision_ids.to_vec(), vec![d(REQUEST), d(10), d(12)]);
    let err = refused(&g, |g| {
        g.approve(approval("dave", 13, t0()), t0() + secs(10))
    });
    assert_eq!(err, TransitionError::NotPending(GrantState::Active));
}

#[test]
fn lookalike_approvers_are_one_person() {
    for (first, second) in [
        ("bob", "BOB"),
        ("bob", "b\u{043E}b"),
        ("bob", "ｂob"),
        ("bob", "bob "),
        ("bob", "bob\u{200B}"),
    ] {
        let mut g = pending(2);
        let t = g
            .approve(approval(first, 10, t0()), t0() + secs(5))
            .unwrap();
        assert_eq!(t, Transition::event(GrantEventKind::Approved));
        let err = refused(&g, |g| {
            g.approve(approval(second, 11, t0()), t0() + secs(6))
        });
        assert_eq!(
            err,
            TransitionError::AlreadyApproved(second.into()),
            "{second:?}"
        );
        assert_eq!(g.state, GrantState::Pending);
    }
}

#[test]
fn lookalikes_recorded_by_an_older_version_count_once() {
    // A journal written before names were checked may hold two lookalikes: they
    // count as one approver, so a third person is still needed for three.
    let mut g = pending(3);
    g.approvals = Arc::new([approval("bob", 10, t0()), approval("BOB ", 11, t0())]);
    let t = g
        .approve(approval("carol", 12, t0()), t0() + secs(5))
        .unwrap();
    assert_eq!(t, Transition::event(GrantEventKind::Approved));
    assert_eq!(g.state, GrantState::Pending);
    let t = g
        .approve(approval("dave", 13, t0()), t0() + secs(6))
        .unwrap();
    assert_eq!(
        t.events,
        &[GrantEventKind::Approved, GrantEventKind::Activated]
    );
}

#[test]
fn approval_after_the_deadline_is_refused() {
    let g = pending(1);
    let deadline = g.expires_at;
    let err = refused(&g, |g| g.approve(approval("bob", 2, deadline), deadline));
    assert_eq!(err, TransitionError::Expired(deadline));
    let err = refused(&g, |g| g.reject("bob", "late", None, deadline));
    assert_eq!(err, TransitionError::Expired(deadline));
}

#[test]
fn activation_overflowing_time_is_refused_whole() {
    let mut r = request(1, 0);
    r.ttl = TimeDelta::MAX;
    let g = Grant::new(r, t0()).unwrap();
    let err = refused(&g, |g| g.approve(approval("bob", 2, t0()), t0() + secs(1)));
    assert_eq!(err, TransitionError::TimeOutOfRange);
}

#[test]
fn reject_needs_a_pending_grant() {
    let mut g = pending(1);
    let t = g
        .reject("bob", "not now", Some(d(5)), t0() + secs(2))
        .unwrap();
    assert_eq!(t, Transition::event(GrantEventKind::Rejected));
    assert_eq!(g.state, GrantState::Rejected);
    let ending = g.ending.as_deref().unwrap();
    assert_eq!(
        (ending.by.as_str(), ending.reason.as_str()),
        ("bob", "not now")
    );
    assert_eq!(g.ended_at(), Some(t0() + secs(2)));
    assert_eq!(g.decision_ids.last(), Some(&d(5)));
    assert!(
        !g.awaits_confirmation(),
        "never active: no credential to revoke"
    );
    let err = refused(&active(0), |g| g.reject("bob", "", None, t0()));
    assert_eq!(err, TransitionError::NotPending(GrantState::Active));
}

#[test]
fn uses_are_counted_until_max_uses() {
    let mut g = active(2);
    for i in 0..2 {
        let t = g.record_use(d(100 + i), t0() + secs(1)).unwrap();
        assert_eq!(t, Transition::event(GrantEventKind::Used));
    }
    assert_eq!(g.uses, 2);
    let err = refused(&g, |g| g.record_use(d(103), t0() + secs(2)));
    assert_eq!(err, TransitionError::Exhausted(2));
    let mut unlimited = active(0);
    for _ in 0..10 {
        let _ = unlimited.record_use(d(9), t0()).unwrap();
    }
    assert_eq!(unlimited.uses, 10);
}

#[test]
fn a_use_at_or_after_expiry_is_refused() {
    let g = active(0);
    let end = g.expires_at;
    assert!(g.check_usable(end - TimeDelta::nanoseconds(1)).is_ok());
    let err = refused(&g, |g| g.record_use(d(2), end));
    assert_eq!(err, TransitionError::Expired(end));
    let err = refused(&pending(1), |g| g.record_use(d(2), t0()));
    assert_eq!(err, TransitionError::NotActive(GrantState::Pending));
    let err = refused(&revoked(), |g| g.record_use(d(2), t0() + secs(2)));
    assert_eq!(err, TransitionError::NotActive(GrantState::Revoked));
}

#[test]
fn renew_extends_an_active_unexpired_grant_only() {
    let mut g = active(0);
    let later = g.expires_at + secs(600);
    let t = g.renew(later, d(7), t0() + secs(10)).unwrap();
    assert_eq!(t, Transition::event(GrantEventKind::Renewed));
    assert_eq!(g.expires_at, later);
    assert_eq!(g.decision_ids.last(), Some(&d(7)));
    let err = refused(&g, |g| g.renew(later, d(8), t0() + secs(11)));
    assert!(matches!(err, TransitionError::NotAnExtension { .. }));
    let err = refused(&g, |g| g.renew(later + secs(1), d(8), later));
    assert_eq!(err, TransitionError::Expired(later));
    let err = refused(&pending(1), |g| g.renew(later, d(8), t0()));
    assert_eq!(err, TransitionError::NotActive(GrantState::Pending));
}

#[test]
fn revoke_ends_live_grants_and_is_idempotent() {
    for mut g in [pending(1), active(0)] {
        let r = Revocation {
            by: "ops".into(),
            reason: "ticket closed".into(),
            decision_id: Some(d(42)),
        };
        let t = g.revoke(&r, t0() + secs(3)).unwrap();
        assert_eq!(t, Transition::event(GrantEventKind::Revoked));
        assert_eq!(g.state, GrantState::Revoked);
        assert_eq!(g.ending.as_deref().map(|e| e.by.as_str()), Some("ops"));
        assert_eq!(g.ended_at(), Some(t0() + secs(3)));
        assert_eq!(g.decision_ids.last(), Some(&d(42)));
        let before = g.clone();
        let t = g.revoke(&r, t0() + secs(4)).unwrap();
        assert_eq!(t, Transition::UNCHANGED);
        assert_eq!(g, before);
    }
    // Past its expiry (not yet swept): already ended, revoke leaves it alone.
    let mut g = active(0);
    let before = g.clone();
    let end = g.expires_at;
    assert_eq!(
        g.revoke(&Revocation::default(), end).unwrap(),
        Transition::UNCHANGED
    );
    assert_eq!(g, before);
}

#[test]
fn expire_only_when_due() {
    let g = active(0);
    let err = refused(&g, |g| g.expire(t0()));
    assert_eq!(err, TransitionError::NotDue(g.expires_at));
    let mut g = g;
    let end = g.expires_at;
    assert_eq!(
        g.expire(end + secs(30)).unwrap(),
        Transition::event(GrantEventKind::Expired)
    );
    assert_eq!(g.state, GrantState::Expired);
    assert_eq!(
        g.ended_at(),
        Some(end),
        "it ended at its expiry, not when seen"
    );
    assert_eq!(g.expire(end + secs(1)).unwrap(), Transition::UNCHANGED);
}

#[test]
fn confirm_revocation_needs_an_ended_grant_and_is_idempotent() {
    let err = refused(&active(0), |g| g.confirm_revocation("e", t0()));
    assert_eq!(err, TransitionError::NotEnded(GrantState::Active));
    let err = refused(&rejected(), |g| g.confirm_revocation("e", t0()));
    assert_eq!(err, TransitionError::NotEnded(GrantState::Rejected));
    let mut g = revoked();
    assert!(g.awaits_confirmation());
    let t = g.confirm_revocation("crl-1", t0() + secs(5)).unwrap();
    assert_eq!(t, Transition::event(GrantEventKind::RevocationConfirmed));
    assert!(g.revocation_confirmed());
    assert!(!g.awaits_confirmation());
    assert_eq!(
        g.confirm_revocation("crl-2", t0()).unwrap(),
        Transition::UNCHANGED
    );
    assert_eq!(
        g.ending.as_deref().map(|e| e.revocation_evidence.as_str()),
        Some("crl-1")
    );
    // An active grant past its expiry records the expiry in the same change.
    let mut g = active(0);
    let end = g.expires_at;
    let t = g.confirm_revocation("crl", end).unwrap();
    assert_eq!(
        t.events,
        &[GrantEventKind::Expired, GrantEventKind::RevocationConfirmed]
    );
    assert_eq!(g.state, GrantState::Expired);
    assert!(g.revocation_confirmed());
}

#[test]
fn no_way_back_from_a_terminal_state() {
    let later = t0() + secs(10);
    for g in [revoked(), rejected(), expired()] {
        let state = g.state;
        let outcomes = [
            g.clone().approve(approval("zed", 2, later), later),
            g.clone().reject("x", "y", None, later),
            g.clone().record_use(d(2), later),
            g.clone().renew(later + secs(99_999), d(2), later),
            g.clone().expire(later),
            g.clone().revoke(&Revocation::default(), later),
        ];
        for outcome in outcomes {
            assert!(matches!(
                outcome,
                Err(_) | Ok(Transition { changed: false, .. })
            ));
        }
        let mut copy = g.clone();
        let _ = copy.confirm_revocation("e", later);
        let _ = copy.report_overdue();
        let _ = copy.push_decision(d(3));
        assert_eq!(copy.state, state);
        assert_eq!(copy.effective_state(later + secs(999_999)), state);
    }
}

#[test]
fn lazy_expiry_view() {
    let g = active(0);
    let end = g.expires_at;
    assert_eq!(g.effective_state(end - secs(1)), GrantState::Active);
    assert!(g.expired_view(end - secs(1)).is_none());
    assert_eq!(g.effective_state(end), GrantState::Expired);
    let view = g.expired_view(end + secs(1)).unwrap();
    assert_eq!(view.state, GrantState::Expired);
    assert_eq!(
        view.ended_at(),
        Some(end),
        "it ended at its expiry, not when seen"
    );
    assert_eq!(g.state, GrantState::Active);
    let p = pending(1);
    assert_eq!(p.effective_state(p.expires_at), GrantState::Expired);
    assert!(revoked().expired_view(end + secs(9)).is_none());
}

#[test]
fn overdue_is_reported_once_and_only_for_credentials_that_existed() {
    let mut g = revoked();
    assert_eq!(
        g.report_overdue(),
        Transition::event(GrantEventKind::RevocationOverdue)
    );
    assert!(g.overdue_reported());
    assert_eq!(g.report_overdue(), Transition::UNCHANGED);
    // Revoked while PENDING: there never was a credential to invalidate.
    let mut p = pending(1);
    let _ = p.revoke(&Revocation::default(), t0()).unwrap();
    assert!(!p.awaits_confirmation());
    assert_eq!(p.report_overdue(), Transition::UNCHANGED);
}

#[test]
fn the_evidence_trail_is_capped_but_keeps_its_head() {
    let mut g = active(0);
    let uses = (MAX_TRAIL * 2) as u128;
    for i in 0..uses {
        let _ = g.record_use(d(1000 + i), t0()).unwrap();
    }
    assert_eq!(g.decision_ids.len(), MAX_TRAIL);
    assert_eq!(g.decision_ids[0], d(REQUEST));
    assert_eq!(g.decision_ids[1], d(1000));
    assert_eq!(g.decision_ids.last(), Some(&d(1000 + uses - 1)));
    assert_eq!(g.push_decision(d(5)), Transition::RECORDED);
}

/// A REVOKED grant that had an approval and was reported overdue: every part of a
/// grant set (for the journal's and the wire's round trips).
pub(crate) fn ended_grant() -> Grant {
    let mut g = pending(1);
    let _ = g.approve(approval("bob", 3, t0()), t0() + secs(1)).unwrap();
    let _ = g
        .revoke(
            &Revocation {
                by: "ops".into(),
                reason: "r".into(),
                decision_id: None,
            },
            t0() + secs(2),
        )
        .unwrap();
    assert_eq!(
        g.report_overdue(),
        Transition::event(GrantEventKind::RevocationOverdue)
    );
    g
}

/// An ACTIVE grant with no use limit.
pub(crate) fn active_grant() -> Grant {
    active(0)
}

#[test]
fn names() {
    assert_eq!(GrantState::Revoked.as_str(), "REVOKED");
    assert!(GrantState::Expired.is_terminal() && !GrantState::Active.is_terminal());
    for (i, s) in GrantState::ALL.into_iter().enumerate() {
        assert_eq!(s.index(), i);
    }
    assert_eq!(
        GrantEventKind::RevocationConfirmed.as_str(),
        "revocation_confirmed"
    );
    assert_eq!(GrantEventKind::Used.as_slice(), &[GrantEventKind::Used]);
}
