//! The payment schemes, one module each, and what they share.
//!
//! Each scheme module ([`permit`], [`exact`]) holds its payload type, its EIP-712 struct and
//! signing hash, and its wire parsing. This module holds the shared pieces: [`Sig`],
//! [`PaymentError`], the field readers, the [`ClientPayment`] dispatch through
//! [`SchemePayload`], and the format dispatch of [`parse_payment`] (seed SDK JSON and x402 v2).
//! [`crate::payment`] and [`crate::eip712`] re-export these under their historic paths.
//!
//! A new scheme is a new module, a [`ClientPayment`] variant with its arm in
//! [`ClientPayment::payload`], and its arm in `parse_seed` (and `parse_v2` if x402 v2 has it).

pub mod exact;
pub mod permit;

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::Eip712Domain;
use serde::Deserialize;
use serde_json::Value;

use crate::chain::Network;
use crate::method::Scheme;

pub use exact::Authorization;
pub use permit::Permit;

/// An ECDSA signature as (r, s, v) with v in {27, 28}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig {
    pub r: B256,
    pub s: B256,
    pub v: u8,
}

impl Sig {
    /// 65 bytes r || s || v, the form contracts and x402 v2 use.
    pub fn to_bytes(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[..32].copy_from_slice(self.r.as_slice());
        out[32..64].copy_from_slice(self.s.as_slice());
        out[64] = self.v;
        out
    }
}

/// What every scheme's signed payload answers; [`ClientPayment`] dispatches to it.
pub trait SchemePayload {
    fn scheme(&self) -> Scheme;
    /// The address whose tokens move (and whose key signed).
    fn payer(&self) -> Address;
    fn network(&self) -> Network;
    fn token(&self) -> Address;
    fn value(&self) -> U256;
    /// The single-use key of this payment.
    fn nonce_key(&self) -> B256;
    /// The EIP-712 digest the payer signed, under the token's `domain`.
    fn signing_hash(&self, domain: &Eip712Domain) -> B256;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPayment {
    Permit(Permit),
    Authorization(Authorization),
}

/// Which wire format the payment came in, so answers can be shaped for that client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentFormat {
    Seed,
    X402V2,
}

impl ClientPayment {
    /// The scheme's payload behind this payment (the one place that matches on the variant).
    pub fn payload(&self) -> &dyn SchemePayload {
        match self {
            ClientPayment::Permit(p) => p,
            ClientPayment::Authorization(a) => a,
        }
    }
    pub fn scheme(&self) -> Scheme {
        self.payload().scheme()
    }
    pub fn payer(&self) -> Address {
        self.payload().payer()
    }
    pub fn network(&self) -> Network {
        self.payload().network()
    }
    pub fn token(&self) -> Address {
        self.payload().token()
    }
    pub fn value(&self) -> U256 {
        self.payload().value()
    }
    /// The single-use key of this payment: permit nonce as 32 bytes, or the ERC-3009 nonce.
    pub fn nonce_key(&self) -> B256 {
        self.payload().nonce_key()
    }
    /// The digest this payment was signed over, under `domain`.
    pub fn signing_hash(&self, domain: &Eip712Domain) -> B256 {
        self.payload().signing_hash(domain)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("payment body is not valid JSON: {0}")]
    Json(String),
    #[error("payment type {0:?} is not supported (accepted: EIP2612, ERC3009, x402 v2 exact)")]
    Unsupported(String),
    #[error("payment field `{field}`: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

impl PaymentError {
    pub fn code(&self) -> &'static str {
        match self {
            PaymentError::Json(_) => "invalid_json",
            PaymentError::Unsupported(_) => "unsupported_payment_type",
            PaymentError::Field { .. } => "invalid_payment",
        }
    }
}

fn field_err(field: &'static str, problem: impl Into<String>) -> PaymentError {
    PaymentError::Field {
        field,
        problem: problem.into(),
    }
}

