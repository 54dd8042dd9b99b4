//! Whole-store tests: restarts over the journal (replay, expiry while down, torn and
//! damaged files, compaction), a property test against a reference model, and a
//! concurrency stress test.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use uuid::Uuid;

use super::{
    journal::{self, JOURNAL_FILE, JournalError, JournalOptions},
    memory::{
        MemoryGrantStore,
        tests::{approval, grant, grant_for, secs, t0},
    },
    model::{Grant, GrantEventKind, GrantState, Revocation},
    store::{ListFilter, StoreError, StoreOptions},
};
use crate::clock::{Clock, ManualClock};

fn options(dir: &Path, fsync: bool) -> StoreOptions {
    StoreOptions {
        state_dir: Some(dir.to_owned()),
        journal: JournalOptions {
            fsync,
            ..JournalOptions::default()
        },
        ..StoreOptions::default()
    }
}

fn open(dir: &Path, clock: &ManualClock) -> (MemoryGrantStore, Vec<super::GrantEvent>) {
    MemoryGrantStore::open(options(dir, false), Arc::new(clock.clone())).unwrap()
}

fn revocation(by: &str) -> Revocation {
    Revocation {
        by: by.into(),
        reason: "test".into(),
        decision_id: None,
    }
}

/// Every grant the store holds, by id, as `get` shows it.
fn snapshot(store: &MemoryGrantStore) -> BTreeMap<String, Grant> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = store
            .list(&ListFilter::default(), 1000, token.as_deref())
            .unwrap();
        out.extend(
            page.grants
                .iter()
                .map(|g| (g.id().to_string(), Grant::clone(g))),
        );
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

/// Builds a journal with grants in every state; returns the store's view of them.
fn populate(store: &MemoryGrantStore, clock: &ManualClock) -> Vec<String> {
    let now = clock.now();
    let pending = store.create(grant(now, 2, "s1", "w1", 0)).unwrap();
    store
        .approve(&pending.id().to_string(), &approval("bob"))
        .unwrap();
    let active = store.create(grant(now, 1, "s1", "w1", 3)).unwrap();
    store
        .approve(&active.id().to_string(), &approval("bob"))
        .unwrap();
    store
        .record_use(&active.id().to_string(), Uuid::now_v7())
        .unwrap();
    let revoked = store.create(grant(now, 0, "s2", "w2", 0)).unwrap();
    store
        .revoke(&revoked.id().to_string(), &revocation("ops"))
        .unwrap();
    let confirmed = store.create(grant(now, 0, "s2", "w2", 0)).unwrap();
    store
        .revoke(&confirmed.id().to_string(), &revocation("ops"))
        .unwrap();
    store
        .confirm_revocation(&confirmed.id().to_string(), "crl-7")
        .unwrap();
    let rejected = store.create(grant(now, 1, "s3", "", 0)).unwrap();
    store
        .reject(
            &rejected.id().to_string(),
            "carol",
            "no",
            Some(Uuid::now_v7()),
        )
        .unwrap();
    let renewed = store.create(grant(now, 0, "s3", "w3", 0)).unwrap();
    store
        .renew(
            &renewed.id().to_string(),
            now + TimeDelta::hours(5),
            Uuid::now_v7(),
        )
        .unwrap();
    vec![
        pending.id().to_string(),
        active.id().to_string(),
        revoked.id().to_string(),
        confirmed.id().to_string(),
        rejected.id().to_string(),
        renewed.id().to_string(),
    ]
}

/// A journaled store at t0 in a fresh directory, holding [`populate`]'s grants.
fn populated() -> (
    tempfile::TempDir,
    ManualClock,
    MemoryGrantStore,
    Vec<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(t0());
    let (store, _) = open(dir.path(), &clock);
    let ids = populate(&store, &clock);
    (dir, clock, store, ids)
}

