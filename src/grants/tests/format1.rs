//! A journal written in format 1 still replays.

use super::*;

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