fn get<'a>(obj: &'a Value, field: &'static str) -> Result<&'a Value, PaymentError> {
    obj.get(field)
        .filter(|v| !v.is_null())
        .ok_or_else(|| field_err(field, "missing"))
}

fn address(obj: &Value, field: &'static str) -> Result<Address, PaymentError> {
    let v = get(obj, field)?;
    let s = v
        .as_str()
        .ok_or_else(|| field_err(field, "must be a 0x address string"))?;
    s.parse::<Address>()
        .map_err(|_| field_err(field, format!("{} is not an address", shown(s))))
}

pub use crate::shown::{shown, SHOWN_MAX};

fn uint(obj: &Value, field: &'static str) -> Result<U256, PaymentError> {
    let v = get(obj, field)?;
    match v {
        // Integers only; a JSON number that is not a u64 (negative, fractional, or too large
        // to be read exactly) is refused, never rounded.
        Value::Number(n) => match n.as_u64() {
            Some(u) => Ok(U256::from(u)),
            None if n.is_i64() => Err(field_err(field, format!("{n} is negative"))),
            None => Err(field_err(
                field,
                format!("{n} is not an integer below 2^64 (larger integers go as decimal strings)"),
            )),
        },
        Value::String(s) => crate::u256_serde::parse_str(s).ok_or_else(|| {
            field_err(
                field,
                format!(
                    "{} is not an integer in 0..2^256 (decimal or 0x-hex)",
                    shown(s)
                ),
            )
        }),
        _ => Err(field_err(field, "must be an integer")),
    }
}

/// A 32-byte word given as hex, possibly without leading zeros (the seed SDK drops them).
fn word(obj: &Value, field: &'static str) -> Result<B256, PaymentError> {
    let v = get(obj, field)?;
    match v {
        Value::String(s) => {
            parse_word_str(s).ok_or_else(|| field_err(field, "must be hex of at most 32 bytes"))
        }
        Value::Number(_) => Ok(B256::from(uint(obj, field)?)),
        _ => Err(field_err(field, "must be a hex string")),
    }
}

/// A 32-byte word as hex (0x optional) of at most 64 digits, left-padded with zeros.
pub fn parse_word_str(s: &str) -> Option<B256> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    format!("{hex:0>64}").parse::<B256>().ok()
}

/// The recovery id: 27 or 28, or 0 or 1 (read as 27 and 28). Any other value, however
/// large, is refused by a checked conversion.
fn v_byte(obj: &Value) -> Result<u8, PaymentError> {
    let v = uint(obj, "v")?;
    recovery_byte(v).ok_or_else(|| field_err("v", format!("{v} is not 27 or 28 (or 0 or 1)")))
}

/// `v` as 27 or 28 when it is one of 0, 1, 27, 28.
pub fn recovery_byte(v: U256) -> Option<u8> {
    match u8::try_from(v).ok()? {
        b @ (0 | 1) => Some(b + 27),
        b @ (27 | 28) => Some(b),
        _ => None,
    }
}

fn chain(obj: &Value) -> Result<Network, PaymentError> {
    let id = uint(obj, "chain_id")?;
    match u64::try_from(id) {
        Ok(id) if id != 0 => Ok(Network::eip155(id)),
        _ => Err(field_err(
            "chain_id",
            format!("{id} is out of range (1..2^64)"),
        )),
    }
}

fn seed_sig(obj: &Value) -> Result<Sig, PaymentError> {
    let sig = get(obj, "signature")?;
    if !sig.is_object() {
        return Err(field_err("signature", "must be an object with v, r, s"));
    }
    Ok(Sig {
        v: v_byte(sig)?,
        r: word(sig, "r")?,
        s: word(sig, "s")?,
    })
}

