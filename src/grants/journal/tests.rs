use std::{io::Cursor, thread};

use chrono::{TimeDelta, Utc};
use uuid::Uuid;

use super::{format::frame, grant_record::timestamp, writer::lock_spinning, *};
use crate::grants::{
    memory::tests::{grant, t0},
    model::{
        Grant, GrantState, Revocation,
        tests::{active_grant, ended_grant},
    },
};

fn fast() -> JournalOptions {
    JournalOptions {
        fsync: false,
        ..JournalOptions::default()
    }
}

/// A journal image with `n` records of varied sizes; returns it and the byte offset
/// where each record starts (plus the end).
fn image(n: usize) -> (Vec<u8>, Vec<u64>, Vec<Grant>) {
    let mut bytes = MAGIC.to_vec();
    let mut starts = Vec::new();
    let mut grants = Vec::new();
    for i in 0..n {
        let mut g = grant(t0(), (i % 3) as u32, &format!("subject-{i}"), "w", 0);
        let mut terms = g.terms();
        terms.scope = vec!["x".repeat(i * 7)];
        Arc::make_mut(&mut g.spec).terms = terms.into();
        starts.push(bytes.len() as u64);
        bytes.extend(encode_record(&g).unwrap());
        grants.push(g);
    }
    starts.push(bytes.len() as u64);
    (bytes, starts, grants)
}

fn puts(grants: &[Grant]) -> Vec<Record> {
    grants.iter().cloned().map(Record::Put).collect()
}

fn records(scan: &Scan) -> Vec<Record> {
    scan.records.iter().map(|(_, r)| r.clone()).collect()
}

fn scan_bytes(bytes: &[u8]) -> Result<Scan, JournalError> {
    scan(Cursor::new(bytes), Path::new("grants.journal"))
}

#[test]
fn a_sweeps_mark_is_a_few_bytes_and_an_older_mark_lists_its_expiries() {
    let at = Utc::now();
    let mark = encode_sweep_mark(at).unwrap();
    // A fixed few bytes per sweep, nothing per grant.
    assert!(mark.len() < 32, "{} bytes", mark.len());
    let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    let older = frame(&JournalRecord {
        expired: Some(ExpiredRecord {
            at: Some(timestamp(at)),
            ids: ids.iter().flat_map(|id| *id.as_bytes()).collect(),
        }),
        ..JournalRecord::default()
    })
    .unwrap();
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&mark);
    bytes.extend_from_slice(&older);
    let read = records(&scan_bytes(&bytes).unwrap());
    assert_eq!(
        read,
        vec![
            Record::Expired {
                at,
                ids: Vec::new()
            },
            Record::Expired {
                at,
                ids: ids.to_vec()
            }
        ]
    );
    assert_eq!(read[0].deltas().count(), 0);
    assert_eq!(
        read[1].deltas().collect::<Vec<_>>(),
        ids.iter()
            .map(|id| Delta::expired(*id, at))
            .collect::<Vec<_>>()
    );
}

