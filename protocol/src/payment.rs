//! The client's signed payment, in the formats clients send it, parsed into one model.
//!
//! Formats: the seed SDK's `{"version", "permit": {...}}` with `permit_type` `EIP2612` or
//! `ERC3009`, and the x402 v2 `PAYMENT-SIGNATURE` payload (`exact` = ERC-3009).

use alloy_primitives::{Address, B256, U256};
use serde::Deserialize;
use serde_json::Value;

use crate::chain::Network;
use crate::method::Scheme;

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
    pub fn scheme(&self) -> Scheme {
        match self {
            ClientPayment::Permit(_) => Scheme::Permit,
            ClientPayment::Authorization(_) => Scheme::Exact,
        }
    }
    pub fn payer(&self) -> Address {
        match self {
            ClientPayment::Permit(p) => p.owner,
            ClientPayment::Authorization(a) => a.from,
        }
    }
    pub fn network(&self) -> Network {
        match self {
            ClientPayment::Permit(p) => p.network,
            ClientPayment::Authorization(a) => a.network,
        }
    }
    pub fn token(&self) -> Address {
        match self {
            ClientPayment::Permit(p) => p.token,
            ClientPayment::Authorization(a) => a.token,
        }
    }
    pub fn value(&self) -> U256 {
        match self {
            ClientPayment::Permit(p) => p.value,
            ClientPayment::Authorization(a) => a.value,
        }
    }
    /// The single-use key of this payment: permit nonce as 32 bytes, or the ERC-3009 nonce.
    pub fn nonce_key(&self) -> B256 {
        match self {
            ClientPayment::Permit(p) => B256::from(p.nonce),
            ClientPayment::Authorization(a) => a.nonce,
        }
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
        .map_err(|_| field_err(field, format!("{s:?} is not an address")))
}

