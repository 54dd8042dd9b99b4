#!/usr/bin/env python3
"""Check over the Unix socket with hand-written HTTP/2 frames (nothing beyond python3):
the same client for any build, to compare the socket's cost across builds.

  uds_check.py SOCKET [ROUNDS [STREAMS]]

Sends ROUNDS batches of STREAMS concurrent Checks on one connection (default 300 x 32),
then ROUNDS*4 single Checks one after another; prints Checks per second of the batches
and the p50/p99 of the single ones. `:authority` is `localhost` (what builds before the
Unix-socket authority rewriting accepted).
"""
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__file__))
from peer_attack import CHECK_FRAME, HEADERS_BLOCK, PREFACE, frame, recv_frame  # noqa: E402


def run(path, rounds, streams):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(PREFACE + frame(4, 0, 0) + frame(8, 0, 0, struct.pack(">I", 1 << 24)))
    sid = 1

    def answer(pending):
        while pending:
            kind, flags, stream, payload = recv_frame(s)
            if kind == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0))
            elif kind == 6 and not flags & 1:
                s.sendall(frame(6, 1, 0, payload))
            elif kind == 0 and payload:
                s.sendall(frame(8, 0, 0, struct.pack(">I", len(payload))))
            elif stream in pending and (flags & 1 or kind == 3):
                if kind == 3:
                    raise SystemExit(f"stream {stream} reset")
                pending.discard(stream)

    def batch(n):
        nonlocal sid
        out = b""
        pending = set()
        for _ in range(n):
            out += frame(1, 4, sid, HEADERS_BLOCK) + frame(0, 1, sid, CHECK_FRAME)
            pending.add(sid)
            sid += 2
        s.sendall(out)
        answer(pending)

    batch(streams)  # warm up
    start = time.perf_counter()
    for _ in range(rounds):
        batch(streams)
    elapsed = time.perf_counter() - start
    singles = []
    for _ in range(rounds * 4):
        t = time.perf_counter()
        batch(1)
        singles.append(time.perf_counter() - t)
    singles.sort()
    p99 = singles[int(len(singles) * 0.99)]
    print(f"{rounds * streams / elapsed:.0f} Checks/s ({streams} concurrent); single: "
          f"p50 {statistics.median(singles) * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us")


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300,
        int(sys.argv[3]) if len(sys.argv) > 3 else 32)
