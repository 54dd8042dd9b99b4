//! The decision log: one JSON line per decision (the audit evidence: who, what, under
//! which policy revision, approved by whom, when), secrets masked, hash-chained so an
//! edit, a removal or a reordering is detectable (`stepgate audit verify`).
//!
//! The deciding thread renders its record (masked JSON) into a slot it reserved in a
//! bounded buffer; one writer thread chains the records in order and writes them. A full
//! buffer never blocks a decision: the record is dropped and counted, unless the log is
//! *required*, in which case the decision that cannot be logged is denied.

mod chain;
mod json;
mod mask;
mod record;
mod writer;

use std::{
    io::{self, Write},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    thread::JoinHandle,
};

use tokio::sync::{mpsc, oneshot};

pub use chain::{Hash, Verified, VerifyError, verify};
pub use mask::{DEFAULT_MASK_KEYS, MASKED, Masks};
pub use record::Entry;
pub use writer::LogStats;

use mask::Masking;
use writer::{Message, RotatingFile, Sink};

/// Where the decision log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// No decision log.
    Off,
    /// Standard output.
    Stdout,
    /// A file, rotated.
    File(PathBuf),
}

/// Decision-log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// Where records go.
    pub destination: Destination,
    /// Deny a decision that cannot be logged (instead of dropping its record).
    pub required: bool,
    /// What is masked in the input.
    pub masks: Masks,
    /// Records the buffer holds before it is full.
    pub buffer: usize,
    /// A file is rotated before it grows past this size.
    pub max_file_bytes: u64,
    /// Rotated files kept (`decisions.jsonl.1` … `.N`).
    pub keep_files: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            destination: Destination::Off,
            required: false,
            masks: Masks::default(),
            buffer: 8192,
            max_file_bytes: 64 * 1024 * 1024,
            keep_files: 8,
        }
    }
}

/// The reason given when a required log cannot take a decision's record.
pub const LOG_FULL_DENY: &str =
    "the decision log cannot take this decision's record and audit is required (fail closed)";

/// A reserved place in the buffer: sending through it cannot fail or block.
#[derive(Debug)]
pub struct Slot(mpsc::OwnedPermit<Message>);

/// A running decision log.
#[derive(Debug)]
pub struct DecisionLog {
    tx: mpsc::Sender<Message>,
    masking: Masking,
    required: bool,
    stats: Arc<LogStats>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl DecisionLog {
    /// Opens the log `options` describe; `None` when it is off.
    pub fn open(options: &AuditOptions) -> io::Result<Option<Self>> {
        let (sink, prev) = match &options.destination {
            Destination::Off => return Ok(None),
            Destination::Stdout => (Sink::Stream(Box::new(io::stdout())), Hash::GENESIS),
            Destination::File(path) => {
                let (file, prev) =
                    RotatingFile::open(path, options.max_file_bytes, options.keep_files)?;
                (Sink::File(file), prev)
            }
        };
        Self::start(sink, prev, options).map(Some)
    }

    /// A log writing to `out` (never rotated), chained from the genesis hash.
    pub fn to_writer(out: Box<dyn Write + Send>, options: &AuditOptions) -> io::Result<Self> {
        Self::start(Sink::Stream(out), Hash::GENESIS, options)
    }

    fn start(sink: Sink, prev: Hash, options: &AuditOptions) -> io::Result<Self> {
        let masking = Masking::new(options.masks.clone())
            .map_err(|problem| io::Error::new(io::ErrorKind::InvalidInput, problem))?;
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let stats = Arc::new(LogStats::default());
        let thread_stats = stats.clone();
        let worker = std::thread::Builder::new()
            .name("stepgate-audit".into())
            .spawn(move || writer::run(rx, sink, prev, thread_stats))?;
        Ok(Self {
            tx,
            masking,
            required: options.required,
            stats,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Whether a decision that cannot be logged must be denied.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Reserves a place for one record without waiting; `None` (counted as dropped)
    /// when the buffer is full or the writer has stopped.
    pub fn reserve(&self) -> Option<Slot> {
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Some(Slot(permit)),
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Renders `entry` (masked) and hands it to the writer through `slot`.
    pub fn send(&self, slot: Slot, entry: &Entry<'_>) {
        slot.0
            .send(Message::Record(record::render(entry, &self.masking)));
    }

    /// Records written, dropped and failed so far.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// Writes what is buffered, flushes, and stops the writer thread. Records reserved
    /// later are dropped.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Message::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(worker) = worker {
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        }
    }
}

#[cfg(test)]
mod tests;
