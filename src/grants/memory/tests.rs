use super::*;
use crate::grants::{model::Approval, store::ListFilter};
use crate::{clock::ManualClock, grants::model::GrantRequest, proto::v1};
use tokio::sync::broadcast::error::TryRecvError;

pub(crate) fn t0() -> DateTime<Utc> {
    "2026-11-23T10:00:00Z".parse().unwrap()
}

pub(crate) fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

/// A grant request: `required` approvals, for `subject` in `workflow`.
pub(crate) fn grant(
    now: DateTime<Utc>,
    required: u32,
    subject: &str,
    workflow: &str,
    max_uses: u64,
) -> Grant {
    grant_for(now, required, subject, workflow, max_uses, secs(3600))
}

/// As [`grant`], active for `ttl` once activated.
pub(crate) fn grant_for(
    now: DateTime<Utc>,
    required: u32,
    subject: &str,
    workflow: &str,
    max_uses: u64,
    ttl: TimeDelta,
) -> Grant {
    Grant::new(
        GrantRequest {
            subject: v1::Subject {
                id: subject.into(),
                kind: "service_account".into(),
                owner: "team".into(),
                attributes: None,
            },
            action: "issue_credential".into(),
            resource: None,
            scope: vec![],
            workflow: (!workflow.is_empty()).then(|| v1::Workflow {
                id: workflow.into(),
                requester: "alice".into(),
                ..Default::default()
            }),
            required_approvals: required,
            approval_deadline: now + secs(600),
            ttl,
            max_uses,
            policy_revision: "rev".into(),
            decision_id: did(1),
        },
        now,
    )
    .unwrap()
}

/// A recognisable decision id.
pub(crate) fn did(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const REVOKE: u128 = 99;

pub(crate) fn approval(who: &str) -> Approval {
    Approval {
        approver: who.into(),
        role: "owner".into(),
        at: t0(),
        decision_id: Uuid::now_v7(),
        comment: "".into(),
    }
}

fn revocation() -> Revocation {
    Revocation {
        by: "ops".into(),
        reason: "ticket closed".into(),
        decision_id: Some(did(REVOKE)),
    }
}

pub(super) fn store() -> (MemoryGrantStore, ManualClock) {
    let clock = ManualClock::at(t0());
    (MemoryGrantStore::ephemeral(Arc::new(clock.clone())), clock)
}

/// A store whose name indexes put every workflow and every subject on one hash.
fn colliding_store() -> MemoryGrantStore {
    let (mut store, _) = store();
    store.by_workflow.hash_name = |_, _| 42;
    store.by_subject.hash_name = |_, _| 42;
    store
}

fn drain(rx: &mut broadcast::Receiver<GrantEvent>) -> Vec<(GrantEventKind, String)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push((e.kind, e.grant.id().to_string()));
    }
    out
}

#[test]
fn create_get_and_events() {
    let (store, _) = store();
    let mut rx = store.subscribe();
    let p = store.create(grant(t0(), 1, "s1", "w1", 0)).unwrap();
    let a = store.create(grant(t0(), 0, "s1", "w1", 0)).unwrap();
    assert_eq!(store.get(&p.id().to_string()).unwrap(), p);
    assert_eq!(
        store.get(&a.id().to_string()).unwrap().state,
        GrantState::Active
    );
    assert!(store.get("not-a-uuid").is_none());
    assert!(store.get(&Uuid::now_v7().to_string()).is_none());
    use GrantEventKind::*;
    assert_eq!(
        drain(&mut rx),
        vec![
            (Requested, p.id().to_string()),
            (Requested, a.id().to_string()),
            (Activated, a.id().to_string())
        ]
    );
    let dup = Grant::clone(&p);
    assert!(matches!(
        store.create(dup),
        Err(StoreError::AlreadyExists(_))
    ));
    let mut ended = grant(t0(), 0, "s", "", 0);
    let _ = ended.revoke(&revocation(), t0()).unwrap();
    assert!(matches!(
        store.create(ended),
        Err(StoreError::InvalidGrant(_))
    ));
    let upper = p.id().hyphenated().to_string().to_uppercase();
    assert_eq!(
        store.get(&upper).unwrap().id(),
        p.id(),
        "ids parse in any UUID form"
    );
    store.check_indexes().unwrap();
}

