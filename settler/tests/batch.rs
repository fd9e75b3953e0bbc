//! Batched settlement against a real anvil, the real test token, the real batch contract
//! (contracts/X402Settlement.sol) and the real settler binary (`--settlement-contract`): bad
//! items in the middle of a batch fail alone (with the payer's cause where it is the payer's
//! doing), 200 payments of both schemes settle in a handful of transactions exactly once, and
//! kill -9 during a batch loses or doubles nothing.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{eip712_domain, SolStruct};
use common::*;
use serde_json::Value;
use x402_protocol::settler_api::SettlementState;
use x402_testkit::anvil::{dev_address, Anvil, TestUsdc, DEV_KEYS};
use x402_testkit::settler::{SettlerOptions, SettlerProcess};

mod typed {
    alloy::sol! {
        struct CancelAuthorization { address authorizer; bytes32 nonce; }
    }
}

/// An [`Env`] whose settler batches through a freshly deployed settlement contract (its
/// wallet the operator); permits are made out to the contract (`env.spender`).
async fn start_batched(extra: &[&str]) -> Env {
    let anvil = Anvil::start().expect("anvil starts");
    let token = anvil.deploy_token().await.expect("token deploys");
    let wallet = dev_address(SETTLER_DEV_INDEX);
    let contract = anvil
        .deploy_settlement(&[wallet])
        .await
        .expect("settlement contract deploys");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = SettlerOptions::new(
        sqlite_url(dir.path()),
        anvil.network().to_string(),
        anvil.rpc_url(),
        DEV_KEYS[SETTLER_DEV_INDEX],
        dir.path().join("token.key"),
    );
    opts.bin = Some(settler_bin());
    opts.api_secret = Some(API_SECRET.into());
    opts.terms = Some(test_terms(anvil.network(), token));
    opts.extra_args = vec![
        "--settlement-contract".into(),
        format!("{}={contract:#x}", anvil.network()),
    ];
    opts.extra_args.extend(extra.iter().map(|s| s.to_string()));
    opts.env.push((
        "RUST_LOG".into(),
        "info,x402_settler=debug,sqlx=warn".into(),
    ));
    let settler = SettlerProcess::start(opts).await.expect("settler starts");
    Env::assemble(anvil, token, settler, dir, contract)
}

async fn rpc<P: serde::Serialize + Clone + std::fmt::Debug + Unpin + Send + Sync + 'static>(
    env: &Env,
    method: &str,
    params: P,
) {
    let _: Value = env
        .anvil
        .provider()
        .raw_request(method.to_string().into(), params)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"));
}

async fn give_eth(env: &Env, who: Address) {
    rpc(env, "anvil_setBalance", (who, U256::from(10u128.pow(18)))).await;
}

fn sig_bytes(v: u8, r: U256, s: U256) -> Bytes {
    let mut b = Vec::with_capacity(65);
    b.extend_from_slice(&r.to_be_bytes::<32>());
    b.extend_from_slice(&s.to_be_bytes::<32>());
    b.push(v);
    b.into()
}

/// The settler wallet's confirmed transaction count (= transactions it sent).
async fn wallet_txs(env: &Env) -> u64 {
    env.anvil
        .provider()
        .get_transaction_count(dev_address(SETTLER_DEV_INDEX))
        .await
        .unwrap()
}

