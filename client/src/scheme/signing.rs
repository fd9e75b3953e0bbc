//! The signing pieces every scheme shares: the token's EIP-712 domain, signing a digest with
//! the payer's key (refusing a key that is not the payment's signer), the seed request body's
//! signature object and integer forms, random ERC-3009 nonces, the `PAYMENT-SIGNATURE` header
//! encoding. The public ones are re-exported by [`crate::sign`].

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::{Signature, SignerSync};
use alloy::sol_types::Eip712Domain;
use serde_json::{json, Value};

/// The token's EIP-712 domain: `{name, version, chainId, verifyingContract}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDomain {
    pub name: String,
    pub version: String,
    pub chain_id: u64,
    pub verifying_contract: Address,
}

impl TokenDomain {
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        chain_id: u64,
        token: Address,
    ) -> Self {
        TokenDomain {
            name: name.into(),
            version: version.into(),
            chain_id,
            verifying_contract: token,
        }
    }

    /// Real USDC (and the test token): name "USDC", version "2".
    pub fn usdc(chain_id: u64, token: Address) -> Self {
        Self::new("USDC", "2", chain_id, token)
    }

    pub fn eip712(&self) -> Eip712Domain {
        x402_protocol::eip712::domain(
            &self.name,
            &self.version,
            self.chain_id,
            self.verifying_contract,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the key's address {key} is not the {role} {expected} the payment names")]
    WrongSigner {
        key: Address,
        expected: Address,
        role: &'static str,
    },
    #[error("signing failed: {0}")]
    Signer(String),
}

#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    #[error("x402 v2 requirement field `{0}` is invalid: {1}")]
    Field(&'static str, String),
    #[error("x402 v2 scheme {0:?} is not supported (only \"{names}\")", names = super::x402_v2_names())]
    Scheme(String),
    #[error(transparent)]
    Sign(#[from] SignError),
}

pub(crate) fn sign_digest(
    signer: &PrivateKeySigner,
    digest: &B256,
) -> Result<Signature, SignError> {
    signer
        .sign_hash_sync(digest)
        .map_err(|e| SignError::Signer(e.to_string()))
}

/// A key must sign only for itself: the payment's owner/authorizer must be the key's address.
pub(crate) fn check_signer(
    signer: &PrivateKeySigner,
    expected: Address,
    role: &'static str,
) -> Result<(), SignError> {
    if signer.address() != expected {
        return Err(SignError::WrongSigner {
            key: signer.address(),
            expected,
            role,
        });
    }
    Ok(())
}

/// A JSON integer when it fits in u64 (the seed SDK's form), else a decimal string (which the
/// gateway's parser also accepts).
pub(crate) fn json_uint(v: U256) -> Value {
    if v <= U256::from(u64::MAX) {
        Value::from(v.to::<u64>())
    } else {
        Value::String(v.to_string())
    }
}

fn hex32(v: U256) -> String {
    format!(
        "0x{}",
        alloy::primitives::hex::encode(v.to_be_bytes::<32>())
    )
}

/// The seed SDK's `created_at`: naive UTC with microseconds.
pub(crate) fn now_naive() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    chrono::DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos())
        .map(|t| t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
        .unwrap_or_default()
}

/// The seed body's `signature` object for a `kind` ("EIP2612", "ERC3009") signature.
pub(crate) fn seed_signature(kind: &str, sig: &Signature) -> Value {
    json!({
        "signature_type": kind,
        "created_at": now_naive(),
        "v": sig.v_byte(),
        // Always zero-padded to 64 hex digits (the seed SDK sometimes dropped leading zeros).
        "r": hex32(sig.r()),
        "s": hex32(sig.s()),
    })
}

/// `PAYMENT-SIGNATURE` header value: standard base64 (padded) of the payload JSON.
pub fn x402_v2_header(payload: &x402_protocol::x402v2::PaymentPayload) -> String {
    // Serialising these plain structs cannot fail; an empty header would be refused.
    let json = serde_json::to_vec(payload).unwrap_or_default();
    x402_protocol::b64::encode(&json)
}

/// 32 random bytes for an ERC-3009 nonce.
pub fn random_nonce() -> B256 {
    B256::from(rand::random::<[u8; 32]>())
}
