//! The grant journal: an append-only file of grant mutations in the state directory,
//! replayed at start and compacted by snapshot.
//!
//! # Format
//!
//! `<state_dir>/grants.journal` starts with the 8-byte magic `SGJRNL\0\x01` (format 1),
//! then records, each:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | payload length, u32 little-endian (at most [`MAX_RECORD_LEN`]) |
//! | 4 | CRC-32 (IEEE) of the payload, u32 little-endian |
//! | 4 | CRC-32 of the 8 bytes before it, u32 little-endian (so a damaged length is never taken for a torn tail) |
//! | n | payload: a prost-encoded [`JournalRecord`] |
//!
//! ```proto
//! // Private to stepgate; defined with prost derive in journal.rs.
//! message JournalRecord {
//!   stepgate.v1.Grant grant = 1;                 // put: the whole grant after the mutation
//!   google.protobuf.Timestamp ended_at = 2;      // with grant: when stepgate recorded its end
//!   bool overdue_reported = 3;                   // with grant: revocation_overdue emitted
//!   Delta delta = 4;                             // or: a small change to the last put
//!   Expired expired = 5;                         // or: a sweep's mark
//! }
//! message Delta {                                // the hot and the bulk paths
//!   bytes id = 1;                                // 16-byte grant id
//!   optional uint64 uses = 2;                    // a use: the new count
//!   bytes decision_id = 3;                       // 16 bytes appended to the evidence trail
//!   google.protobuf.Timestamp expired_at = 4;    // older journals: the sweep's expiry
//!   bool overdue_reported = 5;                   // the sweep emitted revocation_overdue
//! }
//! message Expired {                              // a sweep's mark
//!   google.protobuf.Timestamp at = 1;            // every live grant due by then had expired
//!   bytes ids = 2;                               // older journals: the grants it expired,
//! }                                              //   16-byte ids one after another
//! ```
//!
//! Every state change a caller is acknowledged for (request, approval, rejection,
//! renewal, revocation, confirmation) is a whole-grant put. A use, an evidence-trail
//! entry, and the sweep's overdue reports are deltas (tens of bytes instead of the
//! whole grant), applied at replay to the grant's last put with the same rules as the
//! live transition, and never moving a terminal grant anywhere.
//!
//! An expiry is not a mutation and is not journaled: a grant ends at its `expires_at`,
//! which its last put holds, so replay derives it exactly as the sweep did (a sweep of
//! 100k due grants writes nothing per grant into the file that uses append to). A
//! sweep that expired grants appends a mark with its time: replay expires, without an
//! event (the sweep announced it), every live grant due by a mark written after the
//! grant's last put, and the store announces the rest as expired while it was down.
//! An overdue report implies an expiry before it, so replay derives that expiry first.
//! Older journals listed a sweep's expiries (as deltas, later as the ids of a mark);
//! they replay as before.
//!
//! Replay keeps the last state of each grant id. Grants dropped after their retention
//! window need no tombstone: replay drops them again (they are past retention), and
//! the next compaction leaves them out. A delta for an id with no put before it (its
//! grant was dropped while a compaction ran) is ignored.
//!
//! # Damage
//!
//! A crash can only leave damage at the end of the file (the unacknowledged tail). So
//! when a record is incomplete, or fails a checksum, replay looks for any intact record
//! after it: if there is none, the damaged tail is truncated with a warning; if there
//! is one, acknowledged data is damaged and the journal refuses to open with an error
//! naming the byte offset. A record whose checksums pass but that does not decode
//! always refuses.
//!
//! # Durability
//!
//! Each acknowledged mutation is written and `fdatasync`ed before it becomes visible
//! ([`Durability::Sync`]); with group commit, concurrent synced appenders share one
//! write and one sync (the first becomes the leader and writes the batch, the others
//! wait for it), while an append that needs no sync is written at once. A failed write
//! or sync poisons the journal: every later append fails, so the store refuses
//! mutations rather than acknowledge what it cannot keep.
//!
//! # Compaction
//!
//! When the file outgrows its bound, the store writes every current grant to
//! `grants.journal.tmp` without stopping appends, then, holding the writer briefly,
//! copies the records appended meanwhile, syncs, renames over the journal and syncs the
//! directory.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError},
};

use chrono::{DateTime, Utc};
use prost::Message;
use uuid::Uuid;

use super::model::{Grant, InvalidGrant, from_timestamp, push_trail, timestamp};
use crate::proto::v1;

