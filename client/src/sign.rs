//! EIP-712 signing of EIP-2612 `Permit` and ERC-3009 `TransferWithAuthorization`, and the
//! request bodies that carry them: the seed SDK token request (`{"version":"Version 0.1",
//! "permit":{...}}`) and the x402 v2 `PAYMENT-SIGNATURE` payload.
//!
//! Usable from other crates' tests: every function takes plain values and a local key.

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::{Signature, SignerSync};
use alloy::sol_types::{Eip712Domain, SolStruct};
use serde_json::{json, Value};
use x402_protocol::challenge::{PaymentRequirements, Resource};

pub use x402_protocol::challenge::SEED_PROTOCOL_VERSION;

/// The EIP-712 messages, defined once in `x402_protocol::eip712` (the settler recovers with them).
pub use x402_protocol::eip712::{Permit, TransferWithAuthorization};

/// The token's EIP-712 domain: `{name, version, chainId, verifyingContract}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDomain {
    pub name: String,
    pub version: String,
    pub chain_id: u64,
    pub verifying_contract: Address,
}

impl TokenDomain {
    pub fn new(name: impl Into<String>, version: impl Into<String>, chain_id: u64, token: Address) -> Self {
        TokenDomain { name: name.into(), version: version.into(), chain_id, verifying_contract: token }
    }

    /// Real USDC (and the test token): name "USDC", version "2".
    pub fn usdc(chain_id: u64, token: Address) -> Self {
        Self::new("USDC", "2", chain_id, token)
    }

