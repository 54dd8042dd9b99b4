#!/usr/bin/env bash
# Fuzz smoke run, for CI: builds every cargo-fuzz target once (stable toolchain,
# --sanitizer none), then runs each for FUZZ_SECONDS from a corpus seeded with the
# repository's own policies, requests, journals and configuration. Fails when any target
# crashes (a panic or a broken invariant), hangs on one input (FUZZ_TIMEOUT seconds) or
# goes over FUZZ_RSS_MB of memory; the input that did it is in fuzz/artifacts/<target>/
# (see fuzz/README.md to reproduce it and turn it into a regression test).
#
#   FUZZ_SECONDS  seconds per target (default 60)
#   FUZZ_TIMEOUT  seconds one input may take (default 10)
#   FUZZ_RSS_MB   memory limit in MiB (default 2048)
#   FUZZ_TARGETS  space-separated targets to run (default: all of `cargo fuzz list`)
#   FUZZ_JOBS     targets run at once (default: the number of cores; each uses one)
#   FUZZ_CODEGEN_UNITS  codegen units of the build (default 16: a much faster build
#                 than cargo-fuzz's 1, for somewhat slower runs; use 1 for long runs)
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

seconds=${FUZZ_SECONDS:-60}
timeout=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}
jobs=${FUZZ_JOBS:-$(nproc)}
build_flags=(--sanitizer none --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")

if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}

echo "== cargo fuzz build (all targets)"
started=$(date +%s)
cargo fuzz build "${build_flags[@]}"
echo "built in $(($(date +%s) - started)) s"

mkdir -p logs
run() {
  local target=$1
  mkdir -p "corpus/$target" "artifacts/$target"
  # STEPGATE_FUZZ_SEEDS: the target writes its seeds into its corpus before it starts.
  if STEPGATE_FUZZ_SEEDS="corpus/$target" cargo fuzz run "${build_flags[@]}" "$target" -- \
      -max_total_time="$seconds" -timeout="$timeout" \
      -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb" \
      -print_final_stats=1 >"logs/$target.log" 2>&1; then
    echo "ok   $target: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$target.log" | grep -o '[0-9]*$') executions in ${seconds} s"
  else
    echo "FAIL $target: see fuzz/logs/$target.log and fuzz/artifacts/$target/"
    grep -E -A25 '^==[0-9]+== ERROR|panicked at|^SUMMARY' "logs/$target.log" | head -60 || tail -40 "logs/$target.log"
    return 1
  fi
}

echo "== fuzzing each target for ${seconds} s"
failed=0
pids=()
for target in $targets; do
  run "$target" &
  pids+=($!)
  if ((${#pids[@]} >= jobs)); then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
echo "fuzz smoke run took $(($(date +%s) - started)) s"
exit "$failed"
