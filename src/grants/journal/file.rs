//! The journal file as the writer uses it, behind a small trait: the production file
//! is the operating system's; a test hands the store a file that fails (a full disk,
//! a failed sync) through [`JournalFiles`], without test-only code in the writer.

use std::{
    fs::File,
    io::{self, Write},
    sync::Arc,
};

/// The open journal file: appends, data syncs and truncation (of a failed append's
/// partial record), all through a shared handle, so a sync can run outside the
/// writer's lock.
pub trait JournalFile: Send + Sync {
    /// Appends all of `bytes`.
    fn write_all(&self, bytes: &[u8]) -> io::Result<()>;
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates (or extends) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

impl JournalFile for File {
    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        (&mut &*self).write_all(bytes)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// How the journal gets the [`JournalFile`] it appends to, each time it opens the
/// journal (at start, and after a compaction renames the snapshot over it).
pub trait JournalFiles: Send + Sync {
    /// The journal file to append to, from the file opened for appending.
    fn appender(&self, file: File) -> Arc<dyn JournalFile>;
}

/// The operating system's files, as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFiles;

impl JournalFiles for OsFiles {
    fn appender(&self, file: File) -> Arc<dyn JournalFile> {
        Arc::new(file)
    }
}