#[test]
fn a_restart_replays_everything() {
    let (dir, clock, store, _) = populated();
    let before = snapshot(&store);
    let stats = store.stats();
    drop(store);
    let (store, events) = open(dir.path(), &clock);
    assert!(events.is_empty());
    assert_eq!(snapshot(&store), before);
    assert_eq!(store.stats(), stats);
    store.check_indexes().unwrap();
    // Replay shares what the grants repeat again: subjects, resources, revisions.
    let replayed = store.raw_grants();
    let of_s1: Vec<_> = replayed.iter().filter(|g| g.subject_id() == "s1").collect();
    assert_eq!(of_s1.len(), 2);
    assert!(Arc::ptr_eq(
        of_s1[0].spec.terms.subject_bytes(),
        of_s1[1].spec.terms.subject_bytes()
    ));
    assert!(
        replayed
            .iter()
            .all(|g| Arc::ptr_eq(&g.spec.policy_revision, &replayed[0].spec.policy_revision))
    );
    // And the replayed store goes on working.
    let active = before
        .values()
        .find(|g| g.state == GrantState::Active && g.max_uses() == 3)
        .unwrap();
    assert_eq!(
        store
            .record_use(&active.id().to_string(), Uuid::now_v7())
            .unwrap()
            .grant
            .uses,
        2
    );
}

#[test]
fn grants_that_expired_while_down_are_expired_at_start_with_events() {
    let (dir, clock, store, ids) = populated();
    drop(store);
    // The renewed grant lives 5 h, the others 1 h (pending: 10 min deadline).
    clock.advance(TimeDelta::hours(2));
    let (store, events) = open(dir.path(), &clock);
    let expired: Vec<_> = events
        .iter()
        .map(|e| {
            assert_eq!(e.kind, GrantEventKind::Expired);
            assert_eq!(e.at, clock.now());
            e.grant.id().to_string()
        })
        .collect();
    assert_eq!(expired.len(), 2);
    assert!(expired.contains(&ids[0]) && expired.contains(&ids[1]));
    for id in &ids[..2] {
        let g = store.get(id).unwrap();
        assert_eq!(g.state, GrantState::Expired);
        assert_eq!(g.ended_at(), Some(g.expires_at), "it ended at its expiry");
    }
    assert_eq!(store.get(&ids[5]).unwrap().state, GrantState::Active);
    assert_eq!(store.stats().expired, 2);
    drop(store);
    // The start marked those expiries: a second start does not announce them again.
    let (store, events) = open(dir.path(), &clock);
    assert!(events.is_empty());
    assert_eq!(store.get(&ids[0]).unwrap().state, GrantState::Expired);
}

#[test]
fn revocations_are_never_undone_by_replay_or_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(t0());
    let (store, _) = open(dir.path(), &clock);
    let g = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    for _ in 0..20 {
        store
            .record_use(&g.id().to_string(), Uuid::now_v7())
            .unwrap();
    }
    store.revoke_workflow("w", &revocation("ticket")).unwrap();
    assert!(store.compact().unwrap());
    // Anything after the revocation is refused or leaves it revoked.
    assert!(
        store
            .record_use(&g.id().to_string(), Uuid::now_v7())
            .is_err()
    );
    store
        .confirm_revocation(&g.id().to_string(), "crl")
        .unwrap();
    drop(store);
    for _ in 0..2 {
        let (store, _) = open(dir.path(), &clock);
        let seen = store.get(&g.id().to_string()).unwrap();
        assert_eq!(seen.state, GrantState::Revoked);
        assert_eq!(
            seen.ending.as_deref().map(|e| e.by.as_str()),
            Some("ticket")
        );
        assert_eq!(seen.uses, 20);
        assert!(seen.revocation_confirmed());
        assert!(store.compact().unwrap());
    }
}

#[test]
fn compaction_preserves_state_and_bounds_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(t0());
    let mut opts = options(dir.path(), false);
    opts.journal.compact_after_bytes = 16 << 10;
    let (store, _) = MemoryGrantStore::open(opts.clone(), Arc::new(clock.clone())).unwrap();
    let ids = populate(&store, &clock);
    for _ in 0..400 {
        store.record_use(&ids[5], Uuid::now_v7()).unwrap();
    }
    let journal = store.journal().unwrap();
    assert!(journal.wants_compaction());
    let report = store.sweep();
    assert!(report.compacted);
    assert!(journal.len() < 16 << 10);
    let before = snapshot(&store);
    drop(store);
    let (store, _) = MemoryGrantStore::open(opts, Arc::new(clock.clone())).unwrap();
    assert_eq!(snapshot(&store), before);
    assert_eq!(store.get(&ids[5]).unwrap().uses, 400);
}