    pub fn eip712(&self) -> Eip712Domain {
        x402_protocol::eip712::domain(&self.name, &self.version, self.chain_id, self.verifying_contract)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the key's address {key} is not the {role} {expected} the payment names")]
    WrongSigner { key: Address, expected: Address, role: &'static str },
    #[error("signing failed: {0}")]
    Signer(String),
}

/// The EIP-712 digest the token checks for a permit.
pub fn permit_signing_hash(domain: &TokenDomain, permit: &Permit) -> B256 {
    permit.eip712_signing_hash(&domain.eip712())
}

/// The EIP-712 digest the token checks for a transferWithAuthorization.
pub fn authorization_signing_hash(domain: &TokenDomain, auth: &TransferWithAuthorization) -> B256 {
    auth.eip712_signing_hash(&domain.eip712())
}

fn sign_digest(signer: &PrivateKeySigner, digest: &B256) -> Result<Signature, SignError> {
    signer.sign_hash_sync(digest).map_err(|e| SignError::Signer(e.to_string()))
}

fn check_signer(signer: &PrivateKeySigner, expected: Address, role: &'static str) -> Result<(), SignError> {
    if signer.address() != expected {
        return Err(SignError::WrongSigner { key: signer.address(), expected, role });
    }
    Ok(())
}

/// Signs a permit; returns the signature (v is 27/28 via `v_byte()`).
pub fn permit_signature(signer: &PrivateKeySigner, domain: &TokenDomain, permit: &Permit) -> Result<Signature, SignError> {
    check_signer(signer, permit.owner, "owner")?;
    sign_digest(signer, &permit_signing_hash(domain, permit))
}

/// Signs an ERC-3009 authorization.
pub fn authorization_signature(
    signer: &PrivateKeySigner,
    domain: &TokenDomain,
    auth: &TransferWithAuthorization,
) -> Result<Signature, SignError> {
    check_signer(signer, auth.from, "authorizer")?;
    sign_digest(signer, &authorization_signing_hash(domain, auth))
}

/// A JSON integer when it fits in u64 (the seed SDK's form), else a decimal string (which the
/// gateway's parser also accepts).
fn json_uint(v: U256) -> Value {
    if v <= U256::from(u64::MAX) {
        Value::from(v.to::<u64>())
    } else {
        Value::String(v.to_string())
    }
}

fn hex32(v: U256) -> String {
    format!("0x{}", alloy::primitives::hex::encode(v.to_be_bytes::<32>()))
}

fn now_naive() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    chrono::DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos())
        .map(|t| t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
        .unwrap_or_default()
}

fn seed_signature(kind: &str, sig: &Signature) -> Value {
    json!({
        "signature_type": kind,
        "created_at": now_naive(),
        "v": sig.v_byte(),
        // Always zero-padded to 64 hex digits (the seed SDK sometimes dropped leading zeros).
        "r": hex32(sig.r()),
        "s": hex32(sig.s()),
    })
}

/// Signs an EIP-2612 permit and returns the seed token-request body
/// (shape of `seed-0.1-eip2612-token-request.json`).
#[allow(clippy::too_many_arguments)]
pub fn sign_permit(
    signer: &PrivateKeySigner,
    domain: &TokenDomain,
    owner: Address,
    spender: Address,
    value: U256,
    nonce: U256,
    deadline: U256,
) -> Result<Value, SignError> {
    let permit = Permit { owner, spender, value, nonce, deadline };
    let sig = permit_signature(signer, domain, &permit)?;
    Ok(json!({
        "version": SEED_PROTOCOL_VERSION,
        "permit": {
            "permit_type": "EIP2612",
            "signature": seed_signature("EIP2612", &sig),
            "created_at": now_naive(),
            "owner": owner.to_checksum(None),
            "spender": spender.to_checksum(None),
            "token": domain.verifying_contract.to_checksum(None),
            "value": json_uint(value),
            "nonce": json_uint(nonce),
            "deadline": json_uint(deadline),
            "chain_id": domain.chain_id,
        }
    }))
}

/// Signs an ERC-3009 transferWithAuthorization and returns the seed token-request body
/// (shape of `seed-0.3-erc3009-token-request.json`: `authorizer` = from, `recipient` = to).
#[allow(clippy::too_many_arguments)]
pub fn sign_authorization(
    signer: &PrivateKeySigner,
    domain: &TokenDomain,
    from: Address,
    to: Address,
    value: U256,
    valid_after: U256,
    valid_before: U256,
    nonce: B256,
) -> Result<Value, SignError> {
    let auth = TransferWithAuthorization { from, to, value, validAfter: valid_after, validBefore: valid_before, nonce };
    let sig = authorization_signature(signer, domain, &auth)?;
    Ok(json!({
        "version": SEED_PROTOCOL_VERSION,
        "permit": {
            "permit_type": "ERC3009",
            "signature": seed_signature("ERC3009", &sig),
            "created_at": now_naive(),
            "token": domain.verifying_contract.to_checksum(None),
            "chain_id": domain.chain_id,
            "authorizer": from.to_checksum(None),
            "recipient": to.to_checksum(None),
            "value": json_uint(value),
            "validAfter": json_uint(valid_after),
            "validBefore": json_uint(valid_before),
            "nonce": nonce.to_string(),
        }
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    #[error("x402 v2 requirement field `{0}` is invalid: {1}")]
    Field(&'static str, String),
    #[error("x402 v2 scheme {0:?} is not supported (only \"exact\")")]
    Scheme(String),
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// Builds and signs an x402 v2 `PAYMENT-SIGNATURE` payload for an `exact` requirement:
/// `validAfter` 0, the given `valid_before` and 32-byte `nonce`; `accepted` is the
/// requirement verbatim. Encode it for the header with [`x402_v2_header`].
///
/// The caller is responsible for the spend checks (the amount is signed as the server states it).
pub fn x402_v2_payment(
    signer: &PrivateKeySigner,
    accepted: &PaymentRequirements,
    resource: Option<&Resource>,
    valid_before: u64,
    nonce: B256,
) -> Result<Value, V2Error> {
    if accepted.scheme != "exact" {
        return Err(V2Error::Scheme(accepted.scheme.clone()));
    }
    let network: x402_protocol::Network =
        accepted.network.parse().map_err(|e: x402_protocol::chain::NetworkError| V2Error::Field("network", e.to_string()))?;
    let asset: Address = accepted.asset.parse().map_err(|_| V2Error::Field("asset", accepted.asset.clone()))?;
    let pay_to: Address = accepted.pay_to.parse().map_err(|_| V2Error::Field("payTo", accepted.pay_to.clone()))?;
    let value = x402_protocol::u256_serde::parse_str(&accepted.amount)
        .ok_or_else(|| V2Error::Field("amount", accepted.amount.clone()))?;
    let extra = accepted.extra.as_ref().ok_or_else(|| V2Error::Field("extra", "missing name/version".into()))?;
    let domain = TokenDomain::new(extra.name.clone(), extra.version.clone(), network.chain_id, asset);
    let auth = TransferWithAuthorization {
        from: signer.address(),
        to: pay_to,
        value,
        validAfter: U256::ZERO,
        validBefore: U256::from(valid_before),
        nonce,
    };
    let sig = authorization_signature(signer, &domain, &auth)?;
    let mut out = json!({
        "x402Version": 2,
        "payload": {
            "authorization": {
                "from": auth.from.to_checksum(None),
                "to": auth.to.to_checksum(None),
                "value": value.to_string(),
                "validAfter": "0",
                "validBefore": valid_before.to_string(),
                "nonce": nonce.to_string(),
            },
            "signature": format!("0x{}", alloy::primitives::hex::encode(sig.as_bytes())),
        },
        "accepted": accepted,
    });
    if let Some(r) = resource {
        out["resource"] = serde_json::to_value(r).unwrap_or(Value::Null);
    }
    Ok(out)
}

/// `PAYMENT-SIGNATURE` header value: standard base64 (padded) of the payload JSON.
pub fn x402_v2_header(payload: &Value) -> String {
    x402_protocol::b64::encode(payload.to_string().as_bytes())
}

/// 32 random bytes for an ERC-3009 nonce.
pub fn random_nonce() -> B256 {
    B256::from(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x402_protocol::payment::{parse_payment_value, ClientPayment, PaymentFormat};

    const KEY0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const KEY1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    fn token() -> Address {
        "0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238".parse().unwrap()
    }

    #[test]
    fn permit_body_has_seed_shape_and_recovers_to_owner() {
        let signer: PrivateKeySigner = KEY1.parse().unwrap();
        let domain = TokenDomain::usdc(11155111, token());
        let spender: Address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".parse().unwrap();
        let body = sign_permit(&signer, &domain, signer.address(), spender, U256::from(500_000u64), U256::from(3u64), U256::from(1795497709u64)).unwrap();
        assert_eq!(body["version"], "Version 0.1");
        let p = &body["permit"];
        assert_eq!(p["permit_type"], "EIP2612");
        assert_eq!(p["owner"], "0x70997970C51812dc3A010C7d01b50e0d17dc79C8");
        assert_eq!(p["value"], 500000);
        assert_eq!(p["nonce"], 3);
        assert_eq!(p["chain_id"], 11155111);
        assert_eq!(p["signature"]["r"].as_str().unwrap().len(), 66);
        assert_eq!(p["signature"]["s"].as_str().unwrap().len(), 66);
        // The gateway's own parser accepts it, and the signature recovers to the owner over
        // the EIP-712 digest computed independently.
        let (parsed, fmt) = parse_payment_value(&body).unwrap();
        assert_eq!(fmt, PaymentFormat::Seed);
        let ClientPayment::Permit(pp) = parsed else { panic!("not a permit") };
        let digest = permit_signing_hash(
            &domain,
            &Permit { owner: pp.owner, spender: pp.spender, value: pp.value, nonce: pp.nonce, deadline: pp.deadline },
        );
        let sig = Signature::from_raw(&pp.sig.to_bytes()).unwrap();
        assert_eq!(sig.recover_address_from_prehash(&digest).unwrap(), signer.address());
        // A different domain (version "1") does not recover to the owner.
        let other = permit_signing_hash(
            &TokenDomain::new("USDC", "1", 11155111, token()),
            &Permit { owner: pp.owner, spender: pp.spender, value: pp.value, nonce: pp.nonce, deadline: pp.deadline },
        );
        assert_ne!(sig.recover_address_from_prehash(&other).unwrap(), signer.address());
    }

    #[test]
    fn authorization_body_has_seed_shape_and_recovers() {
        let signer: PrivateKeySigner = KEY1.parse().unwrap();
        let domain = TokenDomain::usdc(11155111, token());
        let to: Address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".parse().unwrap();
        let nonce = random_nonce();
        let body = sign_authorization(&signer, &domain, signer.address(), to, U256::from(500_000u64), U256::ZERO, U256::from(1795497904u64), nonce).unwrap();
        let p = &body["permit"];
        assert_eq!(p["permit_type"], "ERC3009");
        assert_eq!(p["authorizer"], "0x70997970C51812dc3A010C7d01b50e0d17dc79C8");
        assert_eq!(p["recipient"], "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
        assert_eq!(p["validAfter"], 0);
        assert_eq!(p["nonce"], nonce.to_string());
        let (parsed, _) = parse_payment_value(&body).unwrap();
        let ClientPayment::Authorization(a) = parsed else { panic!("not an authorization") };
        let digest = authorization_signing_hash(
            &domain,
            &TransferWithAuthorization { from: a.from, to: a.to, value: a.value, validAfter: a.valid_after, validBefore: a.valid_before, nonce: a.nonce },
        );
        let sig = Signature::from_raw(&a.sig.to_bytes()).unwrap();
        assert_eq!(sig.recover_address_from_prehash(&digest).unwrap(), signer.address());
    }

    #[test]
    fn refuses_to_sign_for_someone_else() {
        let signer: PrivateKeySigner = KEY0.parse().unwrap();
        let other: Address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".parse().unwrap();
        let r = sign_permit(&signer, &TokenDomain::usdc(1, token()), other, other, U256::from(1u8), U256::ZERO, U256::from(1u8));
        assert!(matches!(r, Err(SignError::WrongSigner { .. })));
    }

    #[test]
    fn x402_v2_payload_round_trips_through_the_gateway_parser() {
        let signer: PrivateKeySigner = KEY0.parse().unwrap();
        let req = PaymentRequirements {
            scheme: "exact".into(),
            network: "eip155:84532".into(),
            amount: "10000".into(),
            asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            pay_to: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into(),
            max_timeout_seconds: 300,
            extra: Some(x402_protocol::challenge::AssetExtra { name: "USDC".into(), version: "2".into() }),
        };
        let nonce = random_nonce();
        let payload = x402_v2_payment(&signer, &req, None, 1795497581, nonce).unwrap();
        assert_eq!(payload["accepted"]["payTo"], "0x70997970C51812dc3A010C7d01b50e0d17dc79C8");
        assert_eq!(payload["payload"]["authorization"]["validAfter"], "0");
        let header = x402_v2_header(&payload);
        let decoded = x402_protocol::b64::decode(&header).unwrap();
        let (p, fmt) = x402_protocol::payment::parse_payment(&decoded).unwrap();
        assert_eq!(fmt, PaymentFormat::X402V2);
        let ClientPayment::Authorization(a) = p else { panic!() };
        assert_eq!(a.nonce, nonce);
        let domain = TokenDomain::usdc(84532, a.token);
        let digest = authorization_signing_hash(
            &domain,
            &TransferWithAuthorization { from: a.from, to: a.to, value: a.value, validAfter: a.valid_after, validBefore: a.valid_before, nonce: a.nonce },
        );
        let sig = Signature::from_raw(&a.sig.to_bytes()).unwrap();
        assert_eq!(sig.recover_address_from_prehash(&digest).unwrap(), signer.address());
    }
}
