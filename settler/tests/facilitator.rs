//! The x402 facilitator API (`/verify`, `/settle`, `/supported`) against a real anvil.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use common::*;
use serde_json::{json, Value};

// At least 32 characters: the settler refuses shorter secrets.
const SECRET: &str = "gateway-secret-for-tests-0123456789";

struct Fac {
    env: Env,
    _secret_dir: tempfile::TempDir,
}

impl Fac {
    async fn start() -> Fac {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("api-secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let secret = secret.to_str().unwrap().to_string();
        // A second wallet in the terms, so a payTo other than the authorization's `to` is a
        // recipient mismatch rather than outside the terms.
        let env = Env::start_with_terms(
            None,
            None,
            &["--api-secret-file", &secret, "--settle-timeout-secs", "3"],
            |t| {
                t["assets"][0]["pay_to"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!(Address::repeat_byte(0x42)))
            },
        )
        .await;
        Fac {
            env,
            _secret_dir: dir,
        }
    }

    fn requirements(&self, amount: u64) -> Value {
        json!({"scheme": "exact", "network": self.env.anvil.network().to_string(), "amount": amount.to_string(),
            "asset": self.env.token, "payTo": self.env.pay_to, "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2"}})
    }

    async fn call(
        &self,
        path: &str,
        payload: &Value,
        requirements: &Value,
        auth: bool,
    ) -> (u16, Value) {
        let body = json!({"x402Version": 2, "paymentPayload": payload, "paymentRequirements": requirements});
        let mut r = self
            .env
            .http
            .post(format!("{}{path}", self.env.settler.url()))
            .json(&body);
        if auth {
            r = r.bearer_auth(SECRET);
        }
        let r = r.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn verify(&self, payload: &Value, requirements: &Value) -> Value {
        let (st, v) = self.call("/verify", payload, requirements, true).await;
        assert_eq!(st, 200, "{v}");
        v
    }

    async fn settle(&self, payload: &Value, requirements: &Value) -> Value {
        let (st, v) = self.call("/settle", payload, requirements, true).await;
        assert_eq!(st, 200, "{v}");
        v
    }
}

fn invalid(v: &Value) -> &str {
    assert_eq!(v["isValid"], json!(false), "{v}");
    v["invalidReason"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_settle_supported_and_replay() {
    let f = Fac::start().await;
    let env = &f.env;
    let reqs = f.requirements(PRICE);
    let payer = env.funded_payer(1_000_000).await;
    let dl = env.now() + 3600;
    let mut payload = env.x402v2(&payer, PRICE, dl, random_nonce());
    payload["resource"] =
        json!({"url": "https://other-gateway/api", "mimeType": "application/json"});

    // The bearer secret guards all three.
    assert_eq!(f.call("/verify", &payload, &reqs, false).await.0, 401);
    assert_eq!(f.call("/settle", &payload, &reqs, false).await.0, 401);
    let r = env
        .http
        .get(format!("{}/supported", env.settler.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let sup: Value = env
        .http
        .get(format!("{}/supported", env.settler.url()))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        sup,
        json!({"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:31337"}], "extensions": ["payment-identifier"], "signers": {"eip155:*": [env.spender]}})
    );

    // Valid, and verify stores nothing (twice valid).
    for _ in 0..2 {
        let v = f.verify(&payload, &reqs).await;
        assert_eq!(v, json!({"isValid": true, "payer": payer.address()}));
    }

    // Invalid ones, each with the reference's reason.
    let mut tampered = payload.clone();
    tampered["payload"]["authorization"]["validBefore"] = json!((dl + 1).to_string());
    assert_eq!(
        invalid(&f.verify(&tampered, &reqs).await),
        "invalid_exact_evm_payload_signature"
    );
    let mut other_pay_to = reqs.clone();
    other_pay_to["payTo"] = json!(Address::repeat_byte(0x42));
    assert_eq!(
        invalid(&f.verify(&payload, &other_pay_to).await),
        "invalid_exact_evm_payload_recipient_mismatch"
    );
    // A payTo the settler's terms do not list.
    other_pay_to["payTo"] = json!(Address::repeat_byte(0x43));
    assert_eq!(
        invalid(&f.verify(&payload, &other_pay_to).await),
        "invalid_payment_requirements"
    );
    assert_eq!(
        invalid(&f.verify(&payload, &f.requirements(PRICE * 2)).await),
        "invalid_exact_evm_payload_authorization_value_mismatch"
    );
    assert_eq!(
        invalid(&f.verify(&payload, &f.requirements(PRICE / 2)).await),
        "invalid_exact_evm_payload_authorization_value_mismatch",
        "exact: value == amount"
    );
    let expired = env.x402v2(&payer, PRICE, env.now() - 1, random_nonce());
    assert_eq!(
        invalid(&f.verify(&expired, &reqs).await),
        "invalid_exact_evm_payload_authorization_valid_before"
    );
    let mut elsewhere = reqs.clone();
    elsewhere["network"] = json!("eip155:8453");
    assert_eq!(
        invalid(&f.verify(&payload, &elsewhere).await),
        "network_mismatch"
    );
    let mut upto = reqs.clone();
    upto["scheme"] = json!("upto");
    assert_eq!(
        invalid(&f.verify(&payload, &upto).await),
        "unsupported_scheme"
    );
    let poor = env.funded_payer(PRICE - 1).await;
    let v = f
        .verify(&env.x402v2(&poor, PRICE, dl, random_nonce()), &reqs)
        .await;
    assert_eq!(invalid(&v), "invalid_exact_evm_insufficient_balance");
    assert_eq!(v["payer"], json!(poor.address()), "{v}");
    let mut no_domain = reqs.clone();
    no_domain.as_object_mut().unwrap().remove("extra");
    assert_eq!(
        invalid(&f.verify(&payload, &no_domain).await),
        "invalid_payload"
    );
    let (st, v) = f.call("/verify", &json!("nope"), &reqs, true).await;
    assert_eq!((st, invalid(&v)), (400, "invalid_payload"));

    // Settle: funds move, the transaction is the mined transfer.
    let s = f.settle(&payload, &reqs).await;
    assert_eq!(s["success"], json!(true), "{s}");
    assert_eq!(s["payer"], json!(payer.address()));
    assert_eq!(s["network"], json!("eip155:31337"));
    let hash: alloy::primitives::B256 = s["transaction"].as_str().unwrap().parse().unwrap();
    let receipt = env
        .anvil
        .provider()
        .get_transaction_receipt(hash)
        .await
        .unwrap()
        .expect("mined");
    assert!(receipt.status());
    assert_eq!(env.balance(env.pay_to).await, U256::from(PRICE));
    assert_eq!(
        env.balance(payer.address()).await,
        U256::from(1_000_000 - PRICE)
    );

    // Replay: settle and verify refuse it, nothing moves.
    let s = f.settle(&payload, &reqs).await;
    assert_eq!(s["success"], json!(false), "{s}");
    assert_eq!(
        s["errorReason"],
        json!("invalid_exact_evm_nonce_already_used")
    );
    assert_eq!(s["transaction"], json!(""));
    assert_eq!(s["network"], json!("eip155:31337"));
    assert_eq!(
        invalid(&f.verify(&payload, &reqs).await),
        "invalid_exact_evm_nonce_already_used"
    );
    // An invalid settle moves nothing either.
    let s = f.settle(&tampered, &reqs).await;
    assert_eq!(
        (s["success"].clone(), s["errorReason"].clone()),
        (json!(false), json!("invalid_exact_evm_payload_signature")),
        "{s}"
    );

    // Not mined within --settle-timeout-secs: settlement_pending with the submitted
    // transaction; it settles once blocks come.
    let p = env.anvil.provider();
    let _: Value = p
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .unwrap();
    let later = env.x402v2(&payer, PRICE, dl, random_nonce());
    let s = f.settle(&later, &reqs).await;
    assert_eq!(
        (s["success"].clone(), s["errorReason"].clone()),
        (json!(false), json!("settlement_pending")),
        "{s}"
    );
    let pending_tx = s["transaction"].as_str().unwrap().to_string();
    assert!(
        pending_tx.starts_with("0x") && pending_tx.len() == 66,
        "{s}"
    );
    let _: Value = p
        .raw_request("evm_setAutomine".into(), (true,))
        .await
        .unwrap();
    let _: Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
    let start = std::time::Instant::now();
    while env.balance(env.pay_to).await != U256::from(2 * PRICE) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{}",
            env.settler.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let s = f.settle(&later, &reqs).await;
    assert_eq!(
        s["errorReason"],
        json!("invalid_exact_evm_nonce_already_used"),
        "{s}"
    );
    // Both are recorded as settled (the lane confirms shortly after the balance moves).
    let start = std::time::Instant::now();
    loop {
        let m = env.metrics().await;
        if m.contains("x402_settlements_total{state=\"settled\"} 2") {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An x402 server retrying `/settle` (its first call timed out on its side) with the same
/// payload and `payment-identifier` gets the same answer, the transaction included, after the
/// payment is mined; the funds moved once. The same payload without the identifier is a
/// replay, and the identifier with another payload is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_retried_with_its_payment_identifier_gets_the_same_answer() {
    let f = Fac::start().await;
    let env = &f.env;
    let reqs = f.requirements(PRICE);
    let payer = env.funded_payer(1_000_000).await;
    let dl = env.now() + 3600;
    let id = "retry-0123456789-abcdef";
    let with_id = |mut p: Value| {
        p["extensions"] = json!({"payment-identifier": {"info": {"required": false, "id": id}}});
        p
    };
    let bare = env.x402v2(&payer, PRICE, dl, random_nonce());
    let payload = with_id(bare.clone());

    let first = f.settle(&payload, &reqs).await;
    assert_eq!(first["success"], json!(true), "{first}");
    assert_eq!(env.balance(env.pay_to).await, U256::from(PRICE));

    let again = f.settle(&payload, &reqs).await;
    assert_eq!(again, first, "the retry is answered like the first call");
    assert_eq!(
        env.balance(env.pay_to).await,
        U256::from(PRICE),
        "paid once"
    );

    let replay = f.settle(&bare, &reqs).await;
    assert_eq!(
        replay["errorReason"],
        json!("invalid_exact_evm_nonce_already_used"),
        "{replay}"
    );
    let other = with_id(env.x402v2(&payer, PRICE, dl, random_nonce()));
    let s = f.settle(&other, &reqs).await;
    assert_eq!(s["success"], json!(false), "{s}");
    assert_eq!(s["errorReason"], json!("invalid_payload"), "{s}");
    assert!(
        s["errorMessage"].as_str().unwrap().contains("identifier"),
        "{s}"
    );
    let mut short = bare.clone();
    short["extensions"] = json!({"payment-identifier": {"info": {"id": "short"}}});
    let s = f.settle(&short, &reqs).await;
    assert_eq!(s["errorReason"], json!("invalid_payload"), "{s}");
    assert!(
        s["errorMessage"]
            .as_str()
            .unwrap()
            .contains("payment-identifier"),
        "{s}"
    );
    assert_eq!(env.balance(env.pay_to).await, U256::from(PRICE));
}
