//! Pure checks of a client payment against the gateway's requirement: which accepted method
//! it matches, whose signature it carries, and whether amounts, parties and times are right.
//! The scheme-specific parts come from `scheme`; chain-state checks (balance, nonces) are in
//! `service::accept`, as they need RPC and the store. No I/O here.

use alloy::primitives::{Address, Signature, B256, U256};
use alloy::sol_types::Eip712Domain;
use x402_protocol::payment::{ClientPayment, Sig};
use x402_protocol::settler_api::{PricedMethod, Requirement};
use x402_protocol::PaymentMethod;

use crate::error::Refusal;
use crate::scheme;

/// secp256k1 group order / 2: signatures with a larger `s` are the malleable twin.
pub(crate) const SECP256K1_HALF_N: U256 = U256::from_be_bytes(alloy::primitives::hex!(
    "7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0"
));

/// The EIP-712 domain of the requirement's asset (never the client's claims about it).
pub(crate) fn domain(method: &PaymentMethod) -> Eip712Domain {
    x402_protocol::eip712::method_domain(method)
}

/// The EIP-712 digest the payer signed, under the requirement's domain.
pub(crate) fn signing_hash(payment: &ClientPayment, method: &PaymentMethod) -> B256 {
    x402_protocol::eip712::signing_hash(payment, &domain(method))
}

/// Recovers the signer of `hash`; refuses zero and high-s (malleable) signatures.
pub(crate) fn recover(sig: &Sig, hash: &B256) -> Result<Address, Refusal> {
    let r = U256::from_be_bytes(sig.r.0);
    let s = U256::from_be_bytes(sig.s.0);
    if r.is_zero() || s.is_zero() {
        return Err(Refusal::InvalidSignature("signature r or s is zero".into()));
    }
    if s > SECP256K1_HALF_N {
        return Err(Refusal::MalleableSignature(
            "signature s is in the upper half of the curve order (malleable); sign with low s"
                .into(),
        ));
    }
    let parity = match sig.v {
        27 => false,
        28 => true,
        v => {
            return Err(Refusal::InvalidSignature(format!(
                "signature v {v} is not 27 or 28"
            )))
        }
    };
    Signature::new(r, s, parity)
        .recover_address_from_prehash(hash)
        .map_err(|e| Refusal::InvalidSignature(format!("signature does not recover: {e}")))
}

/// Checks the payment's signature against its claimed owner/authorizer.
pub(crate) fn check_signature(
    payment: &ClientPayment,
    method: &PaymentMethod,
) -> Result<(), Refusal> {
    let hash = signing_hash(payment, method);
    let of = scheme::of(payment);
    let (sig, claimed, who) = of.signed_by();
    let signer = recover(sig, &hash)?;
    if signer != claimed {
        return Err(Refusal::InvalidSignature(format!(
            "EIP-712 signature recovers to {signer}, not the {who} {claimed} (domain {} v{} chain {} contract {})",
            method.asset.name, method.asset.version, method.network.chain_id, method.asset.address
        )));
    }
    Ok(())
}

/// Picks the accepted method this payment pays with: same scheme, network and token.
pub(crate) fn match_method<'a>(
    payment: &ClientPayment,
    req: &'a Requirement,
) -> Result<&'a PricedMethod, Refusal> {
    let of = scheme::of(payment);
    let scheme = payment.scheme();
    let same_scheme: Vec<&PricedMethod> = req
        .accepts
        .iter()
        .filter(|m| m.method.scheme == scheme)
        .collect();
    if same_scheme.is_empty() {
        return Err(Refusal::SchemeNotAccepted(format!(
            "route {} does not accept {} payments",
            req.route,
            of.describe()
        )));
    }
    let network = payment.network();
    let same_net: Vec<&PricedMethod> = same_scheme
        .into_iter()
        .filter(|m| m.method.network == network)
        .collect();
    if same_net.is_empty() {
        return Err(Refusal::NetworkMismatch(format!(
            "route {} does not accept payments on {network}",
            req.route
        )));
    }
    let token = payment.token();
    let candidates: Vec<&PricedMethod> = same_net
        .into_iter()
        .filter(|m| m.method.asset.address == token)
        .collect();
    // Several entries for one token (different pay_to): prefer the one the payment pays.
    let preferred = of
        .pays_to()
        .and_then(|to| candidates.iter().find(|m| m.method.pay_to == to));
    match (preferred, candidates.first()) {
        (Some(m), _) | (None, Some(m)) => Ok(m),
        (None, None) => Err(Refusal::AssetMismatch(format!(
            "route {} does not accept token {token} on {network}",
            req.route
        ))),
    }
}

