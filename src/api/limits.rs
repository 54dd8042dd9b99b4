//! Bounds on peers, for every listener (gRPC on TCP, TLS and the Unix socket, and HTTP):
//! how many connections a listener holds, how long a new connection may take to start
//! speaking, and how long a connection may stay open with nothing in flight.
//!
//! A listener never stops accepting: a connection past the cap is accepted and closed at
//! once (counted, and logged at most every few seconds), so neither the kernel's backlog
//! nor the connections already open can hang. The cap is checked against the process's
//! descriptor limit at start ([`fit_descriptor_limit`]).
//!
//! Each admitted connection is a [`LimitedIo`]: it fails its reads (closing the
//! connection) when the peer has not sent its first bytes (the HTTP/2 preface) within
//! the handshake timeout, or when no request has been in flight for the idle timeout.
//! Requests are counted per connection by [`InFlight`], which the gRPC router finds in
//! each request's extensions ([`ConnectionInfo`]) and the HTTP server holds directly.
//! HTTP/2 settings (concurrent streams, keepalive PINGs, windows) are applied where the
//! servers are built; this module holds their values in [`TransportLimits`].

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::mpsc,
    time::Sleep,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::{
    error::ApiError,
    request_budget::{BudgetedBody, CallLimit, RequestBudget},
};
use crate::telemetry::ListenerMetrics;

/// Bytes of the HTTP/2 client connection preface (RFC 9113 §3.4).
pub const HTTP2_PREFACE_LEN: usize = 24;
/// How often a listener may log that it refuses connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after an accept error (out of descriptors, ...), so the loop cannot spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Admitted connections waiting for the server to take them.
const ADMITTED_BACKLOG: usize = 64;
/// Descriptors kept for what is not a connection: listeners, the journal, the decision
/// log, policy files, the runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The bounds every listener applies to its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// Most connections one listener holds open; more are accepted and closed at once.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Longest a new connection may take to send its first bytes (the HTTP/2 preface;
    /// an HTTP/1 request's headers).
    pub handshake_timeout: Duration,
    /// Longest a call may take to arrive whole and be answered (for a streaming
    /// response: until it starts). Past it a gRPC call ends with `CANCELLED` and an HTTP
    /// request with 408.
    pub request_timeout: Duration,
    /// A connection with no call in flight for this long is closed.
    pub idle_timeout: Duration,
    /// An HTTP/2 connection silent for this long is sent a PING.
    pub keepalive_interval: Duration,
    /// A PING not answered within this closes the connection.
    pub keepalive_timeout: Duration,
    /// Most request bytes held at once across all connections (bodies being received
    /// and not yet decoded); a request past it fails with `RESOURCE_EXHAUSTED`.
    pub max_buffered_request_bytes: usize,
    /// Most gRPC calls not yet answered, across all connections; one past it is
    /// answered `RESOURCE_EXHAUSTED` at once.
    pub max_concurrent_calls: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_concurrent_streams: 64,
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_buffered_request_bytes: 64 * 1024 * 1024,
            max_concurrent_calls: 1024,
        }
    }
}

/// HTTP/2 flow-control windows: how much a peer may send before the server reads it. Small
/// enough that stalled streams hold little; a Check (a few KiB) fits in one window.
pub const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
/// The connection-wide window (all streams of one connection together): what a
/// connection can make the server buffer before the service reads it.
pub const CONNECTION_WINDOW_BYTES: u32 = 256 * 1024;
/// Largest header list (names + values + 32 per field) a request may carry.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Streams a peer may open and reset before the server has seen them (CVE-2023-44487).
pub const MAX_PENDING_RESET_STREAMS: usize = 20;

/// Fits the listeners' connection caps under the process's descriptor limit: raises the
/// soft `RLIMIT_NOFILE` towards the hard one when the caps need it, else lowers the cap
/// (with a warning). Returns the cap each of `listeners` listeners gets.
pub fn fit_descriptor_limit(max_connections: usize, listeners: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let wanted = descriptors_needed(max_connections, listeners);
    let limit = getrlimit(Resource::Nofile);
    let Some(mut soft) = limit.current else {
        return max_connections; // unlimited
    };
    if soft < wanted {
        let raised = limit.maximum.map_or(wanted, |hard| hard.min(wanted));
        let new = Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        };
        if raised > soft && setrlimit(Resource::Nofile, new).is_ok() {
            soft = raised;
        }
    }
    let fitted = cap_within(max_connections, listeners, soft);
    if fitted < max_connections {
        tracing::warn!(
            descriptor_limit = soft,
            configured = max_connections,
            max_connections = fitted,
            "the descriptor limit (RLIMIT_NOFILE) is too low for --max-connections on every listener; lowered it"
        );
    }
    fitted
}

