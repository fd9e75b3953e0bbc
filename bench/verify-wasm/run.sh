#!/usr/bin/env bash
# Token-check cost per signature algorithm (ES256K, ES256, EdDSA, parse only), in V8 (the
# filter's wasm, as Envoy runs it) and natively; ratios to ES256K of the same run.
# Builds with the same toolchain choice as tools/build-wasm.sh.
set -euo pipefail
cd "$(dirname "$0")"
# Two compilers (rustup, Debian rustc-web): never share artefacts.
export CARGO_TARGET_DIR=../../target/verify-wasm
n="${1:-1000}"
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  cargo build -q --release --target wasm32-wasip1 --lib
else
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
  CARGO_TARGET_WASM32_WASIP1_LINKER=/usr/lib/llvm-16/bin/wasm-ld \
  RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
  /usr/bin/cargo build -q --release --target wasm32-wasip1 -Zbuild-std=std,panic_abort --lib
fi
node --no-warnings run.mjs "$CARGO_TARGET_DIR/wasm32-wasip1/release/x402_verify_bench.wasm" "$n"
CARGO_TARGET_DIR=../../target/verify-native cargo run -q --release --bin verify-native -- "$((n * 4))"
