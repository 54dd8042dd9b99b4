//! Replaying the grant journal into a store.
//!
//! The first byte picks the mode:
//! - even: the rest, after the journal's magic, is a journal file (damaged, forged,
//!   torn, anything); replay must refuse it or load it, and a second open of what the
//!   first left behind loads the same grants (replay is stable);
//! - odd: the rest drives a real store with a journal (two bytes an operation: create,
//!   approve, reject, use, renew, revoke, confirm, advance the clock, sweep, compact),
//!   recording the store's grants after each one; then the journal is cut at a fuzzed
//!   byte offset, as a crash would leave it, and replayed at that moment's clock. The
//!   replay must give exactly the grants the store held when the journal had that
//!   length (a cut inside one operation's write: each grant as before or after it):
//!   nothing acknowledged is lost, and no revoked, rejected or expired grant comes back.

#![no_main]

mod common;

use common::write_seeds;
use std::{collections::BTreeMap, path::Path, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};
use libfuzzer_sys::fuzz_target;
use stepgate::{
    clock::{Clock, ManualClock},
    grants::{
        Approval, Grant, GrantRequest, JournalOptions, MemoryGrantStore, Revocation, StoreOptions,
        journal::{JOURNAL_FILE, MAGIC},
    },
    proto::v1,
};
use uuid::Uuid;

fn options(dir: &Path) -> StoreOptions {
    StoreOptions {
        state_dir: Some(dir.to_path_buf()),
        journal: JournalOptions {
            fsync: false,
            group_commit: false,
            ..JournalOptions::default()
        },
        ..StoreOptions::default()
    }
}

fn start() -> DateTime<Utc> {
    "2026-11-23T10:00:00Z".parse().expect("a valid time")
}

/// Every grant of a store, by id.
fn grants(store: &MemoryGrantStore, ids: &[String]) -> BTreeMap<String, Arc<Grant>> {
    ids.iter()
        .filter_map(|id| store.get(id).map(|g| (id.clone(), g)))
        .collect()
}

fn replay_raw(bytes: &[u8]) {
    let dir = common::tempdir();
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(bytes);
    std::fs::write(dir.path().join(JOURNAL_FILE), &file).expect("written");
    let clock = Arc::new(ManualClock::at(start()));
    let Ok((store, _)) = MemoryGrantStore::open(options(dir.path()), clock.clone()) else {
        return;
    };
    let first: Vec<Grant> = all(&store);
    drop(store);
    let (again, _) = MemoryGrantStore::open(options(dir.path()), clock)
        .expect("what a replay accepted and left behind replays again");
    assert_eq!(all(&again), first, "a second replay differs");
}

/// The store's grants, sorted by id.
fn all(store: &MemoryGrantStore) -> Vec<Grant> {
    let filter = stepgate::grants::ListFilter::default();
    let mut out: Vec<Grant> = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store
            .list(&filter, 500, token.as_deref())
            .expect("listing a replayed store works");
        out.extend(page.grants.iter().map(|g| (**g).clone()));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    out.sort_by_key(Grant::id);
    out
}

/// What the store held when its journal had `len` bytes, at `now`.
struct Snapshot {
    len: u64,
    now: DateTime<Utc>,
    grants: BTreeMap<String, Arc<Grant>>,
}

fn request(byte: u8, now: DateTime<Utc>) -> GrantRequest {
    GrantRequest {
        subject: v1::Subject {
            id: format!("s{}", byte % 3),
            ..Default::default()
        },
        action: "read".into(),
        resource: None,
        scope: vec![],
        workflow: Some(v1::Workflow {
            id: format!("w{}", byte % 2),
            requester: "alice".into(),
            ..Default::default()
        }),
        required_approvals: u32::from(byte % 3),
        approval_deadline: now + TimeDelta::seconds(600),
        ttl: TimeDelta::seconds(60 + i64::from(byte)),
        max_uses: u64::from(byte % 4),
        policy_revision: "sha256:fuzz".into(),
        decision_id: Uuid::now_v7(),
    }
}

/// Applies one operation (`code`, `arg`) to `store`; a compaction clears `snapshots`.
fn apply(
    store: &MemoryGrantStore,
    clock: &ManualClock,
    ids: &mut Vec<String>,
    code: u8,
    arg: u8,
    snapshots: &mut Vec<Snapshot>,
) {
    let id = (!ids.is_empty()).then(|| ids[usize::from(arg) % ids.len()].clone());
    let id = id.as_deref().unwrap_or("");
    let now = clock.now();
    let decision = Uuid::now_v7();
    match code % 11 {
        0 => {
            if let Ok(grant) = Grant::new(request(arg, now), now)
                && let Ok(created) = store.create(grant)
            {
                ids.push(created.id().to_string());
            }
        }
        1 => {
            let approval = Approval {
                approver: format!("a{}", arg % 4).into(),
                role: "lead".into(),
                at: now,
                decision_id: decision,
                comment: "".into(),
            };
            let _ = store.approve(id, &approval);
        }
        2 => drop(store.reject(id, "bob", "no", Some(decision))),
        3 => drop(store.record_use(id, decision)),
        4 => drop(store.renew(id, now + TimeDelta::seconds(i64::from(arg) * 10), decision)),
        5 => {
            let revocation = Revocation {
                by: "carol".into(),
                reason: "fuzz".into(),
                decision_id: Some(decision),
            };
            let _ = store.revoke(id, &revocation);
        }
        6 => drop(store.confirm_revocation(id, "done")),
        7 => clock.advance(TimeDelta::seconds(i64::from(arg) * 4)),
        8 => drop(store.sweep()),
        9 => drop(store.push_decision(id, decision)),
        _ => {
            if store.compact().unwrap_or(false) {
                // The file was rewritten: earlier lengths no longer name its states.
                snapshots.clear();
            }
        }
    }
}

