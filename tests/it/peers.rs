//! Hostile and unusual peers against the real listeners, with hand-written HTTP/2
//! frames: what the server announces, when it closes connections (no preface, idle,
//! past the cap), what a stalled call gets, and which `:authority` values the Unix
//! socket accepts (those grpcio, grpc-java and grpcurl send).

use std::time::Duration;

use prost::Message;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

use super::support::{ECHO_POLICY, Server, request};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// Longest a test waits for an event that should come well before.
const DEADLINE: Duration = Duration::from_secs(10);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().to_be_bytes();
    let mut out = len[len.len() - 3..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A literal header field without indexing, new name, raw strings (RFC 7541 §6.2.2).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0];
    for s in [name, value] {
        assert!(s.len() < 127);
        out.push(s.len() as u8);
        out.extend(s.as_bytes());
    }
    out
}

/// The header block of a Check, `:authority` as given (`None`: left out).
fn check_headers(authority: Option<&str>) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.extend(literal(":path", "/stepgate.v1.DecisionService/Check"));
    if let Some(authority) = authority {
        block.extend(literal(":authority", authority));
    }
    block.extend(literal("content-type", "application/grpc"));
    block.extend(literal("te", "trailers"));
    block
}

/// A Check message in its gRPC frame.
fn check_message() -> Vec<u8> {
    let message = request("read").encode_to_vec();
    let mut out = vec![0];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A hand-driven HTTP/2 client connection.
struct Raw<S> {
    io: S,
    decoder: loona_hpack::Decoder<'static>,
    /// The last stream id [`other_stream`] handed out.
    next_stream: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// Sends the preface and empty SETTINGS.
    async fn open(mut io: S) -> Self {
        io.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
            .await
            .unwrap();
        Self {
            io,
            decoder: loona_hpack::Decoder::new(),
            next_stream: 99,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next frame; `None` when the server closed the connection (or reset it).
    async fn next(&mut self) -> Option<Frame> {
        let mut header = [0u8; 9];
        self.io.read_exact(&mut header).await.ok()?;
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0; len];
        self.io.read_exact(&mut payload).await.ok()?;
        let frame = Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]),
            payload,
        };
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            let ack = self::frame(SETTINGS, ACK, 0, &[]);
            let _ = self.io.write_all(&ack).await;
        }
        Some(frame)
    }

    /// Frames until `stream` ends (END_STREAM or RST_STREAM) or the connection closes;
    /// returns the decoded header fields seen on it and whether it was reset.
    async fn finish(&mut self, stream: u32) -> (Vec<(String, String)>, bool) {
        let mut headers = Vec::new();
        loop {
            let Some(frame) = self.next().await else {
                return (headers, true);
            };
            if frame.kind == HEADERS {
                assert_ne!(frame.flags & END_HEADERS, 0, "no CONTINUATION expected");
                let block = self.decoder.decode(&frame.payload).unwrap();
                if frame.stream == stream {
                    headers.extend(block.into_iter().map(|(n, v)| {
                        (
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    }));
                }
            }
            if frame.stream == stream && frame.kind == RST_STREAM {
                return (headers, true);
            }
            if frame.stream == stream && frame.flags & END_STREAM != 0 && frame.kind != SETTINGS {
                return (headers, false);
            }
            if frame.kind == GOAWAY {
                return (headers, true);
            }
        }
    }
}

fn grpc_status(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(n, _)| n == "grpc-status")
        .map(|(_, v)| v.as_str())
}

/// Waits until the server closes `io` (EOF or reset), reading and dropping what it
/// sends meanwhile; false if it is still open after [`DEADLINE`].
async fn closed_by_server(io: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn the_server_announces_its_stream_limit() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| {
        c.transport.max_concurrent_streams = 7;
    })
    .await;
    let mut raw = Raw::open(TcpStream::connect(server.addr).await.unwrap()).await;
    let settings = tokio::time::timeout(DEADLINE, raw.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settings.kind, SETTINGS);
    let pairs: Vec<(u16, u32)> = settings
        .payload
        .chunks(6)
        .map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS = 0x3.
    assert!(pairs.contains(&(0x3, 7)), "{pairs:?}");
    server.stop().await;
}

