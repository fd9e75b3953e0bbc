//! x402 edge filter: pay-per-request HTTP enforced inside Envoy (proxy-wasm).
//!
//! Host-agnostic modules hold all the logic and are unit-tested natively:
//! [`config`] (plugin configuration), [`routes`] (matching), [`auth`] + [`cache`] (token
//! checks), [`challenge`] (402 and error answers), [`token_endpoint`] (the filter-served
//! token endpoint), [`decision`] (what to do with a priced request and with the settler's
//! answer), [`identity`] (who-paid headers for the upstream, anti-spoofing), [`metrics`]
//! (counter names), [`headers`] (the serialized request header map, read in place). The
//! proxy-wasm glue is `host.rs`, built for wasm only.

pub mod auth;
pub mod cache;
pub mod challenge;
pub mod config;
pub mod decision;
pub mod headers;
pub mod identity;
pub mod metrics;
pub mod pending;
pub mod routes;
pub mod token_endpoint;

#[cfg(target_arch = "wasm32")]
mod host;