#[test]
fn replay_derives_the_expiries_a_mark_covers_and_those_an_overdue_report_implies() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = TimeDelta::hours(1);
    let early = grant(t0(), 0, "early", "w", 0);
    let late = grant(t0() + ttl, 0, "late", "w", 0);
    let reported = grant(t0(), 0, "reported", "w", 0);
    // Put after the mark with an earlier expiry (the clock stepped back): the sweep
    // that wrote the mark never saw it.
    let stepped = grant(t0(), 0, "stepped", "w", 0);
    let mut overdue = Delta::new(reported.id());
    overdue.overdue_reported = true;
    {
        let (journal, _) = Journal::open(dir.path(), fast()).unwrap();
        for g in [&early, &late, &reported] {
            journal
                .append(&encode_record(g).unwrap(), Durability::Buffered)
                .unwrap();
        }
        // The sweep at t0 + 1 h 30 min expired `early` and `reported` (due at t0 + 1 h),
        // not `late` (due at t0 + 2 h); `reported` was later reported overdue.
        for record in [
            encode_sweep_mark(t0() + TimeDelta::minutes(90)).unwrap(),
            encode_delta(&overdue).unwrap(),
            encode_record(&stepped).unwrap(),
        ] {
            journal.append(&record, Durability::Buffered).unwrap();
        }
    }
    let (_, replay) = Journal::open(dir.path(), fast()).unwrap();
    let by_subject = |subject: &str| {
        replay
            .grants
            .iter()
            .find(|g| g.subject_id() == subject)
            .unwrap()
            .clone()
    };
    let got = by_subject("early");
    assert_eq!(got.state, GrantState::Expired);
    assert_eq!(
        got.ended_at(),
        Some(early.expires_at),
        "ended at its expiry"
    );
    assert!(!got.overdue_reported());
    assert_eq!(by_subject("late").state, late.state, "not due by the mark");
    assert_eq!(
        by_subject("stepped").state,
        stepped.state,
        "put after the mark"
    );
    let got = by_subject("reported");
    assert_eq!(got.state, GrantState::Expired);
    assert_eq!(got.ended_at(), Some(reported.expires_at));
    assert!(
        got.overdue_reported(),
        "the report is kept, after the expiry"
    );
}

#[test]
fn an_expiry_record_without_whole_ids_or_a_time_is_corrupt() {
    let at = Some(timestamp(Utc::now()));
    for (expired, why) in [
        (
            ExpiredRecord {
                at,
                ids: vec![7; 17],
            },
            "17-byte ids",
        ),
        (
            ExpiredRecord {
                at: None,
                ids: vec![7; 16],
            },
            "no time",
        ),
    ] {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(
            &frame(&JournalRecord {
                expired: Some(expired),
                ..JournalRecord::default()
            })
            .unwrap(),
        );
        assert!(
            matches!(scan_bytes(&bytes), Err(JournalError::Corrupt { .. })),
            "{why}"
        );
    }
}

#[test]
fn a_second_opener_of_the_state_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Journal::open(dir.path(), fast()).unwrap();
    let err = Journal::open(dir.path(), fast()).unwrap_err();
    assert!(matches!(err, JournalError::Locked(_)), "{err}");
    assert!(
        err.to_string()
            .contains("in use by another stepgate process")
    );
    drop(first);
    Journal::open(dir.path(), fast()).unwrap();
}

#[test]
fn records_round_trip() {
    let (bytes, starts, grants) = image(4);
    let scan = scan_bytes(&bytes).unwrap();
    assert!(scan.end.torn.is_none() && !scan.end.needs_magic);
    assert_eq!(scan.end.valid_len, bytes.len() as u64);
    assert_eq!(records(&scan), puts(&grants));
    let offsets: Vec<_> = scan.records.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, starts[..4]);
}

#[test]
fn ended_at_and_the_overdue_flag_survive() {
    let mut g = grant(t0(), 0, "s", "w", 0);
    let _ = g.revoke(&Revocation::default(), t0()).unwrap();
    let _ = g.report_overdue();
    let mut bytes = MAGIC.to_vec();
    bytes.extend(encode_record(&g).unwrap());
    let scan = scan_bytes(&bytes).unwrap();
    let Record::Put(got) = &scan.records[0].1 else {
        panic!("not a put");
    };
    assert_eq!(got, &g);
    assert_eq!(got.ended_at(), Some(t0()));
    assert!(got.overdue_reported());
}