#[test]
fn a_sweeps_expiries_are_not_journaled_and_a_restart_derives_them_without_events() {
    let (dir, clock, store, ids) = populated();
    let journaled = store.journal().unwrap().len();
    clock.advance(TimeDelta::hours(2));
    let report = store.sweep();
    assert_eq!(report.expired, 2);
    let before = snapshot(&store);
    drop(store);
    // What the sweep wrote: its overdue reports and one mark, nothing per expiry.
    let bytes = fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
    let scan = journal::scan(&bytes[..], Path::new("j")).unwrap();
    let written: Vec<_> = scan
        .records
        .iter()
        .filter(|(offset, _)| *offset >= journaled)
        .map(|(_, record)| record)
        .collect();
    assert_eq!(written.len(), report.overdue + 1);
    assert!(
        matches!(written.last(), Some(journal::Record::Expired { at, ids })
        if ids.is_empty() && *at == clock.now())
    );
    assert!(
        written[..report.overdue]
            .iter()
            .all(|r| matches!(r, journal::Record::Delta(d) if d.overdue_reported))
    );
    let (store, events) = open(dir.path(), &clock);
    assert!(events.is_empty(), "the sweep announced these expiries");
    assert_eq!(snapshot(&store), before);
    let g = store.get(&ids[0]).unwrap();
    assert_eq!(g.state, GrantState::Expired);
    assert_eq!(g.ended_at(), Some(g.expires_at));
}

#[test]
fn retention_drops_stay_dropped_after_a_restart() {
    let (dir, clock, store, ids) = populated();
    clock.advance(TimeDelta::hours(30));
    let report = store.sweep();
    assert_eq!(report.expired, 3);
    assert_eq!(report.dropped, 3, "the three that ended at t0");
    // The three it expired ended at their expiries, over a retention window ago: the
    // next sweep drops them (a sweep handles a grant once).
    assert_eq!(store.sweep().dropped, 3);
    let before = snapshot(&store);
    drop(store);
    let (store, events) = open(dir.path(), &clock);
    assert!(events.is_empty());
    assert_eq!(snapshot(&store), before);
    assert!(store.get(&ids[2]).is_none());
}

#[test]
fn a_failed_compaction_leaves_the_journal_usable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(t0());
    let (store, _) = open(dir.path(), &clock);
    let g = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    // A directory where the compaction's temporary file goes makes it fail.
    fs::create_dir(dir.path().join(journal::JOURNAL_TMP_FILE)).unwrap();
    assert!(matches!(
        store.compact(),
        Err(StoreError::Journal(JournalError::Io { .. }))
    ));
    fs::remove_dir(dir.path().join(journal::JOURNAL_TMP_FILE)).unwrap();
    store
        .record_use(&g.id().to_string(), Uuid::now_v7())
        .unwrap();
    drop(store);
    let (store, _) = open(dir.path(), &clock);
    assert_eq!(store.get(&g.id().to_string()).unwrap().uses, 1);
}

/// Journal files whose next write stops half-way and fails, as on a full disk.
#[derive(Default)]
struct FailingFiles {
    fail_next: Arc<AtomicBool>,
}

struct FailingFile {
    file: fs::File,
    fail_next: Arc<AtomicBool>,
}

impl journal::JournalFile for FailingFile {
    fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            let _ = self.file.write_all(&bytes[..bytes.len() / 2]);
            return Err(std::io::Error::other("injected write failure"));
        }
        journal::JournalFile::write_all(&self.file, bytes)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
}

