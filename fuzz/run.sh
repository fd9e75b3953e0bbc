#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds, one after the other, on its corpus directory
# (fuzz/corpus/<target>: the committed seed-* files plus whatever libFuzzer adds, ignored by
# git). Stops at the first crash; libFuzzer writes the input to fuzz/artifacts/<target>/.
#   fuzz/run.sh SECS [TARGET...]          explore: random seed, SECS per target (make fuzz)
#   fuzz/run.sh --runs N [TARGET...]      repeatable: seed 1, N inputs per target after the
#                                         committed seeds (make fuzz-smoke, part of make test)
# The smoke run is repeatable so that `make test` fails only when the code changed: a random
# run can find an old bug on any CI run (it did: a stale oracle), which belongs to `make fuzz`
# and a seed file, not to whoever's change happened to be tested.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: fuzz/run.sh SECS [TARGET...] | fuzz/run.sh --runs N [TARGET...]"
if [ "${1:-}" = "--runs" ]; then
  n=${2:?$usage}
  shift 2
  limit=(-runs="$n" -seed=1)
  what="$n runs"
  # Only the committed seeds: libFuzzer's additions in the corpus dir would change the run.
  corpus_of() { local d; d=$(mktemp -d); cp "fuzz/corpus/$1"/seed-* "$d"/; echo "$d"; }
else
  secs=${1:?$usage}
  shift
  limit=(-max_total_time="$secs")
  what="${secs}s"
  corpus_of() { echo "fuzz/corpus/$1"; }
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(filter_config token_check payment_body challenge_roundtrip)
# One build for all targets, then the runs (cargo fuzz run would rebuild each time).
cargo +nightly fuzz build
for t in "${targets[@]}"; do
  echo "[fuzz] $t for $what"
  start=$SECONDS
  out=$(mktemp)
  corpus=$(corpus_of "$t")
  if ! cargo +nightly fuzz run "$t" "$corpus" -- "${limit[@]}" \
      -print_final_stats=1 >"$out" 2>&1; then
    tail -n 40 "$out"
    rm -f "$out"
    [ "$corpus" = "fuzz/corpus/$t" ] || rm -rf "$corpus"
    echo "[fuzz] $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' || echo "?")
  rm -f "$out"
  [ "$corpus" = "fuzz/corpus/$t" ] || rm -rf "$corpus"
  echo "[fuzz] $t ok: $runs executions in $((SECONDS - start))s"
done
