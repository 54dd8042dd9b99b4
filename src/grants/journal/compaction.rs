//! Compaction by snapshot: every current grant to a temporary file while appends go
//! on, then the records appended meanwhile, a sync, and a rename over the journal.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Read, Seek, SeekFrom, Write},
    path::PathBuf,
    sync::{MutexGuard, TryLockError},
};

use super::{
    JOURNAL_TMP_FILE, Journal, JournalError, MAGIC, format::encode_record, lock, sync_dir,
};
use crate::grants::model::Grant;

impl Journal {
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
                writer.file = journal.files.appender(file);
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