impl journal::JournalFiles for FailingFiles {
    fn appender(&self, file: fs::File) -> Arc<dyn journal::JournalFile> {
        Arc::new(FailingFile {
            file,
            fail_next: self.fail_next.clone(),
        })
    }
}

#[test]
fn a_journal_write_failure_refuses_mutations_but_keeps_reads_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(t0());
    let files = Arc::new(FailingFiles::default());
    let fail_next = files.fail_next.clone();
    let (store, _) =
        MemoryGrantStore::open_with(options(dir.path(), false), Arc::new(clock.clone()), files)
            .unwrap();
    let a = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    let id = a.id().to_string();
    let before = store.get(&id).unwrap();
    fail_next.store(true, Ordering::SeqCst);
    let err = store.revoke(&id, &revocation("ops")).unwrap_err();
    assert!(
        matches!(err, StoreError::Journal(JournalError::Io { .. })),
        "{err}"
    );
    assert_eq!(
        store.get(&id).unwrap(),
        before,
        "an unjournaled change is not made"
    );
    // Poisoned: every later change is refused, reads go on.
    assert!(matches!(
        store.record_use(&id, Uuid::now_v7()),
        Err(StoreError::Journal(JournalError::Unavailable(_)))
    ));
    assert!(store.create(grant(t0(), 0, "s", "w", 0)).is_err());
    assert_eq!(store.get(&id).unwrap().state, GrantState::Active);
    // Expiry still happens (in memory; replay redoes it).
    clock.set(a.expires_at);
    let report = store.sweep();
    assert_eq!((report.expired, report.unjournaled), (1, 1));
    assert_eq!(store.get(&id).unwrap().state, GrantState::Expired);
    drop(store);
    // The half-written record was rolled back: the journal opens cleanly.
    let (store, events) = open(dir.path(), &clock);
    assert_eq!(events.len(), 1, "expired again at start");
    assert_eq!(store.get(&id).unwrap().state, GrantState::Expired);
}

/// Builds a journal through the store; returns its bytes and the state after each
/// record (by record end offset).
/// The store's grants after each record: (end offset of the record, grants by id).
type States = Vec<(u64, BTreeMap<String, Grant>)>;

fn journal_image(dir: &Path) -> (Vec<u8>, States) {
    let clock = ManualClock::at(t0());
    let (store, _) = open(dir, &clock);
    let a = store.create(grant(t0(), 1, "s", "w", 2)).unwrap();
    let b = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
    store
        .approve(&a.id().to_string(), &approval("bob"))
        .unwrap();
    store
        .record_use(&a.id().to_string(), Uuid::now_v7())
        .unwrap();
    store
        .revoke(&b.id().to_string(), &revocation("ops"))
        .unwrap();
    // A sweep: `a` (active since its approval) and `c` expire, journaled as one mark.
    store.create(grant(t0(), 0, "s2", "w", 0)).unwrap();
    clock.advance(TimeDelta::hours(2));
    assert_eq!(store.sweep().expired, 2);
    drop(store);
    let bytes = fs::read(dir.join(JOURNAL_FILE)).unwrap();
    let scan = journal::scan(&bytes[..], Path::new("j")).unwrap();
    assert!(
        scan.records.iter().any(|(_, r)| matches!(r,
            journal::Record::Expired { ids, at } if ids.is_empty() && *at == clock.now())),
        "the image holds the sweep's mark"
    );
    assert!(
        scan.records.iter().any(|(_, r)| matches!(r,
            journal::Record::Delta(d) if d.overdue_reported && d.id == b.id())),
        "the image holds b's overdue report"
    );
    let mut states = vec![(journal::MAGIC.len() as u64, BTreeMap::new())];
    let mut state = BTreeMap::new();
    let ends: Vec<u64> = scan
        .records
        .iter()
        .skip(1)
        .map(|(o, _)| *o)
        .chain([bytes.len() as u64])
        .collect();
    for ((_, record), end) in scan.records.into_iter().zip(ends) {
        match record {
            journal::Record::Put(g) => {
                state.insert(g.id().to_string(), g);
            }
            journal::Record::Expired { at, ids } if ids.is_empty() => {
                for g in state.values_mut() {
                    let _ = g.expire(at);
                }
            }
            deltas => {
                for delta in deltas.deltas() {
                    let g = state.get_mut(&delta.id.to_string()).unwrap();
                    delta.apply(g);
                }
            }
        }
        states.push((end, state.clone()));
    }
    (bytes, states)
}