/// The journal's file name inside the state directory.
pub const JOURNAL_FILE: &str = "grants.journal";
/// The compaction's temporary file name inside the state directory.
pub const JOURNAL_TMP_FILE: &str = "grants.journal.tmp";
/// The lock file that keeps a second process out of the state directory.
pub const LOCK_FILE: &str = "LOCK";
/// The magic bytes a journal starts with (format 1).
pub const MAGIC: &[u8; 8] = b"SGJRNL\x00\x01";
/// Bytes before each payload: length, payload CRC, header CRC.
pub const RECORD_HEADER_LEN: usize = 12;
/// The largest payload a record may carry.
pub const MAX_RECORD_LEN: u32 = 16 << 20;

/// How the journal writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// `fdatasync` before acknowledging a mutation (default true). Off, a power loss
    /// can lose acknowledged mutations (a process crash cannot).
    pub fsync: bool,
    /// Concurrent appends share one write and one sync (default false).
    pub group_commit: bool,
    /// Compact when the file grows past this many bytes, or past twice the size of the
    /// last snapshot, whichever is larger (default 64 MiB).
    pub compact_after_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            fsync: true,
            group_commit: false,
            compact_after_bytes: 64 << 20,
        }
    }
}

/// Whether an append waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written and synced (when [`JournalOptions::fsync`]) before the append returns.
    Sync,
    /// Written (survives a process crash) but not synced; a later sync covers it.
    Buffered,
}

/// Why the journal cannot be opened or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// An I/O error on a journal path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: Arc<io::Error>,
    },
    /// Damage that is not a torn tail: the journal refuses to open.
    #[error(
        "{}: corrupt at byte offset {offset}: {reason}; refusing to open (restore it from a \
         backup, or move it aside to start empty)",
        path.display()
    )]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the state directory.
    #[error(
        "{}: the state directory is in use by another stepgate process (two writers would \
         corrupt the journal)",
        .0.display()
    )]
    Locked(PathBuf),
    /// A grant too large for one record.
    #[error("grant record of {0} bytes is over the {MAX_RECORD_LEN}-byte record limit")]
    RecordTooLarge(usize),
    /// An earlier write or sync failed; nothing more is written until a restart.
    #[error("grant journal unavailable after an earlier write failure: {0}")]
    Unavailable(Arc<str>),
}

/// Takes the state directory's exclusive lock (released when the file is closed, so a
/// crashed process never leaves it stale).
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::Locked(dir.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(JournalError::io(&path, e)),
    }
}

impl JournalError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }
}

/// One journal record's payload. See the module doc for its proto form.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalRecord {
    /// The whole grant after the mutation.
    #[prost(message, optional, tag = "1")]
    pub grant: Option<v1::Grant>,
    /// When stepgate recorded the grant's end.
    #[prost(message, optional, tag = "2")]
    pub ended_at: Option<prost_types::Timestamp>,
    /// A `revocation_overdue` event was emitted for it.
    #[prost(bool, tag = "3")]
    pub overdue_reported: bool,
    /// Or a small change to the grant's last state.
    #[prost(message, optional, tag = "4")]
    pub delta: Option<DeltaRecord>,
    /// Or a sweep's mark.
    #[prost(message, optional, tag = "5")]
    pub expired: Option<ExpiredRecord>,
}

/// The wire form of [`Record::Expired`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpiredRecord {
    /// Every live grant due at or before this time had expired.
    #[prost(message, optional, tag = "1")]
    pub at: Option<prost_types::Timestamp>,
    /// Older journals: the grants the sweep expired, 16 bytes each, concatenated.
    #[prost(bytes = "vec", tag = "2")]
    pub ids: Vec<u8>,
}

/// The wire form of a [`Delta`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaRecord {
    /// The grant's id, 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// The new use count, for a use.
    #[prost(uint64, optional, tag = "2")]
    pub uses: Option<u64>,
    /// A decision id appended to the evidence trail, 16 bytes (empty: none).
    #[prost(bytes = "vec", tag = "3")]
    pub decision_id: Vec<u8>,
    /// The sweep recorded the grant's expiry at this time.
    #[prost(message, optional, tag = "4")]
    pub expired_at: Option<prost_types::Timestamp>,
    /// The sweep emitted `revocation_overdue` for it.
    #[prost(bool, tag = "5")]
    pub overdue_reported: bool,
}

/// A small change to a grant's last journaled state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    /// The grant.
    pub id: Uuid,
    /// A use: the new use count.
    pub uses: Option<u64>,
    /// A decision appended to the evidence trail.
    pub decision_id: Option<Uuid>,
    /// Older journals: the sweep recorded the expiry at this time.
    pub expired_at: Option<DateTime<Utc>>,
    /// The sweep emitted `revocation_overdue`.
    pub overdue_reported: bool,
}

