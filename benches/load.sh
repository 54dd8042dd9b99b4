#!/usr/bin/env bash
# Load harness: drives the real server's Check and Revalidate over loopback h2c with
# h2load and compares them with the same server's grpc.health.v1 Check (the transport's
# own limit here). The server runs the example policies with a journaled grant store; the
# harness first creates one ACTIVE grant, then Check asks step `issue` naming it and
# Revalidate re-decides (and counts) a use of it.
#
#   benches/load.sh                 # release build, full runs
#   N=50000 N1=5000 benches/load.sh # shorter runs
#   STEPGATE=/path/to/stepgate benches/load.sh  # another build of the server
#   POLICIES=DIR benches/load.sh    # another policy set, e.g. benches/policies/minimal
#                                   # (its data.stepgate.decision must allow the
#                                   # harness's `request`, `issue` and `use`)
#   benches/load.sh telemetry       # Check with telemetry off / spans over OTLP /
#                                   # decision log / both, and the cost of each vs off
#                                   # (ROUNDS=3 rounds of the four, medians compared)
#   benches/load.sh envoy           # Envoy ext_authz Check beside stepgate.v1 Check,
#                                   # over h2c and over TLS (the cost of TLS)
#
# In `telemetry` mode spans go over OTLP/gRPC (sampler always_on) to a local receiver
# (`benches/otlp_sink.rs`, pinned beside h2load), the decision log to a file in
# the run's state directory; the server restarts for each configuration.
#
# The server is pinned to CPU 0 (one tokio worker), h2load to CPU 1. Every response is
# checked: HTTP 2xx for all, no errors, and DATA bytes per response within the range a
# real Decision (or health response) has, so a gRPC error (trailers-only, no DATA) cannot
# pass as a decision. Prints rps, p50 and p99 (from h2load's per-request log) and server
# CPU per call for a throughput run (-c 16 -m 8) and a single-stream run (-c 1 -m 1).
set -euo pipefail

cd "$(dirname "$0")/.."
MODE=${1:-grpc}
case "$MODE" in grpc|telemetry|envoy) ;; *) echo "usage: $0 [telemetry|envoy]" >&2; exit 64 ;; esac
SCHEME=http
N=${N:-200000}
N1=${N1:-20000}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-19191}
OTLP_PORT=${OTLP_PORT:-14317}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
POLICIES=${POLICIES:-policies}
work=$(mktemp -d)
server_pid=""
sink_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -n "$sink_pid" ]; then kill "$sink_pid" 2>/dev/null || true; wait "$sink_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset not found (util-linux)" >&2; exit 1; }

# STEPGATE=PATH runs another build of the server (to compare two versions); by default
# the release build of this tree.
if [ -z "${STEPGATE:-}" ]; then
  cargo build --release --quiet --bin stepgate
  STEPGATE=target/release/stepgate
fi
sink=""
if [ "$MODE" = telemetry ]; then
  sink=$(cargo bench --quiet --no-run --bench otlp_sink --message-format=json |
    python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin.readlines()) if m.get("executable") and m["target"]["name"] == "otlp_sink"][-1])')
fi
printf '\0\0\0\0\0' > "$work/health.bin"

grpc() { # PATH BODY: one call, the framed response on stdout
  nghttp -d "$2" -H 'content-type: application/grpc' -H 'te: trailers' "$SCHEME://127.0.0.1:$PORT$1"
}

# start_server NAME DECISION_LOG [FLAGS...]: a fresh server (own state directory) with
# one ACTIVE grant, and check.bin / revalidate.bin naming it. Spans are off unless FLAGS
# turn them on; no HTTP listener.
start_server() {
  local name=$1 log=$2; shift 2
  rm -rf "$work/state"
  taskset -c "$SERVER_CPU" env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
    "$STEPGATE" serve --policies "$POLICIES" --grpc-addr "127.0.0.1:$PORT" \
    --http-addr '' --decision-log "$log" --watch-policies false --log-format json \
    --state-dir "$work/state" "$@" >"$work/server-$name.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    grep -q "policy revision loaded" "$work/server-$name.log" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server-$name.log" >&2; exit 1; }
    sleep 0.1
  done
  python3 benches/grpc_frame.py request_grant > "$work/request.bin"
  grant=$(grpc /stepgate.v1.GrantService/RequestGrant "$work/request.bin" | python3 benches/grpc_frame.py grant_id)
  echo "[$name] grant $grant"
  python3 benches/grpc_frame.py check "$grant" > "$work/check.bin"
  python3 benches/grpc_frame.py revalidate "$grant" > "$work/revalidate.bin"
  # Both must be allowed: a deny would measure a different path.
  for call in "DecisionService/Check check" "GrantService/Revalidate revalidate"; do
    set -- $call
    grpc "/stepgate.v1.$1" "$work/$2.bin" | python3 -c '
