//! The decision log: one JSON line per decision (the audit evidence: who, what, under
//! which policy revision, approved by whom, when), secrets masked, hash-chained so an
//! edit, a removal or a reordering is detectable (`stepgate audit verify`).
//!
//! The deciding thread renders its record (masked JSON) into a slot it reserved in a
//! bounded buffer; one writer thread chains the records in order and writes them to a
//! file or stdout, and hands them to the OTLP sink when it is on (`otlp.rs`: one
//! OpenTelemetry log record per decision, through a bounded queue of its own in which
//! the slot also holds a place). A full buffer or queue never blocks a decision: the
//! record is dropped and counted, unless the log is *required*, in which case the
//! decision that cannot be logged is denied.

mod attributes;
mod chain;
mod json;
mod mask;
mod otlp;
mod record;
mod writer;

use std::{
    io::{self, Write},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    thread::JoinHandle,
};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

pub(crate) use attributes::DecisionAttributes;
pub use chain::{Hash, Verified, VerifyError, verify};
pub use mask::{DEFAULT_MASK_KEYS, MASKED, Masks};
pub use otlp::{EVENT_NAME, OtlpSinkOptions};
pub use record::Entry;
pub use writer::LogStats;

use mask::Masking;
use otlp::{OtlpSink, Queued};
use writer::{Message, RotatingFile, Sink, Writer};

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
    /// Where records are written.
    pub destination: Destination,
    /// Where records are also exported as OpenTelemetry log records; `None` = nowhere.
    pub otlp: Option<OtlpSinkOptions>,
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
            otlp: None,
            required: false,
            masks: Masks::default(),
            buffer: 8192,
            max_file_bytes: 64 * 1024 * 1024,
            keep_files: 8,
        }
    }
}

/// Records the OTLP queue holds by default.
pub const DEFAULT_OTLP_QUEUE: usize = 8192;

/// The reason given when a required log cannot take a decision's record.
pub const LOG_FULL_DENY: &str =
    "the decision log cannot take this decision's record and audit is required (fail closed)";

/// A reserved place in the buffer (and in the OTLP queue, when that sink is on and had
/// room): sending through it cannot fail or block.
#[derive(Debug)]
pub struct Slot {
    permit: mpsc::OwnedPermit<Message>,
    otlp: Option<OwnedSemaphorePermit>,
}

/// A running decision log.
#[derive(Debug)]
pub struct DecisionLog {
    tx: mpsc::Sender<Message>,
    masking: Masking,
    required: bool,
    /// Whether records are written to a file or stdout (else only exported).
    written: bool,
    otlp: Option<OtlpSink>,
    stats: Arc<LogStats>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl DecisionLog {
    /// Opens the log `options` describe; `None` when it is off.
    pub fn open(options: &AuditOptions) -> io::Result<Option<Self>> {
        let (sink, prev) = match &options.destination {
            Destination::Off if options.otlp.is_none() => return Ok(None),
            Destination::Off => (None, Hash::GENESIS),
            Destination::Stdout => (Some(Sink::Stream(Box::new(io::stdout()))), Hash::GENESIS),
            Destination::File(path) => {
                let (file, prev) =
                    RotatingFile::open(path, options.max_file_bytes, options.keep_files)?;
                (Some(Sink::File(file)), prev)
            }
        };
        Self::start(sink, prev, options).map(Some)
    }

    /// A log writing to `out` (never rotated), chained from the genesis hash.
    pub fn to_writer(out: Box<dyn Write + Send>, options: &AuditOptions) -> io::Result<Self> {
        Self::start(Some(Sink::Stream(out)), Hash::GENESIS, options)
    }

    fn start(sink: Option<Sink>, prev: Hash, options: &AuditOptions) -> io::Result<Self> {
        let masking = Masking::new(options.masks.clone())
            .map_err(|problem| io::Error::new(io::ErrorKind::InvalidInput, problem))?;
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let stats = Arc::new(LogStats::default());
        let otlp = match &options.otlp {
            Some(sink) => Some(OtlpSink::start(sink, stats.clone())?),
            None => None,
        };
        let written = sink.is_some();
        let writer = Writer {
            sink,
            feed: otlp.as_ref().map(OtlpSink::feed),
            prev,
            stats: stats.clone(),
        };
        let worker = std::thread::Builder::new()
            .name("stepgate-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            tx,
            masking,
            required: options.required,
            written,
            otlp,
            stats,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Whether a decision that cannot be logged must be denied.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Reserves a place for one record without waiting; `None` (counted as dropped)
    /// when the buffer is full or the writer has stopped, or when the OTLP queue is
    /// full and the record would be logged nowhere else or the log is required. (Not
    /// required, with a file or stdout, a record with no room in the OTLP queue is only
    /// written; it counts as dropped from that sink.)
    pub fn reserve(&self) -> Option<Slot> {
        let Ok(permit) = self.tx.clone().try_reserve_owned() else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let otlp = match &self.otlp {
            None => None,
            Some(sink) => match sink.reserve() {
                Some(room) => Some(room),
                None => {
                    self.stats.otlp_dropped.fetch_add(1, Ordering::Relaxed);
                    if self.required || !self.written {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    None
                }
            },
        };
        Some(Slot { permit, otlp })
    }

    /// Renders `entry` (masked) and hands it to the writer through `slot`.
    pub fn send(&self, slot: Slot, entry: &Entry<'_>) {
        let record = record::render(entry, &self.masking);
        let queued = slot.otlp.map(|room| Queued::new(entry, room));
        slot.permit.send(Message::Record(record, queued));
    }

    /// Records written, dropped and failed so far.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// Writes what is buffered, flushes, and stops the writer thread; then exports what
    /// the OTLP sink holds (for a bounded time) and stops it. Records reserved later are
    /// dropped.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Message::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
        join(&self.worker).await;
        if let Some(otlp) = &self.otlp {
            otlp.drain().await;
        }
    }
}

/// Waits, off the async workers, for the thread `worker` holds (once) to end.
async fn join(worker: &Mutex<Option<JoinHandle<()>>>) {
    let worker = worker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(worker) = worker {
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    }
}

#[cfg(test)]
mod tests;
