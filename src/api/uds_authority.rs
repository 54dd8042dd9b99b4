//! The Unix socket's `:authority`, made acceptable to the HTTP/2 layer.
//!
//! gRPC clients on a Unix socket send what they were given as the target in
//! `:authority`: grpcio (C-core) sends the socket path (`/run/stepgate.sock`), others
//! `unix:/run/stepgate.sock` or a percent-encoded form. The `h2` crate parses
//! `:authority` as a URI authority and answers such a request with
//! `RST_STREAM(PROTOCOL_ERROR)` before any service sees it. A Unix socket carries no
//! virtual hosts, so its authority is used for nothing: [`UdsAuthority`] sits between
//! each accepted Unix-socket connection and the server and rewrites the client's
//! header blocks so that `:authority` is `localhost`.
//!
//! It follows the client→server frame stream (preface, 9-byte frame headers), passes
//! every frame other than HEADERS and CONTINUATION through untouched (a DATA payload that
//! is not already buffered is read straight into the server's buffer), reassembles each
//! header block (HEADERS + CONTINUATION, without its padding and priority), decodes it
//! with one HPACK decoder per connection (which mirrors the client's dynamic table), and
//! re-encodes it with literals only, so the server's own decoder never needs a dynamic
//! table entry. Header blocks and frames are bounded; a stream it cannot follow
//! (malformed framing or HPACK) closes the connection, counted as `malformed`.
//! The server→client direction is not touched.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::telemetry::ListenerMetrics;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
const FRAME_HEADER: usize = 9;
/// Frame types and flags the rewriting needs (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame the server accepts (its SETTINGS_MAX_FRAME_SIZE is the default).
pub const MAX_FRAME_SIZE: usize = 16_384;
/// The largest header block kept, encoded (all its fragments) and decoded (RFC 7541
/// sizes: name + value + 32 per field). The server refuses lists past
/// [`super::limits::MAX_HEADER_LIST_BYTES`] itself, per stream; a block this large
/// closes the connection.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The dynamic table size the server allows the client (the HTTP/2 default, which the
/// server does not change).
const HEADER_TABLE_SIZE: usize = 4096;
/// What `:authority` becomes.
const AUTHORITY: &[u8] = b"localhost";

/// Why the client's frame stream could not be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The connection did not start with the HTTP/2 preface.
    #[error("not an HTTP/2 connection preface")]
    Preface,
    /// A frame longer than the server allows.
    #[error("frame of {0} bytes exceeds the maximum frame size")]
    FrameSize(usize),
    /// A header block past [`MAX_HEADER_BLOCK`].
    #[error("header block exceeds {MAX_HEADER_BLOCK} bytes")]
    BlockSize,
    /// HEADERS framing broken: padding longer than the frame, a CONTINUATION out of
    /// place, another frame inside a header block.
    #[error("malformed header block framing: {0}")]
    Framing(&'static str),
    /// The HPACK block did not decode.
    #[error("HPACK: {0}")]
    Hpack(String),
}

/// Where the parser is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside the preface; this many bytes of it seen.
    Preface(usize),
    /// At a frame boundary.
    FrameHeader,
    /// Passing through this many more payload bytes of a frame.
    Passthrough(usize),
}

/// A header block being reassembled.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    fragments: Vec<u8>,
}

