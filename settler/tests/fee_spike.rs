//! Replace-by-fee and stall handling against a real anvil under a base-fee spike, with the
//! real settler binary. Mining is switched to explicit `evm_mine`, so the lane's transactions
//! sit in anvil's pool; `anvil_setNextBlockBaseFeePerGas` makes the next block's base fee
//! jump above what the lane signed.
//!
//! What anvil does (and the lane copes with): a block whose base fee is above a pooled
//! transaction's max fee leaves it out AND drops it from the pool; a transaction (or a
//! replacement) whose max fee is below the next block's base fee is refused at submission
//! ("max fee per gas less than block base fee"); a replacement needs higher fees than the
//! pooled one; the set base fee holds for one block, EIP-1559 follows from there.
//!
//! 1. Spike below the cap: every transaction is left out of the spike block, the lane
//!    re-signs each nonce with max fee >= 2 x base fee (under `--max-fee-gwei`), `/readyz`
//!    reports the stall and new payments get 503 `settlement_stalled`; a block at the same
//!    spiked base fee then mines the replacements, each payment settles exactly once, the lane
//!    recovers.
//! 2. Spike above the cap: the replacements stop at the cap, the lane stays stalled (a block at
//!    the spiked fee mines nothing), and when the fee drops the stored attempts are
//!    re-broadcast and everything settles exactly once.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use common::*;
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use x402_protocol::settler_api::SettlementState;

const GWEI: u128 = 1_000_000_000;

