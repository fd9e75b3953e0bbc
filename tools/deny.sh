#!/usr/bin/env bash
# cargo deny, offline: licences (deny.toml's allow list), bans (duplicate versions are
# reported, not fatal; wildcard versions refused) and sources (crates.io only). Advisories
# are not checked: cargo deny fetches the RustSec database from GitHub, which this machine
# cannot reach (`cargo deny check advisories` where it can).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Installed here, on first use (a build of about 3 minutes on this 2-core machine): part of
# `make test`, so a fresh machine gets it there.
if ! cargo deny --version >/dev/null 2>&1; then
  echo "[deny] cargo install cargo-deny --locked --version 0.20.2"
  cargo install cargo-deny --locked --version 0.20.2
fi
# cargo deny reads the whole graph through cargo metadata, every platform's crates included
# (windows-sys, android_*): fetch them from crates.io first, then stay offline.
cargo fetch --locked -q
# One line per finding (the duplicate-version warnings too); the full trees with `make deny
# DENY_VERBOSE=1`.
if [ -n "${DENY_VERBOSE:-}" ]; then
  cargo deny --offline check licenses bans sources
else
  set +e
  cargo deny --offline check licenses bans sources 2>&1 | grep -E '^(error|warning)\[|(ok|FAILED)$'
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || exit "$rc"
fi
echo "[deny] licences, bans, sources ok (advisories: not checked offline)"
