//! Many payers at once, replays (also concurrent), and kill -9 during settlement.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::U256;
use alloy::signers::local::PrivateKeySigner;
use common::*;
use x402_protocol::settler_api::{SettlementState, TokenResponse};

const FUND: u64 = 1_000_000;

/// Payers 0..n/2 pay with permits (nonces 0..k in order), the others with ERC-3009
/// authorizations (all at once). Returns the settlement ids.
async fn pay_all(env: &Arc<Env>, payers: &[PrivateKeySigner], per_payer: u64) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    let half = payers.len() / 2;
    for (i, key) in payers.iter().enumerate() {
        let env = env.clone();
        let key = key.clone();
        set.spawn(async move {
            let req = env.requirement();
            let dl = env.now() + 3600;
            let mut ids = Vec::new();
            if i < half {
                for n in 0..per_payer {
                    let (st, body) = env.post_token(&req, &env.permit(&key, PRICE, n, dl)).await;
                    assert_eq!(st, 200, "payer {i} permit {n}: {body}");
                    ids.push(
                        serde_json::from_value::<TokenResponse>(body)
                            .unwrap()
                            .settlement_id,
                    );
                }
            } else {
                let mut inner = tokio::task::JoinSet::new();
                for _ in 0..per_payer {
                    let env = env.clone();
                    let key = key.clone();
                    let req = req.clone();
                    inner.spawn(async move {
                        env.post_token(
                            &req,
                            &env.erc3009(&key, env.pay_to, PRICE, 0, dl, random_nonce()),
                        )
                        .await
                    });
                }
                while let Some(r) = inner.join_next().await {
                    let (st, body) = r.unwrap();
                    assert_eq!(st, 200, "payer {i} erc3009: {body}");
                    ids.push(
                        serde_json::from_value::<TokenResponse>(body)
                            .unwrap()
                            .settlement_id,
                    );
                }
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        ids.extend(r.unwrap());
    }
    ids
}

async fn assert_all_settled(
    env: &Env,
    ids: &[String],
    payers: &[PrivateKeySigner],
    per_payer: u64,
    timeout: Duration,
) {
    for id in ids {
        let s = env.wait_final(id, timeout).await;
        assert_eq!(
            s.state,
            SettlementState::Settled,
            "{s:?}\n{}",
            env.settler.log()
        );
    }
    let n = ids.len() as u64;
    assert_eq!(
        env.balance(env.pay_to).await,
        U256::from(n * PRICE),
        "pay_to received each payment exactly once"
    );
    for p in payers {
        assert_eq!(
            env.balance(p.address()).await,
            U256::from(FUND - per_payer * PRICE),
            "payer {} paid exactly its payments",
            p.address()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_payers_all_minted_all_settled() {
    let env = Arc::new(Env::start().await);
    let mut payers = Vec::new();
    for _ in 0..10 {
        payers.push(env.funded_payer(FUND).await);
    }
    let ids = pay_all(&env, &payers, 3).await;
    assert_eq!(ids.len(), 30);
    assert_all_settled(&env, &ids, &payers, 3, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_mint_exactly_one_token() {
    let env = Arc::new(Env::start().await);
    let payer = env.funded_payer(FUND).await;
    let dl = env.now() + 3600;
    for payment in [
        env.permit(&payer, PRICE, 0, dl),
        env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce()),
    ] {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let env = env.clone();
            let p = payment.clone();
            set.spawn(async move { env.post_token(&env.requirement(), &p).await });
        }
        // One settlement, one token: the same payment posted again gets that token while the
        // settlement is not broadcast, 409 naming it after.
        let mut answers = Vec::new();
        while let Some(r) = set.join_next().await {
            answers.push(r.unwrap());
        }
        let first = answers
            .iter()
            .find(|(st, _)| *st == 200)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no token: {answers:?}"));
        for a in &answers {
            assert_same_or_used(&first, a);
        }
        let id = first["settlement_id"].as_str().unwrap().to_string();
        assert_eq!(
            env.wait_final(&id, Duration::from_secs(30)).await.state,
            SettlementState::Settled
        );
        // And again after settlement, sequentially.
        let (st, body) = env.post_token(&env.requirement(), &payment).await;
        assert_eq!((st, code(&body)), (409, "payment_already_used"));
    }
    assert_eq!(env.balance(env.pay_to).await, U256::from(2 * PRICE));
    // Across a restart too (the key is in the database, not in memory).
    let mut env = Arc::try_unwrap(env).ok().unwrap();
    env.settler.restart().await.unwrap();
    let (st, body) = env
        .post_token(&env.requirement(), &env.permit(&payer, PRICE, 0, dl))
        .await;
    assert_eq!((st, code(&body)), (409, "payment_already_used"));
}

/// kill -9 the settler repeatedly while it settles (anvil mines every second, so
/// transactions sit in the pool), restart it on the same SQLite file each time, and check
/// that every accepted payment ends settled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_settlement_settles_everything_exactly_once() {
    let env = Arc::new(Env::start().await);
    let mut payers = Vec::new();
    for _ in 0..8 {
        payers.push(env.funded_payer(FUND).await);
    }
    // From now on a block every second: settlement transactions wait in the pool.
    env.set_interval_mining(1).await;
    let ids = pay_all(&env, &payers, 4).await;
    assert_eq!(ids.len(), 32);
    let mut env = Arc::try_unwrap(env).ok().unwrap();
    let mut kills = 0;
    for delay_ms in [150u64, 400, 900, 250, 1300, 60] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        env.settler.kill9();
        if kills == 0 {
            // As if the transactions never left the dead process: only the stored raw
            // transactions can bring them back.
            use alloy::providers::Provider;
            let _: serde_json::Value = env
                .anvil
                .provider()
                .raw_request("anvil_dropAllTransactions".into(), ())
                .await
                .unwrap();
        }
        kills += 1;
        env.settler.restart().await.unwrap();
    }
    assert_all_settled(&env, &ids, &payers, 4, Duration::from_secs(90)).await;
    let log = env.settler.log();
    let starts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("settlement lane started"))
        .collect();
    assert_eq!(starts.len(), kills + 1, "{log}");
    // The kills hit transactions in flight: some restart re-broadcast stored transactions.
    let rebroadcast: u64 = starts
        .iter()
        .filter_map(|l| l.split("rebroadcast=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    for l in &starts {
        eprintln!("{l}");
    }
    assert!(
        rebroadcast > 0,
        "no restart found transactions in flight; the test did not exercise recovery"
    );
}

/// kill -9 while payments keep arriving and settling (instant mining). A client whose request
/// died with the process retries the same payment after the restart: it gets its token (the
/// payment was not stored) or `payment_already_used` (it was). Every stored payment must
/// settle exactly once: balances of pay_to and of every payer match the accepted payments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_accepting_and_settling() {
    let mut env = Env::start().await;
    let mut payers = Vec::new();
    for _ in 0..6 {
        payers.push(env.funded_payer(FUND).await);
    }
    // Our own process handle (same options, port, DB), so the clients can share `env`.
    env.settler.kill9();
    let mut settler = x402_testkit::settler::SettlerProcess::start(env.settler.options().clone())
        .await
        .unwrap();
    let env = Arc::new(env);
    let base = settler.url();
    let per_payer = 10u64;
    let mut clients = tokio::task::JoinSet::new();
    for (i, key) in payers.iter().cloned().enumerate() {
        let env = env.clone();
        let base = base.clone();
        clients.spawn(async move {
            let req = env.requirement();
            let dl = env.now() + 3600;
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for n in 0..per_payer {
                let p = if i % 2 == 0 {
                    env.permit(&key, PRICE, n, dl)
                } else {
                    env.erc3009(&key, env.pay_to, PRICE, 0, dl, random_nonce())
                };
                let body = serde_json::json!({"requirement": req, "payment": p});
                loop {
                    // An Err is a request the killed process dropped: retry the same payment.
                    if let Ok(r) = http
                        .post(format!("{base}/v1/tokens"))
                        .header("authorization", bearer())
                        .json(&body)
                        .send()
                        .await
                    {
                        {
                            let st = r.status().as_u16();
                            let v: serde_json::Value = r.json().await.unwrap_or_default();
                            match (st, code(&v)) {
                                (200, _) | (409, "payment_already_used") => break,
                                (503, _) => {}
                                _ => panic!("payer {i} payment {n}: {st} {v}"),
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        });
    }
    let mut kills = 0;
    let mut next_kill = tokio::time::Instant::now() + Duration::from_millis(150);
    while !clients.is_empty() {
        tokio::select! {
            r = clients.join_next() => { r.unwrap().unwrap(); }
            _ = tokio::time::sleep_until(next_kill) => {
                next_kill = tokio::time::Instant::now() + Duration::from_millis(150 + 97 * (kills % 4));
                settler.kill9();
                kills += 1;
                settler.restart().await.unwrap();
            }
        }
    }
    assert!(kills >= 3, "only {kills} kills");
    // Everything accepted settles exactly once.
    let total = payers.len() as u64 * per_payer;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = env.balance(env.pay_to).await;
        if got == U256::from(total * PRICE) {
            break;
        }
        assert!(
            got < U256::from(total * PRICE),
            "pay_to received more than was paid: {got}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "pay_to has {got} of {}; log:\n{}",
            total * PRICE,
            settler.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.balance(env.pay_to).await, U256::from(total * PRICE));
    for p in &payers {
        assert_eq!(
            env.balance(p.address()).await,
            U256::from(FUND - per_payer * PRICE)
        );
    }
    eprintln!("{kills} kills while accepting and settling {total} payments");
}
