#!/usr/bin/env python3
"""gRPC frames (5-byte header + protobuf) for the load harness, encoded by hand so the
harness needs nothing beyond python3.

  grpc_frame.py request_grant          RequestGrantRequest: a staging secret for a
                                       service account (no approvals needed: ACTIVE)
  grpc_frame.py check GRANT_ID         CheckRequest: step `issue` of that credential,
                                       naming the grant (input.grant = its record)
  grpc_frame.py revalidate GRANT_ID    RevalidateRequest for the grant (step `use`)
  grpc_frame.py grant_id < RESPONSE    prints the grant id of a framed GrantResponse
  grpc_frame.py envoy_check            envoy.service.auth.v3.CheckRequest as Envoy sends
                                       it: GET /books/42?format=json from a reader
                                       (allowed by policies/envoy/authz.rego)
  grpc_frame.py envoy_allowed < RESP   exits non-zero unless the CheckResponse says OK
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


def number(num, value):
    return varint(num << 3) + varint(value)


def struct(pairs):
    # google.protobuf.Struct: map<string, Value> fields = 1; Value.string_value = 3.
    return b"".join(field(1, field(1, k) + field(2, field(3, v))) for k, v in pairs.items())


SUBJECT = field(1, "spiffe://staging.example.com/ns/payments/sa/deployer") + field(2, "service_account") \
    + field(3, "team-payments") + field(4, struct({"environment": "staging", "team": "payments"}))
RESOURCE = field(1, "secret") + field(2, "staging/payments/db/password") \
    + field(3, struct({"environment": "staging", "sensitivity": "high"}))
WORKFLOW = field(1, "CHG-1234") + field(2, "alice") + field(3, "deploy payments 4.2 (schema migration)")
CONTEXT = field(1, "10.1.2.3")


def request_grant():
    ttl = number(1, 8 * 3600)  # google.protobuf.Duration.seconds
    return field(1, SUBJECT) + field(2, "issue_credential") + field(3, RESOURCE) + field(5, WORKFLOW) \
        + field(6, ttl) + field(8, CONTEXT)


def check(grant_id):
    return field(1, "issue") + field(2, SUBJECT) + field(3, "issue_credential") + field(4, RESOURCE) \
        + field(5, WORKFLOW) + field(7, CONTEXT) + field(8, grant_id)


def revalidate(grant_id):
    return field(1, grant_id) + field(2, CONTEXT)


def string_map(num, pairs):
    # map<string, string>: repeated entries {key = 1; value = 2}.
    return b"".join(field(num, field(1, k) + field(2, v)) for k, v in pairs.items())


def envoy_check():
    socket = field(2, "10.1.2.3") + number(3, 51234)  # SocketAddress.address, port_value
    source = field(1, field(1, socket)) + field(4, "spiffe://cluster.local/ns/shop/sa/reports")
    headers = {":authority": "books.shop.svc", ":method": "GET", ":path": "/books/42?format=json",
               "accept": "application/json", "user-agent": "bench/1.0",
               "x-request-id": "7d3c1d6e-5e9a-4f0e-9d0e-6d1f2c3b4a59"}
    http = field(1, "12345") + field(2, "GET") + string_map(3, headers) + field(4, "/books/42?format=json") \
        + field(5, "books.shop.svc") + field(6, "http") + field(10, "HTTP/1.1")
    request = field(2, http)  # Request.http
    attributes = field(1, source) + field(4, request) + string_map(10, {"virtual_host": "books"})
    return field(1, attributes)


def envoy_allowed(framed):
    message = framed[5:5 + int.from_bytes(framed[1:5], "big")]
    status = dict(fields(message)).get(1, b"")  # CheckResponse.status (google.rpc.Status)
    code = 0
    i = 0
    while i < len(status):  # Status.code is field 1, a varint; absent means OK
        key, i = read_varint(status, i)
        if key == 8:
            code, i = read_varint(status, i)
        elif key & 7 == 2:
            n, i = read_varint(status, i)
            i += n
        else:
            _, i = read_varint(status, i)
    if code != 0 or 3 not in dict(fields(message)):  # ok_response is field 3
        raise SystemExit(f"ext_authz did not allow (code {code})")


def read_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def fields(data):
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        kind = key & 7
        if kind == 2:
            n, i = read_varint(data, i)
            yield key >> 3, data[i:i + n]
            i += n
        elif kind == 0:
            _, i = read_varint(data, i)
        else:
            raise ValueError(f"unexpected wire type {kind}")


def grant_id(framed):
    message = framed[5:5 + int.from_bytes(framed[1:5], "big")]
    grant = dict(fields(message)).get(1)  # GrantResponse.grant
    if grant is None:
        raise SystemExit("no grant in the response: the request was denied")
    return dict(fields(grant))[1].decode()  # Grant.id


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "grant_id":
        print(grant_id(sys.stdin.buffer.read()))
        sys.exit(0)
    if what == "envoy_allowed":
        envoy_allowed(sys.stdin.buffer.read())
        sys.exit(0)
    builders = {"request_grant": request_grant, "check": check, "revalidate": revalidate,
                "envoy_check": envoy_check}
    message = builders[what](*sys.argv[2:])
    sys.stdout.buffer.write(b"\0" + len(message).to_bytes(4, "big") + message)