/// What a store holds, compared without the lazy view (the clock does not move here).
fn stored(store: &MemoryGrantStore) -> BTreeMap<String, Grant> {
    snapshot(store)
}

#[test]
fn a_store_opens_every_truncated_journal_with_the_records_before_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, states) = journal_image(dir.path());
    assert_eq!(
        states.len(),
        9,
        "magic, 5 mutations, a put, b's overdue report and the sweep's mark"
    );
    let clock = ManualClock::at(t0());
    let work = tempfile::tempdir().unwrap();
    for len in 0..=bytes.len() {
        let path = work.path().join(JOURNAL_FILE);
        fs::write(&path, &bytes[..len]).unwrap();
        let (store, _) =
            MemoryGrantStore::open(options(work.path(), false), Arc::new(clock.clone()))
                .unwrap_or_else(|e| panic!("cut at {len}: {e}"));
        let expected = states
            .iter()
            .rev()
            .find(|(end, _)| *end <= len as u64)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        assert_eq!(stored(&store), expected, "cut at {len}");
        drop(store);
        // The cut was repaired: the file now ends at a record boundary.
        let repaired = fs::metadata(&path).unwrap().len();
        assert!(
            states.iter().any(|(end, _)| *end == repaired),
            "cut at {len} left {repaired} bytes"
        );
    }
}

#[test]
fn a_store_refuses_or_drops_only_the_last_record_for_every_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, states) = journal_image(dir.path());
    let last_start = states[states.len() - 2].0;
    let clock = ManualClock::at(t0());
    let work = tempfile::tempdir().unwrap();
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        fs::write(work.path().join(JOURNAL_FILE), &damaged).unwrap();
        match MemoryGrantStore::open(options(work.path(), false), Arc::new(clock.clone())) {
            Err(StoreError::Journal(JournalError::Corrupt { offset, .. })) => {
                assert!(offset <= at as u64, "flip at {at} reported at {offset}");
            }
            Err(e) => panic!("flip at {at}: {e}"),
            Ok((store, _)) => {
                assert!(at as u64 >= last_start, "flip at {at} not detected");
                assert_eq!(stored(&store), states[states.len() - 2].1, "flip at {at}");
            }
        }
    }
}

// ---- property test: the store against a reference model ----

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

// ---- concurrency stress ----

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

/// A journal written by stepgate before the journal had its own record type (format 1:
/// whole grants as `stepgate.v1.Grant`), with grants in every state, approvals, uses,
/// a sweep's mark, an overdue report, a compaction and records after it, and what it
/// replayed into then (`expected.txt`, at t0 + 3000 s).
#[test]
fn a_format_1_journal_still_replays_into_the_same_grants() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grant-journal-format1");
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        fixture.join("grants.journal"),
        dir.path().join(JOURNAL_FILE),
    )
    .unwrap();
    let clock = ManualClock::at(t0() + secs(3000));
    let (store, events) = open(dir.path(), &clock);
    let mut replayed = format!("events {}\nstats {:?}\n", events.len(), store.stats());
    for grant in snapshot(&store).values() {
        replayed.push_str(&format!("{grant:?}\n"));
    }
    let expected = fs::read_to_string(fixture.join("expected.txt")).unwrap();
    assert_eq!(replayed, expected);
    store.check_indexes().unwrap();
    // Opening it rewrote it in the current format, which replays into the same grants.
    let before = snapshot(&store);
    drop(store);
    let bytes = fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
    assert_eq!(&bytes[..journal::MAGIC.len()], journal::MAGIC);
    let (store, events) = open(dir.path(), &clock);
    assert!(events.is_empty());
    assert_eq!(snapshot(&store), before);
    store.check_indexes().unwrap();
}
