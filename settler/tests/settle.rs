//! Mint and settle against a real anvil + TestUSDC, through the settler binary.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use alloy::primitives::U256;
use common::*;
use x402_protocol::settler_api::{SettlementState, TokenResponse};
use x402_protocol::token::KeySet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permit_erc3009_and_x402v2_mint_and_settle() {
    let env = Env::start().await;
    let req = env.requirement();
    let payer = env.funded_payer(1_000_000).await;
    let deadline = env.now() + 3600;

    // EIP-2612 (seed 0.1 format, unpadded r/s, v 27/28).
    let (st, body) = env
        .post_token(&req, &env.permit(&payer, PRICE, 0, deadline))
        .await;
    assert_eq!(st, 200, "{body}");
    let t1: TokenResponse = serde_json::from_value(body).unwrap();
    assert_eq!(t1.token_type, "Bearer");
    assert_eq!(t1.payer, payer.address());
    assert_eq!(t1.amount, U256::from(PRICE));
    assert_eq!(t1.route, "weather");
    assert_eq!(t1.expires_in, 120);

    // The token verifies with the key the JWKS publishes, with the right claims.
    let jwks: serde_json::Value = env
        .http
        .get(format!("{}/.well-known/jwks.json", env.settler.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let k = &jwks["keys"][0];
    let vk = x402_protocol::token::verifying_key_from_hex(k["x402_public_key"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        k["kid"].as_str().unwrap(),
        x402_protocol::token::key_id(&vk)
    );
    let mut ks = KeySet::new();
    ks.insert(k["kid"].as_str().unwrap(), vk);
    let v = ks.verify(&t1.access_token, env.now() as i64, 5).unwrap();
    assert_eq!(v.claims.sub, payer.address());
    assert_eq!(v.claims.jti, t1.settlement_id);
    assert_eq!(v.claims.route, "weather");
    assert_eq!(v.claims.iss, "x402-settler");
    assert_eq!(v.claims.amount, U256::from(PRICE));
    assert_eq!(v.claims.asset, env.token);

    // ERC-3009 (seed 0.3 format).
    let (st, body) = env
        .post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, 0, deadline, random_nonce()),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let t2: TokenResponse = serde_json::from_value(body).unwrap();

    // x402 v2 exact payload; pays more than the price: the token carries the value paid.
    let (st, body) = env
        .post_token(
            &req,
            &env.x402v2(&payer, PRICE * 2, deadline, random_nonce()),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let t3: TokenResponse = serde_json::from_value(body).unwrap();
    assert_eq!(t3.amount, U256::from(PRICE * 2));

    let before_pay_to = U256::ZERO;
    for t in [&t1, &t2, &t3] {
        let s = env
            .wait_final(&t.settlement_id, Duration::from_secs(30))
            .await;
        assert_eq!(s.state, SettlementState::Settled, "{s:?}");
        assert!(s.transfer_tx.is_some() && s.block_number.is_some());
    }
    let s1 = env.settlement(&t1.settlement_id).await;
    assert!(
        s1.permit_tx.is_some(),
        "permit payments record the permit() tx"
    );
    assert_eq!(
        env.balance(env.pay_to).await,
        before_pay_to + U256::from(PRICE * 4)
    );
    assert_eq!(
        env.balance(payer.address()).await,
        U256::from(1_000_000 - PRICE * 4)
    );
    assert_eq!(
        env.anvil.nonces(env.token, payer.address()).await.unwrap(),
        U256::from(1)
    );

    // Health, readiness, metrics.
    let r = env
        .http
        .get(format!("{}/readyz", env.settler.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = env.metrics().await;
    assert!(m.contains("x402_tokens_minted_total"), "{m}");
    assert!(
        m.contains("x402_settlements_total{state=\"settled\"} 3"),
        "{m}"
    );
    assert!(m.contains("x402_settle_latency_seconds_bucket"), "{m}");
    let r = env
        .http
        .get(format!("{}/v1/settlements/nope", env.settler.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