#[test]
fn approval_lifecycle_through_the_store() {
    let (store, clock) = store();
    let mut rx = store.subscribe();
    let id = store
        .create(grant(t0(), 2, "s", "w", 0))
        .unwrap()
        .id()
        .to_string();
    clock.advance(secs(10));
    let u = store.approve(&id, &approval("bob")).unwrap();
    assert_eq!(u.grant.state, GrantState::Pending);
    let err = store.approve(&id, &approval("bob")).unwrap_err();
    assert_eq!(
        err.transition(),
        Some(&TransitionError::AlreadyApproved("bob".into()))
    );
    let u = store.approve(&id, &approval("carol")).unwrap();
    assert_eq!(u.grant.state, GrantState::Active);
    assert_eq!(u.grant.expires_at, t0() + secs(10) + secs(3600));
    use GrantEventKind::*;
    let kinds: Vec<_> = drain(&mut rx).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, vec![Requested, Approved, Approved, Activated]);
    assert!(matches!(
        store.approve("nope", &approval("x")),
        Err(StoreError::NotFound(_))
    ));
    store.check_indexes().unwrap();
}

#[test]
fn a_refused_transition_changes_nothing_and_publishes_nothing() {
    let (store, _) = store();
    let id = store
        .create(grant(t0(), 0, "s", "w", 1))
        .unwrap()
        .id()
        .to_string();
    store.record_use(&id, did(11)).unwrap();
    let before = store.get(&id).unwrap();
    let mut rx = store.subscribe();
    let err = store.record_use(&id, did(12)).unwrap_err();
    assert_eq!(err.transition(), Some(&TransitionError::Exhausted(1)));
    assert_eq!(store.get(&id).unwrap(), before);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    // The adapter can still record the denied step's decision.
    let u = store.push_decision(&id, did(13)).unwrap();
    assert!(u.transition.changed && u.transition.events.is_empty());
    assert_eq!(u.grant.decision_ids.last(), Some(&did(13)));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn closures_cannot_break_invariants() {
    let (store, _) = store();
    let id = store
        .create(grant(t0(), 0, "s", "w", 0))
        .unwrap()
        .id()
        .to_string();
    type Tamper = fn(&mut Grant);
    let cases: [(&str, Tamper); 5] = [
        ("id", |g| Arc::make_mut(&mut g.spec).id = Uuid::now_v7()),
        ("subject", |g| {
            let mut terms = g.terms();
            terms.subject.id = "other".into();
            Arc::make_mut(&mut g.spec).terms = terms.into();
        }),
        ("workflow", |g| {
            let mut terms = g.terms();
            terms.workflow = None;
            Arc::make_mut(&mut g.spec).terms = terms.into();
        }),
        ("uses", |g| g.uses = 0),
        ("ending", |g| g.ending = Some(Box::default())),
    ];
    store.record_use(&id, did(2)).unwrap();
    for (what, change) in cases {
        let err = store
            .update(&id, &mut |g, _| {
                change(g);
                Ok(Transition::RECORDED)
            })
            .unwrap_err();
        assert!(
            matches!(err.transition(), Some(TransitionError::Forbidden(_))),
            "{what}: {err}"
        );
    }
    store.revoke(&id, &revocation()).unwrap();
    let err = store
        .update(&id, &mut |g, _| {
            g.state = GrantState::Active;
            Ok(Transition::RECORDED)
        })
        .unwrap_err();
    assert!(matches!(
        err.transition(),
        Some(TransitionError::Forbidden(_))
    ));
    assert_eq!(store.get(&id).unwrap().state, GrantState::Revoked);
    store.check_indexes().unwrap();
}

#[test]
fn expiry_is_checked_on_every_read_without_a_sweep() {
    let (store, clock) = store();
    let a = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    let p = store.create(grant(t0(), 1, "s", "w", 0)).unwrap();
    clock.set(p.expires_at);
    assert_eq!(
        store.get(&p.id().to_string()).unwrap().state,
        GrantState::Expired
    );
    assert_eq!(
        store.get(&a.id().to_string()).unwrap().state,
        GrantState::Active
    );
    assert!(
        store
            .approve(&p.id().to_string(), &approval("bob"))
            .is_err()
    );
    clock.set(a.expires_at);
    let seen = store.get(&a.id().to_string()).unwrap();
    assert_eq!(seen.state, GrantState::Expired);
    let err = store.record_use(&a.id().to_string(), did(2)).unwrap_err();
    assert_eq!(
        err.transition(),
        Some(&TransitionError::Expired(a.expires_at))
    );
    // Nothing recorded yet: the stats still count what was stored.
    assert_eq!(store.stats().active, 1);
    let page = store
        .list(
            &ListFilter {
                state: Some(GrantState::Expired),
                ..Default::default()
            },
            0,
            None,
        )
        .unwrap();
    assert_eq!(page.grants.len(), 2);
}

#[test]
fn revoke_is_idempotent_by_id_workflow_and_subject() {
    let (store, _) = store();
    let w1a = store.create(grant(t0(), 0, "s1", "w1", 0)).unwrap();
    let w1b = store.create(grant(t0(), 1, "s2", "w1", 0)).unwrap();
    let w2 = store.create(grant(t0(), 0, "s1", "w2", 0)).unwrap();
    let other = store.create(grant(t0(), 0, "s3", "w3", 0)).unwrap();
    let mut rx = store.subscribe();

    let u = store.revoke(&w1a.id().to_string(), &revocation()).unwrap();
    assert!(u.transition.changed);
    assert_eq!(
        u.grant.ending.as_deref().map(|e| e.by.as_str()),
        Some("ops")
    );
    let again = store.revoke(&w1a.id().to_string(), &revocation()).unwrap();
    assert!(!again.transition.changed);

    let revoked = store.revoke_workflow("w1", &revocation()).unwrap();
    assert_eq!(
        revoked
            .iter()
            .map(|g| g.id().to_string())
            .collect::<Vec<_>>(),
        vec![w1b.id().to_string()]
    );
    assert!(
        store
            .revoke_workflow("w1", &revocation())
            .unwrap()
            .is_empty()
    );

    let revoked = store.revoke_subject("s1", &revocation()).unwrap();
    assert_eq!(
        revoked
            .iter()
            .map(|g| g.id().to_string())
            .collect::<Vec<_>>(),
        vec![w2.id().to_string()]
    );
    assert!(
        store
            .revoke_subject("s1", &revocation())
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .revoke_subject("nobody", &revocation())
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        store.get(&other.id().to_string()).unwrap().state,
        GrantState::Active
    );
    for id in [
        &w1a.id().to_string(),
        &w1b.id().to_string(),
        &w2.id().to_string(),
    ] {
        let g = store.get(id).unwrap();
        assert_eq!(g.state, GrantState::Revoked);
        assert_eq!(g.decision_ids.last(), Some(&did(REVOKE)));
    }
    let kinds: Vec<_> = drain(&mut rx).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, vec![GrantEventKind::Revoked; 3]);
    assert_eq!(store.stats().revoked, 3);
    store.check_indexes().unwrap();
}