/// Static checks (no I/O) of the payment's scheme: parties, value and time window.
/// `signer` is the settler's wallet on this network; `now` unix seconds; `margin` seconds.
pub(crate) fn check_terms(
    payment: &ClientPayment,
    priced: &PricedMethod,
    signer: Address,
    now: u64,
    margin: u64,
) -> Result<(), Refusal> {
    scheme::of(payment).check_terms(priced, signer, now, margin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::local::PrivateKeySigner;
    use alloy::signers::SignerSync;
    use x402_protocol::payment::{parse_payment, Authorization, Permit};
    use x402_protocol::Scheme;
    use x402_protocol::{Asset, Network};

    const NOW: u64 = 1_800_000_000;

    fn asset() -> Asset {
        Asset {
            address: Address::repeat_byte(0xaa),
            decimals: 6,
            name: "USDC".into(),
            version: "2".into(),
            symbol: "USDC".into(),
        }
    }
    fn settler() -> Address {
        Address::repeat_byte(0x5e)
    }
    fn pay_to() -> Address {
        Address::repeat_byte(0x70)
    }
    fn requirement() -> Requirement {
        Requirement {
            route: "weather".into(),
            accepts: vec![
                PricedMethod {
                    amount: U256::from(500_000u64),
                    method: PaymentMethod {
                        scheme: Scheme::Permit,
                        network: Network::eip155(31337),
                        asset: asset(),
                        pay_to: pay_to(),
                        spender: Some(settler()),
                    },
                },
                PricedMethod {
                    amount: U256::from(500_000u64),
                    method: PaymentMethod {
                        scheme: Scheme::Exact,
                        network: Network::eip155(31337),
                        asset: asset(),
                        pay_to: pay_to(),
                        spender: None,
                    },
                },
            ],
            token_ttl_secs: 300,
            resource: None,
        }
    }

    fn sig_of(key: &PrivateKeySigner, hash: B256) -> Sig {
        let s = key.sign_hash_sync(&hash).unwrap();
        Sig {
            r: B256::from(s.r()),
            s: B256::from(s.s()),
            v: 27 + s.v() as u8,
        }
    }

    fn permit(key: &PrivateKeySigner, value: u64, deadline: u64) -> ClientPayment {
        let mut p = Permit {
            network: Network::eip155(31337),
            token: asset().address,
            owner: key.address(),
            spender: settler(),
            value: U256::from(value),
            nonce: U256::ZERO,
            deadline: U256::from(deadline),
            sig: Sig {
                r: B256::ZERO,
                s: B256::ZERO,
                v: 27,
            },
        };
        let req = requirement();
        let hash = signing_hash(&ClientPayment::Permit(p.clone()), &req.accepts[0].method);
        p.sig = sig_of(key, hash);
        ClientPayment::Permit(p)
    }

    fn auth(key: &PrivateKeySigner, to: Address, after: u64, before: u64) -> ClientPayment {
        let mut a = Authorization {
            network: Network::eip155(31337),
            token: asset().address,
            from: key.address(),
            to,
            value: U256::from(500_000u64),
            valid_after: U256::from(after),
            valid_before: U256::from(before),
            nonce: B256::repeat_byte(7),
            sig: Sig {
                r: B256::ZERO,
                s: B256::ZERO,
                v: 27,
            },
        };
        let req = requirement();
        let hash = signing_hash(
            &ClientPayment::Authorization(a.clone()),
            &req.accepts[1].method,
        );
        a.sig = sig_of(key, hash);
        ClientPayment::Authorization(a)
    }

    fn full(p: &ClientPayment) -> Result<(), Refusal> {
        let req = requirement();
        let m = match_method(p, &req)?;
        check_signature(p, &m.method)?;
        check_terms(p, m, settler(), NOW, 60)
    }

    fn code(r: Result<(), Refusal>) -> &'static str {
        r.err().map(|e| e.code()).unwrap_or("ok")
    }

    #[test]
    fn good_payments_pass() {
        let k = PrivateKeySigner::random();
        assert_eq!(code(full(&permit(&k, 500_000, NOW + 3600))), "ok");
        assert_eq!(code(full(&auth(&k, pay_to(), 0, NOW + 3600))), "ok");
    }

    #[test]
    fn signature_must_recover_to_owner() {
        let k = PrivateKeySigner::random();
        let ClientPayment::Permit(mut p) = permit(&k, 500_000, NOW + 3600) else {
            unreachable!()
        };
        p.owner = Address::repeat_byte(1);
        assert_eq!(
            code(full(&ClientPayment::Permit(p.clone()))),
            "invalid_signature"
        );
        // Flip v: recovers another key.
        let ClientPayment::Permit(mut q) = permit(&k, 500_000, NOW + 3600) else {
            unreachable!()
        };
        q.sig.v = if q.sig.v == 27 { 28 } else { 27 };
        assert_eq!(code(full(&ClientPayment::Permit(q))), "invalid_signature");
        // A signature under another domain (client lies about the token's name) fails.
        let mut req = requirement();
        req.accepts[0].method.asset.name = "USD Coin".into();
        let good = permit(&k, 500_000, NOW + 3600);
        assert_eq!(
            check_signature(&good, &req.accepts[0].method)
                .unwrap_err()
                .code(),
            "invalid_signature"
        );
    }

    #[test]
    fn high_s_is_refused() {
        let k = PrivateKeySigner::random();
        let ClientPayment::Permit(mut p) = permit(&k, 500_000, NOW + 3600) else {
            unreachable!()
        };
        // The malleable twin: s' = n - s, v flipped. Recovers the same key but must be refused.
        let n = U256::from_be_bytes(alloy::primitives::hex!(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
        ));
        p.sig.s = B256::from(n - U256::from_be_bytes(p.sig.s.0));
        p.sig.v = if p.sig.v == 27 { 28 } else { 27 };
        assert_eq!(code(full(&ClientPayment::Permit(p))), "malleable_signature");
    }

    #[test]
    fn unpadded_seed_signature_verifies() {
        // Find a signature whose s has a leading zero byte, print it unpadded the seed way.
        let k = PrivateKeySigner::random();
        for deadline in NOW + 3600..NOW + 5000 {
            let ClientPayment::Permit(p) = permit(&k, 500_000, deadline) else {
                unreachable!()
            };
            if p.sig.s.0[0] != 0 {
                continue;
            }
            let s_unpadded = format!("{:#x}", U256::from_be_bytes(p.sig.s.0));
            let r_unpadded = format!("{:#x}", U256::from_be_bytes(p.sig.r.0));
            let body = serde_json::json!({"version": "Version 0.1", "permit": {
                "permit_type": "EIP2612", "signature": {"v": p.sig.v, "r": r_unpadded, "s": s_unpadded},
                "owner": p.owner, "spender": p.spender, "token": p.token, "value": 500000, "nonce": 0,
                "deadline": deadline, "chain_id": 31337}});
            let (parsed, _) = parse_payment(body.to_string().as_bytes()).unwrap();
            assert_eq!(code(full(&parsed)), "ok");
            return;
        }
        panic!("no signature with a short s found");
    }

    #[test]
    fn matching_errors() {
        let k = PrivateKeySigner::random();
        let mut req = requirement();
        req.accepts.remove(0);
        assert_eq!(
            match_method(&permit(&k, 500_000, NOW + 3600), &req)
                .unwrap_err()
                .code(),
            "scheme_not_accepted"
        );
        let ClientPayment::Permit(mut p) = permit(&k, 500_000, NOW + 3600) else {
            unreachable!()
        };
        p.network = Network::eip155(1);
        assert_eq!(
            code(full(&ClientPayment::Permit(p.clone()))),
            "network_mismatch"
        );
        p.network = Network::eip155(31337);
        p.token = Address::repeat_byte(0xbb);
        assert_eq!(code(full(&ClientPayment::Permit(p))), "asset_mismatch");
    }

    #[test]
    fn parties_value_and_time() {
        let k = PrivateKeySigner::random();
        assert_eq!(
            code(full(&permit(&k, 499_999, NOW + 3600))),
            "insufficient_value"
        );
        assert_eq!(code(full(&permit(&k, 600_000, NOW + 3600))), "ok");
        assert_eq!(
            code(full(&permit(&k, 500_000, NOW + 30))),
            "deadline_too_soon"
        );
        assert_eq!(code(full(&permit(&k, 500_000, NOW))), "expired");
        assert_eq!(code(full(&permit(&k, 500_000, NOW - 1))), "expired");
        assert_eq!(
            code(full(&auth(&k, Address::repeat_byte(3), 0, NOW + 3600))),
            "recipient_mismatch"
        );
        assert_eq!(
            code(full(&auth(&k, pay_to(), NOW + 10, NOW + 3600))),
            "not_yet_valid"
        );
        // validAfter must be strictly before now (the settling block's time is later).
        assert_eq!(
            code(full(&auth(&k, pay_to(), NOW, NOW + 3600))),
            "not_yet_valid"
        );
        assert_eq!(code(full(&auth(&k, pay_to(), NOW - 1, NOW + 3600))), "ok");
        assert_eq!(
            code(full(&auth(&k, pay_to(), 0, NOW + 59))),
            "deadline_too_soon"
        );
        // Spender: must be the settler's wallet and the route's spender.
        let p = permit(&k, 500_000, NOW + 3600);
        let req = requirement();
        assert_eq!(
            check_terms(&p, &req.accepts[0], Address::repeat_byte(9), NOW, 60)
                .unwrap_err()
                .code(),
            "spender_mismatch"
        );
        let mut req2 = requirement();
        req2.accepts[0].method.spender = Some(Address::repeat_byte(9));
        assert_eq!(
            check_terms(&p, &req2.accepts[0], settler(), NOW, 60)
                .unwrap_err()
                .code(),
            "spender_mismatch"
        );
    }
}
