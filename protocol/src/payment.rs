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
                problem: "0.5 is not an integer below 2^64 (larger integers go as decimal strings)"
                    .into()
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

    /// Replaces `"key":<old>` (`old` as written in the sample) with `"key":<new>`.
    fn with(sample: &str, key: &str, old: &str, new: &str) -> String {
        let from = format!("\"{key}\":{old}");
        assert!(sample.contains(&from), "{from} in the sample");
        sample.replacen(&from, &format!("\"{key}\":{new}"), 1)
    }

    fn field_of(body: &str) -> (&'static str, String) {
        match parse_payment(body.as_bytes()) {
            Err(PaymentError::Field { field, problem }) => (field, problem),
            other => panic!("expected a field error for {body}, got {other:?}"),
        }
    }

    const TWO_64: &str = "18446744073709551616";
    const U256_MAX: &str =
        "115792089237316195423570985008687907853269984665640564039457584007913129639935";
    const TWO_256: &str =
        "115792089237316195423570985008687907853269984665640564039457584007913129639936";

    #[test]
    fn out_of_range_v_is_a_field_error_not_a_panic() {
        for v in [
            format!("\"{TWO_64}\""),
            format!("\"{U256_MAX}\""),
            format!("\"0x{}\"", "f".repeat(64)),
            TWO_64.to_string(),
            "29".into(),
            "2".into(),
            "255".into(),
            "256".into(),
            "283".into(), // 27 + 256: a truncating cast would read 27
            "-1".into(),
            "27.0".into(),
            "1e30".into(),
        ] {
            let (field, problem) = field_of(&with(SEED_2612, "v", "27", &v));
            assert_eq!(field, "v", "{v}: {problem}");
        }
        // 0 and 1 are read as 27 and 28, also as strings.
        for (v, want) in [("0", 27), ("1", 28), ("\"28\"", 28), ("\"0x1b\"", 27)] {
            let (p, _) = parse_payment(with(SEED_2612, "v", "27", v).as_bytes()).unwrap();
            let ClientPayment::Permit(p) = p else {
                panic!()
            };
            assert_eq!(p.sig.v, want, "{v}");
        }
        assert_eq!(
            scheme_recovery(U256::MAX),
            None,
            "the largest value is refused, not truncated"
        );
    }

    fn scheme_recovery(v: U256) -> Option<u8> {
        crate::scheme::recovery_byte(v)
    }

    #[test]
    fn integers_out_of_u256_negative_or_fractional_name_their_field() {
        let hex65 = format!("\"0x1{}\"", "0".repeat(64));
        let cases: &[(&str, &str, &str)] = &[
            ("value", "500000", TWO_256),
            ("nonce", "0", TWO_256),
            ("deadline", "1795497709", TWO_256),
            ("value", "500000", "-1"),
            ("nonce", "0", "-5"),
            ("deadline", "1795497709", "1795497709.5"),
            ("value", "500000", "5e5"),
            ("value", "500000", "\"-1\""),
            ("value", "500000", "\"1.5\""),
            ("value", "500000", "\"\""),
            ("value", "500000", "true"),
            ("chain_id", "11155111", TWO_64),
            ("chain_id", "11155111", "0"),
            ("chain_id", "11155111", "-1"),
        ];
        let quoted_2_256 = format!("\"{TWO_256}\"");
        let quoted_2_64 = format!("\"{TWO_64}\"");
        let strings: Vec<(&str, &str, &str)> = vec![
            ("value", "500000", quoted_2_256.as_str()),
            ("deadline", "1795497709", hex65.as_str()),
            ("chain_id", "11155111", quoted_2_64.as_str()),
        ];
        for (key, old, new) in cases.iter().chain(strings.iter()) {
            let (field, problem) = field_of(&with(SEED_2612, key, old, new));
            assert_eq!(field, *key, "{key}={new}: {problem}");
        }
        // ERC-3009: the time window at 2^256 (overflow) and below zero.
        for (key, old) in [("validAfter", "0"), ("validBefore", "1795497904")] {
            for new in [TWO_256, "-1", "0.5", quoted_2_256.as_str()] {
                let (field, problem) = field_of(&with(SEED_3009, key, old, new));
                assert_eq!(field, key, "{key}={new}: {problem}");
            }
        }
        // The largest uint256 itself is a value, as a decimal string and as hex.
        let (p, _) = parse_payment(
            with(SEED_2612, "value", "500000", &format!("\"{U256_MAX}\"")).as_bytes(),
        )
        .unwrap();
        assert_eq!(p.value(), U256::MAX);
        let (p, _) = parse_payment(
            with(
                SEED_2612,
                "deadline",
                "1795497709",
                &format!("\"0x{}\"", "f".repeat(64)),
            )
            .as_bytes(),
        )
        .unwrap();
        let ClientPayment::Permit(p) = p else {
            panic!()
        };
        assert_eq!(p.deadline, U256::MAX);
    }

    #[test]
    fn oversized_words_and_signatures_are_field_errors() {
        let s33 = format!("\"0x{}\"", "1f".repeat(33));
        let s = "\"0x1f2e3d4c5b6a79880716253443526170819a8b7c6d5e4f3a2b1c0d9e8f7a6b\"";
        let (field, _) = field_of(&with(SEED_2612, "s", s, &s33));
        assert_eq!(field, "s");
        let nonce = "\"0x14f8b17bb18c4e7b85255d26a5f5ee87b894fb0406317f49e19df28851a24516\"";
        let (field, _) = field_of(&with(SEED_3009, "nonce", nonce, &s33));
        assert_eq!(field, "nonce");
        for bad in [
            "0x",
            "0xzz",
            "",
            &"ab".repeat(66),
            &"ab".repeat(64),
            &"ab".repeat(100_000),
        ] {
            assert!(matches!(
                parse_sig_hex(bad),
                Err(PaymentError::Field {
                    field: "signature",
                    ..
                })
            ));
        }
        // A recovery byte out of range in a 65-byte signature.
        let sig = format!("0x{}{}", "11".repeat(64), "1d");
        assert!(matches!(
            parse_sig_hex(&sig),
            Err(PaymentError::Field {
                field: "signature",
                ..
            })
        ));
    }

    #[test]
    fn huge_strings_are_refused_with_a_short_message() {
        let huge = format!("\"{}\"", "9".repeat(200_000));
        let (field, problem) = field_of(&with(SEED_2612, "value", "500000", &huge));
        assert_eq!(field, "value");
        assert!(
            problem.len() < 300,
            "message echoes at most a prefix: {}",
            problem.len()
        );
        let addr = format!("\"0x{}\"", "a".repeat(200_000));
        let owner = "\"0x70997970C51812dc3A010C7d01b50e0d17dc79C8\"";
        let (field, problem) = field_of(&with(SEED_2612, "owner", owner, &addr));
        assert_eq!(field, "owner");
        assert!(problem.len() < 300, "{}", problem.len());
        let kind = "x".repeat(200_000);
        let body = SEED_2612.replace(
            "\"permit_type\":\"EIP2612\"",
            &format!("\"permit_type\":\"{kind}\""),
        );
        let Err(PaymentError::Unsupported(k)) = parse_payment(body.as_bytes()) else {
            panic!()
        };
        assert!(k.len() < 100);
        assert_eq!(crate::scheme::shown("short"), "\"short\"");
    }

    #[test]
    fn x402_v2_numbers_are_checked_too() {
        let body = r#"{"x402Version":2,"payload":{"authorization":{"from":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","to":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","value":"10000","validAfter":"0","validBefore":"1795497581","nonce":"0x01"},"signature":"0x02dd9f1c0e0d6a2c1f3e9d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e1f2e3d4c5b6a79880716253443526170819a8b7c6d5e4f3a2b1c0d9e8f7a1c"},"accepted":{"scheme":"exact","network":"eip155:84532","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e"}}"#;
        assert!(parse_payment(body.as_bytes()).is_ok());
        for (key, old) in [
            ("value", "\"10000\""),
            ("validAfter", "\"0\""),
            ("validBefore", "\"1795497581\""),
        ] {
            for new in [
                format!("\"{TWO_256}\""),
                "-1".into(),
                "1.5".into(),
                TWO_64.to_string(),
            ] {
                let (field, problem) = field_of(&with(body, key, old, &new));
                assert_eq!(field, key, "{key}={new}: {problem}");
            }
        }
        let net = body.replace("eip155:84532", &format!("eip155:{TWO_64}"));
        assert!(matches!(
            parse_payment(net.as_bytes()),
            Err(PaymentError::Field {
                field: "accepted.network",
                ..
            })
        ));
        // The typed serde path (facilitator bodies) refuses the same values.
        let mut v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["accepted"] = serde_json::json!({"scheme":"exact","network":"eip155:84532","amount":"1","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","maxTimeoutSeconds":300});
        assert!(serde_json::from_value::<crate::x402v2::PaymentPayload>(v.clone()).is_ok());
        for new in [
            serde_json::json!(TWO_256),
            serde_json::json!(-1),
            serde_json::json!(0.5),
            serde_json::json!(u64::MAX as f64 * 2.0),
        ] {
            let mut bad = v.clone();
            bad["payload"]["authorization"]["validBefore"] = new.clone();
            let err = serde_json::from_value::<crate::x402v2::PaymentPayload>(bad).unwrap_err();
            assert!(!err.to_string().is_empty(), "{new}");
        }
    }
}
