//! The rewriter against hand-built frame streams, fed in pieces of every size.

use super::*;

const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame_header(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

/// Literal with incremental indexing, new name (adds an entry to the dynamic table).
fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x40];
    encode_integer(&mut out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    encode_integer(&mut out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
    out
}

fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_literal(&mut out, name.as_bytes(), value.as_bytes());
    out
}

/// A request header block as grpcio sends it: the socket path as `:authority`, indexed.
fn request_block(authority: &str) -> Vec<u8> {
    [
        vec![0x83], // :method POST (static 3)
        vec![0x86], // :scheme http (static 6)
        literal(":path", "/stepgate.v1.DecisionService/Check"),
        indexed_literal(":authority", authority), // dynamic 62
        indexed_literal("content-type", "application/grpc"), // dynamic 62, authority 63
        literal("te", "trailers"),
    ]
    .concat()
}

/// Feeds `input` in `chunk`-byte pieces; returns all output.
fn run_chunked(input: &[u8], chunk: usize) -> Result<Vec<u8>, Malformed> {
    let mut rewriter = Rewriter::new();
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let space = rewriter.input_space();
        let n = space.len().min(chunk).min(rest.len());
        space[..n].copy_from_slice(&rest[..n]);
        rewriter.filled(n);
        rest = &rest[n..];
        rewriter.process()?;
        let ready = rewriter.output().len();
        out.extend_from_slice(rewriter.output());
        rewriter.consumed(ready);
    }
    Ok(out)
}

/// Runs `input` whole and in 1-, 7- and 1000-byte pieces; all must agree.
fn run(input: &[u8]) -> Result<Vec<u8>, Malformed> {
    let whole = run_chunked(input, usize::MAX);
    for chunk in [1, 7, 1000] {
        assert_eq!(run_chunked(input, chunk), whole, "chunk {chunk}");
    }
    whole
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Splits the server's view into frames (after the preface).
fn frames(bytes: &[u8]) -> Vec<Frame> {
    assert_eq!(&bytes[..PREFACE.len()], PREFACE);
    let mut rest = &bytes[PREFACE.len()..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        assert!(length <= MAX_FRAME_SIZE);
        out.push(Frame {
            kind: rest[3],
            flags: rest[4],
            stream: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
            payload: rest[FRAME_HEADER..FRAME_HEADER + length].to_vec(),
        });
        rest = &rest[FRAME_HEADER + length..];
    }
    out
}

/// The header lists the server decodes (with a decoder whose table must stay empty).
fn header_lists(frames: &[Frame]) -> Vec<Vec<(String, String)>> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(0);
    decoder.set_max_table_size(0);
    let mut lists = Vec::new();
    let mut block = Vec::new();
    for frame in frames {
        if frame.kind == HEADERS || frame.kind == CONTINUATION {
            assert_eq!(frame.flags & (PADDED | PRIORITY), 0);
            block.extend_from_slice(&frame.payload);
            if frame.flags & END_HEADERS != 0 {
                let list = decoder.decode(&block).expect("re-encoded block decodes");
                lists.push(
                    list.into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect(),
                );
                block.clear();
            }
        }
    }
    lists
}

fn authority(list: &[(String, String)]) -> Option<&str> {
    list.iter()
        .find(|(n, _)| n == ":authority")
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_authority_becomes_localhost_also_through_the_dynamic_table() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(SETTINGS, 0, 0, &[]));
    input.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    input.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("/tmp/x.sock"),
    ));
    input.extend(frame(DATA, END_STREAM, 1, b"\0\0\0\0\x02\x08\x01"));
    // The second request names both dynamic entries (62 content-type, 63 authority).
    let second = [vec![0x83, 0x86], literal(":path", "/p"), vec![0xBF, 0xBE]].concat();
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
    let out = run(&input).unwrap();
    let frames = frames(&out);
    assert_eq!((frames[0].kind, frames[0].payload.len()), (SETTINGS, 0));
    assert_eq!(frames[1].kind, SETTINGS);
    assert_eq!(frames[1].payload, [0, 3, 0, 0, 0, 100], "passed through");
    assert_eq!(frames[3].kind, DATA);
    assert_eq!(frames[3].payload, b"\0\0\0\0\x02\x08\x01", "passed through");
    assert_eq!(frames[4].flags & END_STREAM, END_STREAM, "END_STREAM kept");
    let lists = header_lists(&frames);
    assert_eq!(lists.len(), 2);
    assert_eq!(authority(&lists[0]), Some("localhost"));
    assert_eq!(authority(&lists[1]), Some("localhost"));
    assert_eq!(lists[0][0], (":method".into(), "POST".into()));
    assert_eq!(lists[0][2].1, "/stepgate.v1.DecisionService/Check");
    assert!(lists[1].contains(&("content-type".into(), "application/grpc".into())));
    assert_eq!(lists[1][0].0, ":method", "pseudo-headers stay first");
}