#[test]
fn every_truncation_recovers_the_complete_records_before_it() {
    let (bytes, starts, grants) = image(5);
    for len in 0..=bytes.len() {
        let scan = scan_bytes(&bytes[..len])
            .unwrap_or_else(|e| panic!("prefix of {len} bytes refused: {e}"));
        let complete = starts[1..].iter().filter(|&&end| end <= len as u64).count();
        assert_eq!(
            records(&scan),
            puts(&grants[..complete]),
            "prefix of {len} bytes"
        );
        assert_eq!(
            scan.end.needs_magic,
            len < MAGIC.len(),
            "prefix of {len} bytes"
        );
        let at_boundary = len == 0 || starts.contains(&(len as u64));
        assert_eq!(
            scan.end.torn.is_none(),
            at_boundary,
            "prefix of {len} bytes"
        );
        if len >= MAGIC.len() {
            assert_eq!(
                scan.end.valid_len, starts[complete],
                "prefix of {len} bytes"
            );
        }
    }
}

#[test]
fn every_flipped_byte_is_refused_or_drops_only_the_last_record() {
    let (bytes, starts, grants) = image(5);
    let last_start = starts[grants.len() - 1];
    for at in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[at] ^= flip;
            match scan_bytes(&damaged) {
                Err(JournalError::Corrupt { offset, reason, .. }) => {
                    // The named offset is the start of the damaged record (or the
                    // damaged magic byte).
                    let expected = if at < MAGIC.len() {
                        at as u64
                    } else {
                        *starts.iter().rev().find(|&&s| s <= at as u64).unwrap()
                    };
                    assert_eq!(offset, expected, "flip {flip:#x} at {at}: {reason}");
                }
                Err(other) => panic!("flip at {at}: unexpected error {other}"),
                Ok(scan) => {
                    assert!(
                        at as u64 >= last_start,
                        "flip {flip:#x} at {at} (not in the last record) was not refused"
                    );
                    assert_eq!(
                        records(&scan),
                        puts(&grants[..grants.len() - 1]),
                        "flip at {at}"
                    );
                    assert_eq!(scan.end.valid_len, last_start);
                    assert!(scan.end.torn.is_some());
                }
            }
        }
    }
}

#[test]
fn a_zero_filled_tail_is_torn() {
    let (mut bytes, starts, _) = image(2);
    bytes.extend([0u8; 300]);
    let scan = scan_bytes(&bytes).unwrap();
    assert_eq!(scan.records.len(), 2);
    assert_eq!(scan.end.valid_len, starts[2]);
    assert_eq!(scan.end.torn.as_ref().map(|t| t.0), Some(300));
}

#[test]
fn an_undecodable_record_is_refused_even_at_the_end() {
    let (mut bytes, starts, _) = image(1);
    let payload = [0xffu8, 0xff, 0xff];
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..8].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let hcrc = crc32fast::hash(&header[..8]);
    header[8..].copy_from_slice(&hcrc.to_le_bytes());
    bytes.extend(header);
    bytes.extend(payload);
    match scan_bytes(&bytes) {
        Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, starts[1]),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_foreign_file_is_refused() {
    let err = scan_bytes(b"{\"grants\": []}").unwrap_err();
    assert!(matches!(err, JournalError::Corrupt { offset: 0, .. }));
    assert!(err.to_string().contains("byte offset 0"), "{err}");
}

#[test]
fn open_truncates_a_torn_tail_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, starts, grants) = image(3);
    let path = dir.path().join(JOURNAL_FILE);
    fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    fs::write(dir.path().join(JOURNAL_TMP_FILE), b"leftover").unwrap();
    let (journal, replay) = Journal::open(dir.path(), fast()).unwrap();
    assert_eq!(replay.grants, grants[..2]);
    assert_eq!(replay.truncated_bytes, starts[3] - starts[2] - 5);
    assert_eq!(fs::metadata(&path).unwrap().len(), starts[2]);
    assert!(!dir.path().join(JOURNAL_TMP_FILE).exists());
    journal
        .append(&encode_record(&grants[2]).unwrap(), Durability::Sync)
        .unwrap();
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), fast()).unwrap();
    assert_eq!(replay.grants, grants);
}

