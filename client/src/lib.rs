//! x402 client: pays HTTP 402 challenges within the user's spend caps.
//!
//! - [`sign`]: EIP-712 signing (EIP-2612 permit, ERC-3009) and the request bodies.
//! - [`caps`]: the spend policy (max per request, allowed networks and assets, trusted decimals).
//! - [`select`]: picks a payment component of a 402 challenge within the caps.
//! - [`cache`]: access tokens per origin + route until they expire (memory, optional file).
//! - [`pay`]: the whole flow ([`Payer::get`]).
//! - [`status`]: follows a settlement to its transaction hash.

pub mod cache;
pub mod key;
pub mod caps;
pub mod pay;
pub mod select;
pub mod sign;
pub mod status;

pub use caps::Caps;
pub use pay::{Config, PaidResponse, PayError, Payer, Receipt, Step};
