//! `exact`: an ERC-3009 `transferWithAuthorization` from the payer straight to `pay_to` (x402's
//! "exact" EVM scheme). Needs no chain read: the nonce is 32 random bytes. The only scheme with
//! an x402 v2 `PAYMENT-SIGNATURE` form.

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::Signature;
use alloy::sol_types::SolStruct;
use serde_json::{json, Value};
use x402_protocol::challenge::{
    PaymentRequirements, Resource, SeedComponent, SEED_PROTOCOL_VERSION,
};
use x402_protocol::eip712::TransferWithAuthorization;
use x402_protocol::x402v2::{ExactEvmAuthorization, ExactEvmPayload, PaymentPayload};
use x402_protocol::{Network, Scheme};

use super::signing::{
    check_signer, json_uint, now_naive, random_nonce, seed_signature, sign_digest, SignError,
    TokenDomain, V2Error,
};
use super::{BoxFuture, Choice, PaymentScheme, SeedContext, SeedError, Signed};

/// The `exact` scheme module.
pub(crate) struct Exact;

impl PaymentScheme for Exact {
    fn scheme(&self) -> Scheme {
        Scheme::Exact
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["erc3009", "eip3009"]
    }

    fn signed_what(&self) -> &'static str {
        "ERC-3009 transferWithAuthorization"
    }

    fn check_seed(
        &self,
        _: &SeedComponent,
        _: Network,
        _: &dyn Fn(Network) -> bool,
    ) -> Result<Option<Address>, String> {
        // Paid straight to pay_to: no spender, nothing to read on chain.
        Ok(None)
    }

    fn sign_seed<'a>(
        &'a self,
        ctx: &'a SeedContext<'a>,
        c: &'a Choice,
        now: u64,
    ) -> BoxFuture<'a, Result<Signed, SeedError>> {
        let signer = ctx.signer;
        let valid_before = now + ctx.authorization_ttl_secs;
        let signed = sign_authorization(
            signer,
            &c.domain,
            signer.address(),
            c.pay_to,
            c.amount,
            U256::ZERO,
            U256::from(valid_before),
            random_nonce(),
        )
        .map(|body| Signed {
            body,
            valid_until: valid_before,
        })
        .map_err(SeedError::from);
        Box::pin(std::future::ready(signed))
    }

    fn x402_v2_name(&self) -> Option<&'static str> {
        Some("exact")
    }

    fn x402_v2_domain(
        &self,
        r: &PaymentRequirements,
        network: Network,
        asset: Address,
    ) -> Result<TokenDomain, String> {
        v2_domain(r, network, asset)
            .ok_or_else(|| "no extra {name, version}: the asset's EIP-712 domain is unknown".into())
    }

    fn sign_x402_v2(
        &self,
        signer: &PrivateKeySigner,
        accepted: &PaymentRequirements,
        resource: Option<&Resource>,
        valid_before: u64,
    ) -> Result<PaymentPayload, V2Error> {
        x402_v2_payment(signer, accepted, resource, valid_before, random_nonce())
    }
}

/// The token's EIP-712 domain from an x402 v2 requirement's `extra {name, version}`.
fn v2_domain(r: &PaymentRequirements, network: Network, asset: Address) -> Option<TokenDomain> {
    let extra = r.extra.as_ref()?;
    Some(TokenDomain::new(
        extra.name.clone(),
        extra.version.clone(),
        network.chain_id,
        asset,
    ))
}

/// The EIP-712 digest the token checks for a transferWithAuthorization.
pub(crate) fn authorization_signing_hash(
    domain: &TokenDomain,
    auth: &TransferWithAuthorization,
) -> B256 {
    auth.eip712_signing_hash(&domain.eip712())
}

/// Signs an ERC-3009 authorization, refusing if the key is not its `from`.
fn authorization_signature(
    signer: &PrivateKeySigner,
    domain: &TokenDomain,
    auth: &TransferWithAuthorization,
) -> Result<Signature, SignError> {
    check_signer(signer, auth.from, "authorizer")?;
    sign_digest(signer, &authorization_signing_hash(domain, auth))
}

/// Signs an ERC-3009 transferWithAuthorization and returns the seed token-request body
/// (shape of `seed-0.3-erc3009-token-request.json`: `authorizer` = from, `recipient` = to).
#[allow(clippy::too_many_arguments)] // the authorization's own fields, plus key and domain
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
    let auth = TransferWithAuthorization {
        from,
        to,
        value,
        validAfter: valid_after,
        validBefore: valid_before,
        nonce,
    };
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

