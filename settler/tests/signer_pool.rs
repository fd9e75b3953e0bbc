//! The signer pool on Postgres: two settler replicas, each configured with the same pool of
//! three wallets (in different orders) and one batch settlement contract, on one database,
//! with real anvil, token and contract. Payments of both schemes go to either replica, one
//! replica (the one holding the wallets' leases) is killed with -9 in the middle and the other
//! takes every wallet over; every payment settles exactly once (checked on chain), each
//! wallet sends settlement transactions, and a permit naming one pool wallet is settled by
//! that wallet.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use alloy::network::TransactionResponse;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use common::*;
use x402_protocol::settler_api::{Requirement, SettlementState};
use x402_protocol::Scheme;
use x402_testkit::anvil::{dev_address, Anvil, DEV_KEYS};
use x402_testkit::pg;
use x402_testkit::settler::{SettlerOptions, SettlerProcess};

/// anvil dev accounts of the pool (9 is the other tests' single settler wallet).
const POOL: [usize; 3] = [9, 7, 6];

fn replica(
    db: &pg::TestDb,
    anvil: &Anvil,
    token: Address,
    contract: Address,
    dir: &std::path::Path,
    keys: &[usize],
) -> SettlerOptions {
    let keys: Vec<&str> = keys.iter().map(|i| DEV_KEYS[*i]).collect();
    let mut opts = SettlerOptions::new(
        db.url(),
        anvil.network().to_string(),
        anvil.rpc_url(),
        // Several keys, comma-separated in EVM_PRIVATE_KEY: the signer pool.
        keys.join(","),
        dir.join("token.key"),
    );
    opts.bin = Some(settler_bin());
    opts.api_secret = Some(API_SECRET.into());
    opts.terms = Some(test_terms(anvil.network(), token));
    opts.extra_args = [
        "--settlement-contract",
        &format!("{}={contract:#x}", anvil.network()),
        "--lease-secs",
        "3",
        "--pool-steal-secs",
        "2",
        "--batch-wait-ms",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    opts.env.push((
        "RUST_LOG".into(),
        "info,x402_settler=debug,sqlx=warn".into(),
    ));
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_a_pool_of_three_wallets_settle_everything_once_through_a_kill() {
    let db = pg::TestDb::create().await;
    let anvil = Anvil::start().expect("anvil starts");
    let token = anvil.deploy_token().await.expect("token deploys");
    let wallets: Vec<Address> = POOL.iter().map(|i| dev_address(*i)).collect();
    let contract = anvil
        .deploy_settlement(&wallets)
        .await
        .expect("settlement contract deploys");
    let dir = tempfile::tempdir().unwrap();
    // Replica b first: its lanes take the three wallets' leases, so replica a drives them
    // only once b is gone and the leases run out. The same pool in another order, the same
    // token key (one issuer).
    let mut b = SettlerProcess::start(replica(
        &db,
        &anvil,
        token,
        contract,
        dir.path(),
        &[POOL[2], POOL[0], POOL[1]],
    ))
    .await
    .expect("replica b starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while b.log().matches("settlement lane started").count() < POOL.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "replica b's lanes did not start:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = SettlerProcess::start(replica(&db, &anvil, token, contract, dir.path(), &POOL))
        .await
        .expect("replica a starts");
    let env = Env::assemble(anvil, token, a, dir, contract);
    let req = env.requirement();
    // A route whose permits name the pool's third wallet itself, not the contract.
    let named_wallet = wallets[2];
    let mut req_named: Requirement = req.clone();
    for m in &mut req_named.accepts {
        if m.method.scheme == Scheme::Permit {
            m.method.spender = Some(named_wallet);
        }
    }

    let dl = env.now() + 3600;
    let chain_id = env.anvil.chain_id();
    let payers: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..24 {
            v.push(env.funded_payer(5 * PRICE).await);
        }
        v
    };
    // Per payer: two ERC-3009 authorizations and two permits (nonces 0 and 1, to the
    // contract); the first four payers' third permit names the pool wallet.
    let mut ids: Vec<(String, Option<Address>)> = Vec::new();
    let mut auths: Vec<(Address, B256)> = Vec::new();
    let post = |base: String, req: Requirement, pay: serde_json::Value| {
        let http = env.http.clone();
        async move {
            let (st, body) = post_token(&http, &base, &req, &pay).await;
            (st == 200)
                .then(|| body["settlement_id"].as_str().unwrap().to_string())
                .ok_or(body)
        }
    };
    let logs =
        |b: &SettlerProcess| format!("replica a:\n{}\nreplica b:\n{}", env.settler.log(), b.log());
    let killed_after = payers.len() / 2;
    for (i, p) in payers.iter().enumerate() {
        // Payments alternate replicas until b is killed; after, all go to a.
        let base = |k: usize| {
            if i < killed_after && (i + k) % 2 == 1 {
                b.url()
            } else {
                env.settler.url()
            }
        };
        for k in 0..2 {
            let n = random_nonce();
            auths.push((p.address(), n));
            let pay = env.erc3009(p, env.pay_to, PRICE, 0, dl, n);
            let id = post(base(k), req.clone(), pay).await;
            ids.push((id.unwrap_or_else(|e| panic!("{e}\n{}", logs(&b))), None));
        }
        for nonce in 0..2u64 {
            let pay = env.permit(p, PRICE, nonce, dl);
            let id = post(base(nonce as usize), req.clone(), pay).await;
            ids.push((id.unwrap_or_else(|e| panic!("{e}\n{}", logs(&b))), None));
        }
        if i < 4 {
            let pay = env.permit_to(p, named_wallet, PRICE, 2, dl, token, chain_id);
            let id = post(base(1), req_named.clone(), pay).await;
            ids.push((
                id.unwrap_or_else(|e| panic!("{e}\n{}", logs(&b))),
                Some(named_wallet),
            ));
        }
        if i + 1 == killed_after {
            // Some of b's work is in flight or pending when it dies; its wallets' leases
            // pass to a once they run out.
            b.kill9();
        }
    }

    let mut senders: BTreeMap<Address, usize> = BTreeMap::new();
    let provider = env.anvil.provider();
    for (id, must_be_from) in &ids {
        let s = env.wait_final(id, Duration::from_secs(90)).await;
        assert_eq!(s.state, SettlementState::Settled, "{s:?}");
        let hash: B256 = s.transfer_tx.as_deref().unwrap().parse().unwrap();
        let tx = provider
            .get_transaction_by_hash(hash)
            .await
            .unwrap()
            .expect("the settlement transaction is on chain");
        let from = tx.from();
        assert!(wallets.contains(&from), "sent by {from}, not a pool wallet");
        if let Some(w) = must_be_from {
            assert_eq!(from, *w, "a permit naming a pool wallet is settled by it");
        }
        *senders.entry(from).or_default() += 1;
    }
    // Replica a takes over every wallet of the dead replica b (each lease once it runs out;
    // the payments may all be settled by then through the wallets taken first).
    let started = |log: &str| -> BTreeSet<String> {
        log.lines()
            .filter(|l| l.contains("settlement lane started"))
            .filter_map(|l| l.split("signer=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(|w| w.to_ascii_lowercase())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while started(&env.settler.log()).len() < POOL.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "replica a did not take over every wallet:\n{}",
            env.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        started(&env.settler.log()),
        wallets
            .iter()
            .map(|w| format!("{w:#x}"))
            .collect::<BTreeSet<_>>()
    );
    let used: BTreeSet<Address> = senders.keys().copied().collect();
    assert_eq!(
        used,
        wallets.iter().copied().collect::<BTreeSet<_>>(),
        "every wallet of the pool settles its share: {senders:?}"
    );

    // Exactly once, on chain.
    let n = ids.len() as u64;
    assert_eq!(n, 24 * 4 + 4);
    assert_eq!(env.balance(env.pay_to).await, U256::from(n * PRICE));
    for (i, p) in payers.iter().enumerate() {
        let (paid, permits) = if i < 4 { (5, 3) } else { (4, 2) };
        assert_eq!(
            env.balance(p.address()).await,
            U256::from((5 - paid) * PRICE)
        );
        assert_eq!(
            env.anvil.nonces(token, p.address()).await.unwrap(),
            U256::from(permits)
        );
    }
    for (who, nonce) in &auths {
        assert!(env
            .anvil
            .authorization_state(token, *who, *nonce)
            .await
            .unwrap());
    }
    drop(b);
    drop(env);
    drop(db);
}