#[tokio::test]
async fn connections_that_never_speak_are_closed_on_every_listener() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| {
        c.transport.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut uds = UnixStream::connect(&server.uds).await.unwrap();
    let mut http = TcpStream::connect(server.http.unwrap()).await.unwrap();
    // Half a preface is not a preface.
    tcp.write_all(&PREFACE[..10]).await.unwrap();
    assert!(closed_by_server(&mut tcp).await, "gRPC TCP");
    assert!(closed_by_server(&mut uds).await, "gRPC Unix socket");
    assert!(closed_by_server(&mut http).await, "HTTP");
    let metrics = server.http_get("/metrics").await.body;
    assert!(
        metrics.contains(
            "stepgate_connections_closed_total{listener=\"grpc_tcp\",reason=\"handshake_timeout\"} 1"
        ),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| {
        c.transport.idle_timeout = Duration::from_millis(400);
    })
    .await;
    // Idle after its preface and one call.
    let mut raw = Raw::open(TcpStream::connect(server.addr).await.unwrap()).await;
    raw.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &check_headers(Some("localhost")),
    ))
    .await;
    raw.send(&frame(DATA, END_STREAM, 1, &check_message()))
        .await;
    let (headers, reset) = raw.finish(1).await;
    assert!(!reset);
    assert_eq!(grpc_status(&headers), Some("0"));
    // A stream held open (a call whose request never ends) keeps it from being idle
    // until the request timeout ends the call.
    let mut held = Raw::open(TcpStream::connect(server.addr).await.unwrap()).await;
    held.send(&frame(HEADERS, END_HEADERS, 1, &check_headers(None)))
        .await;
    assert!(
        closed_by_server(&mut raw.io).await,
        "idle connection stays open"
    );
    // By now the held connection has been without traffic for longer than the idle
    // timeout: it must still be open (reads time out rather than end).
    loop {
        match tokio::time::timeout(Duration::from_millis(200), held.next()).await {
            Err(_) => break,
            Ok(Some(_)) => {}
            Ok(None) => panic!("a connection with a call in flight was closed as idle"),
        }
    }
    // HTTP keep-alive connections too.
    let mut http = TcpStream::connect(server.http.unwrap()).await.unwrap();
    http.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut http).await,
        "idle HTTP connection stays open"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_call_whose_request_never_ends_gets_a_deadline() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| {
        c.transport.request_timeout = Duration::from_millis(300);
    })
    .await;
    for io in [
        Box::new(TcpStream::connect(server.addr).await.unwrap()) as Box<dyn Io>,
        Box::new(UnixStream::connect(&server.uds).await.unwrap()),
    ] {
        let mut raw = Raw::open(io).await;
        // Headers without END_STREAM, and a message announced as 100 bytes, sent 10.
        raw.send(&frame(
            HEADERS,
            END_HEADERS,
            1,
            &check_headers(Some("localhost")),
        ))
        .await;
        raw.send(&frame(DATA, 0, 1, &[0, 0, 0, 0, 100, 1, 2, 3, 4, 5]))
            .await;
        // And a stream that sends only its headers.
        raw.send(&frame(
            HEADERS,
            END_HEADERS,
            3,
            &check_headers(Some("localhost")),
        ))
        .await;
        for stream in [1, 3] {
            let (headers, reset) = tokio::time::timeout(DEADLINE, raw.finish(stream))
                .await
                .expect("the stalled call got no answer");
            assert!(
                reset || grpc_status(&headers).is_some_and(|s| s != "0"),
                "{headers:?}"
            );
        }
    }
    server.stop().await;
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[tokio::test]
async fn connections_past_the_cap_are_refused_while_open_ones_still_answer() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| {
        c.transport.max_connections = 3;
    })
    .await;
    let mut client = server.client().await;
    client.check(request("read")).await.unwrap();
    let mut holding = Vec::new();
    for _ in 0..2 {
        holding.push(Raw::open(TcpStream::connect(server.addr).await.unwrap()).await);
    }
    for _ in 0..3 {
        let mut refused = TcpStream::connect(server.addr).await.unwrap();
        assert!(
            closed_by_server(&mut refused).await,
            "past the cap and open"
        );
    }
    let reply = tokio::time::timeout(DEADLINE, client.check(request("read")))
        .await
        .expect("an open connection hangs")
        .unwrap();
    assert!(reply.into_inner().decision.is_some_and(|d| d.allow));
    let metrics = server.http_get("/metrics").await.body;
    assert!(
        metrics.contains("stepgate_connections_refused_total{listener=\"grpc_tcp\"} 3"),
        "{metrics}"
    );
    // A slot given back is taken again.
    drop(holding.pop());
    let reopened = super::support::eventually(DEADLINE, async || {
        let Ok(stream) = TcpStream::connect(server.addr).await else {
            return false;
        };
        let mut raw = Raw::open(stream).await;
        raw.send(&frame(HEADERS, END_HEADERS, 1, &check_headers(None)))
            .await;
        raw.send(&frame(DATA, END_STREAM, 1, &check_message()))
            .await;
        let (headers, _) = raw.finish(1).await;
        grpc_status(&headers) == Some("0")
    })
    .await;
    assert!(reopened);
    server.stop().await;
}