fn uint(obj: &Value, field: &'static str) -> Result<U256, PaymentError> {
    let v = get(obj, field)?;
    match v {
        Value::Number(n) => {
            // Integers only; the number's own text is parsed, so no float ever rounds it.
            let text = n.to_string();
            crate::u256_serde::parse_str(&text)
                .ok_or_else(|| field_err(field, format!("{text} is not a non-negative integer")))
        }
        Value::String(s) => crate::u256_serde::parse_str(s)
            .ok_or_else(|| field_err(field, format!("{s:?} is not a non-negative integer"))),
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

fn v_byte(obj: &Value) -> Result<u8, PaymentError> {
    let v = uint(obj, "v")?;
    match v.to::<u64>() {
        0 | 1 if v < U256::from(2u8) => Ok(27 + v.to::<u8>()),
        27 | 28 => Ok(v.to::<u8>()),
        _ => Err(field_err("v", "must be 27 or 28")),
    }
}

fn chain(obj: &Value) -> Result<Network, PaymentError> {
    let id = uint(obj, "chain_id")?;
    if id.is_zero() || id > U256::from(u64::MAX) {
        return Err(field_err("chain_id", "out of range"));
    }
    Ok(Network::eip155(id.to::<u64>()))
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

fn parse_seed(permit: &Value) -> Result<ClientPayment, PaymentError> {
    let kind = get(permit, "permit_type")?
        .as_str()
        .ok_or_else(|| field_err("permit_type", "must be a string"))?;
    match kind.to_ascii_uppercase().as_str() {
        "EIP2612" => Ok(ClientPayment::Permit(Permit {
            network: chain(permit)?,
            token: address(permit, "token")?,
            owner: address(permit, "owner")?,
            spender: address(permit, "spender")?,
            value: uint(permit, "value")?,
            nonce: uint(permit, "nonce")?,
            deadline: uint(permit, "deadline")?,
            sig: seed_sig(permit)?,
        })),
        "ERC3009" => Ok(ClientPayment::Authorization(Authorization {
            network: chain(permit)?,
            token: address(permit, "token")?,
            from: address(permit, "authorizer")?,
            to: address(permit, "recipient")?,
            value: uint(permit, "value")?,
            valid_after: uint(permit, "validAfter")?,
            valid_before: uint(permit, "validBefore")?,
            nonce: word(permit, "nonce")?,
            sig: seed_sig(permit)?,
        })),
        _ => Err(PaymentError::Unsupported(kind.to_string())),
    }
}

#[derive(Deserialize)]
struct V2Accepted {
    scheme: String,
    network: String,
    asset: String,
}

fn parse_v2(root: &Value) -> Result<ClientPayment, PaymentError> {
    let accepted: V2Accepted = serde_json::from_value(get(root, "accepted")?.clone())
        .map_err(|e| field_err("accepted", e.to_string()))?;
    if accepted.scheme != "exact" {
        return Err(PaymentError::Unsupported(accepted.scheme));
    }
    let network: Network = accepted
        .network
        .parse()
        .map_err(|e: crate::chain::NetworkError| field_err("accepted.network", e.to_string()))?;
    let token: Address = accepted
        .asset
        .parse()
        .map_err(|_| field_err("accepted.asset", "not an address"))?;
    let payload = get(root, "payload")?;
    let auth = get(payload, "authorization")?;
    let sig = get(payload, "signature")?
        .as_str()
        .ok_or_else(|| field_err("signature", "must be a hex string"))?;
    Ok(ClientPayment::Authorization(Authorization {
        network,
        token,
        from: address(auth, "from")?,
        to: address(auth, "to")?,
        value: uint(auth, "value")?,
        valid_after: uint(auth, "validAfter")?,
        valid_before: uint(auth, "validBefore")?,
        nonce: word(auth, "nonce")?,
        sig: parse_sig_hex(sig)?,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_2612: &str = r#"{"version":"Version 0.1","permit":{"permit_type":"EIP2612","signature":{"signature_type":"EIP2612","v":27,"r":"0x5b1c0e0d6a2c1f3e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e","s":"0x1f2e3d4c5b6a79880716253443526170819a8b7c6d5e4f3a2b1c0d9e8f7a6b"},"owner":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","spender":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","token":"0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238","value":500000,"nonce":0,"deadline":1795497709,"chain_id":11155111}}"#;
    const SEED_3009: &str = r#"{"version":"Version 0.1","permit":{"permit_type":"ERC3009","signature":{"v":28,"r":"0x7bfca501ca99e39e18545c67a24cd75c8203211a55174dced5e495cc25b4daf4","s":"0x6ed75006d9d74ba28ec6ce985884ca048b4db0c9bcb6485dc4fc77f8c83e08f8"},"token":"0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238","chain_id":11155111,"authorizer":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","recipient":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","value":500000,"validAfter":0,"validBefore":1795497904,"nonce":"0x14f8b17bb18c4e7b85255d26a5f5ee87b894fb0406317f49e19df28851a24516"}}"#;

    #[test]
    fn parses_seed_permit_with_unpadded_s() {
        let (p, f) = parse_payment(SEED_2612.as_bytes()).unwrap();
        assert_eq!(f, PaymentFormat::Seed);
        let ClientPayment::Permit(p) = p else {
            panic!()
        };
        assert_eq!(p.value, U256::from(500_000u64));
        assert_eq!(p.network.chain_id, 11155111);
        // s had 62 hex digits: left-padded with one zero byte.
        assert_eq!(p.sig.s.0[0], 0);
        assert_eq!(p.sig.s.0[1], 0x1f);
        assert_eq!(p.sig.v, 27);
    }

    #[test]
    fn parses_seed_erc3009() {
        let (p, _) = parse_payment(SEED_3009.as_bytes()).unwrap();
        let ClientPayment::Authorization(a) = p else {
            panic!()
        };
        assert_eq!(a.valid_before, U256::from(1795497904u64));
        assert_eq!(
            a.to,
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
                .parse::<Address>()
                .unwrap()
        );
    }

    /// Captured from x402-mock 0.3.0's `Http402Client` paying our gateway on anvil (chain 31337)
    /// with tests/python/seed_pay.py; the settler accepted and settled it on chain.
    const SEED_030_ANVIL: &str = r#"{"version":"Version 0.1","permit":{"permit_type":"ERC3009","signature":{"signature_type":"ERC3009","created_at":"2026-11-24T07:07:16.698755","v":28,"r":"0x5d97f9116d54aa8997011d22c878efa4c8604c46d74065f3e705153e3491f6fe","s":"0x2c5ae3405da411dcd6fb3adbd6e96c756cd78f3fb198158cdebddd88f3116ac2"},"created_at":"2026-11-24T07:07:16.691295","token":"0x5FbDB2315678afecb367f032d93F642f64180aa3","chain_id":31337,"authorizer":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","recipient":"0x90F79Bf6eb2c4F870365e51DB0aE3EeAa9a2a7b6","value":10000,"validAfter":0,"validBefore":1795504636,"nonce":"0x19067ad54570a4625d579a9868504fe2de741e323a85ea23847824c9917bf17a"}}"#;

    #[test]
    fn parses_a_real_seed_030_request() {
        let (p, f) = parse_payment(SEED_030_ANVIL.as_bytes()).unwrap();
        assert_eq!(f, PaymentFormat::Seed);
        assert_eq!(p.scheme(), Scheme::Exact);
        assert_eq!(p.network().chain_id, 31337);
        assert_eq!(
            p.payer(),
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
                .parse::<Address>()
                .unwrap()
        );
        assert_eq!(
            p.token(),
            "0x5FbDB2315678afecb367f032d93F642f64180aa3"
                .parse::<Address>()
                .unwrap()
        );
        assert_eq!(p.value(), U256::from(10_000u64));
        let ClientPayment::Authorization(a) = p else {
            panic!()
        };
        assert_eq!(
            a.to,
            "0x90F79Bf6eb2c4F870365e51DB0aE3EeAa9a2a7b6"
                .parse::<Address>()
                .unwrap()
        );
        assert_eq!(a.valid_after, U256::ZERO);
        assert_eq!(a.valid_before, U256::from(1795504636u64));
        assert_eq!(a.nonce.0[0], 0x19);
        assert_eq!(a.sig.v, 28);
        assert_eq!(a.sig.r.0[0], 0x5d);
    }

    #[test]
    fn parses_x402_v2() {
        let body = r#"{"x402Version":2,"payload":{"authorization":{"from":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","to":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","value":"10000","validAfter":"0","validBefore":"1795497581","nonce":"0xc2c1e4f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4e698"},"signature":"0x02dd9f1c0e0d6a2c1f3e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e1f2e3d4c5b6a79880716253443526170819a8b7c6d5e4f3a2b1c0d9e8f7a1c"},"accepted":{"scheme":"exact","network":"eip155:84532","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","amount":"10000","payTo":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","maxTimeoutSeconds":300,"extra":{"name":"USDC","version":"2"}}}"#;
        let (p, f) = parse_payment(body.as_bytes()).unwrap();
        assert_eq!(f, PaymentFormat::X402V2);
        assert_eq!(p.network().chain_id, 84532);
        assert_eq!(p.value(), U256::from(10_000u64));
        let ClientPayment::Authorization(a) = p else {
            panic!()
        };
        assert_eq!(a.sig.v, 28);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = SEED_2612.replace("\"value\":500000", "\"value\":0.5");
        assert_eq!(
            parse_payment(bad.as_bytes()).unwrap_err(),
            PaymentError::Field {
                field: "value",
                problem: "0.5 is not a non-negative integer".into()
            }
        );
        let bad = SEED_2612.replace("EIP2612\",\"signature", "Permit2\",\"signature");
        assert!(matches!(
            parse_payment(bad.as_bytes()),
            Err(PaymentError::Unsupported(_))
        ));
        let bad = SEED_2612.replace("\"v\":27", "\"v\":29");
        assert!(matches!(
            parse_payment(bad.as_bytes()),
            Err(PaymentError::Field { field: "v", .. })
        ));
        assert!(matches!(parse_payment(b"{"), Err(PaymentError::Json(_))));
        assert!(matches!(
            parse_payment(b"{}"),
            Err(PaymentError::Field {
                field: "permit",
                ..
            })
        ));
    }
}
