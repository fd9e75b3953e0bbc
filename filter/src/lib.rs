//! x402 edge filter: pay-per-request HTTP enforced inside Envoy (proxy-wasm).
//!
//! Everything but the wasm glue is host-agnostic and tested natively:
//! - [`flow`]: the per-request state machine and every policy (what to strip, answer, call,
//!   count, when to time out), written against its `Host` trait; `Worker` is what a worker
//!   keeps between requests (config, counter ids, token cache, pending bodies).
//! - the pure pieces it calls: [`config`] (plugin configuration), `routes` (matching),
//!   `auth` + `cache` + `grant` (token checks), `challenge` + `route_challenge` (the 402),
//!   `answer` (local replies), `token_endpoint` (the filter-served token endpoint),
//!   `decision` (priced requests and the settler's answers), `identity` (who-paid headers,
//!   anti-spoofing), `metrics` (counter names), `headers` (the serialized request header
//!   map, read in place), `pending` (token-endpoint bodies still being read).
//!
//! `host.rs` (wasm only) implements `Host` over proxy-wasm and forwards the callbacks to
//! `flow`; `abi.rs` (wasm only) wraps the raw host imports so no host status can panic.
//! Only [`config`] is public: `examples/check_config.rs` checks files with its parser.

mod answer;
mod auth;
mod cache;
mod challenge;
pub mod config;
mod decision;
mod flow;
mod grant;
mod headers;
mod identity;
mod metrics;
mod pending;
mod route_challenge;
mod routes;
mod token_endpoint;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(test)]
mod test_fixtures;