fn run_ops(data: &[u8]) {
    let (cut, ops) = match data.split_first_chunk::<2>() {
        Some((cut, ops)) => (u16::from_le_bytes(*cut), ops),
        None => return,
    };
    let dir = common::tempdir();
    let clock = ManualClock::at(start());
    let (store, _) = MemoryGrantStore::open(options(dir.path()), Arc::new(clock.clone()))
        .expect("a fresh store opens");
    let journal_len = |store: &MemoryGrantStore| store.journal().map_or(0, |j| j.len());
    let mut ids: Vec<String> = Vec::new();
    let mut snapshots = vec![Snapshot {
        len: journal_len(&store),
        now: clock.now(),
        grants: BTreeMap::new(),
    }];
    for op in ops.chunks_exact(2).take(48) {
        apply(&store, &clock, &mut ids, op[0], op[1], &mut snapshots);
        let len = journal_len(&store);
        let snapshot = Snapshot {
            len,
            now: clock.now(),
            grants: grants(&store, &ids),
        };
        if snapshots.last().is_some_and(|last| last.len > len) {
            // The journal was rewritten smaller (a compaction inside a sweep).
            snapshots.clear();
        }
        match snapshots.last_mut() {
            // Nothing journaled: the store's state at this length is the latest one.
            Some(last) if last.len == len => *last = snapshot,
            _ => snapshots.push(snapshot),
        }
    }
    drop(store);

    let bytes = std::fs::read(dir.path().join(JOURNAL_FILE)).expect("the journal reads");
    let cut = u64::from(cut) % (bytes.len() as u64 + 1);
    let Some(at) = snapshots.iter().rposition(|s| s.len <= cut) else {
        return; // Cut inside the snapshot a compaction wrote: no state to compare.
    };
    let expected = &snapshots[at];
    // A cut inside one operation's write (a sweep journals its reports as one write of
    // many records) leaves each grant either before or after that operation: grants are
    // journaled one record each, a batch is not atomic and need not be.
    let next = snapshots.get(at + 1).filter(|_| expected.len < cut);
    let crashed = common::tempdir();
    std::fs::write(crashed.path().join(JOURNAL_FILE), &bytes[..cut as usize]).expect("written");
    let (replayed, _) = MemoryGrantStore::open(
        options(crashed.path()),
        Arc::new(ManualClock::at(expected.now)),
    )
    .expect("a journal cut short replays");
    let replayed = grants(&replayed, &ids);
    for id in &ids {
        let before = expected.grants.get(id);
        let after = next.and_then(|n| n.grants.get(id));
        let got = replayed.get(id);
        let was_terminal = before.is_some_and(|g| g.state.is_terminal());
        if was_terminal {
            let state = got.map(|g| g.state);
            assert!(
                state.is_none_or(|s| s.is_terminal()),
                "grant {id} was {:?} and replays as {state:?}",
                before.map(|g| g.state)
            );
        }
        let matches = |want: Option<&Arc<Grant>>| match (got, want) {
            (Some(got), Some(want)) => got == want,
            // Absent where it existed: only a terminal grant past retention.
            (None, Some(want)) => want.state.is_terminal(),
            (got, None) => got.is_none(),
        };
        assert!(
            matches(before) || (next.is_some() && matches(after)),
            "grant {id} replays as {got:?}, expected {before:?} or {after:?}"
        );
    }
}

/// Operation sequences through a grant's whole life, each as an ops input (cut at the
/// end and in the middle) and as the raw journal file it writes.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let lifecycles: [(&str, &[u8]); 3] = [
        // create (1 approval), approve, use, revoke, confirm.
        ("revoked", &[0, 1, 1, 0, 3, 0, 5, 0, 6, 0]),
        // create x2, approve twice, renew, advance past the end, sweep, compact.
        (
            "expired",
            &[0, 2, 0, 0, 1, 0, 1, 1, 4, 90, 7, 250, 8, 0, 10, 0, 9, 1],
        ),
        // create, reject; create, use up, push a decision, revoke another.
        ("rejected", &[0, 1, 2, 0, 0, 3, 3, 1, 3, 1, 9, 1, 5, 0]),
    ];
    let mut seeds = Vec::new();
    for (name, ops) in lifecycles {
        for (cut_name, cut) in [("end", u16::MAX), ("mid", 97)] {
            let mut bytes = vec![1];
            bytes.extend_from_slice(&cut.to_le_bytes());
            bytes.extend_from_slice(ops);
            seeds.push((format!("ops-{name}-{cut_name}"), bytes));
        }
        let dir = common::tempdir();
        let clock = ManualClock::at(start());
        let (store, _) = MemoryGrantStore::open(options(dir.path()), Arc::new(clock.clone()))
            .expect("a fresh store opens");
        let mut ids = Vec::new();
        for op in ops.chunks_exact(2) {
            apply(&store, &clock, &mut ids, op[0], op[1], &mut Vec::new());
        }
        drop(store);
        let file = std::fs::read(dir.path().join(JOURNAL_FILE)).expect("the journal reads");
        let mut bytes = vec![0];
        bytes.extend_from_slice(file.get(MAGIC.len()..).unwrap_or_default());
        seeds.push((format!("raw-{name}"), bytes));
    }
    seeds
}

fuzz_target!(init: write_seeds(seeds), |data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => replay_raw(rest),
        Some((_, rest)) => run_ops(rest),
        None => {}
    }
});
