#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds, one after the other, on its corpus directory
# (fuzz/corpus/<target>: the committed seed-* files plus whatever libFuzzer adds, ignored by
# git). Stops at the first crash; libFuzzer writes the input to fuzz/artifacts/<target>/.
#   fuzz/run.sh SECS [TARGET...]      (make fuzz: FUZZ_SECS, make fuzz-smoke: a few seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:?usage: fuzz/run.sh SECS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(filter_config token_check payment_body challenge_roundtrip)
# One build for all targets, then the runs (cargo fuzz run would rebuild each time).
cargo +nightly fuzz build
for t in "${targets[@]}"; do
  echo "[fuzz] $t for ${secs}s"
  start=$SECONDS
  out=$(mktemp)
  if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" \
      -print_final_stats=1 >"$out" 2>&1; then
    tail -n 40 "$out"
    rm -f "$out"
    echo "[fuzz] $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' || echo "?")
  rm -f "$out"
  echo "[fuzz] $t ok: $runs executions in $((SECONDS - start))s"
done