#[tokio::test]
async fn the_unix_socket_serves_any_authority_a_client_sends() {
    let server = Server::start(&[("p.rego", ECHO_POLICY)]).await;
    let path = server.uds.display().to_string();
    let unix = format!("unix:{path}");
    let authorities = [
        Some(path.as_str()),
        Some(unix.as_str()),
        Some("localhost"),
        None,
    ];
    let mut raw = Raw::open(UnixStream::connect(&server.uds).await.unwrap()).await;
    let mut stream = 1;
    for authority in authorities {
        raw.send(&frame(
            HEADERS,
            END_HEADERS,
            stream,
            &check_headers(authority),
        ))
        .await;
        raw.send(&frame(DATA, END_STREAM, stream, &check_message()))
            .await;
        let (headers, reset) = tokio::time::timeout(DEADLINE, raw.finish(stream))
            .await
            .unwrap();
        assert!(!reset, "{authority:?}: reset");
        assert_eq!(
            grpc_status(&headers),
            Some("0"),
            "{authority:?}: {headers:?}"
        );
        stream += 2;
    }
    // As grpcio sends it: the path indexed into the dynamic table, then referenced.
    let mut block = vec![0x83, 0x86];
    block.extend(literal(":path", "/stepgate.v1.DecisionService/Check"));
    block.push(0x41); // literal with incremental indexing, name :authority (static 1)
    block.push(path.len() as u8);
    block.extend(path.as_bytes());
    block.extend(literal("content-type", "application/grpc"));
    let mut raw = Raw::open(UnixStream::connect(&server.uds).await.unwrap()).await;
    raw.send(&frame(HEADERS, END_HEADERS, 1, &block)).await;
    raw.send(&frame(DATA, END_STREAM, 1, &check_message()))
        .await;
    let (headers, _) = raw.finish(1).await;
    assert_eq!(grpc_status(&headers), Some("0"), "{headers:?}");
    let mut again = vec![0x83, 0x86];
    again.extend(literal(":path", "/stepgate.v1.DecisionService/Check"));
    again.push(0xBE); // dynamic entry 62: the :authority above
    again.extend(literal("content-type", "application/grpc"));
    raw.send(&frame(HEADERS, END_HEADERS, 3, &again)).await;
    raw.send(&frame(DATA, END_STREAM, 3, &check_message()))
        .await;
    let (headers, _) = raw.finish(3).await;
    assert_eq!(grpc_status(&headers), Some("0"), "{headers:?}");
    // A malformed stream closes the connection, counted.
    raw.send(&frame(0x9, END_HEADERS, 5, &[0x83])).await;
    assert!(closed_by_server(&mut raw.io).await);
    let metrics = server.http_get("/metrics").await.body;
    assert!(
        metrics.contains(
            "stepgate_connections_closed_total{listener=\"grpc_uds\",reason=\"malformed\"} 1"
        ),
        "{metrics}"
    );
    server.stop().await;
}

/// DATA frames (at most 16 KiB each) carrying `bytes` on `stream`, the last one ending it
/// when `end` is set.
fn data_frames(stream: u32, bytes: &[u8], end: bool) -> Vec<u8> {
    let chunks: Vec<&[u8]> = bytes.chunks(16_384).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .flat_map(|(i, chunk)| {
            let flags = if end && i == last { END_STREAM } else { 0 };
            frame(DATA, flags, stream, chunk)
        })
        .collect()
}

