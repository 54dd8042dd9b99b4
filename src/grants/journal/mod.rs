//! The grant journal: an append-only file of grant mutations in the state directory,
//! replayed at start and compacted by snapshot.
//!
//! The record format is in [`format`]; a scan (and what counts as damage) in [`scan`];
//! replay in [`replay`]; the writer (group commit, poisoning) in [`writer`]; compaction
//! in [`compaction`].
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

mod compaction;
mod file;
mod format;
mod format_v1;
mod grant_record;
mod replay;
mod scan;
#[cfg(test)]
mod tests;
mod writer;

use std::{
    fs::{self, File, OpenOptions},
    io,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

use replay::Replaying;
use writer::{Group, Writer};

pub use compaction::Compaction;
pub use file::{JournalFile, JournalFiles, OsFiles};
pub use format::{
    Delta, DeltaRecord, ExpiredRecord, JournalRecord, Record, encode_delta, encode_record,
    encode_sweep_mark,
};
pub use grant_record::{GrantRecord, InvalidGrant};
pub use replay::Replay;
pub use scan::{Scan, ScanEnd, scan, scan_records};

/// The journal's file name inside the state directory.
pub const JOURNAL_FILE: &str = "grants.journal";
/// The compaction's temporary file name inside the state directory.
pub const JOURNAL_TMP_FILE: &str = "grants.journal.tmp";
/// The lock file that keeps a second process out of the state directory.
pub const LOCK_FILE: &str = "LOCK";
/// The magic bytes a journal starts with: `SGJRNL\0` and the format this version
/// writes (2: see [`format`]).
pub const MAGIC: &[u8; 8] = b"SGJRNL\x00\x02";
/// The formats this version reads (the last byte of the magic).
pub const FORMATS: std::ops::RangeInclusive<u8> = 1..=2;
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

/// Syncs a directory, so a file created or renamed in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io(dir, e))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The append-only grant journal of one state directory.
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    /// Held for the journal's life: an exclusive lock on `<dir>/LOCK`.
    _lock: File,
    options: JournalOptions,
    files: Arc<dyn JournalFiles>,
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
        Self::open_with(dir, options, Arc::new(OsFiles))
    }

    /// As [`Journal::open`], appending through the files `files` gives (tests hand in
    /// one that fails).
    pub fn open_with(
        dir: &Path,
        options: JournalOptions,
        files: Arc<dyn JournalFiles>,
    ) -> Result<(Self, Replay), JournalError> {
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
        let mut replaying = Replaying::default();
        let scan = scan_records(&mut file, &path, &mut |offset, record| {
            replaying.record(offset, record)
        })?;
        let grants = replaying.finish();
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
                file: files.appender(file),
                len,
                // An older format is rewritten in this one by the first compaction:
                // at once (the store compacts at open when the journal wants it).
                compact_at: if scan.format < MAGIC[MAGIC.len() - 1] {
                    0
                } else {
                    options.compact_after_bytes
                },
                failed: None,
            }),
            files,
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

    /// True when the file has outgrown its compaction bound.
    pub fn wants_compaction(&self) -> bool {
        let writer = lock(&self.writer);
        writer.failed.is_none() && writer.len > writer.compact_at
    }
}