/// Descriptors `listeners` listeners at `max_connections` each need, with the reserve.
fn descriptors_needed(max_connections: usize, listeners: usize) -> u64 {
    (max_connections as u64).saturating_mul(listeners.max(1) as u64) + RESERVED_DESCRIPTORS
}

/// The largest cap up to `max_connections` that `listeners` listeners fit in `limit`
/// descriptors (at least 1).
fn cap_within(max_connections: usize, listeners: usize, limit: u64) -> usize {
    if limit >= descriptors_needed(max_connections, listeners) {
        return max_connections;
    }
    let per_listener = limit.saturating_sub(RESERVED_DESCRIPTORS) / listeners.max(1) as u64;
    usize::try_from(per_listener.max(1)).unwrap_or(max_connections)
}

/// One listener's connection cap: admits connections while fewer than the cap are open.
#[derive(Debug)]
pub struct ConnectionCap {
    max: usize,
    open: AtomicUsize,
    metrics: ListenerMetrics,
    /// When refusals were last logged, and how many since.
    refusals: Mutex<(Option<Instant>, u64)>,
}

impl ConnectionCap {
    /// A cap of `max` open connections, counted in `metrics`.
    pub fn new(max: usize, metrics: ListenerMetrics) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: AtomicUsize::new(0),
            metrics,
            refusals: Mutex::new((None, 0)),
        })
    }

    /// A slot for one more connection, or `None` (counted, logged) when the cap is
    /// reached: the caller then drops the connection.
    pub fn admit(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok();
        if admitted {
            self.metrics.open.inc();
            return Some(ConnectionSlot { cap: self.clone() });
        }
        self.metrics.refused.inc();
        let mut refusals = self
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        refusals.1 += 1;
        let now = Instant::now();
        if refusals
            .0
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_INTERVAL)
        {
            tracing::warn!(
                listener = self.metrics.listener,
                max_connections = self.max,
                refused = refusals.1,
                "connection limit reached: refusing new connections"
            );
            *refusals = (Some(now), 0);
        }
        None
    }

    /// The listener's metrics.
    pub fn metrics(&self) -> &ListenerMetrics {
        &self.metrics
    }
}

/// An admitted connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    cap: Arc<ConnectionCap>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.cap.open.fetch_sub(1, Ordering::AcqRel);
        self.cap.metrics.open.dec();
    }
}

