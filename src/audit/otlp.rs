//! The decision log's OTLP sink: every record, exactly the line the file gets (masked,
//! chained), becomes one OpenTelemetry log record sent to a collector, which routes it
//! to any SIEM.
//!
//! The queue is stepgate's own, not the SDK's batch processor (which drops silently
//! when full): a decision reserves a place in it with its place in the log's buffer, so
//! a record that cannot be queued is known where the decision is made, and a required
//! log denies. The place is held until the record is exported. The writer thread hands
//! each chained line over; one export thread turns lines into log records and sends
//! them in batches. When the collector is down or refuses, a batch is sent again with
//! backoff and records wait in the queue: once it is full, records are dropped from
//! this sink (counted) or, with `--audit-required`, decisions are denied.

use std::{
    collections::VecDeque,
    io,
    sync::{Arc, Mutex, atomic::Ordering, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};
use opentelemetry::{
    InstrumentationScope, Value as OtelValue,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
    trace::{SpanId, TraceId},
};
use opentelemetry_otlp::LogExporter;
use opentelemetry_sdk::logs::{
    LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::{DecisionAttributes, Entry, LogStats, join};
use crate::telemetry::{
    OtlpExporter,
    otlp::{OwnExporter, build_exporter, builders_of, resource},
};

/// The event name of every decision record.
pub const EVENT_NAME: &str = "stepgate.decision";

/// Settings of the OTLP sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSinkOptions {
    /// The collector.
    pub exporter: OtlpExporter,
    /// `service.name` of the resource (the spans' too).
    pub service_name: String,
    /// Records queued (from the decision until exported) before the queue is full.
    pub queue: usize,
}

/// Most records in one export request.
const BATCH_RECORDS: usize = 512;
/// Most record bytes in one export request (at least one record is always sent): well
/// under the 4 MiB a collector's gRPC receiver takes by default.
const BATCH_BYTES: usize = 2 * 1024 * 1024;
/// How long a record waits for others to share its export request.
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// Wait before sending a failed batch again; doubled per failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long shutdown spends exporting what is queued; what is left is dropped.
pub(crate) const DRAIN_WITHIN: Duration = Duration::from_secs(5);
/// How much longer shutdown waits for an export attempt started before the deadline.
const DRAIN_SLACK: Duration = Duration::from_secs(1);

/// A record's place in the OTLP queue, and what its log record needs besides the line.
#[derive(Debug)]
pub(crate) struct Queued {
    attributes: DecisionAttributes,
    decided_at: DateTime<Utc>,
    trace: Option<(TraceId, SpanId)>,
    _room: OwnedSemaphorePermit,
}

impl Queued {
    /// `entry`'s routing data, holding `room` until its record is exported or dropped.
    /// No allocation: the strings are shared with the input and the policy set.
    pub(crate) fn new(entry: &Entry<'_>, room: OwnedSemaphorePermit) -> Self {
        Self {
            attributes: DecisionAttributes::of(entry),
            decided_at: entry.decided_at,
            trace: entry.trace,
            _room: room,
        }
    }
}

/// What the export thread receives.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "records are the traffic; boxing one would allocate per decision"
)]
pub(crate) enum Export {
    /// A chained record line and its place in the queue.
    Record(String, Queued),
    /// Export what is queued until `deadline`, drop the rest, acknowledge, stop.
    Drain {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
}

/// Where the writer thread hands records to the export thread.
pub(crate) type Feed = mpsc::Sender<Export>;

/// The running sink: the room left in its queue and its export thread.
#[derive(Debug)]
pub(crate) struct OtlpSink {
    room: Arc<Semaphore>,
    feed: Feed,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl OtlpSink {
    /// Builds the exporter `options` name and starts the export thread.
    pub(crate) fn start(options: &OtlpSinkOptions, stats: Arc<LogStats>) -> io::Result<Self> {
        let mut exporter = build_exporter(&options.exporter, builders_of!(LogExporter, "/v1/logs"))
            .map_err(io::Error::other)?;
        exporter
            .exporter
            .set_resource(&resource(&options.service_name));
        let (feed, rx) = mpsc::channel();
        let thread = Exporting {
            exporter,
            logger: SdkLoggerProvider::builder().build().logger("stepgate"),
            scope: InstrumentationScope::builder("stepgate").build(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            stats,
            backoff: RETRY_FIRST,
            retry_at: None,
        };
        let worker = std::thread::Builder::new()
            .name("stepgate-audit-otlp".into())
            .spawn(move || thread.run(&rx))?;
        Ok(Self {
            room: Arc::new(Semaphore::new(
                options.queue.clamp(1, Semaphore::MAX_PERMITS),
            )),
            feed,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// A place in the queue, without waiting; `None` when it is full.
    pub(crate) fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.room.clone().try_acquire_owned().ok()
    }

    /// Where the writer thread hands records over.
    pub(crate) fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// Exports what is queued, for at most [`DRAIN_WITHIN`], and stops the export
    /// thread. Call once the writer thread has stopped (it hands over no more records).
    pub(crate) async fn drain(&self) {
        let (done, finished) = oneshot::channel();
        let deadline = Instant::now() + DRAIN_WITHIN;
        if self.feed.send(Export::Drain { deadline, done }).is_err() {
            return;
        }
        if tokio::time::timeout(DRAIN_WITHIN + DRAIN_SLACK, finished)
            .await
            .is_err()
        {
            // An export attempt outlived the deadline (the exporter's own timeout bounds
            // it); the thread finishes it and stops on its own.
            tracing::warn!(
                "OTLP export of the decision log did not finish in time; shutting down without it"
            );
            return;
        }
        join(&self.worker).await;
    }
}

/// A log record waiting for export, holding its place in the queue.
struct Ready {
    record: SdkLogRecord,
    bytes: usize,
    arrived: Instant,
    _room: OwnedSemaphorePermit,
}

/// The export thread's state.
struct Exporting {
    exporter: OwnExporter<LogExporter>,
    /// Makes log records (the SDK has no other public constructor); it has no
    /// processor: records go to `exporter` from here.
    logger: SdkLogger,
    scope: InstrumentationScope,
    queue: VecDeque<Ready>,
    queued_bytes: usize,
    stats: Arc<LogStats>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Exporting {
    fn run(mut self, rx: &mpsc::Receiver<Export>) {
        loop {
            let message = match self.next_export() {
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match message {
                Ok(Export::Record(line, queued)) => self.push(line, queued),
                Ok(Export::Drain { deadline, done }) => {
                    self.drain(rx, deadline);
                    let _ = done.send(());
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The log was dropped without closing: nothing waits for an export.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.drain(rx, Instant::now());
                    return;
                }
            }
            while self.next_export().is_some_and(|at| at <= Instant::now()) {
                if !self.export_batch() {
                    break;
                }
            }
        }
    }

    /// When the next batch is due: when a full batch is queued or the oldest record has
    /// waited [`BATCH_DELAY`], but not before a failed batch's retry time.
    fn next_export(&self) -> Option<Instant> {
        let oldest = self.queue.front()?.arrived;
        let full = self.queue.len() >= BATCH_RECORDS || self.queued_bytes >= BATCH_BYTES;
        let at = if full { oldest } else { oldest + BATCH_DELAY };
        Some(self.retry_at.map_or(at, |retry| retry.max(at)))
    }

    fn push(&mut self, line: String, queued: Queued) {
        let bytes = line.len();
        let record = log_record(&self.logger, line, &queued, SystemTime::now());
        self.queued_bytes += bytes;
        self.queue.push_back(Ready {
            record,
            bytes,
            arrived: Instant::now(),
            _room: queued._room,
        });
    }

    /// Sends the oldest records in one request; on success they leave the queue (and
    /// free their places), on failure they stay and a retry is scheduled.
    fn export_batch(&mut self) -> bool {
        let mut bytes = 0;
        let count = self
            .queue
            .iter()
            .take(BATCH_RECORDS)
            .take_while(|ready| {
                bytes += ready.bytes;
                bytes <= BATCH_BYTES
            })
            .count()
            .max(1);
        let batch: Vec<_> = self
            .queue
            .iter()
            .take(count)
            .map(|ready| (&ready.record, &self.scope))
            .collect();
        let sent = futures_executor::block_on(self.exporter.exporter.export(LogBatch::new(&batch)));
        drop(batch);
        match sent {
            Ok(()) => {
                for ready in self.queue.drain(..count) {
                    self.queued_bytes -= ready.bytes;
                }
                self.stats
                    .otlp_exported
                    .fetch_add(count as u64, Ordering::Relaxed);
                self.backoff = RETRY_FIRST;
                self.retry_at = None;
                true
            }
            Err(err) => {
                self.stats
                    .otlp_export_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = %err,
                    queued = self.queue.len(),
                    retry_in_ms = self.backoff.as_millis() as u64,
                    "decision records could not be exported over OTLP; they stay queued"
                );
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(RETRY_MAX);
                false
            }
        }
    }

    /// Takes what the writer handed over, exports it (one attempt per batch, until
    /// `deadline`), and drops and counts what is left.
    fn drain(&mut self, rx: &mpsc::Receiver<Export>, deadline: Instant) {
        while let Ok(message) = rx.try_recv() {
            if let Export::Record(line, queued) = message {
                self.push(line, queued);
            }
        }
        while !self.queue.is_empty() && Instant::now() < deadline {
            if !self.export_batch() {
                break;
            }
        }
        if !self.queue.is_empty() {
            let left = self.queue.len();
            self.stats
                .otlp_dropped
                .fetch_add(left as u64, Ordering::Relaxed);
            tracing::error!(
                left,
                "decision records still queued for OTLP at shutdown were not exported"
            );
            self.queue.clear();
        }
        let _ = self.exporter.exporter.shutdown_with_timeout(DRAIN_SLACK);
    }
}

/// The log record of one decision: the record's line as the body (masked as the file
/// has it), the decision's `stepgate.*` attributes, severity INFO for an allow and WARN
/// for a deny, the decision's time, and its span's (else its caller's) trace context.
fn log_record(
    logger: &SdkLogger,
    line: String,
    queued: &Queued,
    observed: SystemTime,
) -> SdkLogRecord {
    let mut record = logger.create_log_record();
    record.set_event_name(EVENT_NAME);
    record.set_timestamp(SystemTime::from(queued.decided_at));
    record.set_observed_timestamp(observed);
    let (severity, text) = if queued.attributes.allow() {
        (Severity::Info, "INFO")
    } else {
        (Severity::Warn, "WARN")
    };
    record.set_severity_number(severity);
    record.set_severity_text(text);
    if let Some((trace, span)) = queued.trace {
        record.set_trace_context(trace, span, None);
    }
    queued.attributes.visit(|key, value| {
        let value = match value {
            OtelValue::Bool(b) => AnyValue::Boolean(b),
            OtelValue::I64(i) => AnyValue::Int(i),
            other => AnyValue::String(other.into()),
        };
        record.add_attribute(key, value);
    });
    record.set_body(AnyValue::String(line.into()));
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{Decided, trace, traced};
    use regorus::Value;

    fn attribute<'a>(record: &'a SdkLogRecord, key: &str) -> Option<&'a AnyValue> {
        record
            .attributes_iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }

    /// A log record carries the line as its body unchanged, the span's attributes, the
    /// decision's time, and its trace; a deny is WARN.
    #[test]
    fn a_record_becomes_one_log_record_with_its_routing_fields() {
        let input = Value::from_json_str(
            r#"{"step": "use", "action": "read", "subject": {"id": "a", "kind": "agent"},
                "resource": {"type": "secret", "id": "db"}, "grant": {"id": "g-1"}}"#,
        )
        .unwrap();
        let decision = Decided::deny();
        let entry = traced(&decision, &input);
        let room = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let queued = Queued::new(&entry, room);
        let line = String::from(r#"{"decision_id":"x","prev_hash":"y"}"#);
        let logger = SdkLoggerProvider::builder().build().logger("stepgate");
        let observed = SystemTime::now();
        let log = log_record(&logger, line.clone(), &queued, observed);

        assert_eq!(log.body(), Some(&AnyValue::String(line.into())));
        assert_eq!(log.event_name(), Some(EVENT_NAME));
        assert_eq!(log.severity_number(), Some(Severity::Warn));
        assert_eq!(log.severity_text(), Some("WARN"));
        assert_eq!(log.timestamp(), Some(SystemTime::from(decision.decided_at)));
        assert_eq!(log.observed_timestamp(), Some(observed));
        let context = log.trace_context().unwrap();
        assert_eq!((context.trace_id, context.span_id), trace());
        let text = |key| match attribute(&log, key) {
            Some(AnyValue::String(s)) => s.as_str().to_owned(),
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(text("stepgate.decision.id"), decision.id.to_string());
        assert_eq!(
            attribute(&log, "stepgate.decision.allow"),
            Some(&AnyValue::Boolean(false))
        );
        assert_eq!(text("stepgate.step"), "use");
        assert_eq!(text("stepgate.action"), "read");
        assert_eq!(text("stepgate.subject.kind"), "agent");
        assert_eq!(text("stepgate.resource.type"), "secret");
        assert_eq!(text("stepgate.grant.id"), "g-1");
        assert_eq!(text("stepgate.policy.revision"), "sha256:rev");
        assert!(matches!(
            attribute(&log, "stepgate.eval.duration_us"),
            Some(AnyValue::Int(_))
        ));

        let entry = Entry {
            allow: true,
            ..entry
        };
        let room = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let log = log_record(&logger, String::new(), &Queued::new(&entry, room), observed);
        assert_eq!(log.severity_number(), Some(Severity::Info));
        assert_eq!(log.severity_text(), Some("INFO"));
    }
}
