//! x402 edge filter: pay-per-request HTTP enforced inside Envoy (proxy-wasm).
//!
//! Everything but the wasm glue is host-agnostic and tested natively:
//! - `flow`: the per-request state machine and every policy (what to strip, answer, call,
//!   count, when to time out), written against the `Host` trait of `host_api`; its `Worker`
//!   is what a worker keeps between requests (config, counter ids, token cache, pending
//!   bodies). `test_fixtures` drives it through a fake host that records every host call.
//! - the pure pieces it calls: [`config`] (plugin configuration), `routes` (matching),
//!   `auth` + `cache` + `grant` (token checks), `shared_tokens` (the verified tokens all
//!   workers share), `challenge` + `route_challenge` (the 402),
//!   `discovery` (the `/.well-known/x402` document, serialised at configure time),
//!   `answer` (local replies), `token_endpoint` (the filter-served token endpoint),
//!   `decision` (priced requests and the settler's answers), `identity` (who-paid headers,
//!   anti-spoofing), `metrics` (counter names), `headers` (the serialized request header
//!   map, read in place), `pending` (token-endpoint bodies still being read), `policy` (per-route failure mode and
//!   cache control), `revocation` (the revoked token ids), `learned_keys` (token keys learned
//!   from the settler's JWKS).
//!
//! `host.rs` (wasm only, the one module that names the proxy-wasm SDK) implements `Host`
//! and forwards the proxy-wasm callbacks to `flow`; `abi.rs` (wasm only) wraps the raw
//! host imports so that no host status can panic (`host.rs` says which two SDK paths,
//! callout dispatch and answer routing, stay the SDK's). Only [`config`] is public:
//! the `x402-filter` binary (`src/bin`) checks configuration files with its parser.
//! `module_graph` (a test) keeps the modules free of import cycles.

mod answer;
mod auth;
mod cache;
mod challenge;
pub mod config;
mod decision;
mod discovery;
mod flow;
mod grant;
mod headers;
mod host_api;
mod identity;
mod learned_keys;
mod metrics;
mod pending;
mod policy;
mod revocation;
mod route_challenge;
mod routes;
mod shared_tokens;
mod token_endpoint;

// Also compiled under clippy (checked, never linked natively), so the glue is linted too.
#[cfg(any(target_arch = "wasm32", clippy))]
mod abi;
#[cfg(any(target_arch = "wasm32", clippy))]
mod host;

#[cfg(test)]
mod module_graph;
#[cfg(test)]
mod test_fixtures;
