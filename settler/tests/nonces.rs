//! The settler wallet's key used elsewhere too: transactions this settler did not send take
//! its nonces. Every payment must still settle exactly once.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use common::*;
use x402_protocol::settler_api::{SettlementState, TokenResponse};
use x402_testkit::anvil::dev_signer;

const FUND: u64 = 1_000_000;

async fn wait_log(env: &Env, needle: &str, timeout: Duration) {
    let start = Instant::now();
    while !env.settler.log().contains(needle) {
        assert!(
            start.elapsed() < timeout,
            "no {needle:?} in the settler log within {timeout:?}:\n{}",
            env.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_state(env: &Env, id: &str, want: SettlementState, timeout: Duration) {
    let start = Instant::now();
    loop {
        let s = env.settlement(id).await;
        if s.state == want {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{id} not {want:?} within {timeout:?}: {s:?}\n{}",
            env.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn pay(env: &Env, payment: &serde_json::Value) -> String {
    let (st, body) = env.post_token(&env.requirement(), payment).await;
    assert_eq!(st, 200, "{body}");
    serde_json::from_value::<TokenResponse>(body)
        .unwrap()
        .settlement_id
}

/// A plain 0-value transaction from the settler's own key (as another program using it would).
fn foreign_tx(to: Address, nonce: Option<u64>) -> TransactionRequest {
    let tx = TransactionRequest::default()
        .with_to(to)
        .with_value(U256::ZERO)
        .with_gas_limit(21_000);
    match nonce {
        // A replacement must pay more than the settler's transaction in the pool.
        Some(n) => tx
            .with_nonce(n)
            .with_max_fee_per_gas(200_000_000_000)
            .with_max_priority_fee_per_gas(100_000_000_000),
        None => tx,
    }
}

async fn assert_settled(env: &Env, ids: &[String]) {
    for id in ids {
        let s = env.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(
            s.state,
            SettlementState::Settled,
            "{s:?}\n{}",
            env.settler.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_transaction_before_payments_takes_the_next_nonce() {
    let env = Env::start().await;
    wait_log(&env, "settlement lane started", Duration::from_secs(10)).await;
    let a = env.funded_payer(FUND).await;
    let b = env.funded_payer(FUND).await;
    // The settler computed its next wallet nonce at start; now someone else uses it.
    let k = env.anvil.provider_with(dev_signer(SETTLER_DEV_INDEX));
    let r = k
        .send_transaction(foreign_tx(env.spender, None))
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(r.status());

    let dl = env.now() + 3600;
    let ids = vec![
        pay(&env, &env.permit(&a, PRICE, 0, dl)).await,
        pay(
            &env,
            &env.erc3009(&b, env.pay_to, PRICE, 0, dl, random_nonce()),
        )
        .await,
        pay(&env, &env.permit(&a, PRICE, 1, dl)).await,
        pay(&env, &env.x402v2(&b, PRICE, dl, random_nonce())).await,
    ];
    assert_settled(&env, &ids).await;
    assert_eq!(env.balance(env.pay_to).await, U256::from(4 * PRICE));
    assert_eq!(env.balance(a.address()).await, U256::from(FUND - 2 * PRICE));
    assert_eq!(env.balance(b.address()).await, U256::from(FUND - 2 * PRICE));
    let log = env.settler.log();
    assert!(log.contains("re-syncing the lane's nonce"), "{log}");
    assert!(
        log.contains(&format!("wallet={}", env.spender)),
        "the warning names the wallet:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_transactions_replacing_stored_ones_are_detected_and_resigned() {
    let env = Env::start_with(None, None, &["--rebroadcast-secs", "2"]).await;
    wait_log(&env, "settlement lane started", Duration::from_secs(10)).await;
    let a = env.funded_payer(FUND).await; // two permits, nonces 0 and 1
    let b = env.funded_payer(FUND).await; // ERC-3009
    let c = env.funded_payer(FUND).await; // x402 v2, untouched
    let d = env.funded_payer(FUND).await; // a permit whose transferFrom loses its nonce
    let p = env.anvil.provider();
    let _: serde_json::Value = p
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .unwrap();

    // Wallet nonces: P1 permit 0 + transferFrom 1, P2 2, P3 permit 3 + transferFrom 4,
    // P5 permit 5 + transferFrom 6, P4 7 (in acceptance order, each signed before the next).
    let dl = env.now() + 3600;
    let mut ids = Vec::new();
    for payment in [
        env.permit(&a, PRICE, 0, dl),
        env.erc3009(&b, env.pay_to, PRICE, 0, dl, random_nonce()),
        env.permit(&a, PRICE, 1, dl),
        env.permit(&d, PRICE, 0, dl),
        env.x402v2(&c, PRICE, dl, random_nonce()),
    ] {
        let id = pay(&env, &payment).await;
        wait_state(
            &env,
            &id,
            SettlementState::Submitted,
            Duration::from_secs(10),
        )
        .await;
        ids.push(id);
    }
    let pool: serde_json::Value = p.raw_request("txpool_content".into(), ()).await.unwrap();
    let ours = pool["pending"][format!("{:#x}", env.spender)]
        .as_object()
        .map(|o| o.len())
        .unwrap_or(0)
        + pool["pending"][env.spender.to_string()]
            .as_object()
            .map(|o| o.len())
            .unwrap_or(0);
    assert_eq!(
        ours, 8,
        "the settler's 8 transactions wait in the pool: {pool}"
    );

    // Someone with the same key replaces P1's permit (0), P2 (2) and P5's transferFrom (6).
    let k = env.anvil.provider_with(dev_signer(SETTLER_DEV_INDEX));
    for n in [0u64, 2, 6] {
        let _ = k
            .send_transaction(foreign_tx(Address::repeat_byte(0x99), Some(n)))
            .await
            .expect("replacement accepted by the pool");
    }
    let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
    let _: serde_json::Value = p
        .raw_request("evm_setAutomine".into(), (true,))
        .await
        .unwrap();
    // Nonces 0, 2, 6 are the foreign ones; P1's transferFrom and P3 (permit nonce 1 before 0)
    // reverted; P5's permit and P4 went through.
    let settler_nonce = p.get_transaction_count(env.spender).await.unwrap();
    assert_eq!(settler_nonce, 8);

    assert_settled(&env, &ids).await;
    assert_eq!(
        env.balance(env.pay_to).await,
        U256::from(5 * PRICE),
        "{}",
        env.settler.log()
    );
    assert_eq!(env.balance(a.address()).await, U256::from(FUND - 2 * PRICE));
    for who in [&b, &c, &d] {
        assert_eq!(env.balance(who.address()).await, U256::from(FUND - PRICE));
    }
    assert_eq!(
        env.anvil.nonces(env.token, a.address()).await.unwrap(),
        U256::from(2)
    );
    // P5 was finished with transferFrom alone (its permit had been mined).
    let s5 = env.settlement(&ids[3]).await;
    assert!(s5.permit_tx.is_none(), "{s5:?}");
    let log = env.settler.log();
    assert!(log.contains("can never be mined"), "{log}");
    assert!(
        log.contains(&format!("wallet={}", env.spender)),
        "the warning names the wallet:\n{log}"
    );
    // Nothing keeps being re-broadcast.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = env.settler.log().matches("re-broadcasting").count();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(env.settler.log().matches("re-broadcasting").count(), before);
}

/// The seed SDK 0.1.x signs each permit with the owner's on-chain nonce: a second payment
/// signed before the first permit is mined reuses its nonce. That is a stale nonce, not a
/// replay: 409 `nonce_mismatch` with `expected_nonce` (the next free one); the first permit
/// posted again is still answered with its token, and a permit at `expected_nonce` pays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_permit_with_the_nonce_of_an_unmined_one_is_nonce_mismatch() {
    let env = Env::start_with(None, None, &["--no-worker"]).await;
    let payer = env.funded_payer(FUND).await;
    let dl = env.now() + 3600;
    let first = env.permit(&payer, PRICE, 0, dl);
    let (st, token) = env.post_token(&env.requirement(), &first).await;
    assert_eq!(st, 200, "{token}");
    assert_eq!(
        env.anvil.nonces(env.token, payer.address()).await.unwrap(),
        U256::ZERO,
        "not mined (no worker)"
    );

    // Another permit (other deadline, so another signature) with the same nonce 0.
    let stale = env.permit(&payer, PRICE, 0, dl + 60);
    let (st, body) = env.post_token(&env.requirement(), &stale).await;
    assert_eq!((st, code(&body)), (409, "nonce_mismatch"), "{body}");
    assert_eq!(body["expected_nonce"], "1", "{body}");
    assert!(body.get("settlement_id").is_none(), "{body}");

    // The first one again: the same token (it is the same payment, not broadcast).
    let (st, again) = env.post_token(&env.requirement(), &first).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["access_token"], token["access_token"]);

    // Signed at the expected nonce, it pays.
    let (st, next) = env
        .post_token(&env.requirement(), &env.permit(&payer, PRICE, 1, dl + 60))
        .await;
    assert_eq!(st, 200, "{next}");
    assert_ne!(next["settlement_id"], token["settlement_id"]);
}