/// The frame-stream rewriter, without IO: bytes in ([`Rewriter::input_space`] and
/// [`Rewriter::filled`]), bytes out ([`Rewriter::output`] and [`Rewriter::consumed`]).
pub struct Rewriter {
    state: State,
    /// Received bytes not yet processed: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Processed bytes not yet handed on: `output[out_pos..]`.
    output: Vec<u8>,
    out_pos: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection.
    pub fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            state: State::Preface(0),
            input: vec![0; FRAME_HEADER + MAX_FRAME_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            output: Vec::new(),
            out_pos: 0,
            block: None,
            decoder,
        }
    }

    /// Room to receive into (never empty while [`Rewriter::process`] wants input).
    pub fn input_space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.input[self.end..]
    }

    /// `n` bytes were received into [`Rewriter::input_space`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Rewritten bytes ready to hand on.
    pub fn output(&self) -> &[u8] {
        &self.output[self.out_pos..]
    }

    /// `n` bytes of [`Rewriter::output`] were handed on.
    pub fn consumed(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos >= self.output.len() {
            self.output.clear();
            self.out_pos = 0;
        }
    }

    /// Payload bytes that may be read straight into the server's buffer: only when
    /// nothing is buffered and the parser is inside a pass-through frame.
    pub fn direct_read_limit(&self) -> Option<usize> {
        match self.state {
            State::Passthrough(n)
                if n > 0 && self.start == self.end && self.output().is_empty() =>
            {
                Some(n)
            }
            _ => None,
        }
    }

    /// `n` payload bytes were read straight through.
    pub fn read_directly(&mut self, n: usize) {
        if let State::Passthrough(remaining) = self.state {
            let left = remaining - n.min(remaining);
            self.state = if left == 0 {
                State::FrameHeader
            } else {
                State::Passthrough(left)
            };
        }
    }

    /// Processes the buffered input into output, as far as it goes.
    pub fn process(&mut self) -> Result<(), Malformed> {
        loop {
            let available = self.end - self.start;
            match self.state {
                State::Preface(seen) => {
                    let n = available.min(PREFACE.len() - seen);
                    if n == 0 {
                        return Ok(());
                    }
                    if self.input[self.start..self.start + n] != PREFACE[seen..seen + n] {
                        return Err(Malformed::Preface);
                    }
                    self.pass(n);
                    self.state = if seen + n == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Passthrough(remaining) => {
                    let n = available.min(remaining);
                    if n == 0 {
                        return Ok(());
                    }
                    self.pass(n);
                    self.read_directly(n);
                }
                State::FrameHeader => {
                    if available < FRAME_HEADER {
                        return Ok(());
                    }
                    let header = &self.input[self.start..self.start + FRAME_HEADER];
                    let length = usize::from(header[0]) << 16
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]);
                    let kind = header[3];
                    let flags = header[4];
                    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]])
                        & !(1 << 31);
                    if length > MAX_FRAME_SIZE {
                        return Err(Malformed::FrameSize(length));
                    }
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.block.is_some() {
                            return Err(Malformed::Framing("a frame inside a header block"));
                        }
                        self.pass(FRAME_HEADER);
                        self.state = if length == 0 {
                            State::FrameHeader
                        } else {
                            State::Passthrough(length)
                        };
                        continue;
                    }
                    if available < FRAME_HEADER + length {
                        return Ok(());
                    }
                    let payload_start = self.start + FRAME_HEADER;
                    self.start = payload_start + length;
                    self.header_frame(kind, flags, stream, payload_start, length)?;
                }
            }
        }
    }

    /// Moves `n` input bytes to the output unchanged.
    fn pass(&mut self, n: usize) {
        self.output
            .extend_from_slice(&self.input[self.start..self.start + n]);
        self.start += n;
    }

    /// Takes a HEADERS or CONTINUATION frame whose payload is `input[at..at + length]`.
    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        at: usize,
        length: usize,
    ) -> Result<(), Malformed> {
        let payload = &self.input[at..at + length];
        let fragment = if kind == HEADERS {
            if self.block.is_some() {
                return Err(Malformed::Framing("HEADERS inside a header block"));
            }
            let mut fragment = payload;
            let mut padding = 0;
            if flags & PADDED != 0 {
                let (&pad, rest) = fragment
                    .split_first()
                    .ok_or(Malformed::Framing("PADDED without a pad length"))?;
                padding = usize::from(pad);
                fragment = rest;
            }
            if flags & PRIORITY != 0 {
                fragment = fragment
                    .get(5..)
                    .ok_or(Malformed::Framing("PRIORITY without its 5 bytes"))?;
            }
            let fragment = fragment
                .get(
                    ..fragment
                        .len()
                        .checked_sub(padding)
                        .ok_or(Malformed::Framing("padding longer than the frame"))?,
                )
                .ok_or(Malformed::Framing("padding longer than the frame"))?;
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                fragments: Vec::with_capacity(fragment.len()),
            });
            fragment
        } else {
            match &self.block {
                Some(block) if block.stream == stream => payload,
                Some(_) => return Err(Malformed::Framing("CONTINUATION of another stream")),
                None => return Err(Malformed::Framing("CONTINUATION without HEADERS")),
            }
        };
        let block = self
            .block
            .as_mut()
            .ok_or(Malformed::Framing("no header block"))?;
        if block.fragments.len() + fragment.len() > MAX_HEADER_BLOCK {
            return Err(Malformed::BlockSize);
        }
        block.fragments.extend_from_slice(fragment);
        if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.emit_block(&block)?;
        }
        Ok(())
    }

    /// Decodes `block` and writes it out re-encoded, `:authority` replaced.
    fn emit_block(&mut self, block: &Block) -> Result<(), Malformed> {
        let mut encoded = Vec::with_capacity(block.fragments.len() + 16);
        let mut decoded_size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragments, |name, value| {
                decoded_size += name.len() + value.len() + 32;
                if decoded_size > MAX_HEADER_BLOCK {
                    return;
                }
                let value: &[u8] = if &*name == b":authority" {
                    AUTHORITY
                } else {
                    &value
                };
                encode_literal(&mut encoded, &name, value);
            })
            .map_err(|e| Malformed::Hpack(e.to_string()))?;
        if decoded_size > MAX_HEADER_BLOCK {
            return Err(Malformed::BlockSize);
        }
        let mut chunks = encoded.chunks(MAX_FRAME_SIZE).peekable();
        let mut kind = HEADERS;
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        // An empty block (possible for trailers) is still one HEADERS frame.
        let empty: &[u8] = &[];
        let first = chunks.next().unwrap_or(empty);
        let mut chunk = Some(first);
        while let Some(fragment) = chunk {
            let next = chunks.next();
            if next.is_none() {
                flags |= END_HEADERS;
            }
            write_frame_header(&mut self.output, fragment.len(), kind, flags, block.stream);
            self.output.extend_from_slice(fragment);
            kind = CONTINUATION;
            flags = 0;
            chunk = next;
        }
        Ok(())
    }
}

