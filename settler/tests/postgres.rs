//! The Postgres path: mint + settle + replay, two replicas on one database, and fail-closed
//! when the database goes away. Uses a fresh database `x402_test_<random>` on the local server
//! (X402_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test), dropped after.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::U256;
use common::*;
use x402_protocol::settler_api::{SettlementState, TokenResponse};
use x402_testkit::pg;
use x402_testkit::settler::{SettlerOptions, SettlerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_mint_settle_replay_two_replicas_and_fail_closed() {
    let db = pg::TestDb::create().await;
    let env = Arc::new(Env::start_with(Some(db.url()), None, &["--lease-secs", "3"]).await);
    let req = env.requirement();
    let payer = env.funded_payer(1_000_000).await;
    let dl = env.now() + 3600;

    // Mint + settle, both schemes.
    let permit = env.permit(&payer, PRICE, 0, dl);
    let (st, body) = env.post_token(&req, &permit).await;
    assert_eq!(st, 200, "{body}");
    let t1: TokenResponse = serde_json::from_value(body).unwrap();
    let auth = env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce());
    let (st, body) = env.post_token(&req, &auth).await;
    assert_eq!(st, 200, "{body}");
    let t2: TokenResponse = serde_json::from_value(body).unwrap();
    for t in [&t1, &t2] {
        let s = env
            .wait_final(&t.settlement_id, Duration::from_secs(30))
            .await;
        assert_eq!(s.state, SettlementState::Settled, "{s:?}");
    }

    // Replay: sequential and concurrent.
    assert_eq!(
        code(&env.post_token(&req, &permit).await.1),
        "payment_already_used"
    );
    let auth2 = env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let env = env.clone();
        let a = auth2.clone();
        set.spawn(async move { env.post_token(&env.requirement(), &a).await });
    }
    // One settlement, one token (the same payment again gets it until broadcast).
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
    // A second replica on the same database: requests to either, one settles (lease).
    let mut opts = SettlerOptions::new(
        db.url(),
        env.anvil.network().to_string(),
        env.anvil.rpc_url(),
        x402_testkit::anvil::DEV_KEYS[SETTLER_DEV_INDEX],
        env.dir.path().join("token.key"),
    );
    opts.bin = Some(settler_bin());
    opts.api_secret = Some(API_SECRET.into());
    opts.terms = Some(test_terms(env.anvil.network(), env.token));
    opts.extra_args = vec!["--lease-secs".into(), "3".into()];
    let replica = SettlerProcess::start(opts).await.unwrap();
    let mut ids = Vec::new();
    let payer2 = env.funded_payer(1_000_000).await;
    for n in 0..6u64 {
        let base = if n % 2 == 0 {
            env.settler.url()
        } else {
            replica.url()
        };
        // Permits alternate replicas: the next nonce counts the other replica's unsettled ones.
        let (st, body) =
            post_token(&env.http, &base, &req, &env.permit(&payer2, PRICE, n, dl)).await;
        assert_eq!(st, 200, "{body}");
        ids.push(body["settlement_id"].as_str().unwrap().to_string());
        // Replays across replicas are refused too.
        let other = if n % 2 == 0 {
            replica.url()
        } else {
            env.settler.url()
        };
        let again = post_token(&env.http, &other, &req, &env.permit(&payer2, PRICE, n, dl)).await;
        assert_same_or_used(&body, &again);
    }
    for id in &ids {
        assert_eq!(
            env.wait_final(id, Duration::from_secs(30)).await.state,
            SettlementState::Settled
        );
    }
    assert_eq!(env.balance(env.pay_to).await, U256::from(9 * PRICE));
    assert_eq!(
        env.balance(payer2.address()).await,
        U256::from(1_000_000 - 6 * PRICE)
    );

    // The database goes away: fail closed.
    db.drop_now().await;
    let (st, body) = env
        .post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce()),
        )
        .await;
    assert_eq!((st, code(&body)), (503, "store_unavailable"), "{body}");
    let r = env
        .http
        .get(format!("{}/readyz", env.settler.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    drop(replica);
    drop(env);
    drop(db);
}
