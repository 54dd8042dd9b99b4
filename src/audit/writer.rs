//! The writer thread and its sinks: records rendered where their decisions were made are
//! chained and written here, off the decision path; a file sink rotates at a size limit,
//! keeping a fixed number of files, and the chain continues across rotations and
//! restarts. A record with a place in the OTLP queue is then handed, line and all, to
//! the export thread (`otlp.rs`).

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{
    chain::{self, Hash},
    otlp::{Export, Feed, Queued},
    record::Unchained,
};

/// What the writer thread receives.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "records are the traffic; boxing a record's OTLP place would allocate per decision"
)]
pub(crate) enum Message {
    /// A record to chain and write, and its place in the OTLP queue if it has one.
    Record(Unchained, Option<Queued>),
    /// Flush, acknowledge, and stop.
    Stop(oneshot::Sender<()>),
}

/// The decision log's counts: records written (to the file or stdout), dropped (logged
/// nowhere: no room), failed (write errors); and of the OTLP sink, records exported,
/// dropped (no room in its queue, or still queued when shutdown's export ended) and
/// export attempts that failed (the records stay queued and are sent again).
#[derive(Debug, Default)]
pub struct LogStats {
    pub(crate) written: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) otlp_exported: AtomicU64,
    pub(crate) otlp_dropped: AtomicU64,
    pub(crate) otlp_export_failures: AtomicU64,
}

impl LogStats {
    /// (written, dropped, failed).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The OTLP sink's (exported, dropped, export failures).
    pub fn otlp_counts(&self) -> (u64, u64, u64) {
        (
            self.otlp_exported.load(Ordering::Relaxed),
            self.otlp_dropped.load(Ordering::Relaxed),
            self.otlp_export_failures.load(Ordering::Relaxed),
        )
    }
}

/// Where lines go.
pub(crate) enum Sink {
    /// A rotating file.
    File(RotatingFile),
    /// Any stream (stdout, or a test's writer); never rotated.
    Stream(Box<dyn Write + Send>),
}

impl Sink {
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        match self {
            Self::File(file) => file.write_line(line),
            Self::Stream(out) => {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::File(file) => file.out.flush(),
            Self::Stream(out) => out.flush(),
        }
    }
}

/// A file rotated at `max_bytes`: `path` → `path.1` → … → `path.<keep>` (dropped).
pub(crate) struct RotatingFile {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl RotatingFile {
    /// Opens (or creates) `path` for appending and returns the hash of its last record,
    /// so the chain continues. A torn last line (a crash mid-write) is cut off.
    pub(crate) fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<(Self, Hash)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let last = last_hash(&mut file, path)?;
        let size = file.metadata()?.len();
        let prev = match last {
            Some(hash) => hash,
            // An empty file continues from the newest rotated one, if any.
            None => rotated_last_hash(path).unwrap_or(Hash::GENESIS),
        };
        Ok((
            Self {
                path: path.to_path_buf(),
                out: BufWriter::with_capacity(64 * 1024, file),
                size,
                max_bytes,
                keep,
            },
            prev,
        ))
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        for n in (1..self.keep).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, n + 1))?;
            }
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        if self.keep == 0 {
            file.set_len(0)?;
        }
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.size = 0;
        Ok(())
    }
}

/// `path.<n>`.
pub(crate) fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The last complete line's hash; a torn tail (no final newline) is truncated away.
fn last_hash(file: &mut File, path: &Path) -> io::Result<Option<Hash>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    // Records are bounded by the request size limit; read a tail that holds the last.
    let tail_len = len.min(4 * 1024 * 1024);
    file.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = Vec::with_capacity(usize::try_from(tail_len).unwrap_or(0));
    file.read_to_end(&mut tail)?;
    let complete = match tail.iter().rposition(|b| *b == b'\n') {
        Some(end) => end,
        None => {
            tracing::warn!(path = %path.display(), "decision log has no complete record; starting it over");
            file.set_len(len - tail_len)?;
            return Ok(None);
        }
    };
    if complete + 1 != tail.len() {
        tracing::warn!(path = %path.display(), "decision log ends with a torn record; truncating it");
        file.set_len(len - tail_len + complete as u64 + 1)?;
    }
    let start = tail[..complete]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let line = String::from_utf8_lossy(&tail[start..complete]);
    match chain::hash_of(&line) {
        Some(hash) => Ok(Some(hash)),
        None => {
            tracing::error!(path = %path.display(), "the last decision-log record has no hash; the chain restarts (audit verify will report it)");
            Ok(None)
        }
    }
}

fn rotated_last_hash(path: &Path) -> Option<Hash> {
    let mut file = File::open(numbered(path, 1)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    chain::hash_of(text.lines().last()?)
}

/// How long the writer lets records gather after waking: one wake-up, one write and one
/// flush per batch rather than per record (on a shared core, per-record wake-ups cost
/// more than writing). Bounds how stale the file is behind the decisions.
const BATCH_WAIT: Duration = Duration::from_millis(2);

/// What the writer thread holds: where lines go and the hash the next record chains to.
pub(crate) struct Writer {
    /// The file or stream; `None` when records go to the OTLP sink alone.
    pub(crate) sink: Option<Sink>,
    /// The OTLP export thread's queue, when that sink is on.
    pub(crate) feed: Option<Feed>,
    /// The last record's hash.
    pub(crate) prev: Hash,
    /// Where outcomes are counted.
    pub(crate) stats: Arc<LogStats>,
}

impl Writer {
    /// The writer thread's loop: wait for a record, let a batch gather, then chain and
    /// write all of it and flush once.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        while let Some(first) = rx.blocking_recv() {
            std::thread::sleep(BATCH_WAIT);
            let mut next = Some(first);
            while let Some(message) = next.take().or_else(|| rx.try_recv().ok()) {
                match message {
                    Message::Record(record, queued) => self.record(record, queued),
                    Message::Stop(ack) => {
                        self.flush();
                        let _ = ack.send(());
                        return;
                    }
                }
            }
            self.flush();
        }
        self.flush();
    }

    /// Chains `record`, writes it, and hands the line to the OTLP sink if it has a place
    /// there. The chain follows the file: a record the file did not take is not chained
    /// to (the collector still gets it, so its gap shows there as a repeated
    /// `prev_hash`).
    fn record(&mut self, record: Unchained, queued: Option<Queued>) {
        let (line, hash) = record.chain(&self.prev);
        match &mut self.sink {
            None => self.prev = hash,
            Some(sink) => match sink.write_line(&line) {
                Ok(()) => {
                    self.prev = hash;
                    self.stats.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %err, "decision log write failed; record lost");
                }
            },
        }
        if let (Some(queued), Some(feed)) = (queued, &self.feed)
            && feed.send(Export::Record(line, queued)).is_err()
        {
            // The export thread is gone (it only stops when the log closes).
            self.stats.otlp_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&mut self) {
        if let Some(sink) = &mut self.sink
            && let Err(err) = sink.flush()
        {
            tracing::error!(error = %err, "decision log flush failed");
        }
    }
}
