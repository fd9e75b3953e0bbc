#!/usr/bin/env bash
# cargo deny, offline: licences (deny.toml's allow list), bans (duplicate versions are
# reported, not fatal; wildcard versions refused) and sources (crates.io only). Advisories
# are not checked: cargo deny fetches the RustSec database from GitHub, which this machine
# cannot reach (`cargo deny check advisories` where it can).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Installed here, on first use, not by make setup: it is a long build (more than 15 minutes
# on this 2-core machine while other builds ran).
if ! cargo deny --version >/dev/null 2>&1; then
  echo "[deny] cargo install cargo-deny --locked --version 0.20.2"
  cargo install cargo-deny --locked --version 0.20.2
fi
cargo deny --offline --log-level error check licenses bans sources
echo "[deny] licences, bans, sources ok (advisories: not checked offline)"