async fn rpc(env: &Env, method: &'static str, params: Value) -> Value {
    env.anvil
        .provider()
        .raw_request(method.into(), params)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

async fn automine(env: &Env, on: bool) {
    rpc(env, "evm_setAutomine", json!([on])).await;
}

/// Mines one block whose base fee is `base_fee` (wei).
async fn mine_at(env: &Env, base_fee: u128) {
    rpc(
        env,
        "anvil_setNextBlockBaseFeePerGas",
        json!([U256::from(base_fee)]),
    )
    .await;
    rpc(env, "evm_mine", json!([])).await;
}

async fn latest_base_fee(env: &Env) -> u128 {
    let b = env
        .anvil
        .provider()
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .unwrap()
        .unwrap();
    u128::from(b.header.base_fee_per_gas.unwrap())
}

async fn signer_nonce(env: &Env) -> u64 {
    env.anvil
        .provider()
        .get_transaction_count(env.spender)
        .await
        .unwrap()
}

async fn get(env: &Env, path: &str) -> (u16, Value) {
    let r = env
        .http
        .get(format!("{}{path}", env.settler.url()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// One signed attempt at a wallet nonce, as the settler stored it (before broadcast).
#[derive(Debug, Clone)]
struct Attempt {
    hash: B256,
    max_fee: u128,
    priority_fee: u128,
}

/// Every stored attempt per wallet nonce (oldest first), read from the settler's database.
async fn attempts(env: &Env) -> BTreeMap<u64, Vec<Attempt>> {
    let mut c = sqlx::SqliteConnection::connect(&sqlite_url(env.dir.path()))
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT nonce, hash, max_fee, priority_fee FROM x402_tx_attempts ORDER BY nonce, created_ms, rowid",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut by_nonce: BTreeMap<u64, Vec<Attempt>> = BTreeMap::new();
    for r in rows {
        let nonce: i64 = r.get("nonce");
        let hash: String = r.get("hash");
        let max_fee: String = r.get("max_fee");
        let prio: String = r.get("priority_fee");
        by_nonce.entry(nonce as u64).or_default().push(Attempt {
            hash: hash.parse().unwrap(),
            max_fee: max_fee.parse().unwrap(),
            priority_fee: prio.parse().unwrap(),
        });
    }
    c.close().await.unwrap();
    by_nonce
}

/// The payments of a test: (payer, settlement id, scheme is permit).
struct Paid {
    payer: PrivateKeySigner,
    id: String,
    permit: Option<u64>,
    erc3009_nonce: Option<B256>,
}

/// Two ERC-3009 payments, two permits of one payer (nonces 0 and 1) and one of another:
/// 8 wallet nonces. Accepted with automine off, so their transactions stay in the pool.
async fn pay_both_schemes(env: &Env) -> Vec<Paid> {
    let req = env.requirement();
    let e1 = env.funded_payer(PRICE).await;
    let e2 = env.funded_payer(PRICE).await;
    let p1 = env.funded_payer(2 * PRICE).await;
    let p2 = env.funded_payer(PRICE).await;
    automine(env, false).await;
    let mut paid = Vec::new();
    for e in [e1, e2] {
        let n = random_nonce();
        let (st, tok) = env
            .post_token(
                &req,
                &env.erc3009(&e, env.pay_to, PRICE, 0, env.now() + 3600, n),
            )
            .await;
        assert_eq!(st, 200, "{tok}");
        paid.push(Paid {
            payer: e,
            id: tok["settlement_id"].as_str().unwrap().into(),
            permit: None,
            erc3009_nonce: Some(n),
        });
    }
    for (p, nonce) in [(p1.clone(), 0), (p1, 1), (p2, 0)] {
        let (st, tok) = env
            .post_token(&req, &env.permit(&p, PRICE, nonce, env.now() + 3600))
            .await;
        assert_eq!(st, 200, "{tok}");
        paid.push(Paid {
            payer: p,
            id: tok["settlement_id"].as_str().unwrap().into(),
            permit: Some(nonce),
            erc3009_nonce: None,
        });
    }
    paid
}

/// Waits (bounded) until `cond` holds, polling every 100 ms.
async fn wait_for<F, Fut>(env: &Env, what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}; settler log:\n{}",
            env.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn all_in_state(env: &Env, paid: &[Paid], state: SettlementState) -> bool {
    for p in paid {
        if env.settlement(&p.id).await.state != state {
            return false;
        }
    }
    true
}

/// No receipt for any attempt: nothing the lane signed is mined.
async fn none_mined(env: &Env, att: &BTreeMap<u64, Vec<Attempt>>) -> bool {
    let p = env.anvil.provider();
    for a in att.values().flatten() {
        if p.get_transaction_receipt(a.hash).await.unwrap().is_some() {
            return false;
        }
    }
    true
}

async fn readyz_stalled(env: &Env) -> Option<Value> {
    let (st, body) = get(env, "/readyz").await;
    let net = env.anvil.network().to_string();
    (st == 503 && body["stalled_lanes"][&net]["stalled"] == true).then_some(body)
}

/// Every payment settled exactly once: pay_to holds the sum, every payer is empty, every
/// ERC-3009 authorization is used, every permit nonce advanced, and the wallet sent exactly
/// `wallet_txs` transactions (one mined attempt per nonce, nothing more).
async fn assert_settled_once(env: &Env, paid: &[Paid], wallet_nonce_before: u64, wallet_txs: u64) {
    for p in paid {
        let s = env.wait_final(&p.id, Duration::from_secs(30)).await;
        assert_eq!(s.state, SettlementState::Settled, "{s:?}");
    }
    assert_eq!(
        env.balance(env.pay_to).await,
        U256::from(PRICE) * U256::from(paid.len()),
        "pay_to received every payment once"
    );
    let mut permits: BTreeMap<Address, u64> = BTreeMap::new();
    for p in paid {
        let who = p.payer.address();
        assert_eq!(
            env.balance(who).await,
            U256::ZERO,
            "payer {who} charged once"
        );
        if let Some(n) = p.erc3009_nonce {
            assert!(env
                .anvil
                .authorization_state(env.token, who, n)
                .await
                .unwrap());
        }
        if let Some(n) = p.permit {
            let e = permits.entry(who).or_default();
            *e = (*e).max(n + 1);
        }
    }
    for (who, want) in permits {
        assert_eq!(
            env.anvil.nonces(env.token, who).await.unwrap(),
            U256::from(want),
            "permit nonces of {who}"
        );
    }
    assert_eq!(
        signer_nonce(env).await,
        wallet_nonce_before + wallet_txs,
        "one transaction per wallet nonce"
    );
}

/// A new payment is refused with 503 `settlement_stalled` while the lane is stalled.
async fn assert_refused_stalled(env: &Env, payer: &PrivateKeySigner) {
    let (st, body) = env
        .post_token(
            &env.requirement(),
            &env.erc3009(
                payer,
                env.pay_to,
                PRICE,
                0,
                env.now() + 3600,
                random_nonce(),
            ),
        )
        .await;
    assert_eq!((st, code(&body)), (503, "settlement_stalled"), "{body}");
}

/// After recovery: `/readyz` 200 and a new payment is accepted and settles.
async fn assert_recovered(env: &Env, payer: &PrivateKeySigner) {
    wait_for(
        env,
        "/readyz back to 200",
        Duration::from_secs(20),
        || async { get(env, "/readyz").await.0 == 200 },
    )
    .await;
    let (st, tok) = env
        .post_token(
            &env.requirement(),
            &env.erc3009(
                payer,
                env.pay_to,
                PRICE,
                0,
                env.now() + 3600,
                random_nonce(),
            ),
        )
        .await;
    assert_eq!(st, 200, "{tok}");
    let s = env
        .wait_final(
            tok["settlement_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(s.state, SettlementState::Settled, "{s:?}");
}

/// The lane's flags in these tests (besides `--max-fee-gwei`): replace after 1 s, stalled
/// after 4 s, polling every 100 ms; re-broadcast after `rebroadcast` seconds.
fn lane_flags(rebroadcast: &'static str, max_fee_gwei: &'static str) -> Vec<&'static str> {
    vec![
        "--replace-after-secs",
        "1",
        "--stall-after-secs",
        "4",
        "--rebroadcast-secs",
        rebroadcast,
        "--poll-interval-ms",
        "100",
        "--max-fee-gwei",
        max_fee_gwei,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fee_spike_under_the_cap_is_outbid_by_replacements_and_everything_settles_once() {
    let cap = 1000 * GWEI;
    let env = Env::start_with(None, None, &lane_flags("1", "1000")).await;
    let late = env.funded_payer(PRICE).await;
    let after = env.funded_payer(PRICE).await;
    let wallet_before = signer_nonce(&env).await;
    let paid = pay_both_schemes(&env).await;
    wait_for(&env, "all submitted", Duration::from_secs(20), || {
        all_in_state(&env, &paid, SettlementState::Submitted)
    })
    .await;
    let first = attempts(&env).await;
    assert_eq!(first.len(), 8, "{first:?}");
    // What the lane signed, as the node has it in its pool.
    for a in first.values().flatten() {
        let t = env
            .anvil
            .provider()
            .get_transaction_by_hash(a.hash)
            .await
            .unwrap()
            .expect("in the pool");
        use alloy::consensus::Transaction;
        assert_eq!(t.max_fee_per_gas(), a.max_fee);
    }
    let signed_max = first.values().flatten().map(|a| a.max_fee).max().unwrap();
    let spike = 100 * GWEI;
    assert!(
        signed_max < spike,
        "the spike prices the lane's transactions out: signed {signed_max}"
    );

    // The spike block: none of them is included (anvil drops them from its pool).
    mine_at(&env, spike).await;
    assert_eq!(latest_base_fee(&env).await, spike);
    assert!(none_mined(&env, &first).await, "priced out: not mined");
    assert_eq!(signer_nonce(&env).await, wallet_before);

    // The lane re-signs every nonce above the spike, under the cap; meanwhile it is stalled.
    wait_for(
        &env,
        "every nonce replaced",
        Duration::from_secs(20),
        || async {
            attempts(&env)
                .await
                .values()
                .all(|v| v.len() >= 2 && v.last().is_some_and(|a| a.max_fee >= 2 * spike))
        },
    )
    .await;
    wait_for(
        &env,
        "/readyz reports the stall",
        Duration::from_secs(20),
        || async { readyz_stalled(&env).await.is_some() },
    )
    .await;
    assert_refused_stalled(&env, &late).await;
    let replaced = attempts(&env).await;
    for (nonce, v) in &replaced {
        for w in v.windows(2) {
            assert!(
                w[1].max_fee * 8 >= w[0].max_fee * 9
                    && w[1].priority_fee * 8 >= w[0].priority_fee * 9,
                "nonce {nonce}: each attempt +12.5 % at least: {v:?}"
            );
        }
        assert!(
            v.iter().all(|a| a.max_fee <= cap),
            "nonce {nonce}: under the cap: {v:?}"
        );
    }
    assert!(none_mined(&env, &replaced).await);

    // The spike holds for one more block: the replacements are mined in it.
    let t_block = Instant::now();
    mine_at(&env, spike).await;
    assert_settled_once(&env, &paid, wallet_before, 8).await;
    let settle_ms = t_block.elapsed().as_millis();
    let done = attempts(&env).await;
    let per_nonce: Vec<usize> = done.values().map(Vec::len).collect();
    for (nonce, v) in &done {
        let mined: Vec<_> = {
            let mut m = Vec::new();
            for a in v {
                if let Some(r) = env
                    .anvil
                    .provider()
                    .get_transaction_receipt(a.hash)
                    .await
                    .unwrap()
                {
                    m.push((a.clone(), r));
                }
            }
            m
        };
        assert_eq!(mined.len(), 1, "nonce {nonce}: exactly one attempt mined");
        assert!(
            mined[0].0.max_fee >= 2 * spike,
            "nonce {nonce}: a replacement is mined"
        );
    }
    println!(
        "fee spike under the cap: spike block -> all {} settled in {settle_ms} ms; attempts per nonce {per_nonce:?}",
        paid.len()
    );

    // Fees back to normal: ready again, and new payments settle.
    automine(&env, true).await;
    mine_at(&env, GWEI).await;
    assert_recovered(&env, &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fee_spike_above_the_cap_stalls_the_lane_until_the_fee_drops_then_everything_settles_once(
) {
    let cap = 20 * GWEI;
    // Re-broadcast only after 60 s: when the fee drops, the lane sends the refused attempts
    // again at once (its health round sees the base fee fall under their fees), well within
    // the 30 s the settlements are waited for.
    let env = Env::start_with(None, None, &lane_flags("60", "20")).await;
    let late = env.funded_payer(PRICE).await;
    let after = env.funded_payer(PRICE).await;
    let wallet_before = signer_nonce(&env).await;
    let paid = pay_both_schemes(&env).await;
    wait_for(&env, "all submitted", Duration::from_secs(20), || {
        all_in_state(&env, &paid, SettlementState::Submitted)
    })
    .await;
    let first = attempts(&env).await;
    assert_eq!(first.len(), 8, "{first:?}");
    let signed_max = first.values().flatten().map(|a| a.max_fee).max().unwrap();
    assert!(signed_max < cap, "signed {signed_max} under the cap");
    let spike = 100 * GWEI;
    mine_at(&env, spike).await;
    assert!(none_mined(&env, &first).await, "priced out: not mined");

    // Replaced up to the cap, never above; then the lane waits, stalled.
    wait_for(
        &env,
        "every nonce replaced at the cap",
        Duration::from_secs(20),
        || async {
            attempts(&env)
                .await
                .values()
                .all(|v| v.last().is_some_and(|a| a.max_fee == cap))
        },
    )
    .await;
    wait_for(
        &env,
        "/readyz reports the stall",
        Duration::from_secs(20),
        || async { readyz_stalled(&env).await.is_some() },
    )
    .await;
    // Several replace rounds later: still nothing above the cap, nothing more signed.
    let at_cap = attempts(&env).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = attempts(&env).await;
    assert_eq!(
        later.values().map(Vec::len).collect::<Vec<_>>(),
        at_cap.values().map(Vec::len).collect::<Vec<_>>(),
        "no room under the cap: no further replacement"
    );
    assert!(
        later.values().flatten().all(|a| a.max_fee <= cap),
        "{later:?}"
    );
    // The spike goes on: still unmined, still stalled, new payments refused.
    mine_at(&env, spike).await;
    assert!(none_mined(&env, &later).await);
    assert!(readyz_stalled(&env).await.is_some());
    assert_refused_stalled(&env, &late).await;

    // The fee drops: the stored attempts go out again and are mined.
    automine(&env, true).await;
    let t_drop = Instant::now();
    mine_at(&env, GWEI).await;
    assert_settled_once(&env, &paid, wallet_before, 8).await;
    let settle_ms = t_drop.elapsed().as_millis();
    let per_nonce: Vec<usize> = attempts(&env).await.values().map(Vec::len).collect();
    println!(
        "fee spike above the cap: fee drop -> all {} settled in {settle_ms} ms; attempts per nonce {per_nonce:?}",
        paid.len()
    );
    assert_recovered(&env, &after).await;
}
