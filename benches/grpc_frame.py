#!/usr/bin/env python3
"""Writes a gRPC-framed (5-byte header + protobuf) stepgate.v1.CheckRequest to stdout.

The request is the wire form of benches/inputs/issue.json's request (without the grant):
a production credential issue for a service account. Encoded by hand so the load harness
needs nothing beyond python3.
"""
import sys


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def boolean(num, value):
    return varint(num << 3) + varint(1 if value else 0)


def struct(pairs):
    # google.protobuf.Struct: map<string, Value> fields = 1; Value.string_value = 3.
    return b"".join(field(1, field(1, k) + field(2, field(3, v))) for k, v in pairs.items())


def check_request():
    subject = field(1, "spiffe://prod.example.com/ns/payments/sa/deployer") + field(2, "service_account") \
        + field(3, "team-payments") + field(4, struct({"environment": "prod", "team": "payments"}))
    resource = field(1, "secret") + field(2, "prod/payments/db/password") \
        + field(3, struct({"environment": "prod", "sensitivity": "high"}))
    workflow = field(1, "CHG-1234") + field(2, "alice") + field(3, "deploy payments 4.2 (schema migration)") \
        + boolean(4, False)
    context = field(1, "10.1.2.3")
    return field(1, "issue") + field(2, subject) + field(3, "issue_credential") + field(4, resource) \
        + field(5, workflow) + field(7, context)


if __name__ == "__main__":
    message = {"check": check_request}[sys.argv[1]]()
    sys.stdout.buffer.write(b"\0" + len(message).to_bytes(4, "big") + message)