#[test]
fn sweep_expires_due_grants_in_order_and_only_those() {
    let (store, clock) = store();
    let mut rx = store.subscribe();
    let late = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    clock.advance(secs(1));
    let early = store.create(grant(t0(), 1, "s", "w", 0)).unwrap();
    clock.advance(secs(100));
    let live = store.create(grant(clock.now(), 0, "s", "w", 0)).unwrap();
    drain(&mut rx);
    let r = store.sweep();
    assert_eq!(
        (r.expired, r.dropped, r.overdue, r.unjournaled),
        (0, 0, 0, 0)
    );
    clock.set(late.expires_at);
    let report = store.sweep();
    assert_eq!(report.expired, 2);
    assert_eq!(
        drain(&mut rx),
        vec![
            (GrantEventKind::Expired, early.id().to_string()),
            (GrantEventKind::Expired, late.id().to_string())
        ]
    );
    assert_eq!(
        store.get(&live.id().to_string()).unwrap().state,
        GrantState::Active
    );
    assert_eq!(store.stats().expired, 2);
    assert_eq!(store.stats().active, 1);
    assert_eq!(store.sweep().expired, 0, "expired once");
    store.check_indexes().unwrap();
}

#[test]
fn terminal_grants_are_dropped_after_retention() {
    let (store, clock) = store();
    let ended = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    store
        .revoke(&ended.id().to_string(), &revocation())
        .unwrap();
    store
        .confirm_revocation(&ended.id().to_string(), "crl")
        .unwrap();
    let live = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    store
        .renew(&live.id().to_string(), t0() + TimeDelta::days(3), did(3))
        .unwrap();
    clock.advance(TimeDelta::hours(24) - secs(1));
    assert_eq!(store.sweep().dropped, 0);
    assert!(store.get(&ended.id().to_string()).is_some());
    clock.advance(secs(1));
    let report = store.sweep();
    assert_eq!(report.dropped, 1);
    assert!(store.get(&ended.id().to_string()).is_none());
    assert!(
        store
            .revoke(&ended.id().to_string(), &revocation())
            .is_err()
    );
    assert_eq!(store.len(), 1);
    assert_eq!(store.stats().grants, 1);
    store.check_indexes().unwrap();
    let all = store.list(&ListFilter::default(), 0, None).unwrap();
    assert_eq!(all.grants.len(), 1);
}