/// Parses a 65-byte hex signature (r || s || v).
pub fn parse_sig_hex(s: &str) -> Result<Sig, PaymentError> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    if hex.len() != 130 {
        return Err(field_err(
            "signature",
            format!(
                "must be 65 bytes (130 hex digits), got {} characters",
                hex.len()
            ),
        ));
    }
    let bytes =
        alloy_primitives::hex::decode(hex).map_err(|_| field_err("signature", "must be hex"))?;
    if bytes.len() != 65 {
        return Err(field_err(
            "signature",
            format!("must be 65 bytes, got {}", bytes.len()),
        ));
    }
    let v = match bytes[64] {
        0 | 1 => bytes[64] + 27,
        27 | 28 => bytes[64],
        other => {
            return Err(field_err(
                "signature",
                format!("recovery byte {other} is not 27 or 28"),
            ))
        }
    };
    Ok(Sig {
        r: B256::from_slice(&bytes[..32]),
        s: B256::from_slice(&bytes[32..64]),
        v,
    })
}

/// The seed `permit` object, dispatched on `permit_type` (one arm per scheme).
fn parse_seed(permit: &Value) -> Result<ClientPayment, PaymentError> {
    let kind = get(permit, "permit_type")?
        .as_str()
        .ok_or_else(|| field_err("permit_type", "must be a string"))?;
    match kind.to_ascii_uppercase().as_str() {
        permit::SEED_TYPE => permit::parse_seed(permit).map(ClientPayment::Permit),
        exact::SEED_TYPE => exact::parse_seed(permit).map(ClientPayment::Authorization),
        _ => Err(PaymentError::Unsupported(cut(kind))),
    }
}

/// The first [`SHOWN_MAX`] characters of a client's text, for [`PaymentError::Unsupported`].
fn cut(s: &str) -> String {
    match s.char_indices().nth(SHOWN_MAX) {
        None => s.to_string(),
        Some((end, _)) => format!("{}...", &s[..end]),
    }
}

#[derive(Deserialize)]
struct V2Accepted {
    scheme: String,
    network: String,
    asset: String,
}

/// A scheme's x402 v2 `payload` parser, given the network and asset of `accepted`.
type V2Parser = fn(Network, Address, &Value) -> Result<ClientPayment, PaymentError>;

/// An x402 v2 payment payload, dispatched on `accepted.scheme` (one arm per scheme).
fn parse_v2(root: &Value) -> Result<ClientPayment, PaymentError> {
    let accepted: V2Accepted = serde_json::from_value(get(root, "accepted")?.clone())
        .map_err(|e| field_err("accepted", e.to_string()))?;
    let parse: V2Parser = match accepted.scheme.as_str() {
        exact::V2_SCHEME => |network, token, payload| {
            exact::parse_v2(network, token, payload).map(ClientPayment::Authorization)
        },
        _ => return Err(PaymentError::Unsupported(cut(&accepted.scheme))),
    };
    let network: Network = accepted
        .network
        .parse()
        .map_err(|e: crate::chain::NetworkError| field_err("accepted.network", e.to_string()))?;
    let token: Address = accepted
        .asset
        .parse()
        .map_err(|_| field_err("accepted.asset", "not an address"))?;
    parse(network, token, get(root, "payload")?)
}

/// Parses a token-request body or a decoded `PAYMENT-SIGNATURE` payload.
pub fn parse_payment(json: &[u8]) -> Result<(ClientPayment, PaymentFormat), PaymentError> {
    let root: Value =
        serde_json::from_slice(json).map_err(|e| PaymentError::Json(e.to_string()))?;
    parse_payment_value(&root)
}

pub fn parse_payment_value(root: &Value) -> Result<(ClientPayment, PaymentFormat), PaymentError> {
    if !root.is_object() {
        return Err(PaymentError::Json("expected a JSON object".into()));
    }
    if root.get("x402Version").is_some() {
        return Ok((parse_v2(root)?, PaymentFormat::X402V2));
    }
    if let Some(permit) = root.get("permit") {
        return Ok((parse_seed(permit)?, PaymentFormat::Seed));
    }
    Err(field_err(
        "permit",
        "missing: expected a seed `permit` object or an x402 v2 payload",
    ))
}