#[test]
fn open_refuses_damage_in_the_middle_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, starts, _) = image(3);
    bytes[starts[1] as usize + 20] ^= 0x10;
    let path = dir.path().join(JOURNAL_FILE);
    fs::write(&path, &bytes).unwrap();
    let err = Journal::open(dir.path(), fast()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("byte offset {}", starts[1])),
        "{message}"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "a refused journal is not touched"
    );
}

#[test]
fn a_new_or_headless_journal_gets_a_fresh_magic() {
    for prefix in [&b""[..], &MAGIC[..3]] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        fs::write(&path, prefix).unwrap();
        let (journal, replay) = Journal::open(dir.path(), fast()).unwrap();
        assert!(replay.grants.is_empty());
        assert!(journal.is_empty());
        assert_eq!(fs::read(&path).unwrap(), MAGIC);
    }
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    let (journal, _) = Journal::open(&nested, JournalOptions::default()).unwrap();
    assert_eq!(journal.len(), MAGIC.len() as u64);
}

#[test]
fn last_record_of_an_id_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), fast()).unwrap();
    let mut a = grant(t0(), 0, "s", "w", 0);
    let b = grant(t0(), 0, "s", "w", 0);
    journal
        .append(&encode_record(&a).unwrap(), Durability::Sync)
        .unwrap();
    journal
        .append(&encode_record(&b).unwrap(), Durability::Sync)
        .unwrap();
    let _ = a.revoke(&Revocation::default(), t0()).unwrap();
    journal
        .append(&encode_record(&a).unwrap(), Durability::Buffered)
        .unwrap();
    journal.sync().unwrap();
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), fast()).unwrap();
    assert_eq!(replay.records, 3);
    assert_eq!(replay.grants, vec![a.clone(), b]);
    assert_eq!(replay.grants[0].state, GrantState::Revoked);
}

#[test]
fn lock_spinning_takes_a_held_or_poisoned_lock_once_it_is_free() {
    let m = Mutex::new(0);
    thread::scope(|s| {
        let held = m.lock().unwrap();
        let waiter = s.spawn(|| *lock_spinning(&m) += 1);
        // Long past its spinning: the waiter sleeps until the lock is free.
        thread::sleep(std::time::Duration::from_millis(20));
        drop(held);
        waiter.join().unwrap();
    });
    assert_eq!(*m.lock().unwrap(), 1);
    let poisoner = std::panic::catch_unwind(|| {
        let _held = m.lock().unwrap();
        panic!("poisons the lock");
    });
    assert!(poisoner.is_err() && m.is_poisoned());
    assert_eq!(*lock_spinning(&m), 1);
}