#[test]
fn revocation_overdue_is_emitted_once_per_grant() {
    let (store, clock) = store();
    let a = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    let b = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    let never_active = store.create(grant(t0(), 1, "s", "w", 0)).unwrap();
    store.revoke_workflow("w", &revocation()).unwrap();
    assert_eq!(store.stats().awaiting_confirmation, 2);
    let mut rx = store.subscribe();
    clock.advance(TimeDelta::minutes(5) - secs(1));
    assert_eq!(store.sweep().overdue, 0);
    store
        .confirm_revocation(&b.id().to_string(), "done")
        .unwrap();
    drain(&mut rx);
    clock.advance(secs(1));
    assert_eq!(store.sweep().overdue, 1);
    assert_eq!(
        drain(&mut rx),
        vec![(GrantEventKind::RevocationOverdue, a.id().to_string())]
    );
    let stats = store.stats();
    assert_eq!(
        (stats.awaiting_confirmation, stats.revocations_overdue),
        (1, 1)
    );
    clock.advance(TimeDelta::minutes(30));
    assert_eq!(store.sweep().overdue, 0, "only once");
    assert!(drain(&mut rx).is_empty());
    assert!(store.get(&a.id().to_string()).unwrap().overdue_reported());
    assert!(
        !store
            .get(&never_active.id().to_string())
            .unwrap()
            .overdue_reported()
    );
    store
        .confirm_revocation(&a.id().to_string(), "late")
        .unwrap();
    let stats = store.stats();
    assert_eq!(
        (stats.awaiting_confirmation, stats.revocations_overdue),
        (0, 0)
    );
    store.check_indexes().unwrap();
}

#[test]
fn expired_grants_await_confirmation_too() {
    let (store, clock) = store();
    let a = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    clock.set(a.expires_at + TimeDelta::minutes(5));
    assert_eq!(store.sweep().expired, 1);
    assert_eq!(store.stats().awaiting_confirmation, 1);
    clock.advance(TimeDelta::minutes(5));
    assert_eq!(store.sweep().overdue, 1);
}