fn write_frame_header(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, stream: u32) {
    let length = length.to_be_bytes();
    out.extend_from_slice(&length[length.len() - 3..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A literal header field without indexing, new name, raw strings (RFC 7541 §6.2.2).
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    encode_integer(out, 0, 7, name.len());
    out.extend_from_slice(name);
    encode_integer(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// An HPACK integer with an `prefix`-bit prefix under `flags` (RFC 7541 §5.1).
fn encode_integer(out: &mut Vec<u8>, flags: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A Unix-socket connection whose client header blocks carry `:authority: localhost`.
pub struct UdsAuthority<IO> {
    io: IO,
    rewriter: Rewriter,
    metrics: ListenerMetrics,
}

impl<IO> UdsAuthority<IO> {
    /// Wraps an accepted connection; a malformed stream is counted in `metrics`.
    pub fn new(io: IO, metrics: ListenerMetrics) -> Self {
        Self {
            io,
            rewriter: Rewriter::new(),
            metrics,
        }
    }

    fn malformed(&self, err: &Malformed) -> io::Error {
        self.metrics.malformed.inc();
        tracing::debug!(error = %err, "closing a Unix-socket connection: malformed HTTP/2");
        io::Error::new(io::ErrorKind::InvalidData, err.to_string())
    }
}

impl<IO: Connected> Connected for UdsAuthority<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for UdsAuthority<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let ready = this.rewriter.output();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.rewriter.consumed(n);
                return Poll::Ready(Ok(()));
            }
            if let Some(limit) = this.rewriter.direct_read_limit() {
                // A DATA (or other pass-through) payload: straight into the caller's
                // buffer, no copy of ours.
                let n = limit.min(buf.remaining());
                // Zeroing what hyper hands over uninitialised costs a memset, not a copy
                // through our buffer (and keeps this crate free of `unsafe`).
                let mut direct = ReadBuf::new(buf.initialize_unfilled_to(n));
                std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
                let read = direct.filled().len();
                buf.advance(read);
                this.rewriter.read_directly(read);
                return Poll::Ready(Ok(()));
            }
            let space = this.rewriter.input_space();
            let mut read_buf = ReadBuf::new(space);
            std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut read_buf))?;
            let n = read_buf.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(())); // end of stream
            }
            this.rewriter.filled(n);
            if let Err(err) = this.rewriter.process() {
                return Poll::Ready(Err(this.malformed(&err)));
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for UdsAuthority<IO> {
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

#[cfg(test)]
#[path = "uds_authority_tests.rs"]
mod tests;
