//! Payer facts against a real anvil and the real settler binary: once a payer is known, its
//! balance comes from the applied block logs (its own settlements out, a transfer in) and an
//! authorization used elsewhere is known from its log; the answers are those of the node, and
//! a cached balance that falls short is read again.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use alloy::primitives::U256;
use common::{code, random_nonce, Env, PRICE};
use serde_json::Value;
use x402_protocol::settler_api::SettlementState;
use x402_testkit::anvil::TestUsdc;

/// `x402_payer_facts_total{result}` of the settler now.
async fn facts(env: &Env, result: &str) -> u64 {
    let m = env.metrics().await;
    let key = format!("x402_payer_facts_total{{result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// One ERC-3009 payment of `PRICE` from `payer`, posted for a token.
async fn pay(
    env: &Env,
    req: &x402_protocol::settler_api::Requirement,
    payer: &alloy::signers::local::PrivateKeySigner,
) -> (u16, Value) {
    let body = env.erc3009(
        payer,
        env.pay_to,
        PRICE,
        0,
        env.now() + 3600,
        random_nonce(),
    );
    env.post_token(req, &body).await
}

/// Lets the watcher (polling every 50 ms here) apply the blocks mined so far.
async fn watcher_catches_up() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_balances_follow_settlements_and_transfers_in() {
    let env = Env::start_with(None, None, &["--payer-facts-poll-ms", "50"]).await;
    let req = env.requirement();
    let payer = env.funded_payer(2 * PRICE).await;
    let settled = |tok: &Value| tok["settlement_id"].as_str().unwrap().to_string();

    // First payment: the payer is unknown, the node is read and the facts filled.
    let (st, first) = pay(&env, &req, &payer).await;
    assert_eq!(st, 200, "{first}");
    let s = env
        .wait_final(&settled(&first), Duration::from_secs(30))
        .await;
    assert_eq!(s.state, SettlementState::Settled, "{s:?}");
    watcher_catches_up().await;

    // Second: from the facts (its own settlement applied: one payment's worth left).
    let hits = facts(&env, "hit").await;
    let (st, second) = pay(&env, &req, &payer).await;
    assert_eq!(st, 200, "{second}");
    assert_eq!(
        facts(&env, "hit").await,
        hits + 1,
        "answered from the facts"
    );
    assert_eq!(facts(&env, "short").await, 0);

    // A transfer in, seen only in the block logs: the third payment is covered by it.
    env.anvil
        .mint(env.token, payer.address(), U256::from(PRICE))
        .await
        .unwrap();
    let s = env
        .wait_final(&settled(&second), Duration::from_secs(30))
        .await;
    assert_eq!(s.state, SettlementState::Settled, "{s:?}");
    watcher_catches_up().await;
    let hits = facts(&env, "hit").await;
    let (st, third) = pay(&env, &req, &payer).await;
    assert_eq!(st, 200, "{third}");
    assert_eq!(
        facts(&env, "hit").await,
        hits + 1,
        "answered from the facts"
    );
    assert_eq!(
        facts(&env, "short").await,
        0,
        "the cached balance counted the transfer in"
    );

    // An authorization the payer had used elsewhere, seen in a block's logs: refused from
    // the facts, before any node read.
    env.anvil
        .mint(env.token, payer.address(), U256::from(PRICE))
        .await
        .unwrap();
    let used = random_nonce();
    let dl = env.now() + 3600;
    let (v, r, s_) = env.sign_3009(&payer, env.pay_to, PRICE, 0, dl, used);
    let mined = TestUsdc::new(env.token, env.anvil.dev_provider(1))
        .transferWithAuthorization_0(
            payer.address(),
            env.pay_to,
            U256::from(PRICE),
            U256::ZERO,
            U256::from(dl),
            used,
            v,
            r.into(),
            s_.into(),
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(mined.status());
    let s = env
        .wait_final(&settled(&third), Duration::from_secs(30))
        .await;
    assert_eq!(s.state, SettlementState::Settled, "{s:?}");
    watcher_catches_up().await;
    let hits = facts(&env, "hit").await;
    let body = env.erc3009(&payer, env.pay_to, PRICE, 0, dl, used);
    let (st, again) = env.post_token(&req, &body).await;
    assert_eq!((st, code(&again)), (409, "nonce_already_used"), "{again}");
    assert_eq!(
        facts(&env, "hit").await,
        hits + 1,
        "answered from the facts"
    );

    // Nothing left: the cached balance falls short, the node is read, and it is refused.
    let (st, fourth) = pay(&env, &req, &payer).await;
    assert_eq!(
        (st, code(&fourth)),
        (402, "insufficient_balance"),
        "{fourth}"
    );
    assert_eq!(facts(&env, "short").await, 1);

    assert_eq!(env.balance(env.pay_to).await, U256::from(4 * PRICE));
    assert_eq!(env.balance(payer.address()).await, U256::ZERO);
}