#[test]
fn name_index_collisions_never_widen_a_revocation_or_a_listing() {
    let store = colliding_store();
    let mut by_workflow: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for i in 0..12 {
        let (subject, workflow) = (["s1", "s2", "s3"][i % 3], ["w1", "w2"][i % 2]);
        let g = store.create(grant(t0(), 0, subject, workflow, 0)).unwrap();
        by_workflow
            .entry(workflow)
            .or_default()
            .push(g.id().to_string());
    }
    store.check_indexes().unwrap();
    // Listing one workflow page by page sees only its grants, in id order.
    let filter = ListFilter {
        workflow_id: Some("w2".into()),
        ..ListFilter::default()
    };
    let (mut seen, mut token) = (Vec::new(), None::<String>);
    loop {
        let page = store.list(&filter, 2, token.as_deref()).unwrap();
        seen.extend(page.grants.iter().map(|g| g.id().to_string()));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, by_workflow["w2"]);
    // Revoking a workflow or a subject ends only theirs.
    let revoked = store.revoke_workflow("w1", &revocation()).unwrap();
    let mut ids: Vec<_> = revoked.iter().map(|g| g.id().to_string()).collect();
    ids.sort();
    assert_eq!(ids, by_workflow["w1"]);
    let revoked = store.revoke_subject("s2", &revocation()).unwrap();
    assert!(!revoked.is_empty());
    assert!(
        revoked
            .iter()
            .all(|g| g.subject_id() == "s2" && g.workflow_id() == Some("w2"))
    );
    for id in &by_workflow["w2"] {
        let g = store.get(id).unwrap();
        let expected = if g.subject_id() == "s2" {
            GrantState::Revoked
        } else {
            GrantState::Active
        };
        assert_eq!(g.state, expected, "{}", g.subject_id());
    }
    assert!(
        store
            .revoke_workflow("w9", &revocation())
            .unwrap()
            .is_empty()
    );
    store.check_indexes().unwrap();
}

#[test]
fn equal_parties_and_names_are_shared_between_grants() {
    let (store, _) = store();
    let a = store.create(grant(t0(), 1, "s1", "w1", 0)).unwrap();
    let b = store.create(grant(t0(), 1, "s1", "w2", 0)).unwrap();
    assert!(Arc::ptr_eq(
        a.spec.terms.subject_bytes(),
        b.spec.terms.subject_bytes()
    ));
    let a = store
        .approve(&a.id().to_string(), &approval("bob"))
        .unwrap();
    let b = store
        .approve(&b.id().to_string(), &approval("bob"))
        .unwrap();
    assert!(Arc::ptr_eq(
        &a.grant.approvals[0].approver,
        &b.grant.approvals[0].approver
    ));
    assert!(Arc::ptr_eq(
        &a.grant.approvals[0].role,
        &b.grant.approvals[0].role
    ));
    // What a grant holds for itself stays small: no spare capacity, no copies.
    assert_eq!(a.grant.approvals.len(), 1);
    assert_eq!(a.grant.decision_ids.len(), 2);
    assert!(
        size_of::<Grant>() <= 88,
        "Grant is {} B",
        size_of::<Grant>()
    );
    assert!(
        size_of::<crate::grants::GrantSpec>() <= 120,
        "GrantSpec is {} B",
        size_of::<crate::grants::GrantSpec>()
    );
}

