//! Scheme `permit`: an EIP-2612 `permit` to the settler's wallet, then `transferFrom`.
//!
//! Comes only in the seed format (`permit_type` `EIP2612`); x402 v2 has no such scheme.

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};
use serde_json::Value;

use super::{address, chain, seed_sig, uint, PaymentError, SchemePayload, Sig};
use crate::chain::Network;
use crate::method::Scheme;

/// The seed SDK's `permit_type` for this scheme (matched case-insensitively).
pub const SEED_TYPE: &str = "EIP2612";

/// EIP-2612 permit: `owner` lets `spender` move `value` until `deadline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub network: Network,
    pub token: Address,
    pub owner: Address,
    pub spender: Address,
    pub value: U256,
    pub nonce: U256,
    pub deadline: U256,
    pub sig: Sig,
}

/// The EIP-712 message (its own module: the Rust name is the Solidity one, `Permit`).
pub mod typed {
    alloy_sol_types::sol! {
        /// EIP-2612 `Permit`. The struct names are part of the type hash: keep them.
        #[derive(Debug, Default, PartialEq, Eq)]
        struct Permit {
            address owner;
            address spender;
            uint256 value;
            uint256 nonce;
            uint256 deadline;
        }
    }
}

impl Permit {
    /// The EIP-712 message the owner signed.
    pub fn message(&self) -> typed::Permit {
        typed::Permit {
            owner: self.owner,
            spender: self.spender,
            value: self.value,
            nonce: self.nonce,
            deadline: self.deadline,
        }
    }
}

impl SchemePayload for Permit {
    fn scheme(&self) -> Scheme {
        Scheme::Permit
    }
    fn payer(&self) -> Address {
        self.owner
    }
    fn network(&self) -> Network {
        self.network
    }
    fn token(&self) -> Address {
        self.token
    }
    fn value(&self) -> U256 {
        self.value
    }
    /// The permit nonce as 32 bytes.
    fn nonce_key(&self) -> B256 {
        B256::from(self.nonce)
    }
    fn signing_hash(&self, domain: &Eip712Domain) -> B256 {
        self.message().eip712_signing_hash(domain)
    }
}

/// The seed `permit` object of `permit_type` [`SEED_TYPE`].
pub(super) fn parse_seed(permit: &Value) -> Result<Permit, PaymentError> {
    Ok(Permit {
        network: chain(permit)?,
        token: address(permit, "token")?,
        owner: address(permit, "owner")?,
        spender: address(permit, "spender")?,
        value: uint(permit, "value")?,
        nonce: uint(permit, "nonce")?,
        deadline: uint(permit, "deadline")?,
        sig: seed_sig(permit)?,
    })
}