impl Delta {
    /// The delta of a sweep expiring `id` at `at`.
    pub fn expired(id: Uuid, at: DateTime<Utc>) -> Self {
        Self {
            expired_at: Some(at),
            ..Self::new(id)
        }
    }

    /// A delta for `id` that changes nothing yet.
    pub fn new(id: Uuid) -> Self {
        Self {
            id,
            uses: None,
            decision_id: None,
            expired_at: None,
            overdue_reported: false,
        }
    }

    /// Applies it to `grant` with the live transitions' rules: the trail keeps its cap,
    /// an expiry only ends a live grant, and nothing leaves a terminal state.
    pub fn apply(&self, grant: &mut Grant) {
        if let Some(id) = self.decision_id {
            grant.trail(id);
        }
        if let Some(uses) = self.uses {
            grant.uses = uses;
        }
        if let Some(at) = self.expired_at {
            let _ = grant.expire(at);
        }
        if self.overdue_reported {
            // Only an ended grant is reported overdue: one still live here expired
            // (unjournaled) before the report.
            let _ = grant.expire(grant.expires_at);
            let _ = grant.report_overdue();
        }
    }

    /// The delta that turns `before` into `after`, when their difference is only a use
    /// count and one evidence-trail entry; `None` when it takes a whole grant.
    pub fn between(before: &Grant, after: &Grant) -> Option<Self> {
        if !Arc::ptr_eq(&before.spec, &after.spec)
            || before.state != after.state
            || before.activated_at != after.activated_at
            || before.expires_at != after.expires_at
            || before.ending != after.ending
            || before.approvals != after.approvals
        {
            return None;
        }
        let mut delta = Self::new(after.id());
        if after.uses != before.uses {
            delta.uses = Some(after.uses);
        }
        if after.decision_ids != before.decision_ids {
            let pushed = *after.decision_ids.last()?;
            let mut replayed = before.decision_ids.clone();
            push_trail(&mut replayed, pushed);
            if replayed != after.decision_ids {
                return None;
            }
            delta.decision_id = Some(pushed);
        }
        Some(delta)
    }
}

/// Frames a payload: length, payload CRC, header CRC, payload.
fn frame(record: &JournalRecord) -> Result<Vec<u8>, JournalError> {
    let len = record.encoded_len();
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_RECORD_LEN)
        .ok_or(JournalError::RecordTooLarge(len))?;
    let mut buf = Vec::with_capacity(RECORD_HEADER_LEN + len);
    buf.extend_from_slice(&len32.to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    record
        .encode(&mut buf)
        .map_err(|_| JournalError::RecordTooLarge(len))?;
    let payload_crc = crc32fast::hash(&buf[RECORD_HEADER_LEN..]);
    buf[4..8].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[..8]);
    buf[8..12].copy_from_slice(&header_crc.to_le_bytes());
    Ok(buf)
}

/// Encodes `grant` as one framed whole-grant record.
pub fn encode_record(grant: &Grant) -> Result<Vec<u8>, JournalError> {
    frame(&JournalRecord {
        grant: Some(v1::Grant::from(grant)),
        ended_at: grant.ended_at().map(timestamp),
        overdue_reported: grant.overdue_reported(),
        delta: None,
        expired: None,
    })
}

/// Encodes a delta as one framed record.
pub fn encode_delta(delta: &Delta) -> Result<Vec<u8>, JournalError> {
    frame(&JournalRecord {
        delta: Some(DeltaRecord {
            id: delta.id.as_bytes().to_vec(),
            uses: delta.uses,
            decision_id: delta
                .decision_id
                .map(|d| d.as_bytes().to_vec())
                .unwrap_or_default(),
            expired_at: delta.expired_at.map(timestamp),
            overdue_reported: delta.overdue_reported,
        }),
        ..JournalRecord::default()
    })
}

/// A sweep's mark: every live grant due at or before `at` has expired.
pub fn encode_sweep_mark(at: DateTime<Utc>) -> Result<Vec<u8>, JournalError> {
    frame(&JournalRecord {
        expired: Some(ExpiredRecord {
            at: Some(timestamp(at)),
            ids: Vec::new(),
        }),
        ..JournalRecord::default()
    })
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A whole grant.
    Put(Grant),
    /// A change to a grant's last state.
    Delta(Delta),
    /// A sweep's mark: every live grant due by `at` had expired.
    Expired {
        /// When.
        at: DateTime<Utc>,
        /// Older journals: the grants the sweep expired (a mark now lists none).
        ids: Vec<Uuid>,
    },
}

