#!/usr/bin/env bash
# Builds the proxy-wasm filter for wasm32-wasip1 into target/x402_filter.wasm.
# Prefers a rustup toolchain that has the wasm32-wasip1 target; otherwise uses Debian's
# rustc-web, which builds std for the target from source (-Zbuild-std).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=target/wasm   # never share artefacts between the two compilers
# --no-default-features: without `schema` (the JSON Schema and the x402-filter checker binary).
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  cargo build --profile wasm --target wasm32-wasip1 -p x402-filter --no-default-features
else
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
  CARGO_TARGET_WASM32_WASIP1_LINKER=/usr/lib/llvm-16/bin/wasm-ld \
  RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
  /usr/bin/cargo build --profile wasm --target wasm32-wasip1 -Zbuild-std=std,panic_abort -p x402-filter --no-default-features
fi
cp target/wasm/wasm32-wasip1/wasm/x402_filter.wasm target/x402_filter.wasm
ls -l target/x402_filter.wasm | awk '{print "[wasm] target/x402_filter.wasm " $5 " bytes"}'