#[test]
fn group_commit_keeps_every_concurrent_append() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        group_commit: true,
        ..JournalOptions::default()
    };
    let (journal, _) = Journal::open(dir.path(), options.clone()).unwrap();
    let records: Vec<Vec<Grant>> = (0..4)
        .map(|t| {
            (0..25)
                .map(|i| grant(t0(), 0, &format!("t{t}-{i}"), "w", 0))
                .collect()
        })
        .collect();
    thread::scope(|s| {
        for mine in &records {
            let journal = &journal;
            s.spawn(move || {
                for (i, g) in mine.iter().enumerate() {
                    let durability = if i % 2 == 0 {
                        Durability::Sync
                    } else {
                        Durability::Buffered
                    };
                    journal
                        .append(&encode_record(g).unwrap(), durability)
                        .unwrap();
                }
            });
        }
    });
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), options).unwrap();
    assert_eq!(replay.records, 100);
    let mut got: Vec<_> = replay.grants.iter().map(|g| g.id()).collect();
    let mut want: Vec<_> = records.iter().flatten().map(|g| g.id()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn compaction_carries_over_appends_made_while_it_ran() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let mut a = grant(t0(), 0, "s", "w", 0);
    for _ in 0..10 {
        let _ = a.record_use(Uuid::from_u128(7), t0()).unwrap();
        journal
            .append(&encode_record(&a).unwrap(), Durability::Buffered)
            .unwrap();
    }
    let before = journal.len();
    let mut compaction = journal.begin_compaction().unwrap().unwrap();
    assert!(
        journal.begin_compaction().unwrap().is_none(),
        "one at a time"
    );
    compaction.write(&a).unwrap();
    // Appended after the compaction began: carried over by finish.
    let _ = a.revoke(&Revocation::default(), t0()).unwrap();
    journal
        .append(&encode_record(&a).unwrap(), Durability::Sync)
        .unwrap();
    let b = grant(t0(), 0, "s", "w", 0);
    journal
        .append(&encode_record(&b).unwrap(), Durability::Sync)
        .unwrap();
    let new_len = compaction.finish().unwrap();
    assert!(new_len < before);
    assert_eq!(journal.len(), new_len);
    assert!(!dir.path().join(JOURNAL_TMP_FILE).exists());
    let c = grant(t0(), 0, "s", "w", 0);
    journal
        .append(&encode_record(&c).unwrap(), Durability::Sync)
        .unwrap();
    drop(journal);
    let (_, replay) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(replay.records, 4);
    assert_eq!(replay.grants, vec![a, b, c]);
}

#[test]
fn an_abandoned_compaction_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), fast()).unwrap();
    let a = grant(t0(), 0, "s", "w", 0);
    journal
        .append(&encode_record(&a).unwrap(), Durability::Sync)
        .unwrap();
    let len = journal.len();
    let mut compaction = journal.begin_compaction().unwrap().unwrap();
    compaction.write(&a).unwrap();
    drop(compaction);
    assert!(!dir.path().join(JOURNAL_TMP_FILE).exists());
    assert_eq!(journal.len(), len);
    assert!(journal.begin_compaction().unwrap().is_some());
}

#[test]
fn a_grant_record_round_trips_every_part_of_a_grant() {
    for g in [ended_grant(), active_grant(), grant(t0(), 2, "s", "w", 3)] {
        let record = GrantRecord::from(&g);
        assert_eq!(Grant::try_from(record.clone()).unwrap(), g);
        // And through its encoding, as replay reads it.
        let bytes = encode_record(&g).unwrap();
        let scan = scan_bytes(&[&MAGIC[..], &bytes].concat()).unwrap();
        assert_eq!(records(&scan), puts(&[g]));
    }
}

#[test]
fn invalid_grant_records_are_refused() {
    let good = GrantRecord::from(&ended_grant());
    assert!(Grant::try_from(good.clone()).is_ok());
    type Spoil = fn(&mut GrantRecord);
    let cases: [(&str, Spoil); 9] = [
        ("id", |g| g.id = vec![1; 15]),
        ("state", |g| g.state = 0),
        ("subject", |g| g.subject = vec![0xff]),
        ("expires_at", |g| g.expires_at = None),
        ("decision ids", |g| g.decision_ids.push(7)),
        ("ttl", |g| {
            g.ttl = Some(prost_types::Duration {
                seconds: 1,
                nanos: -1,
            })
        }),
        ("ending", |g| g.ending = None),
        ("a live grant with an ending", |g| g.state = 2),
        ("approval decision id", |g| {
            g.approvals[0].decision_id.clear()
        }),
    ];
    for (what, spoil) in cases {
        let mut bad = good.clone();
        spoil(&mut bad);
        assert!(Grant::try_from(bad).is_err(), "{what}");
    }
}

#[test]
fn a_journal_of_an_unknown_format_is_refused() {
    let mut bytes = MAGIC.to_vec();
    bytes[MAGIC.len() - 1] = 3;
    assert!(matches!(
        scan_bytes(&bytes),
        Err(JournalError::Corrupt { offset: 7, .. })
    ));
}
