#!/usr/bin/env python3
"""Python's grpcio (gRPC C-core) with default options against stepgate's Unix socket:
health, then a Check. Messages are encoded by hand (no generated stubs needed).

  check.py SOCKET_PATH     exits 0 and prints "ok: grpcio ..." when both succeed
"""
import sys

import grpc


def field(num, data):
    if isinstance(data, str):
        data = data.encode()
    return bytes([num << 3 | 2, len(data)]) + data


def main():
    path = sys.argv[1]
    # The target forms grpcio users write; C-core derives :authority from each.
    for target in (f"unix:{path}", f"unix://{path}"):
        with grpc.insecure_channel(target) as channel:
            health = channel.unary_unary("/grpc.health.v1.Health/Check")
            reply = health(b"", timeout=10)
            if reply != b"\x08\x01":  # HealthCheckResponse{status: SERVING}
                sys.exit(f"{target}: health answered {reply!r}")
            check = channel.unary_unary("/stepgate.v1.DecisionService/Check")
            request = field(1, "use") + field(2, field(1, "svc-a")) + field(3, "read")
            reply = check(request, timeout=10)
            if not reply:
                sys.exit(f"{target}: empty CheckResponse")
    print(f"ok: grpcio {grpc.__version__} served on the Unix socket")


if __name__ == "__main__":
    main()
