# x402 edge: every target installs what it needs first (make setup is idempotent and quick).
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all setup wasm build test lint unit e2e demo run bench contracts fmt clippy clean fuzz fuzz-smoke images deny

all: build wasm

setup:
	@bash tools/setup.sh

wasm: setup
	@bash tools/build-wasm.sh

build: setup
	$(CARGO) build --workspace --bins

# Lint gate, dependency policy (cargo deny, offline), unit tests, then the Envoy / anvil /
# settler tests (they need the .wasm and the binaries).
test: setup lint deny fuzz-smoke wasm build
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2
	@bash tools/check-manifests.sh

# Formatting, clippy with warnings as errors (unwrap/expect/panic denied outside tests by
# the workspace lints), and no import cycle between the modules of any crate.
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	python3 tools/check-module-cycles.py

# Fuzz targets (fuzz/, cargo-fuzz on nightly), one at a time: FUZZ_SECS each, random, for
# `fuzz`; for `fuzz-smoke` (part of `test`) the committed seeds and FUZZ_SMOKE_RUNS inputs
# from a fixed seed, so it is repeatable: a target that no longer builds, or crashes on a
# seed or on those inputs, fails the build.
FUZZ_SECS ?= 180
FUZZ_SMOKE_RUNS ?= 4000
fuzz: setup
	@bash fuzz/run.sh $(FUZZ_SECS)

fuzz-smoke: setup
	@bash fuzz/run.sh --runs $(FUZZ_SMOKE_RUNS)

unit: setup
	$(CARGO) test --workspace --lib --bins

demo: setup wasm build
	@bash tools/demo.sh demo

run: setup wasm build
	@bash tools/demo.sh run

# OCI archives of the filter (Istio WasmPlugin layout) and the settler (FROM scratch,
# non-root) in target/images/, reproducible, with their digests (tools/images.sh).
images: setup wasm
	@bash tools/images.sh

# cargo deny: licences, banned/duplicate crates, sources (offline: advisories need the
# advisory database from GitHub). Part of `test`; installing cargo-deny is a long build the
# first time (tools/deny.sh installs it on first use).
deny: setup
	@bash tools/deny.sh

bench: setup wasm
	$(CARGO) build --release -p x402-settler
	@bash bench/run.sh

# Recompiles the test token from Solidity (the artefact is committed).
contracts: setup
	cd contracts && node compile.js

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	rm -rf target .run