#[test]
fn pagination_is_stable_and_filtered() {
    let (store, clock) = store();
    let mut ids = Vec::new();
    for i in 0..25 {
        let wf = if i % 2 == 0 { "even" } else { "odd" };
        let subject = if i % 3 == 0 { "s0" } else { "s1" };
        ids.push(
            store
                .create(grant(t0(), 0, subject, wf, 0))
                .unwrap()
                .id()
                .to_string(),
        );
        clock.advance(TimeDelta::milliseconds(1));
    }
    let mut sorted = ids.clone();
    sorted.sort();
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list(&ListFilter::default(), 10, token.as_deref())
            .unwrap();
        pages += 1;
        seen.extend(page.grants.iter().map(|g| g.id().to_string()));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, sorted);
    // Exactly a page's worth: no empty trailing page.
    let page = store.list(&ListFilter::default(), 25, None).unwrap();
    assert_eq!(page.grants.len(), 25);
    assert_eq!(page.next_page_token, None);

    let filter = ListFilter {
        workflow_id: Some("even".into()),
        subject_id: Some("s0".into()),
        state: None,
    };
    let expected: Vec<_> = sorted
        .iter()
        .filter(|id| {
            let g = store.get(id).unwrap();
            g.workflow_id() == Some("even") && g.subject_id() == "s0"
        })
        .cloned()
        .collect();
    let first = store.list(&filter, 2, None).unwrap();
    let rest = store
        .list(&filter, 0, first.next_page_token.as_deref())
        .unwrap();
    let got: Vec<_> = first
        .grants
        .iter()
        .chain(&rest.grants)
        .map(|g| g.id().to_string())
        .collect();
    assert_eq!(got, expected);
    store.revoke(&sorted[0], &revocation()).unwrap();
    let revoked = store
        .list(
            &ListFilter {
                state: Some(GrantState::Revoked),
                ..Default::default()
            },
            0,
            Some(""),
        )
        .unwrap();
    assert_eq!(revoked.grants.len(), 1);
    for bad in [
        "garbage",
        "g1.",
        "g1.zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        &sorted[0],
    ] {
        assert!(
            matches!(
                store.list(&ListFilter::default(), 10, Some(bad)),
                Err(StoreError::InvalidPageToken)
            ),
            "{bad}"
        );
    }
    let none = store
        .list(
            &ListFilter {
                workflow_id: Some("missing".into()),
                ..Default::default()
            },
            0,
            None,
        )
        .unwrap();
    assert!(none.grants.is_empty() && none.next_page_token.is_none());
}

#[test]
fn a_slow_watcher_lags_and_never_blocks_the_store() {
    let clock = ManualClock::at(t0());
    let options = StoreOptions {
        event_capacity: 4,
        ..StoreOptions::default()
    };
    let (store, _) = MemoryGrantStore::open(options, Arc::new(clock)).unwrap();
    let mut rx = store.subscribe();
    for _ in 0..10 {
        store.create(grant(t0(), 1, "s", "w", 0)).unwrap();
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(6))));
    assert_eq!(drain(&mut rx).len(), 4);
}

impl MemoryGrantStore {
    /// Every grant as stored (no lazy view); for tests.
    pub(crate) fn raw_grants(&self) -> Vec<Arc<Grant>> {
        self.grants.iter().map(|r| r.value().clone()).collect()
    }

    /// Checks that every index agrees with the map; for tests.
    pub(crate) fn check_indexes(&self) -> Result<(), String> {
        let mut expected_due = BTreeSet::new();
        let mut expected_ids = BTreeSet::new();
        let mut workflows = BTreeSet::new();
        let mut subjects = BTreeSet::new();
        for entry in self.grants.iter() {
            let grant = entry.value();
            if grant.id() != *entry.key() {
                return Err(format!("{} is keyed as {}", grant.id(), entry.key()));
            }
            expected_due.insert((self.next_due(grant), *entry.key()));
            expected_ids.insert(*entry.key());
            if let Some(w) = grant.workflow_id() {
                workflows.insert((self.by_workflow.hash(w), *entry.key()));
            }
            if !grant.subject_id().is_empty() {
                subjects.insert((self.by_subject.hash(grant.subject_id()), *entry.key()));
            }
        }
        if *lock(&self.due) != expected_due {
            return Err("due index disagrees with the map".into());
        }
        if *lock(&self.ids) != expected_ids {
            return Err("id index disagrees with the map".into());
        }
        if self.by_workflow.entries() != workflows {
            return Err("workflow index disagrees with the map".into());
        }
        if self.by_subject.entries() != subjects {
            return Err("subject index disagrees with the map".into());
        }
        Ok(())
    }
}