import sys
d = sys.stdin.buffer.read()
# allow=true is field 1 varint 1 inside the Decision message: bytes 08 01.
sys.exit(0 if b"\x08\x01" in d else f"{sys.argv[1]} was not allowed")' "$1"
  done
}

stop_server() {
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }

# run NAME PATH BODY N C M MIN_BYTES MAX_BYTES
run() {
  local name=$1 path=$2 body=$3 n=$4 c=$5 m=$6 min=$7 max=$8 log="$work/$1.log" out="$work/$1.out"
  local before after
  before=$(cpu_ticks)
  taskset -c "$LOAD_CPU" h2load -n "$n" -c "$c" -m "$m" \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$body" --log-file "$log" \
    "$SCHEME://127.0.0.1:$PORT$path" >"$out"
  after=$(cpu_ticks)
  python3 - "$name" "$n" "$min" "$max" "$out" "$log" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import re, sys
name, n, lo, hi, out, log, before, after, hz = sys.argv[1:]
n, lo, hi, hz = int(n), int(lo), int(hi), int(hz)
text = open(out).read()
done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
ok2xx = int(re.search(r"status codes: (\d+) 2xx", text).group(1))
data = re.search(r"traffic: .*\((\d+)\) data", text)
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
assert int(done.group(2)) == n and ok2xx == n and int(done.group(3)) == 0 and int(done.group(4)) == 0, \
    f"{name}: not every request succeeded:\n{text}"
per = int(data.group(1)) / n
assert lo <= per <= hi, f"{name}: {per:.1f} DATA bytes per response, expected {lo}..{hi}: not real answers"
times = sorted(int(line.split()[2]) for line in open(log) if line.strip())
p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
cpu_us = (int(after) - int(before)) / hz * 1e6 / n
print(f"{name:<24} {rps:>10.0f} rps   p50 {p(0.50):>5} us   p99 {p(0.99):>5} us   server CPU {cpu_us:5.1f} us/call")
with open(out + ".rps", "w") as f:
    f.write(f"{rps} {cpu_us}\n")
PY
}

# A Decision is ~200-400 bytes (ids, revision, obligations); a GrantResponse adds the
# grant (~600-1200); health is 7 (frame + status).
if [ "$MODE" = telemetry ]; then
  # A long-lived pipe keeps the sink's stdin open; closing it makes the sink report.
  mkfifo "$work/sink.in"
  taskset -c "$LOAD_CPU" "$sink" --listen "127.0.0.1:$OTLP_PORT" \
    <"$work/sink.in" >"$work/sink.out" 2>"$work/sink.err" &
  sink_pid=$!
  exec 3>"$work/sink.in"
  spans="--otlp-endpoint http://127.0.0.1:$OTLP_PORT --otlp-protocol grpc --otel-traces-sampler always_on"
  log="$work/state/decisions.jsonl"
  # The machine drifts by tens of percent over minutes, so the four configurations run
  # in turn, ROUNDS times, and each is compared with `off` by the median of its rounds.
  for round in $(seq "$ROUNDS"); do
    for config in "off|off|" "spans|off|$spans" "log|$log|" "spans+log|$log|$spans"; do
      IFS='|' read -r name decision_log flags <<<"$config"
      # shellcheck disable=SC2086 # the flags are meant to split
      start_server "$name" "$decision_log" $flags
      run "check-$name-r$round"        /stepgate.v1.DecisionService/Check "$work/check.bin" "$N"  16 8 150 600
      run "check-$name-single-r$round" /stepgate.v1.DecisionService/Check "$work/check.bin" "$N1" 1  1 150 600
      stop_server
      if [ -f "$work/state/decisions.jsonl" ]; then
        echo "[$name] $("$STEPGATE" audit verify "$work/state/decisions.jsonl")"
      fi
    done
  done
  exec 3>&-
  wait "$sink_pid" || true; sink_pid=""
  spans_received=$(cat "$work/sink.out")
  if [ -z "$spans_received" ]; then
    echo "the OTLP sink stopped without reporting: the spans rows are not valid" >&2
    cat "$work/sink.err" >&2
    exit 1
  fi
  echo "spans received by the OTLP sink: $spans_received"
  python3 - "$work" "$ROUNDS" <<'PY'
import statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def median(name, column):
    return statistics.median(
        float(open(f"{work}/check-{name}-r{r}.out.rps").read().split()[column]) for r in range(1, rounds + 1))
off, off_cpu = median("off", 0), median("off", 1)
print(f"medians of {rounds} rounds; off: {off:.0f} rps, server CPU {off_cpu:.1f} us/call")
for name in ["spans", "log", "spans+log"]:
    rps, cpu = median(name, 0), median(name, 1)
    print(f"{name:<10} {rps:>8.0f} rps: throughput cost {100 * (1 - rps / off):5.1f}%, "
          f"server CPU {cpu:5.1f} us/call (+{cpu - off_cpu:.1f})")
PY
  exit 0
fi

if [ "$MODE" = envoy ]; then
  # The ext_authz request Envoy sends for GET /books/42 from a reader, which
  # policies/envoy/authz.rego allows (an OkHttpResponse with a header and metadata).
  python3 benches/grpc_frame.py envoy_check > "$work/envoy.bin"
  # mTLS material: one self-signed certificate serves as the server's and as the client
  # CA. h2load cannot present a client certificate, so the TLS runs ask for one
  # (--tls-client-ca, optional) without getting it: per request that is the cost of
  # mTLS, whose extra work (verifying the client chain, reading its identity) happens
  # once per connection.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  tls="--tls-cert $work/cert.pem --tls-key $work/key.pem --tls-client-ca $work/cert.pem"
  for config in "h2c|http|" "tls|https|$tls"; do
    name=${config%%|*}; rest=${config#*|}; SCHEME=${rest%%|*}
    # shellcheck disable=SC2086 # the flags are meant to split
    start_server "$name" off ${rest#*|}
    grpc /envoy.service.auth.v3.Authorization/Check "$work/envoy.bin" | python3 benches/grpc_frame.py envoy_allowed
    run "check-$name"           /stepgate.v1.DecisionService/Check          "$work/check.bin" "$N"  16 8 150 600
    run "extauthz-$name"        /envoy.service.auth.v3.Authorization/Check "$work/envoy.bin" "$N"  16 8 120 400
    run "check-$name-single"    /stepgate.v1.DecisionService/Check          "$work/check.bin" "$N1" 1  1 150 600
    run "extauthz-$name-single" /envoy.service.auth.v3.Authorization/Check "$work/envoy.bin" "$N1" 1  1 120 400
    stop_server
  done
  python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
def get(name):
    rps, cpu = open(f"{work}/{name}.out.rps").read().split()
    return float(rps), float(cpu)
for call in ["check", "extauthz"]:
    (plain, plain_cpu), (tls, tls_cpu) = get(f"{call}-h2c"), get(f"{call}-tls")
    print(f"{call:<9} TLS vs h2c: throughput {tls:>7.0f} vs {plain:>7.0f} rps ({100 * (1 - tls / plain):4.1f}% less), "
          f"server CPU {tls_cpu:5.1f} vs {plain_cpu:5.1f} us/call")
(c, c_cpu), (e, e_cpu) = get("check-h2c"), get("extauthz-h2c")
print(f"ext_authz/Check throughput ratio (h2c): {e / c:.2f}   CPU per call ratio: {e_cpu / c_cpu:.2f}")
PY
  exit 0
fi

start_server grpc off
run check-throughput       /stepgate.v1.DecisionService/Check  "$work/check.bin"      "$N"  16 8 150 600
run check-single           /stepgate.v1.DecisionService/Check  "$work/check.bin"      "$N1" 1  1 150 600
run revalidate-throughput  /stepgate.v1.GrantService/Revalidate "$work/revalidate.bin" "$N"  16 8 500 2000
run revalidate-single      /stepgate.v1.GrantService/Revalidate "$work/revalidate.bin" "$N1" 1  1 500 2000
run health-throughput      /grpc.health.v1.Health/Check        "$work/health.bin"     "$N"  16 8 7 7
run health-single          /grpc.health.v1.Health/Check        "$work/health.bin"     "$N1" 1  1 7 7

read -r check_rps check_cpu < "$work/check-throughput.out.rps"
read -r health_rps health_cpu < "$work/health-throughput.out.rps"
python3 -c "print(f'Check/health throughput ratio: {$check_rps/$health_rps:.2f}   CPU per call ratio: {$check_cpu/$health_cpu:.2f}')"
