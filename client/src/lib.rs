//! x402 client: pays HTTP 402 challenges within the user's spend caps.
//!
//! - [`caps`]: the spend policy (max per request, allowed networks and assets, trusted decimals).
//! - [`select`]: picks a payment component of a 402 challenge (seed body or x402 v2
//!   `PAYMENT-REQUIRED`) within the caps; the scheme-specific checks are the scheme's.
//! - `scheme`: one module per payment scheme behind the `PaymentScheme` trait (`exact` =
//!   ERC-3009, `permit` = EIP-2612), registered in one list: its checks, signing and bodies;
//!   `scheme::signing` holds what the schemes share (EIP-712 domain, seed signature JSON,
//!   nonces). It imports no other module of the crate.
//! - [`sign`]: the public signing API other crates' tests call (re-exported from `scheme`).
//! - [`pay`]: the whole flow ([`Payer::get`]); [`cache`]: access tokens per origin + route until
//!   they expire; [`status`]: follows a settlement to its transaction hash; [`key`]: the key.
//!
//! Public items are what the `x402-pay` binary and the tests use; the rest is crate-private.

pub mod cache;
pub mod caps;
pub mod key;
pub mod pay;
pub(crate) mod scheme;
pub mod select;
pub mod sign;
pub mod status;
#[cfg(test)]
mod test_fixtures;

pub use caps::Caps;
pub use pay::{Config, PaidResponse, PayError, Payer, Receipt, Step};