/// A listener whose accepted connections [`admitted`] can take.
pub trait Accept: Send + 'static {
    /// The accepted connection.
    type Io: Send + 'static;
    /// Accepts the next connection.
    fn accept_io(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept_io(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept().await?;
        // Decisions are small request/response pairs: do not wait to fill segments.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;
    async fn accept_io(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// The connections `listener` accepts, each with its slot under `cap`; a connection past
/// the cap is closed as soon as it is accepted. The accept loop ends when the returned
/// stream is dropped.
pub fn admitted<A: Accept>(
    listener: A,
    cap: Arc<ConnectionCap>,
) -> ReceiverStream<io::Result<(A::Io, ConnectionSlot)>> {
    let (tx, rx) = mpsc::channel(ADMITTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept_io() => accepted,
                () = tx.closed() => return,
            };
            match accepted {
                Ok(io) => {
                    if let Some(slot) = cap.admit()
                        && tx.send(Ok((io, slot))).await.is_err()
                    {
                        return;
                    }
                    // else: dropped here, which closes it.
                }
                Err(err) => {
                    tracing::warn!(
                        listener = cap.metrics.listener,
                        error = %err,
                        "accepting a connection failed"
                    );
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Calls in flight on one connection, and since when none has been.
#[derive(Debug)]
pub struct InFlight {
    calls: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl InFlight {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// Counts a call until the returned guard is dropped (with its response body).
    pub fn start(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard {
            in_flight: self.clone(),
        }
    }

    /// When the connection becomes idle-expired: `None` while calls are in flight.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A call may have started and ended between the two reads: then `since` is
        // newer, which only postpones the deadline.
        Some(since + idle_timeout)
    }
}

/// One call in flight; dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard {
    in_flight: Arc<InFlight>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut since = self
            .in_flight
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.in_flight.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// What the gRPC router sees of a [`LimitedIo`] connection: its calls in flight, and the
/// inner transport's own connect info, which [`ConnectionInfo::restore`] puts back into
/// the request so the caller identity is read as before.
#[derive(Clone)]
pub struct ConnectionInfo {
    in_flight: Arc<InFlight>,
    restore: Arc<dyn Fn(&mut http::Extensions) + Send + Sync>,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl ConnectionInfo {
    /// Puts the transport's connect info into `extensions` and counts the call.
    pub fn restore(&self, extensions: &mut http::Extensions) -> CallGuard {
        (self.restore)(extensions);
        self.in_flight.start()
    }
}

/// Where a connection is in its life, for its timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for this many more first bytes.
    Opening(usize),
    /// Speaking.
    Open,
}

/// An admitted connection, closed (its reads fail) when it does not start speaking in
/// time or stays idle too long. Holds the connection's slot under its listener's cap.
pub struct LimitedIo<IO> {
    io: IO,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    in_flight: Arc<InFlight>,
    metrics: ListenerMetrics,
    _slot: Option<ConnectionSlot>,
}

impl<IO> LimitedIo<IO> {
    /// Wraps `io`, which must send `first_bytes` within `limits.handshake_timeout`.
    /// `slot` is its place under the cap (`None` when the cap was taken before, as TLS
    /// does before its handshake).
    pub fn new(
        io: IO,
        slot: Option<ConnectionSlot>,
        first_bytes: usize,
        limits: &TransportLimits,
        metrics: ListenerMetrics,
    ) -> Self {
        Self {
            io,
            phase: Phase::Opening(first_bytes),
            timer: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            idle_timeout: limits.idle_timeout,
            in_flight: InFlight::new(),
            metrics,
            _slot: slot,
        }
    }

    /// This connection's calls in flight (the HTTP server counts them itself).
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Whether the connection is past its time: polls the timer, re-arming it while the
    /// connection is in use.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        while self.timer.as_mut().poll(cx).is_ready() {
            match self.phase {
                Phase::Opening(_) => {
                    self.metrics.handshake_timeouts.inc();
                    return Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer did not start speaking in time",
                    ));
                }
                Phase::Open => {
                    let now = Instant::now();
                    let next = match self.in_flight.idle_deadline(self.idle_timeout) {
                        Some(deadline) if deadline <= now => {
                            self.metrics.idle_closed.inc();
                            return Some(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "connection idle for too long",
                            ));
                        }
                        Some(deadline) => deadline,
                        None => now + self.idle_timeout,
                    };
                    self.timer.as_mut().reset(next.into());
                }
            }
        }
        None
    }
}

impl<IO: Connected> Connected for LimitedIo<IO> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        let inner = self.io.connect_info();
        ConnectionInfo {
            in_flight: self.in_flight.clone(),
            restore: Arc::new(move |extensions| {
                extensions.insert(inner.clone());
            }),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for LimitedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if let Phase::Opening(wanted) = this.phase
                    && read > 0
                {
                    if read >= wanted {
                        this.phase = Phase::Open;
                        let deadline = Instant::now() + this.idle_timeout;
                        this.timer.as_mut().reset(deadline.into());
                    } else {
                        this.phase = Phase::Opening(wanted - read);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => match this.expired(cx) {
                Some(err) => Poll::Ready(Err(err)),
                None => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for LimitedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A response body that keeps its call counted until it is finished or dropped.
#[derive(Debug)]
pub struct CountedBody<B> {
    body: B,
    _call: Option<CallGuard>,
}

impl<B> CountedBody<B> {
    /// `body`, counted by `call` while it lives.
    pub fn new(body: B, call: Option<CallGuard>) -> Self {
        Self { body, _call: call }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The tower layer on the gRPC router: counts each call against its connection (for
/// the idle timeout) and the server's [`CallLimit`], and takes its request bytes from
/// the server's [`RequestBudget`].
#[derive(Debug, Clone)]
pub struct CallAccounting {
    budget: Arc<RequestBudget>,
    calls: Arc<CallLimit>,
}

impl CallAccounting {
    /// Accounting against `budget` and `calls`.
    pub fn new(budget: Arc<RequestBudget>, calls: Arc<CallLimit>) -> Self {
        Self { budget, calls }
    }
}

impl<S> tower::Layer<S> for CallAccounting {
    type Service = CallAccountingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallAccountingService {
            inner,
            accounting: self.clone(),
        }
    }
}

/// See [`CallAccounting`].
#[derive(Debug, Clone)]
pub struct CallAccountingService<S> {
    inner: S,
    accounting: CallAccounting,
}

impl<S, ResBody> tower::Service<http::Request<tonic::body::Body>> for CallAccountingService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let call = request
            .extensions_mut()
            .remove::<ConnectionInfo>()
            .map(|info| info.restore(request.extensions_mut()));
        let Some(permit) = self.accounting.calls.start() else {
            let refused = tonic::Status::from(ApiError::Exhausted(
                "too many calls in flight (--max-concurrent-calls); try again".into(),
            ))
            .into_http::<ResBody>();
            return Box::pin(std::future::ready(Ok(
                refused.map(|body| CountedBody::new(body, call))
            )));
        };
        let budget = self.accounting.budget.clone();
        let request = request.map(|body| tonic::body::Body::new(BudgetedBody::grpc(body, budget)));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            drop(permit);
            Ok(response.map(|body| CountedBody::new(body, call)))
        })
    }
}