impl Record {
    /// The record as deltas, in order: none for a put or a mark, one per id for an
    /// older mark.
    pub fn deltas(&self) -> impl Iterator<Item = Delta> + '_ {
        let (delta, listed) = match self {
            Self::Put(_) => (None, None),
            Self::Delta(delta) => (Some(*delta), None),
            Self::Expired { at, ids } => (None, Some((*at, ids))),
        };
        let listed = listed
            .into_iter()
            .flat_map(|(at, ids)| ids.iter().map(move |id| Delta::expired(*id, at)));
        delta.into_iter().chain(listed)
    }
}

/// Decodes one payload.
fn decode_payload(payload: &[u8]) -> Result<Record, String> {
    let record = JournalRecord::decode(payload).map_err(|e| format!("undecodable record: {e}"))?;
    match (record.grant, record.delta, record.expired) {
        (Some(proto), None, None) => {
            let ended_at = match record.ended_at {
                None => None,
                Some(ts) => {
                    Some(from_timestamp(&ts).ok_or_else(|| "ended_at out of range".to_owned())?)
                }
            };
            Grant::from_proto(proto, ended_at, record.overdue_reported)
                .map(Record::Put)
                .map_err(|e: InvalidGrant| e.to_string())
        }
        (None, Some(delta), None) => {
            let uuid = |bytes: &[u8], what: &str| {
                Uuid::from_slice(bytes).map_err(|_| format!("delta {what} is not 16 bytes"))
            };
            Ok(Record::Delta(Delta {
                id: uuid(&delta.id, "id")?,
                uses: delta.uses,
                decision_id: if delta.decision_id.is_empty() {
                    None
                } else {
                    Some(uuid(&delta.decision_id, "decision id")?)
                },
                expired_at: match delta.expired_at {
                    None => None,
                    Some(ts) => Some(
                        from_timestamp(&ts)
                            .ok_or_else(|| "delta expired_at out of range".to_owned())?,
                    ),
                },
                overdue_reported: delta.overdue_reported,
            }))
        }
        (None, None, Some(expired)) => {
            let at = expired
                .at
                .as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| "expired record without a time in range".to_owned())?;
            if expired.ids.len() % 16 != 0 {
                return Err("expired record ids are not 16-byte ids".to_owned());
            }
            let ids = expired
                .ids
                .chunks_exact(16)
                .map(|id| Uuid::from_slice(id).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            Ok(Record::Expired { at, ids })
        }
        (None, None, None) => Err("record carries none of a grant, a delta or expiries".to_owned()),
        _ => Err("record carries more than one of a grant, a delta and expiries".to_owned()),
    }
}

/// Where a scan of a journal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// How many intact records were read.
    pub records: usize,
    /// Bytes of the journal that are intact (magic and records).
    pub valid_len: u64,
    /// Bytes after `valid_len` that were damaged and may be truncated, and why.
    pub torn: Option<(u64, String)>,
    /// The file is empty or holds only part of the magic: write a fresh one.
    pub needs_magic: bool,
}

/// What a scan of a journal found, records included (see [`scan`]).
#[derive(Debug)]
pub struct Scan {
    /// Every intact record, in file order, with its byte offset.
    pub records: Vec<(u64, Record)>,
    /// Where the scan ended.
    pub end: ScanEnd,
}

/// Scans a whole journal into memory; see [`scan_records`].
pub fn scan(reader: impl Read, path: &Path) -> Result<Scan, JournalError> {
    let mut records = Vec::new();
    let end = scan_records(reader, path, &mut |offset, record| {
        records.push((offset, record))
    })?;
    Ok(Scan { records, end })
}

/// Reads up to `buf.len()` bytes, fewer only at end of input.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Parses one record at the start of `bytes`; `Some(total length)` when it is intact.
fn intact_record_len(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..RECORD_HEADER_LEN)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if crc32fast::hash(&header[..8]) != word(8) || word(0) > MAX_RECORD_LEN {
        return None;
    }
    let end = RECORD_HEADER_LEN + word(0) as usize;
    let payload = bytes.get(RECORD_HEADER_LEN..end)?;
    (crc32fast::hash(payload) == word(4)).then_some(end)
}

