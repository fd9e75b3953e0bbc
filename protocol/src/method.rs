//! Payment methods a priced route accepts: which scheme, on which chain, in which token, to whom.

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};

use crate::chain::Network;

/// How the payer authorises the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// EIP-2612 `permit` to the settler's wallet, then `transferFrom` to `pay_to`.
    Permit,
    /// ERC-3009 `transferWithAuthorization` straight to `pay_to` (x402's "exact" EVM scheme).
    Exact,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Permit => "permit",
            Scheme::Exact => "exact",
        }
    }
}

/// The ERC-20 token paid in, with what a client needs to build its EIP-712 domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    pub address: Address,
    pub decimals: u8,
    /// EIP-712 domain name (real USDC: "USDC").
    pub name: String,
    /// EIP-712 domain version (real USDC: "2").
    pub version: String,
    pub symbol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethod {
    pub scheme: Scheme,
    pub network: Network,
    pub asset: Asset,
    pub pay_to: Address,
    /// For `permit`: the settler's wallet, which calls `permit` and `transferFrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spender: Option<Address>,
}
