//! A property test: the store against a reference model, across restarts.

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Create {
        required: u32,
        max_uses: u64,
        ttl: i64,
        subject: u8,
        workflow: u8,
    },
    Approve {
        grant: usize,
        approver: u8,
    },
    Reject {
        grant: usize,
    },
    Use {
        grant: usize,
    },
    Renew {
        grant: usize,
        by: i64,
    },
    Revoke {
        grant: usize,
    },
    RevokeWorkflow {
        workflow: u8,
    },
    RevokeSubject {
        subject: u8,
    },
    Confirm {
        grant: usize,
    },
    Advance {
        secs: i64,
    },
    Sweep,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..3, 0u64..3, 1i64..200, 0u8..3, 0u8..3).prop_map(|(required, max_uses, ttl, subject, workflow)| Op::Create { required, max_uses, ttl, subject, workflow }),
        3 => (any::<usize>(), 0u8..3).prop_map(|(grant, approver)| Op::Approve { grant, approver }),
        1 => any::<usize>().prop_map(|grant| Op::Reject { grant }),
        3 => any::<usize>().prop_map(|grant| Op::Use { grant }),
        1 => (any::<usize>(), -50i64..300).prop_map(|(grant, by)| Op::Renew { grant, by }),
        1 => any::<usize>().prop_map(|grant| Op::Revoke { grant }),
        1 => (0u8..3).prop_map(|workflow| Op::RevokeWorkflow { workflow }),
        1 => (0u8..3).prop_map(|subject| Op::RevokeSubject { subject }),
        1 => any::<usize>().prop_map(|grant| Op::Confirm { grant }),
        3 => (1i64..400).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Sweep),
        1 => Just(Op::Restart),
    ]
}

/// The reference model: what an observer must see, written as plainly as possible.
#[derive(Debug, Clone, PartialEq)]
struct ModelGrant {
    state: GrantState,
    subject: String,
    workflow: String,
    required: u32,
    approvers: Vec<String>,
    expires_at: DateTime<Utc>,
    ttl: TimeDelta,
    uses: u64,
    max_uses: u64,
    ended_at: Option<DateTime<Utc>>,
    activated: bool,
    confirmed: bool,
}

impl ModelGrant {
    fn state_at(&self, now: DateTime<Utc>) -> GrantState {
        match self.state {
            GrantState::Pending | GrantState::Active if now >= self.expires_at => {
                GrantState::Expired
            }
            s => s,
        }
    }

    fn end(&mut self, state: GrantState, now: DateTime<Utc>) {
        self.state = state;
        self.ended_at = Some(now);
    }
}

const RETENTION_SECS: i64 = 1000;

fn prop_options(dir: &Path) -> StoreOptions {
    StoreOptions {
        state_dir: Some(dir.to_owned()),
        retention: TimeDelta::seconds(RETENTION_SECS),
        revocation_confirm_deadline: TimeDelta::seconds(100),
        event_capacity: 16,
        journal: JournalOptions {
            fsync: false,
            group_commit: false,
            compact_after_bytes: 8 << 10,
        },
    }
}

fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(t0());
    let open = || {
        MemoryGrantStore::open(prop_options(dir.path()), Arc::new(clock.clone()))
            .unwrap()
            .0
    };
    let mut store = open();
    let mut model: BTreeMap<String, ModelGrant> = BTreeMap::new();
    let mut ids: Vec<String> = Vec::new();
    let pick = |ids: &Vec<String>, i: usize| (!ids.is_empty()).then(|| ids[i % ids.len()].clone());
    for op in ops {
        let now = clock.now();
        match op {
            Op::Create {
                required,
                max_uses,
                ttl,
                subject,
                workflow,
            } => {
                let g = grant_for(
                    now,
                    required,
                    &format!("s{subject}"),
                    &format!("w{workflow}"),
                    max_uses,
                    TimeDelta::seconds(ttl),
                );
                let created = store.create(g).unwrap();
                model.insert(
                    created.id().to_string(),
                    ModelGrant {
                        state: created.state,
                        subject: format!("s{subject}"),
                        workflow: format!("w{workflow}"),
                        required,
                        approvers: vec![],
                        expires_at: created.expires_at,
                        ttl: TimeDelta::seconds(ttl),
                        uses: 0,
                        max_uses,
                        ended_at: None,
                        activated: required == 0,
                        confirmed: false,
                    },
                );
                ids.push(created.id().to_string());
            }
            Op::Approve { grant, approver } => {
                let Some(id) = pick(&ids, grant) else {
                    continue;
                };
                let who = format!("a{approver}");
                let result = store.approve(&id, &approval(&who));
                match model.get_mut(&id) {
                    Some(m)
                        if m.state_at(now) == GrantState::Pending
                            && !m.approvers.contains(&who) =>
                    {
                        prop_assert!(result.is_ok(), "approve {id}: {result:?}");
                        m.approvers.push(who);
                        if m.approvers.len() as u32 >= m.required {
                            m.state = GrantState::Active;
                            m.activated = true;
                            m.expires_at = now + m.ttl;
                        }
                    }
                    _ => prop_assert!(result.is_err(), "approve {id} should be refused"),
                }
            }
            Op::Reject { grant } => {
                let Some(id) = pick(&ids, grant) else {
                    continue;
                };
                let result = store.reject(&id, "r", "no", None);
                match model.get_mut(&id) {
                    Some(m) if m.state_at(now) == GrantState::Pending => {
                        prop_assert!(result.is_ok());
                        m.end(GrantState::Rejected, now);
                    }
                    _ => prop_assert!(result.is_err()),
                }
            }
            Op::Use { grant } => {
                let Some(id) = pick(&ids, grant) else {
                    continue;
                };
                let result = store.record_use(&id, Uuid::now_v7());
                match model.get_mut(&id) {
                    Some(m)
                        if m.state_at(now) == GrantState::Active
                            && (m.max_uses == 0 || m.uses < m.max_uses) =>
                    {
                        prop_assert!(result.is_ok(), "use {id}: {result:?}");
                        m.uses += 1;
                    }
                    _ => prop_assert!(result.is_err(), "use {id} should be refused"),
                }
            }
            Op::Renew { grant, by } => {
                let Some(id) = pick(&ids, grant) else {
                    continue;
                };
                let Some(current) = model.get(&id).map(|m| m.expires_at) else {
                    prop_assert!(store.renew(&id, now, Uuid::now_v7()).is_err());
                    continue;
                };
                let to = current + TimeDelta::seconds(by);
                let result = store.renew(&id, to, Uuid::now_v7());
                let m = model.get_mut(&id).unwrap();
                if m.state_at(now) == GrantState::Active && by > 0 {
                    prop_assert!(result.is_ok());
                    m.expires_at = to;
                } else {
                    prop_assert!(result.is_err());
                }
            }
            Op::Revoke { grant } => {
                let Some(id) = pick(&ids, grant) else {
                    continue;
                };
                let result = store.revoke(&id, &revocation("x"));
                match model.get_mut(&id) {
                    Some(m) => {
                        let changed = result.map(|u| u.transition.changed);
                        if m.state_at(now).is_terminal() {
                            prop_assert_eq!(changed.ok(), Some(false));
                        } else {
                            prop_assert_eq!(changed.ok(), Some(true));
                            m.end(GrantState::Revoked, now);
                        }
                    }
                    None => prop_assert!(result.is_err()),
                }
            }
            Op::RevokeWorkflow { workflow } => {
                let name = format!("w{workflow}");
                let mut revoked: Vec<String> = store
                    .revoke_workflow(&name, &revocation("x"))
                    .unwrap()
                    .iter()
                    .map(|g| g.id().to_string())
                    .collect();
                let mut expected = Vec::new();
                for (id, m) in model.iter_mut() {
                    if m.workflow == name && !m.state_at(now).is_terminal() {
                        m.end(GrantState::Revoked, now);
                        expected.push(id.clone());
                    }
                }
                revoked.sort();
                prop_assert_eq!(revoked, expected);
            }
            Op::RevokeSubject { subject } => {
                let name = format!("s{subject}");
                let mut revoked: Vec<String> = store
                    .revoke_subject(&name, &revocation("x"))
                    .unwrap()
                    .iter()
                    .map(|g| g.id().to_string())
                    .collect();
                let mut expected = Vec::new();
                for (id, m) in model.iter_mut() {
                    if m.subject == name && !m.state_at(now).is_terminal() {
                        m.end(GrantState::Revoked, now);
                        expected.push(id.clone());
                    }
                }
                revoked.sort();
                prop_assert_eq!(revoked, expected);
            }
            Op::Confirm { grant } => {
                let Some(id) = pick(&ids, grant) else {
                    continue;
                };
                let result = store.confirm_revocation(&id, "e");
                match model.get_mut(&id) {
                    Some(m)
                        if matches!(m.state_at(now), GrantState::Revoked | GrantState::Expired) =>
                    {
                        prop_assert!(result.is_ok());
                        if m.state_at(now) != m.state {
                            m.end(GrantState::Expired, m.expires_at);
                        }
                        m.confirmed = true;
                    }
                    _ => prop_assert!(result.is_err()),
                }
            }
            Op::Advance { secs } => clock.advance(TimeDelta::seconds(secs)),
            Op::Sweep => {
                store.sweep();
                // A sweep handles a grant once: one it expires (ended at its expiry,
                // maybe over a retention window ago) is dropped by the next.
                model.retain(|_, m| {
                    m.ended_at
                        .is_none_or(|ended| now < ended + TimeDelta::seconds(RETENTION_SECS))
                });
                for m in model.values_mut() {
                    if m.state_at(now) != m.state {
                        m.end(GrantState::Expired, m.expires_at);
                    }
                }
            }
            Op::Restart => {
                drop(store);
                store = open();
                for m in model.values_mut() {
                    if m.state_at(now) != m.state {
                        m.end(GrantState::Expired, m.expires_at);
                    }
                }
                model.retain(|_, m| {
                    m.ended_at
                        .is_none_or(|ended| now < ended + TimeDelta::seconds(RETENTION_SECS))
                });
            }
        }
        // Observable state agrees: every known grant, as `get` shows it.
        let now = clock.now();
        for id in &ids {
            let seen = store.get(id);
            match model.get(id) {
                None => prop_assert!(seen.is_none(), "{id} should be gone"),
                Some(m) => {
                    let Some(g) = seen else {
                        return Err(TestCaseError::fail(format!("{id} is missing")));
                    };
                    prop_assert_eq!(g.state, m.state_at(now), "state of {}", id);
                    prop_assert_eq!(g.uses, m.uses);
                    prop_assert_eq!(g.expires_at, m.expires_at);
                    prop_assert_eq!(g.approvals.len(), m.approvers.len());
                    prop_assert_eq!(g.revocation_confirmed(), m.confirmed);
                    prop_assert_eq!(g.activated_at.is_some(), m.activated);
                }
            }
        }
        prop_assert_eq!(store.len(), model.len());
        store.check_indexes().map_err(TestCaseError::fail)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run_model(ops)?;
    }
}