/// Scans a journal from `reader` (the whole file), handing each intact record and its
/// byte offset to `sink` as it is read. Damage followed by an intact record is an error
/// naming its offset; damage reaching the end is reported in [`ScanEnd::torn`].
pub fn scan_records(
    reader: impl Read,
    path: &Path,
    sink: &mut dyn FnMut(u64, Record),
) -> Result<ScanEnd, JournalError> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let io_err = |e| JournalError::io(path, e);
    let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    let mut magic = [0u8; MAGIC.len()];
    let n = read_up_to(&mut reader, &mut magic).map_err(io_err)?;
    if let Some(bad) = (0..n).find(|&i| magic[i] != MAGIC[i]) {
        return Err(corrupt(
            bad as u64,
            "not a stepgate grant journal (bad magic)".to_owned(),
        ));
    }
    if n < MAGIC.len() {
        return Ok(ScanEnd {
            records: 0,
            valid_len: 0,
            torn: (n > 0).then(|| (0, "incomplete file header".to_owned())),
            needs_magic: true,
        });
    }
    let mut offset = MAGIC.len() as u64;
    let mut records = 0;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; RECORD_HEADER_LEN];
        let n = read_up_to(&mut reader, &mut header).map_err(io_err)?;
        if n == 0 {
            return Ok(ScanEnd {
                records,
                valid_len: offset,
                torn: None,
                needs_magic: false,
            });
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let mut payload_read = 0;
        let damage = if n < RECORD_HEADER_LEN {
            Some("incomplete record header")
        } else if crc32fast::hash(&header[..8]) != word(8) {
            Some("record header checksum mismatch")
        } else if word(0) > MAX_RECORD_LEN {
            Some("record length over the limit")
        } else {
            payload.resize(word(0) as usize, 0);
            payload_read = read_up_to(&mut reader, &mut payload).map_err(io_err)?;
            if payload_read < payload.len() {
                Some("incomplete record")
            } else if crc32fast::hash(&payload) != word(4) {
                Some("record checksum mismatch")
            } else {
                None
            }
        };
        if let Some(reason) = damage {
            // This record as far as it was read, then the rest of the file.
            let mut rest = header[..n].to_vec();
            rest.extend_from_slice(&payload[..payload_read]);
            reader.read_to_end(&mut rest).map_err(io_err)?;
            if let Some(next) = (1..rest.len()).find(|&i| intact_record_len(&rest[i..]).is_some()) {
                return Err(corrupt(
                    offset,
                    format!(
                        "{reason}, with an intact record after it at byte offset {}",
                        offset + next as u64
                    ),
                ));
            }
            return Ok(ScanEnd {
                records,
                valid_len: offset,
                torn: Some((rest.len() as u64, reason.to_owned())),
                needs_magic: false,
            });
        }
        let record = decode_payload(&payload).map_err(|reason| corrupt(offset, reason))?;
        sink(offset, record);
        records += 1;
        offset += (RECORD_HEADER_LEN + payload.len()) as u64;
        // Keep the buffer from holding on to one unusually large record.
        if payload.capacity() > 1 << 16 {
            payload = Vec::new();
        }
    }
}

/// Syncs a directory, so a file created or renamed in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io(dir, e))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks `m`, trying for a few microseconds before it sleeps: an unsynced append holds
/// the writer for a write of a few dozen bytes (a microsecond or two), and a waiter that
/// sleeps instead is woken tens of microseconds later. Those wake-ups were the p99 of
/// two threads revalidating (1.14-1.78× a `Check`'s; 0.78-1.05× spinning).
fn lock_spinning<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    for _ in 0..SPINS {
        match m.try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => std::hint::spin_loop(),
        }
    }
    lock(m)
}

/// How often [`lock_spinning`] tries before it sleeps.
const SPINS: u32 = 100;

/// Expires each grant that the latest mark after its last put covers: the sweep that
/// wrote the mark expired every live grant due by then. A grant put after a mark is not
/// covered by it, even when the clock stepped back and its expiry is earlier.
fn expire_marked(grants: &mut [Grant], put_at: &[u64], marks: &[(u64, DateTime<Utc>)]) {
    // latest[k]: the latest time among marks[k..].
    let mut latest = vec![None; marks.len() + 1];
    for (k, (_, at)) in marks.iter().enumerate().rev() {
        latest[k] = latest[k + 1].max(Some(*at));
    }
    for (grant, put) in grants.iter_mut().zip(put_at) {
        let after = marks.partition_point(|(offset, _)| offset < put);
        if let Some(mark) = latest[after] {
            let _ = grant.expire(mark);
        }
    }
}