#[test]
fn every_authority_form_and_none_are_served() {
    for given in [
        "/tmp/x.sock",
        "unix:/tmp/x.sock",
        "unix%3A%2Ftmp%2Fx.sock",
        "localhost",
    ] {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &request_block(given)));
        let lists = header_lists(&frames(&run(&input).unwrap()));
        assert_eq!(authority(&lists[0]), Some("localhost"), "{given}");
    }
    let mut input = PREFACE.to_vec();
    let block = [vec![0x83, 0x86], literal(":path", "/p")].concat();
    input.extend(frame(HEADERS, END_HEADERS, 1, &block));
    let lists = header_lists(&frames(&run(&input).unwrap()));
    assert_eq!(authority(&lists[0]), None, "none is not added");
}

#[test]
fn continuation_padding_and_priority_are_reassembled() {
    let block = request_block("/run/stepgate.sock");
    let (a, b) = block.split_at(10);
    let (b, c) = b.split_at(7);
    let mut first = vec![3]; // pad length
    first.extend([0x80, 0, 0, 0, 16]); // exclusive dependency on stream 0, weight 16
    first.extend(a);
    first.extend([0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &first));
    input.extend(frame(CONTINUATION, 0, 5, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 5, c));
    let frames = frames(&run(&input).unwrap());
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].flags, END_STREAM | END_HEADERS);
    assert_eq!(frames[0].stream, 5);
    assert_eq!(authority(&header_lists(&frames)[0]), Some("localhost"));
}

#[test]
fn a_large_block_is_split_into_frames_the_server_accepts() {
    // 20 KiB of headers arrive in two frames and leave in two (none past 16 KiB).
    let big = "v".repeat(10_000);
    let block = [
        request_block("/tmp/x.sock"),
        literal("x-a", &big),
        literal("x-b", &big),
    ]
    .concat();
    let (a, b) = block.split_at(MAX_FRAME_SIZE);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_STREAM, 1, a));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
    let frames = frames(&run(&input).unwrap());
    assert_eq!(frames.len(), 2);
    assert_eq!((frames[0].kind, frames[0].flags), (HEADERS, END_STREAM));
    assert_eq!(
        (frames[1].kind, frames[1].flags),
        (CONTINUATION, END_HEADERS)
    );
    let lists = header_lists(&frames);
    assert_eq!(authority(&lists[0]), Some("localhost"));
    assert!(lists[0].contains(&("x-b".into(), big)));
}

#[test]
fn huge_header_blocks_close_the_connection() {
    // Encoded: endless CONTINUATIONs.
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, 0, 1, &vec![0x83; MAX_FRAME_SIZE]));
    for _ in 0..4 {
        input.extend(frame(CONTINUATION, 0, 1, &vec![0x83; MAX_FRAME_SIZE]));
    }
    assert_eq!(run_chunked(&input, usize::MAX), Err(Malformed::BlockSize));
    // Decoded: one 4 KB table entry named a thousand times (an HPACK bomb).
    let entry = indexed_literal("x-bomb", &"b".repeat(4000));
    let block = [entry, vec![0xBE; 1000]].concat();
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS, 1, &block));
    assert_eq!(run_chunked(&input, usize::MAX), Err(Malformed::BlockSize));
}

#[test]
fn malformed_streams_are_refused() {
    let refused = |input: Vec<u8>| run_chunked(&input, usize::MAX).unwrap_err();
    assert_eq!(
        refused(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        Malformed::Preface
    );
    let with = |frames: &[Vec<u8>]| [PREFACE.to_vec(), frames.concat()].concat();
    assert_eq!(
        refused(with(&[frame(DATA, 0, 1, &vec![0; MAX_FRAME_SIZE + 1])])),
        Malformed::FrameSize(MAX_FRAME_SIZE + 1)
    );
    assert!(matches!(
        refused(with(&[
            frame(HEADERS, 0, 1, &[0x83]),
            frame(DATA, 0, 1, b"x")
        ])),
        Malformed::Framing(_)
    ));
    assert!(matches!(
        refused(with(&[
            frame(HEADERS, 0, 1, &[0x83]),
            frame(CONTINUATION, END_HEADERS, 3, &[0x86])
        ])),
        Malformed::Framing(_)
    ));
    assert!(matches!(
        refused(with(&[frame(CONTINUATION, END_HEADERS, 1, &[0x83])])),
        Malformed::Framing(_)
    ));
    assert!(matches!(
        refused(with(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x83])])),
        Malformed::Framing(_)
    ));
    assert!(matches!(
        refused(with(&[frame(HEADERS, END_HEADERS, 1, &[0xFF, 0xFF, 0x7F])])),
        Malformed::Hpack(_)
    ));
}

#[test]
fn integers_encode_as_rfc_7541_shows() {
    // C.1.2: 1337 with a 5-bit prefix.
    let mut out = Vec::new();
    encode_integer(&mut out, 0, 5, 1337);
    assert_eq!(out, [31, 154, 10]);
    out.clear();
    encode_integer(&mut out, 0, 7, 126);
    assert_eq!(out, [126]);
    out.clear();
    encode_integer(&mut out, 0, 7, 127);
    assert_eq!(out, [127, 0]);
}
