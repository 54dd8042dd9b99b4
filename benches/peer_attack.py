#!/usr/bin/env python3
"""Hostile peers against a running stepgate on loopback, with hand-written HTTP/2 frames
(nothing beyond python3). Bounded: every loop has a fixed count and every wait a limit.

  peer_attack.py PID HOST:PORT stalled N        N streams that send HEADERS and stop
  peer_attack.py PID HOST:PORT halfsent N BYTES N messages announced as BYTES long,
                                                 90 % sent, never finished
  peer_attack.py PID HOST:PORT idle N           N TCP connections that never speak

Prints, while the attack holds: the server's RSS and open descriptors, how many attack
connections the server has closed, and the latency of a Check on a connection opened
before the attack and on a fresh one; then the RSS 5 s after the attack connections are
closed.
"""
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from grpc_frame import field  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STREAMS_PER_CONNECTION = 50
HOLD = 3.0  # seconds the attack settles before measuring


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


HEADERS_BLOCK = b"\x83\x86" + literal(b":path", b"/stepgate.v1.DecisionService/Check") \
    + literal(b":authority", b"localhost") + literal(b"content-type", b"application/grpc") \
    + literal(b"te", b"trailers")
# CheckRequest{step: "use", subject: {id: "svc-a"}, action: "read"} is enough for a decision.
CHECK = field(1, "use") + field(2, field(1, "svc-a")) + field(3, "read")
CHECK_FRAME = b"\x00" + struct.pack(">I", len(CHECK)) + CHECK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(addr):
    s = socket.create_connection(addr, timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_frame(s):
    head = b""
    while len(head) < 9:
        chunk = s.recv(9 - len(head))
        if not chunk:
            return None
        head += chunk
    length = int.from_bytes(head[:3], "big")
    payload = b""
    while len(payload) < length:
        chunk = s.recv(length - len(payload))
        if not chunk:
            return None
        payload += chunk
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload


class Client:
    """One connection that can make Checks (answers SETTINGS and PINGs)."""

    def __init__(self, addr):
        self.s = connect(addr)
        self.s.sendall(PREFACE + frame(4, 0, 0))
        self.stream = 1

    def check(self, limit=10.0):
        """Seconds to a complete answer, or None (refused, closed, timed out)."""
        sid = self.stream
        self.stream += 2
        start = time.monotonic()
        try:
            self.s.settimeout(limit)
            self.s.sendall(frame(1, 4, sid, HEADERS_BLOCK) + frame(0, 1, sid, CHECK_FRAME))
            while time.monotonic() - start < limit:
                f = recv_frame(self.s)
                if f is None:
                    return None
                kind, flags, stream, payload = f
                if kind == 4 and not flags & 1:
                    self.s.sendall(frame(4, 1, 0))
                elif kind == 6 and not flags & 1:
                    self.s.sendall(frame(6, 1, 0, payload))
                elif stream == sid and (kind == 3 or flags & 1):
                    return time.monotonic() - start if kind != 3 else None
        except OSError:
            return None
        return None


def hold_stalled(addr, n):
    conns = []
    for c in range((n + STREAMS_PER_CONNECTION - 1) // STREAMS_PER_CONNECTION):
        try:
            s = connect(addr)
            out = PREFACE + frame(4, 0, 0)
            for i in range(min(STREAMS_PER_CONNECTION, n - c * STREAMS_PER_CONNECTION)):
                out += frame(1, 4, 1 + 2 * i, HEADERS_BLOCK)
            s.sendall(out)
            conns.append(s)
        except OSError:
            pass
    return conns


def halfsend(addr, streams, size, conns, lock):
    """One connection: `streams` messages of `size` bytes, 90 % sent within the
    flow-control windows the server grants."""
    try:
        s = connect(addr)
    except OSError:
        return
    with lock:
        conns.append(s)
    s.sendall(PREFACE + frame(4, 0, 0))
    conn_window, stream_window = 65535, {}
    initial = 65535
    to_send = {}
    for i in range(streams):
        sid = 1 + 2 * i
        s.sendall(frame(1, 4, sid, HEADERS_BLOCK))
        to_send[sid] = b"\x00" + struct.pack(">I", size) + b"\x00" * (size * 9 // 10)
        stream_window[sid] = initial
    s.settimeout(2.0)
    deadline = time.monotonic() + 30
    while to_send and time.monotonic() < deadline:
        progressed = False
        for sid in list(to_send):
            room = min(conn_window, stream_window[sid], 16384, len(to_send[sid]))
            if room > 0:
                try:
                    s.sendall(frame(0, 0, sid, to_send[sid][:room]))
                except OSError:
                    return
                to_send[sid] = to_send[sid][room:]
                conn_window -= room
                stream_window[sid] -= room
                progressed = True
                if not to_send[sid]:
                    del to_send[sid]
        if progressed:
            continue
        try:
            f = recv_frame(s)
        except OSError:
            return
        if f is None:
            return
        kind, flags, stream, payload = f
        if kind == 4 and not flags & 1:
            for k in range(0, len(payload), 6):
                ident, value = struct.unpack(">HI", payload[k:k + 6])
                if ident == 4:
                    for sid in stream_window:
                        stream_window[sid] += value - initial
                    initial = value
            s.sendall(frame(4, 1, 0))
        elif kind == 8:
            inc = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if stream == 0:
                conn_window += inc
            elif stream in stream_window:
                stream_window[stream] += inc
        elif kind == 6 and not flags & 1:
            s.sendall(frame(6, 1, 0, payload))
        elif kind in (3, 7):
            to_send.pop(stream, None)
            if kind == 7:
                return


def alive(conns):
    """How many attack connections the server has not closed."""
    open_ = 0
    for s in conns:
        try:
            s.setblocking(False)
            data = s.recv(65536, socket.MSG_PEEK)
            open_ += 1 if data else 0
        except BlockingIOError:
            open_ += 1
        except OSError:
            pass
    return open_


def main():
    pid, hostport, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    host, port = hostport.rsplit(":", 1)
    addr = (host, int(port))
    n = int(sys.argv[4])
    before = Client(addr)
    warm = before.check()
    print(f"baseline: rss {rss_kib(pid) / 1024:.1f} MiB, fds {fds(pid)}, check {warm * 1000:.2f} ms")
    conns = []
    started = time.monotonic()
    if mode == "stalled":
        conns = hold_stalled(addr, n)
    elif mode == "halfsent":
        size = int(sys.argv[5])
        lock = threading.Lock()
        threads = []
        per = 5
        for _ in range((n + per - 1) // per):
            t = threading.Thread(target=halfsend, args=(addr, per, size, conns, lock), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(40)
    elif mode == "idle":
        for _ in range(n):
            try:
                conns.append(connect(addr))
            except OSError:
                break
    else:
        sys.exit(f"unknown mode {mode}")
    time.sleep(HOLD)
    peak = rss_kib(pid)
    old = before.check()
    try:
        fresh = Client(addr).check(limit=5.0)
    except OSError:
        fresh = None
    fmt = lambda t: "timeout/refused" if t is None else f"{t * 1000:.2f} ms"  # noqa: E731
    print(f"attack {mode} n={n}: {len(conns)} connections opened in {time.monotonic() - started:.1f} s, "
          f"{alive(conns)} still open; rss {peak / 1024:.1f} MiB, fds {fds(pid)}; "
          f"check on an existing connection {fmt(old)}, on a new one {fmt(fresh)}")
    for s in conns:
        s.close()
    time.sleep(5)
    print(f"5 s after closing: rss {rss_kib(pid) / 1024:.1f} MiB, fds {fds(pid)}")


if __name__ == "__main__":
    main()