/// The open journal file.
struct Writer {
    file: File,
    len: u64,
    compact_at: u64,
    failed: Option<Arc<str>>,
    /// Tests: the next write stops half-way and fails, as a full disk would.
    #[cfg(test)]
    fail_next: bool,
}

impl Writer {
    fn write(&mut self, path: &Path, bytes: &[u8], sync: bool) -> Result<(), JournalError> {
        if let Some(why) = &self.failed {
            return Err(JournalError::Unavailable(why.clone()));
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next) {
            let _ = self.file.write_all(&bytes[..bytes.len() / 2]);
            return self.failed_with(path, io::Error::other("injected write failure"));
        }
        let result = self
            .file
            .write_all(bytes)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => self.failed_with(path, e),
        }
    }

    /// Poisons the writer after a failed write or sync.
    fn failed_with(&mut self, path: &Path, e: io::Error) -> Result<(), JournalError> {
        // Best effort: drop a partial record so later replays see a clean end.
        let _ = self.file.set_len(self.len);
        let why: Arc<str> = format!("{}: {e}", path.display()).into();
        tracing::error!(error = %why, "grant journal write failed; refusing further grant mutations");
        self.failed = Some(why);
        Err(JournalError::io(path, e))
    }
}

/// Appenders waiting to share one write (group commit).
#[derive(Default)]
struct Group {
    buf: Vec<u8>,
    sync: bool,
    /// The batch being filled.
    filling: u64,
    /// The last batch written.
    written: u64,
    leader: bool,
    failed: Option<Arc<str>>,
}

/// What [`Journal::open`] replayed.
#[derive(Debug)]
pub struct Replay {
    /// The last state of each grant id (deltas applied, and the expiries the sweep's
    /// marks after its last put cover), in order of first appearance.
    pub grants: Vec<Grant>,
    /// How many records were read.
    pub records: usize,
    /// Bytes truncated from a torn tail.
    pub truncated_bytes: u64,
}

