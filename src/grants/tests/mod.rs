//! Whole-store tests: restarts over the journal (replay, expiry while down, torn and
//! damaged files, compaction), a property test against a reference model, and a
//! concurrency stress test.

mod format1;
mod model_check;
mod stress;

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
