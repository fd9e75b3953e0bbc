#!/usr/bin/env bash
# make bench: filter overhead inside Envoy, then the settler's mint and settle figures.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p x402-bench
echo
echo "settler: 50 payments from 10 concurrent payers against anvil (release build)"
cargo test -q --release -p x402-settler --test bench -- --ignored --nocapture 2>&1 | grep -vE '^(running|test result|$)' || true
