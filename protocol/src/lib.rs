//! Wire types shared by the x402 edge filter (wasm), the settler and the client (native).
//!
//! One concern: what goes over the wire and how it is checked for shape. No I/O here, so the
//! crate compiles for `wasm32-wasip1` as well as for the host.
//!
//! Payment schemes are one module each under [`scheme`] ([`scheme::permit`] = EIP-2612,
//! [`scheme::exact`] = ERC-3009): payload type, EIP-712 message and wire parsing; `scheme`
//! holds the shared `ClientPayment` dispatch, and [`payment`] / [`eip712`] re-export it all.

pub mod addr;
pub mod amount;
pub mod b64;
pub mod chain;
pub mod challenge;
pub mod eip712;
pub mod method;
pub mod payment;
pub mod scheme;
pub mod settler_api;
pub mod shown;
pub mod token;
pub mod token_keys;
pub mod u256_serde;
pub mod x402v2;

pub use alloy_primitives::{Address, B256, U256};
pub use amount::{format_base_units, parse_decimal, AmountError};
pub use chain::Network;
pub use method::{Asset, PaymentMethod, Scheme};
