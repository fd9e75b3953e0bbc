#!/usr/bin/env bash
# make bench: filter overhead inside Envoy, then the settler's mint and settle figures, then
# batched settlement of a 2,000-payment backlog vs anvil's transaction ceiling
# (bench/results/latest.{md,json}).
# X402_BENCH_PARTS picks parts of both benches (default all): rps,rss,ir for the edge one
# (requests/s rows, Envoy memory, callgrind), batched,single,mint for the settlement one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p x402-bench --bin x402-bench
echo
echo "settler: 50 payments from 10 concurrent payers against anvil (release build)"
cargo test -q --release -p x402-settler --test bench -- --ignored --nocapture 2>&1 | grep -vE '^(running|test result|$)' || true
echo
echo "settlement backlog (release settler; batched through X402Settlement vs one transaction per payment)"
cargo build -q --release -p x402-settler
X402_SETTLER_BIN="$PWD/target/release/x402-settler" cargo run -q --release -p x402-bench --bin settle