/// The append-only grant journal of one state directory.
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    /// Held for the journal's life: an exclusive lock on `<dir>/LOCK`.
    _lock: File,
    options: JournalOptions,
    writer: Mutex<Writer>,
    group: Mutex<Group>,
    group_done: Condvar,
    compacting: Mutex<()>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating if needed) `<dir>/grants.journal` and replays it. A torn tail is
    /// truncated with a warning; other damage refuses with [`JournalError::Corrupt`].
    pub fn open(dir: &Path, options: JournalOptions) -> Result<(Self, Replay), JournalError> {
        fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let path = dir.join(JOURNAL_FILE);
        let tmp = dir.join(JOURNAL_TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::warn!(path = %tmp.display(), "removed the leftover of an interrupted journal compaction")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(JournalError::io(&tmp, e)),
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| JournalError::io(&path, e))?;
        // Replay while reading: the last state of each id, deltas applied in order.
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        let mut grants: Vec<Grant> = Vec::new();
        let mut orphan_deltas = 0usize;
        // Where each grant was last put, and each sweep's mark: a mark covers the grants
        // put before it.
        let mut put_at: Vec<u64> = Vec::new();
        let mut marks: Vec<(u64, DateTime<Utc>)> = Vec::new();
        let scan = scan_records(&mut file, &path, &mut |offset, record| match record {
            Record::Put(grant) => match index.get(&grant.id()) {
                Some(&i) => {
                    grants[i] = grant;
                    put_at[i] = offset;
                }
                None => {
                    index.insert(grant.id(), grants.len());
                    grants.push(grant);
                    put_at.push(offset);
                }
            },
            deltas => {
                if let Record::Expired { at, .. } = &deltas {
                    marks.push((offset, *at));
                }
                for delta in deltas.deltas() {
                    match index.get(&delta.id) {
                        Some(&i) => delta.apply(&mut grants[i]),
                        None => orphan_deltas += 1,
                    }
                }
            }
        })?;
        expire_marked(&mut grants, &put_at, &marks);
        if orphan_deltas > 0 {
            tracing::debug!(
                orphan_deltas,
                "journal deltas for grants dropped meanwhile ignored"
            );
        }
        if let Some((bytes, reason)) = &scan.torn {
            tracing::warn!(
                path = %path.display(),
                offset = scan.valid_len,
                bytes,
                reason = %reason,
                "grant journal ends with a torn record (a crash mid-write); truncating it"
            );
        }
        let truncated_bytes = scan.torn.as_ref().map_or(0, |(bytes, _)| *bytes);
        if scan.torn.is_some() || scan.needs_magic {
            file.set_len(scan.valid_len)
                .map_err(|e| JournalError::io(&path, e))?;
        }
        let mut len = scan.valid_len;
        if scan.needs_magic {
            file.write_all(MAGIC)
                .and_then(|()| file.sync_all())
                .map_err(|e| JournalError::io(&path, e))?;
            sync_dir(dir)?;
            len = MAGIC.len() as u64;
        } else if scan.torn.is_some() {
            file.sync_all().map_err(|e| JournalError::io(&path, e))?;
        }
        let records = scan.records;
        let journal = Self {
            dir: dir.to_owned(),
            path,
            _lock: lock,
            writer: Mutex::new(Writer {
                file,
                len,
                compact_at: options.compact_after_bytes,
                failed: None,
                #[cfg(test)]
                fail_next: false,
            }),
            options,
            group: Mutex::new(Group {
                filling: 1,
                ..Group::default()
            }),
            group_done: Condvar::new(),
            compacting: Mutex::new(()),
        };
        Ok((
            journal,
            Replay {
                grants,
                records,
                truncated_bytes,
            },
        ))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it writes with.
    pub fn options(&self) -> &JournalOptions {
        &self.options
    }

    /// Current length of the file in bytes.
    pub fn len(&self) -> u64 {
        lock(&self.writer).len
    }

    /// True when the file holds no record (only the magic).
    pub fn is_empty(&self) -> bool {
        self.len() <= MAGIC.len() as u64
    }

    /// Appends one framed record (from [`encode_record`]); returns once it is written,
    /// and synced when `durability` is [`Durability::Sync`] and fsync is on.
    pub fn append(&self, record: &[u8], durability: Durability) -> Result<(), JournalError> {
        let sync = durability == Durability::Sync && self.options.fsync;
        // Group commit shares syncs. An append that needs none is written at once: a
        // hand-off to a leader would only add a wake-up to its latency. Only one grant's
        // records must keep their order, and the store journals a grant's next change
        // only after this append returns.
        if !self.options.group_commit || !sync {
            return lock_spinning(&self.writer).write(&self.path, record, sync);
        }
        let mut group = lock(&self.group);
        if let Some(why) = &group.failed {
            return Err(JournalError::Unavailable(why.clone()));
        }
        group.buf.extend_from_slice(record);
        group.sync |= sync;
        let mine = group.filling;
        loop {
            if group.written >= mine {
                return Ok(());
            }
            if let Some(why) = &group.failed {
                return Err(JournalError::Unavailable(why.clone()));
            }
            if group.leader {
                group = self
                    .group_done
                    .wait(group)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            group.leader = true;
            let batch = group.filling;
            group.filling += 1;
            let buf = std::mem::take(&mut group.buf);
            let sync = std::mem::take(&mut group.sync);
            drop(group);
            let result = lock(&self.writer).write(&self.path, &buf, sync);
            group = lock(&self.group);
            group.leader = false;
            match &result {
                Ok(()) => group.written = batch,
                Err(e) => group.failed = Some(e.to_string().into()),
            }
            self.group_done.notify_all();
            if batch == mine {
                return result;
            }
        }
    }

    fn current_len(&self) -> Result<u64, JournalError> {
        let writer = lock(&self.writer);
        match &writer.failed {
            Some(why) => Err(JournalError::Unavailable(why.clone())),
            None => Ok(writer.len),
        }
    }

    /// Tests: makes the next write stop half-way and fail.
    #[cfg(test)]
    pub(crate) fn fail_next_write(&self) {
        lock(&self.writer).fail_next = true;
    }

    /// Syncs everything written so far (after [`Durability::Buffered`] appends).
    ///
    /// The sync runs on a duplicate of the file handle, outside the writer's lock: it
    /// covers every write that finished before it, and appends (a `Revalidate`'s use)
    /// go on meanwhile instead of waiting out an `fdatasync` of a whole sweep.
    pub fn sync(&self) -> Result<(), JournalError> {
        if !self.options.fsync {
            return Ok(());
        }
        let file = {
            let writer = lock(&self.writer);
            if let Some(why) = &writer.failed {
                return Err(JournalError::Unavailable(why.clone()));
            }
            writer.file.try_clone()
        };
        if let Err(e) = file.and_then(|file| file.sync_data()) {
            let why: Arc<str> = format!("{}: {e}", self.path.display()).into();
            lock(&self.writer).failed = Some(why);
            return Err(JournalError::io(&self.path, e));
        }
        Ok(())
    }

    /// True when the file has outgrown its compaction bound.
    pub fn wants_compaction(&self) -> bool {
        let writer = lock(&self.writer);
        writer.failed.is_none() && writer.len > writer.compact_at
    }

    /// Starts a compaction: `None` when one is already running. Then: mark where the
    /// snapshot starts ([`Compaction::mark_start`], at a moment when every change
    /// journaled so far is visible), write every current grant ([`Compaction::write`]),
    /// and [`Compaction::finish`], which carries over the records appended since the
    /// mark. Appends go on meanwhile.
    pub fn begin_compaction(&self) -> Result<Option<Compaction<'_>>, JournalError> {
        let guard = match self.compacting.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        let start = self.current_len()?;
        let tmp_path = self.dir.join(JOURNAL_TMP_FILE);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(|e| JournalError::io(&tmp_path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC)
            .map_err(|e| JournalError::io(&tmp_path, e))?;
        Ok(Some(Compaction {
            journal: self,
            start,
            tmp_path,
            out: Some(out),
            grants: 0,
            _running: guard,
        }))
    }
}

/// A compaction in progress; dropping it unfinished removes the temporary file.
pub struct Compaction<'a> {
    journal: &'a Journal,
    start: u64,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    grants: usize,
    _running: MutexGuard<'a, ()>,
}

