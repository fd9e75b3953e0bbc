//! The client's signed payment, in the formats clients send it, parsed into one model.
//!
//! Formats: the seed SDK's `{"version", "permit": {...}}` with `permit_type` `EIP2612` or
//! `ERC3009`, and the x402 v2 `PAYMENT-SIGNATURE` payload (`exact` = ERC-3009).
//!
//! The definitions live in [`crate::scheme`] (shared pieces and dispatch) and its scheme modules
//! ([`crate::scheme::permit`], [`crate::scheme::exact`]); this module keeps their public paths.

pub use crate::scheme::exact::Authorization;
pub use crate::scheme::permit::Permit;
pub use crate::scheme::{
    parse_payment, parse_payment_value, parse_sig_hex, parse_word_str, ClientPayment, PaymentError,
    PaymentFormat, SchemePayload, Sig,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::Scheme;
    use alloy_primitives::{Address, B256, U256};

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

    #[test]
    fn permit_accessors_dispatch_to_the_permit() {
        let (p, _) = parse_payment(SEED_2612.as_bytes()).unwrap();
        assert_eq!(p.scheme(), Scheme::Permit);
        assert_eq!(
            p.payer(),
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
                .parse::<Address>()
                .unwrap()
        );
        assert_eq!(p.value(), U256::from(500_000u64));
        assert_eq!(p.nonce_key(), B256::ZERO);
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