async fn wait_state(env: &Env, id: &str, want: SettlementState, timeout: Duration) {
    let start = std::time::Instant::now();
    loop {
        if env.settlement(id).await.state == want {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{id} not {want:?} within {timeout:?}; log:\n{}",
            env.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn accept(env: &Env, payment: &Value) -> String {
    let (st, body) = env.post_token(&env.requirement(), payment).await;
    assert_eq!(st, 200, "{body}");
    body["settlement_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn bad_items_in_the_middle_of_a_batch_fail_alone() {
    // The lane gathers for 1.5 s so all six payments go in one batch.
    let env = start_batched(&["--deadline-margin", "10", "--batch-wait-ms", "1500"]).await;
    let payers: Vec<PrivateKeySigner> = {
        let mut v = vec![];
        for _ in 0..6 {
            v.push(env.funded_payer(PRICE).await);
        }
        v
    };
    for p in &payers {
        give_eth(&env, p.address()).await;
    }
    let now = env.now();
    rpc(&env, "evm_setAutomine", (false,)).await;
    let nonces: Vec<B256> = (0..6).map(|_| random_nonce()).collect();
    let exact = |i: usize| env.erc3009(&payers[i], env.pay_to, PRICE, 0, now + 3600, nonces[i]);
    let ids = vec![
        accept(&env, &exact(0)).await,
        // 1: the payer cancels its authorization before the batch is mined.
        accept(&env, &exact(1)).await,
        accept(&env, &env.permit(&payers[2], PRICE, 0, now + 3600)).await,
        // 3: a permit that expires before the batch is mined (chain time jumps).
        accept(&env, &env.permit(&payers[3], PRICE, 0, now + 40)).await,
        // 4: the payer moves its funds away before the batch is mined.
        accept(&env, &exact(4)).await,
        accept(&env, &env.permit(&payers[5], PRICE, 0, now + 3600)).await,
    ];
    for id in &ids {
        wait_state(
            &env,
            id,
            SettlementState::Submitted,
            Duration::from_secs(20),
        )
        .await;
    }
    let batch_tx = env.settlement(&ids[0]).await.transfer_tx;
    for id in &ids {
        assert_eq!(env.settlement(id).await.transfer_tx, batch_tx, "one batch");
    }
    // The payers' own transactions, with a high tip: mined ahead of the batch.
    let domain = eip712_domain! { name: "USDC", version: "2", chain_id: env.anvil.chain_id(), verifying_contract: env.token, };
    let (v, r, s) = sign(
        &payers[1],
        typed::CancelAuthorization {
            authorizer: payers[1].address(),
            nonce: nonces[1],
        }
        .eip712_signing_hash(&domain),
    );
    let t1 = TestUsdc::new(env.token, env.anvil.provider_with(payers[1].clone()));
    let cancel = t1
        .cancelAuthorization(payers[1].address(), nonces[1], sig_bytes(v, r, s))
        .max_priority_fee_per_gas(100_000_000_000)
        .max_fee_per_gas(200_000_000_000)
        // No estimate: the node would estimate on top of the pooled batch (and see it fail).
        .gas(150_000)
        .send()
        .await
        .unwrap();
    let t4 = TestUsdc::new(env.token, env.anvil.provider_with(payers[4].clone()));
    let away = t4
        .transfer(Address::repeat_byte(0x77), U256::from(PRICE))
        .max_priority_fee_per_gas(100_000_000_000)
        .max_fee_per_gas(200_000_000_000)
        // No estimate: the node would estimate on top of the pooled batch (and see it fail).
        .gas(150_000)
        .send()
        .await
        .unwrap();
    rpc(&env, "evm_increaseTime", (120u64,)).await;
    rpc(&env, "evm_mine", ()).await;
    rpc(&env, "evm_setAutomine", (true,)).await;
    assert!(cancel.get_receipt().await.unwrap().status());
    assert!(away.get_receipt().await.unwrap().status());

    let mut finals = vec![];
    for id in &ids {
        finals.push(env.wait_final(id, Duration::from_secs(30)).await);
    }
    let states: Vec<_> = finals.iter().map(|s| s.state).collect();
    use SettlementState::{Failed, Settled};
    assert_eq!(
        states,
        [Settled, Failed, Settled, Failed, Failed, Settled],
        "{finals:#?}"
    );
    for i in [0, 2, 5] {
        assert_eq!(finals[i].transfer_tx, batch_tx, "settled in the batch");
        assert_eq!(env.balance(payers[i].address()).await, U256::ZERO);
    }
    assert_eq!(env.balance(env.pay_to).await, U256::from(3 * PRICE));
    assert_eq!(env.balance(payers[3].address()).await, U256::from(PRICE));
    // The payer-caused failures block their payers; the expired permit (we were slow) does not.
    let pay = |p: &PrivateKeySigner| {
        env.erc3009(p, env.pay_to, PRICE, 0, env.now() + 3600, random_nonce())
    };
    for i in [1, 4] {
        env.anvil
            .mint(env.token, payers[i].address(), U256::from(PRICE))
            .await
            .unwrap();
        let (st, body) = env.post_token(&env.requirement(), &pay(&payers[i])).await;
        assert_eq!(
            (st, code(&body)),
            (403, "payer_blocked"),
            "payer {i}: {body}"
        );
    }
    let (st, body) = env.post_token(&env.requirement(), &pay(&payers[3])).await;
    assert_eq!(st, 200, "the expired permit's payer is not blocked: {body}");
    let log = env.settler.log();
    assert!(log.contains("authorization_canceled"), "{log}");
    assert!(log.contains("insufficient_balance"));
}

#[tokio::test]
async fn two_hundred_payments_of_both_schemes_settle_in_a_handful_of_transactions() {
    let env = start_batched(&[]).await;
    let before = wallet_txs(&env).await;
    let mut payers = vec![];
    // One price more than the two payments: a payer's second payment may be accepted while
    // the first one's batch is mined, and anvil serves the new balance a moment before the
    // receipt that would show the first payment as already out of it (then the balance
    // check would see it twice and refuse a payment that is covered).
    for _ in 0..100 {
        payers.push(env.funded_payer(3 * PRICE).await);
    }
    let now = env.now();
    let mut payments = vec![];
    let mut auths = vec![];
    for p in &payers {
        let n = random_nonce();
        auths.push((p.address(), n));
        payments.push(env.erc3009(p, env.pay_to, PRICE, 0, now + 3600, n));
        payments.push(env.permit(p, PRICE, 0, now + 3600));
    }
    let mut ids = vec![];
    for chunk in payments.chunks(16) {
        let mut posts = tokio::task::JoinSet::new();
        for (i, p) in chunk.iter().enumerate() {
            let (http, url, req, p) = (
                env.http.clone(),
                env.settler.url(),
                env.requirement(),
                p.clone(),
            );
            posts.spawn(async move { (i, post_token(&http, &url, &req, &p).await) });
        }
        let mut answers = posts.join_all().await;
        answers.sort_by_key(|a| a.0);
        for (_, (st, body)) in answers {
            assert_eq!(st, 200, "{body}");
            ids.push(body["settlement_id"].as_str().unwrap().to_string());
        }
    }
    let mut txs = HashSet::new();
    for id in &ids {
        let s = env.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(s.state, SettlementState::Settled, "{s:?}");
        txs.insert(s.transfer_tx.unwrap());
    }
    let sent = wallet_txs(&env).await - before;
    assert!(
        txs.len() <= 20 && sent <= 20,
        "200 payments in {} batch transactions ({sent} sent by the wallet)",
        txs.len()
    );
    // Exactly once on chain.
    assert_eq!(env.balance(env.pay_to).await, U256::from(200 * PRICE));
    for (p, (who, n)) in payers.iter().zip(&auths) {
        assert_eq!(env.balance(p.address()).await, U256::from(PRICE));
        assert!(env
            .anvil
            .authorization_state(env.token, *who, *n)
            .await
            .unwrap());
        assert_eq!(
            env.anvil.nonces(env.token, p.address()).await.unwrap(),
            U256::from(1)
        );
    }
}

#[tokio::test]
async fn kill9_during_a_batch_loses_and_doubles_nothing() {
    let mut env = start_batched(&[]).await;
    let mut payers = vec![];
    for _ in 0..40 {
        payers.push(env.funded_payer(PRICE).await);
    }
    // Mining paused: the batches sit in the pool when the settler dies.
    rpc(&env, "evm_setAutomine", (false,)).await;
    let now = env.now();
    let mut ids = vec![];
    for (i, p) in payers.iter().enumerate() {
        let pay = if i % 2 == 0 {
            env.erc3009(p, env.pay_to, PRICE, 0, now + 3600, random_nonce())
        } else {
            env.permit(p, PRICE, 0, now + 3600)
        };
        ids.push(accept(&env, &pay).await);
    }
    for id in &ids[..10] {
        wait_state(
            &env,
            id,
            SettlementState::Submitted,
            Duration::from_secs(20),
        )
        .await;
    }
    env.settler.kill9();
    // The node loses its pool too: only the stored batches can bring the payments back.
    rpc(&env, "anvil_dropAllTransactions", ()).await;
    rpc(&env, "evm_setAutomine", (true,)).await;
    env.settler.restart().await.unwrap();
    for id in &ids {
        let s = env.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(s.state, SettlementState::Settled, "{s:?}");
    }
    assert_eq!(env.balance(env.pay_to).await, U256::from(40 * PRICE));
    for p in &payers {
        assert_eq!(env.balance(p.address()).await, U256::ZERO);
    }
    let log = env.settler.log();
    assert!(log.contains("settlement batch submitted"), "{log}");
}