/// Builds and signs an x402 v2 `PAYMENT-SIGNATURE` payload for an `exact` requirement:
/// `validAfter` 0, the given `valid_before` and 32-byte `nonce`; `accepted` is the
/// requirement verbatim. Encode it for the header with [`crate::sign::x402_v2_header`].
///
/// The caller is responsible for the spend checks (the amount is signed as the server states it).
pub fn x402_v2_payment(
    signer: &PrivateKeySigner,
    accepted: &PaymentRequirements,
    resource: Option<&Resource>,
    valid_before: u64,
    nonce: B256,
) -> Result<PaymentPayload, V2Error> {
    if accepted.scheme != "exact" {
        return Err(V2Error::Scheme(accepted.scheme.clone()));
    }
    let network: Network =
        accepted
            .network
            .parse()
            .map_err(|e: x402_protocol::chain::NetworkError| {
                V2Error::Field("network", e.to_string())
            })?;
    let asset: Address = accepted
        .asset
        .parse()
        .map_err(|_| V2Error::Field("asset", accepted.asset.clone()))?;
    let pay_to: Address = accepted
        .pay_to
        .parse()
        .map_err(|_| V2Error::Field("payTo", accepted.pay_to.clone()))?;
    let value = x402_protocol::u256_serde::parse_str(&accepted.amount)
        .ok_or_else(|| V2Error::Field("amount", accepted.amount.clone()))?;
    let domain = v2_domain(accepted, network, asset)
        .ok_or_else(|| V2Error::Field("extra", "missing name/version".into()))?;
    let auth = TransferWithAuthorization {
        from: signer.address(),
        to: pay_to,
        value,
        validAfter: U256::ZERO,
        validBefore: U256::from(valid_before),
        nonce,
    };
    let sig = authorization_signature(signer, &domain, &auth)?;
    Ok(PaymentPayload {
        x402_version: x402_protocol::x402v2::X402_VERSION,
        resource: resource.cloned(),
        accepted: accepted.clone(),
        payload: ExactEvmPayload {
            signature: format!("0x{}", alloy::primitives::hex::encode(sig.as_bytes())),
            authorization: ExactEvmAuthorization {
                from: auth.from,
                to: auth.to,
                value,
                valid_after: U256::ZERO,
                valid_before: U256::from(valid_before),
                nonce,
            },
        },
        extensions: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::signing::x402_v2_header;
    use crate::test_fixtures::{sepolia_usdc as token, KEY0, KEY1};
    use x402_protocol::payment::{parse_payment_value, ClientPayment, PaymentFormat};

    #[test]
    fn authorization_body_has_seed_shape_and_recovers() {
        let signer: PrivateKeySigner = KEY1.parse().unwrap();
        let domain = TokenDomain::usdc(11155111, token());
        let to: Address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            .parse()
            .unwrap();
        let nonce = random_nonce();
        let body = sign_authorization(
            &signer,
            &domain,
            signer.address(),
            to,
            U256::from(500_000u64),
            U256::ZERO,
            U256::from(1795497904u64),
            nonce,
        )
        .unwrap();
        let p = &body["permit"];
        assert_eq!(p["permit_type"], "ERC3009");
        assert_eq!(
            p["authorizer"],
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        );
        assert_eq!(p["recipient"], "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
        assert_eq!(p["validAfter"], 0);
        assert_eq!(p["nonce"], nonce.to_string());
        let (parsed, _) = parse_payment_value(&body).unwrap();
        let ClientPayment::Authorization(a) = parsed else {
            panic!("not an authorization")
        };
        let digest = authorization_signing_hash(
            &domain,
            &TransferWithAuthorization {
                from: a.from,
                to: a.to,
                value: a.value,
                validAfter: a.valid_after,
                validBefore: a.valid_before,
                nonce: a.nonce,
            },
        );
        let sig = Signature::from_raw(&a.sig.to_bytes()).unwrap();
        assert_eq!(
            sig.recover_address_from_prehash(&digest).unwrap(),
            signer.address()
        );
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
            extra: Some(x402_protocol::challenge::AssetExtra {
                name: "USDC".into(),
                version: "2".into(),
            }),
        };
        let nonce = random_nonce();
        let payload = x402_v2_payment(&signer, &req, None, 1795497581, nonce).unwrap();
        let wire = serde_json::to_value(&payload).unwrap();
        assert_eq!(
            wire["payload"]["authorization"]["from"],
            signer.address().to_checksum(None)
        );
        assert_eq!(
            wire["accepted"]["payTo"],
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        );
        assert_eq!(wire["payload"]["authorization"]["validAfter"], "0");
        let header = x402_v2_header(&payload);
        let decoded = x402_protocol::b64::decode(&header).unwrap();
        let (p, fmt) = x402_protocol::payment::parse_payment(&decoded).unwrap();
        assert_eq!(fmt, PaymentFormat::X402V2);
        let ClientPayment::Authorization(a) = p else {
            panic!()
        };
        assert_eq!(a.nonce, nonce);
        let domain = TokenDomain::usdc(84532, a.token);
        let digest = authorization_signing_hash(
            &domain,
            &TransferWithAuthorization {
                from: a.from,
                to: a.to,
                value: a.value,
                validAfter: a.valid_after,
                validBefore: a.valid_before,
                nonce: a.nonce,
            },
        );
        let sig = Signature::from_raw(&a.sig.to_bytes()).unwrap();
        assert_eq!(
            sig.recover_address_from_prehash(&digest).unwrap(),
            signer.address()
        );
    }
}