impl std::fmt::Debug for Compaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compaction")
            .field("start", &self.start)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

impl Compaction<'_> {
    /// Marks the journal's current end as the start of what `finish` carries over.
    pub fn mark_start(&mut self) -> Result<(), JournalError> {
        self.start = self.journal.current_len()?;
        Ok(())
    }

    /// Writes one grant's current state to the snapshot.
    pub fn write(&mut self, grant: &Grant) -> Result<(), JournalError> {
        let record = encode_record(grant)?;
        let out = self.out.as_mut().ok_or_else(|| {
            JournalError::io(
                &self.tmp_path,
                io::Error::other("compaction already finished"),
            )
        })?;
        out.write_all(&record)
            .map_err(|e| JournalError::io(&self.tmp_path, e))?;
        self.grants += 1;
        Ok(())
    }

    /// Carries over the records appended since the compaction began, syncs, and
    /// replaces the journal with the snapshot. Returns the new journal length.
    pub fn finish(mut self) -> Result<u64, JournalError> {
        let journal = self.journal;
        let tmp_path = self.tmp_path.clone();
        let io_tmp = |e| JournalError::io(&tmp_path, e);
        let out = self
            .out
            .take()
            .ok_or_else(|| io_tmp(io::Error::other("compaction already finished")))?;
        let mut tmp = out.into_inner().map_err(|e| io_tmp(e.into_error()))?;
        let mut writer = lock(&journal.writer);
        if let Some(why) = &writer.failed {
            return Err(JournalError::Unavailable(why.clone()));
        }
        let tail = writer.len.saturating_sub(self.start);
        let mut old = File::open(&journal.path).map_err(|e| JournalError::io(&journal.path, e))?;
        old.seek(SeekFrom::Start(self.start))
            .map_err(|e| JournalError::io(&journal.path, e))?;
        let copied = io::copy(&mut old.take(tail), &mut tmp).map_err(io_tmp)?;
        if copied != tail {
            return Err(io_tmp(io::Error::other("journal shrank during compaction")));
        }
        tmp.sync_all().map_err(io_tmp)?;
        let new_len = tmp.metadata().map_err(io_tmp)?.len();
        drop(tmp);
        fs::rename(&tmp_path, &journal.path).map_err(io_tmp)?;
        // From here on the journal file is the snapshot: failing to use it poisons.
        let reopened = sync_dir(&journal.dir).and_then(|()| {
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&journal.path)
                .map_err(|e| JournalError::io(&journal.path, e))
        });
        match reopened {
            Ok(file) => {
                writer.file = file;
                writer.len = new_len;
                writer.compact_at = journal
                    .options
                    .compact_after_bytes
                    .max(new_len.saturating_mul(2));
                tracing::info!(
                    path = %journal.path.display(),
                    grants = self.grants,
                    carried_over_bytes = tail,
                    bytes = new_len,
                    "grant journal compacted"
                );
                Ok(new_len)
            }
            Err(e) => {
                writer.failed = Some(e.to_string().into());
                Err(e)
            }
        }
    }
}

impl Drop for Compaction<'_> {
    fn drop(&mut self) {
        if self.out.take().is_some() || self.tmp_path.exists() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Cursor, thread};

    use chrono::TimeDelta;

    use super::*;
    use crate::grants::{
        model::{GrantState, Revocation},
        store::tests::{grant, t0},
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
}