#[tokio::test]
async fn half_sent_messages_share_one_budget() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| {
        c.max_message_bytes = 60_000;
        c.transport.max_buffered_request_bytes = 64 * 1024;
    })
    .await;
    // 50,000 bytes of a message announced as 60,000: held, never finished.
    let mut holder = Raw::open(TcpStream::connect(server.addr).await.unwrap()).await;
    holder
        .send(&frame(HEADERS, END_HEADERS, 1, &check_headers(None)))
        .await;
    let mut partial = vec![0, 0, 0, 0xEA, 0x60];
    partial.resize(50_000, 7);
    holder.send(&data_frames(1, &partial, false)).await;
    // Wait until the server holds them: a small Check still fits and is answered.
    let mut other = Raw::open(UnixStream::connect(&server.uds).await.unwrap()).await;
    other
        .send(&frame(HEADERS, END_HEADERS, 1, &check_headers(None)))
        .await;
    other
        .send(&frame(DATA, END_STREAM, 1, &check_message()))
        .await;
    assert_eq!(grpc_status(&other.finish(1).await.0), Some("0"));
    // 20,000 more bytes from anyone do not fit: RESOURCE_EXHAUSTED (8), counted.
    let refused = super::support::eventually(DEADLINE, async || {
        let mut big = vec![0, 0, 0, 0x4E, 0x20];
        big.resize(20_005, 7);
        other
            .send(&frame(HEADERS, END_HEADERS, 3, &check_headers(None)))
            .await;
        other.send(&data_frames(3, &big, true)).await;
        let status = grpc_status(&other.finish(3).await.0).map(str::to_string);
        other = Raw::open(UnixStream::connect(&server.uds).await.unwrap()).await;
        status.as_deref() == Some("8")
    })
    .await;
    assert!(refused, "a request past the budget was not refused");
    let metrics = server.http_get("/metrics").await.body;
    assert!(
        metrics.contains("stepgate_request_buffer_refusals_total 1"),
        "{metrics}"
    );
    // Once the holder is gone, its bytes are given back.
    drop(holder);
    let served = super::support::eventually(DEADLINE, async || {
        let mut big = vec![0, 0, 0, 0x4E, 0x20];
        big.resize(20_005, 7);
        let mut raw = Raw::open(UnixStream::connect(&server.uds).await.unwrap()).await;
        raw.send(&frame(HEADERS, END_HEADERS, 1, &check_headers(None)))
            .await;
        raw.send(&data_frames(1, &big, true)).await;
        // Not a valid CheckRequest: decoding fails, but not for want of budget.
        grpc_status(&raw.finish(1).await.0).is_some_and(|s| s != "8")
    })
    .await;
    assert!(served, "the budget was not given back");
    server.stop().await;
}

#[tokio::test]
async fn calls_past_the_call_limit_are_refused_at_once() {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| {
        c.transport.max_concurrent_calls = 2;
        c.transport.request_timeout = Duration::from_millis(500);
    })
    .await;
    // Two calls that never finish their requests take both places.
    let mut stalled = Raw::open(TcpStream::connect(server.addr).await.unwrap()).await;
    for stream in [1, 3] {
        stalled
            .send(&frame(HEADERS, END_HEADERS, stream, &check_headers(None)))
            .await;
    }
    let mut other = Raw::open(UnixStream::connect(&server.uds).await.unwrap()).await;
    let refused = super::support::eventually(DEADLINE, async || {
        let stream = other_stream(&mut other);
        other
            .send(&frame(HEADERS, END_HEADERS, stream, &check_headers(None)))
            .await;
        other
            .send(&frame(DATA, END_STREAM, stream, &check_message()))
            .await;
        grpc_status(&other.finish(stream).await.0) == Some("8")
    })
    .await;
    assert!(refused, "a call past the limit was not refused");
    // Once the request timeout has ended them, calls are served again.
    let served = super::support::eventually(DEADLINE, async || {
        let stream = other_stream(&mut other);
        other
            .send(&frame(HEADERS, END_HEADERS, stream, &check_headers(None)))
            .await;
        other
            .send(&frame(DATA, END_STREAM, stream, &check_message()))
            .await;
        grpc_status(&other.finish(stream).await.0) == Some("0")
    })
    .await;
    assert!(served);
    let metrics = server.http_get("/metrics").await.body;
    assert!(
        !metrics.contains("stepgate_call_limit_refusals_total 0"),
        "{metrics}"
    );
    server.stop().await;
}

/// The next client stream id of `raw` (odd, increasing, past the fixed ones tests use).
fn other_stream<S>(raw: &mut Raw<S>) -> u32 {
    raw.next_stream += 2;
    raw.next_stream
}
