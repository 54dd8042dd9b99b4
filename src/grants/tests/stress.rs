//! A concurrency stress test: the invariants hold under concurrent steps.

use super::*;

#[test]
fn concurrent_requests_approvals_uses_and_revocations_keep_the_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(t0());
    let mut opts = options(dir.path(), true);
    opts.journal.group_commit = true;
    opts.journal.compact_after_bytes = 64 << 10;
    opts.retention = TimeDelta::seconds(120);
    opts.event_capacity = 1 << 20;
    let (store, _) = MemoryGrantStore::open(opts.clone(), Arc::new(clock.clone())).unwrap();
    let store = Arc::new(store);
    let mut events = store.subscribe();
    let stop = AtomicBool::new(false);
    // Time moves only between whole worker rounds (so no worker acts on a stale "now"),
    // while sweeps run concurrently with the workers.
    let time_gate = RwLock::new(());
    const WORKERS: usize = 6;
    const ROUNDS: usize = 150;
    let created: Vec<Vec<String>> = thread::scope(|s| {
        let sweeper = s.spawn(|| {
            let mut sweeps = 0;
            let mut compactions = 0;
            while !stop.load(Ordering::Relaxed) {
                let now = {
                    let _moving = time_gate.write().unwrap();
                    clock.advance(secs(1));
                    clock.now()
                };
                let report = store.sweep();
                assert_eq!(report.unjournaled, 0);
                compactions += usize::from(report.compacted);
                // Everything due at `now` was expired by that sweep.
                for g in store.raw_grants() {
                    if !g.state.is_terminal() {
                        assert!(
                            g.expires_at > now,
                            "{} live past expiry after a sweep",
                            g.id()
                        );
                    }
                }
                sweeps += 1;
            }
            (sweeps, compactions)
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let store = store.clone();
                let clock = clock.clone();
                let time_gate = &time_gate;
                s.spawn(move || {
                    let mut mine: Vec<String> = Vec::new();
                    for round in 0..ROUNDS {
                        let _still = time_gate.read().unwrap();
                        let now = clock.now();
                        let g = grant_for(
                            now,
                            (round % 3) as u32,
                            &format!("s{}", round % 4),
                            &format!("w{}", round % 5),
                            3,
                            secs(5 + (round % 20) as i64),
                        );
                        let id = store.create(g).unwrap().id().to_string();
                        mine.push(id.clone());
                        for a in 0..2 {
                            let _ = store.approve(&id, &approval(&format!("w{w}-a{a}")));
                        }
                        for _ in 0..5 {
                            let _ = store.record_use(&id, Uuid::now_v7());
                        }
                        if let Some(older) = mine.get(round / 2) {
                            let _ = store.record_use(older, Uuid::now_v7());
                            let _ = store.renew(older, now + secs(30), Uuid::now_v7());
                        }
                        match round % 10 {
                            0 => {
                                let _ = store.revoke(&id, &revocation("w"));
                            }
                            3 => {
                                store
                                    .revoke_workflow(
                                        &format!("w{}", round % 5),
                                        &revocation("ticket"),
                                    )
                                    .unwrap();
                            }
                            5 => {
                                store
                                    .revoke_subject(
                                        &format!("s{}", round % 4),
                                        &revocation("subject"),
                                    )
                                    .unwrap();
                            }
                            7 => {
                                let _ = store.confirm_revocation(&id, "e");
                            }
                            _ => {}
                        }
                        if let Some(g) = store.get(&id) {
                            assert!(g.uses <= g.max_uses());
                        }
                    }
                    mine
                })
            })
            .collect();
        let created = workers.into_iter().map(|w| w.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        let (sweeps, _compactions) = sweeper.join().unwrap();
        assert!(sweeps > 0);
        created
    });
    let total: usize = created.iter().map(Vec::len).sum();
    assert_eq!(total, WORKERS * ROUNDS);
    store.check_indexes().unwrap();
    for g in store.raw_grants() {
        assert!(
            g.uses <= g.max_uses(),
            "{} used {} of {}",
            g.id(),
            g.uses,
            g.max_uses()
        );
    }
    // Per grant, events come in order and no grant ever leaves a terminal state.
    let mut last: BTreeMap<String, GrantState> = BTreeMap::new();
    let mut seen = 0;
    while let Ok(event) = events.try_recv() {
        seen += 1;
        let g = &event.grant;
        assert!(g.uses <= g.max_uses());
        if let Some(previous) = last.get(&g.id().to_string())
            && previous.is_terminal()
        {
            assert_eq!(
                g.state,
                *previous,
                "{} left {previous} ({})",
                g.id(),
                event.kind
            );
        }
        last.insert(g.id().to_string(), g.state);
    }
    assert!(seen > total);
    // A restart sees exactly the same grants.
    let before = snapshot(&store);
    drop(store);
    let (reopened, _) = MemoryGrantStore::open(opts, Arc::new(clock.clone())).unwrap();
    assert_eq!(snapshot(&reopened), before);
    reopened.check_indexes().unwrap();
}
