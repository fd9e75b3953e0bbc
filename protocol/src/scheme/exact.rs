//! Scheme `exact`: an ERC-3009 `transferWithAuthorization` straight to `pay_to`.
//!
//! Comes in the seed format (`permit_type` `ERC3009`) and as the x402 v2 `exact` EVM payload.

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};
use serde_json::Value;

use super::{
    address, chain, field_err, get, parse_sig_hex, seed_sig, uint, word, PaymentError,
    SchemePayload, Sig,
};
use crate::chain::Network;
use crate::method::Scheme;

/// The seed SDK's `permit_type` for this scheme (matched case-insensitively).
pub const SEED_TYPE: &str = "ERC3009";

/// The x402 v2 `accepted.scheme` of this scheme.
pub const V2_SCHEME: &str = "exact";

/// ERC-3009 transferWithAuthorization: `from` sends `value` to `to` inside the time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub network: Network,
    pub token: Address,
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub valid_after: U256,
    pub valid_before: U256,
    pub nonce: B256,
    pub sig: Sig,
}

/// The EIP-712 message.
pub mod typed {
    alloy_sol_types::sol! {
        /// ERC-3009 `TransferWithAuthorization`. The struct name is part of the type hash.
        #[derive(Debug, Default, PartialEq, Eq)]
        struct TransferWithAuthorization {
            address from;
            address to;
            uint256 value;
            uint256 validAfter;
            uint256 validBefore;
            bytes32 nonce;
        }
    }
}

impl Authorization {
    /// The EIP-712 message the payer signed.
    pub fn message(&self) -> typed::TransferWithAuthorization {
        typed::TransferWithAuthorization {
            from: self.from,
            to: self.to,
            value: self.value,
            validAfter: self.valid_after,
            validBefore: self.valid_before,
            nonce: self.nonce,
        }
    }
}

impl SchemePayload for Authorization {
    fn scheme(&self) -> Scheme {
        Scheme::Exact
    }
    fn payer(&self) -> Address {
        self.from
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
    /// The ERC-3009 nonce.
    fn nonce_key(&self) -> B256 {
        self.nonce
    }
    fn signing_hash(&self, domain: &Eip712Domain) -> B256 {
        self.message().eip712_signing_hash(domain)
    }
}

/// The seed `permit` object of `permit_type` [`SEED_TYPE`].
pub(super) fn parse_seed(permit: &Value) -> Result<Authorization, PaymentError> {
    Ok(Authorization {
        network: chain(permit)?,
        token: address(permit, "token")?,
        from: address(permit, "authorizer")?,
        to: address(permit, "recipient")?,
        value: uint(permit, "value")?,
        valid_after: uint(permit, "validAfter")?,
        valid_before: uint(permit, "validBefore")?,
        nonce: word(permit, "nonce")?,
        sig: seed_sig(permit)?,
    })
}

/// The x402 v2 `payload` `{authorization, signature}`, for the network and asset of `accepted`.
pub(super) fn parse_v2(
    network: Network,
    token: Address,
    payload: &Value,
) -> Result<Authorization, PaymentError> {
    let auth = get(payload, "authorization")?;
    let sig = get(payload, "signature")?
        .as_str()
        .ok_or_else(|| field_err("signature", "must be a hex string"))?;
    Ok(Authorization {
        network,
        token,
        from: address(auth, "from")?,
        to: address(auth, "to")?,
        value: uint(auth, "value")?,
        valid_after: uint(auth, "validAfter")?,
        valid_before: uint(auth, "validBefore")?,
        nonce: word(auth, "nonce")?,
        sig: parse_sig_hex(sig)?,
    })
}
