//! Test harness shared by the settler's tests and the end-to-end tests: real processes on
//! 127.0.0.1 (anvil, Envoy, the settler), each stopped when its handle is dropped.
//!
//! - [`anvil`]: the local chain with the test USDC (deploy, mint, balances, dev keys).
//! - [`envoy`]: Envoy with the filter (bootstrap YAML, start, plain HTTP requests to it).
//! - [`settler`]: the `x402-settler` binary as a child process.
//! - [`upstream`]: the API behind Envoy (echoes each request, or a custom handler).
//! - [`stack`]: all of the above wired together as a user runs them.
//! - [`pg`]: a fresh Postgres database per test, dropped after.
//! - [`slow_proxy`]: a relay in front of anvil that can delay its answers (slow RPC).
//! - [`bench_results`]: `bench/results/latest.{json,md}`, shared by the benches.
//! - [`paths`], [`ports`]: where artefacts and tools are, free ports; `child`: start-up waits.
//! - `bin/x402-devchain`: deploy/fund chores on a running anvil for `make demo` and `make bench`.

// A test harness: a failed expect/unwrap/panic here means a broken test environment, and
// failing the test loudly is the right answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod anvil;
pub mod bench_results;
mod child;
pub mod envoy;
pub mod paths;
pub mod pg;
pub mod ports;
pub mod settler;
pub mod slow_proxy;
pub mod stack;
pub mod upstream;
