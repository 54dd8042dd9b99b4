//! Appending: the open file (poisoned by a failed write or sync), group commit, and the
//! sync that runs outside the writer's lock.

use std::{
    io,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError},
};

use super::{Durability, Journal, JournalError, JournalFile, lock};

/// Locks `m`, trying for a few microseconds before it sleeps: an unsynced append holds
/// the writer for a write of a few dozen bytes (a microsecond or two), and a waiter that
/// sleeps instead is woken tens of microseconds later. Those wake-ups were the p99 of
/// two threads revalidating (1.14-1.78× a `Check`'s; 0.78-1.05× spinning).
pub(super) fn lock_spinning<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

/// The open journal file.
pub(super) struct Writer {
    pub(super) file: Arc<dyn JournalFile>,
    pub(super) len: u64,
    pub(super) compact_at: u64,
    pub(super) failed: Option<Arc<str>>,
}

impl Writer {
    fn write(&mut self, path: &Path, bytes: &[u8], sync: bool) -> Result<(), JournalError> {
        if let Some(why) = &self.failed {
            return Err(JournalError::Unavailable(why.clone()));
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
pub(super) struct Group {
    pub(super) buf: Vec<u8>,
    pub(super) sync: bool,
    /// The batch being filled.
    pub(super) filling: u64,
    /// The last batch written.
    pub(super) written: u64,
    pub(super) leader: bool,
    pub(super) failed: Option<Arc<str>>,
}

impl Journal {
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

    pub(super) fn current_len(&self) -> Result<u64, JournalError> {
        let writer = lock(&self.writer);
        match &writer.failed {
            Some(why) => Err(JournalError::Unavailable(why.clone())),
            None => Ok(writer.len),
        }
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
            writer.file.clone()
        };
        if let Err(e) = file.sync_data() {
            let why: Arc<str> = format!("{}: {e}", self.path.display()).into();
            lock(&self.writer).failed = Some(why);
            return Err(JournalError::io(&self.path, e));
        }
        Ok(())
    }
}
