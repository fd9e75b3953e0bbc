//! Figures for the notes (ignored by default):
//! `cargo test -p x402-settler --test bench -- --ignored --nocapture`
//! 50 payments from 10 payers at once against anvil (instant mining): tokens minted per
//! second, and time from token returned to settlement observed `settled` (polled every 10 ms).

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use x402_protocol::settler_api::SettlementState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_50_payments_10_payers() {
    let env = Arc::new(Env::start().await);
    let mut payers = Vec::new();
    for _ in 0..10 {
        payers.push(env.funded_payer(1_000_000).await);
    }
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, key) in payers.into_iter().enumerate() {
        let env = env.clone();
        set.spawn(async move {
            let req = env.requirement();
            let dl = env.now() + 3600;
            let mut watchers = Vec::new();
            for n in 0..5u64 {
                let p = if i < 5 {
                    env.permit(&key, PRICE, n, dl)
                } else {
                    env.erc3009(&key, env.pay_to, PRICE, 0, dl, random_nonce())
                };
                let (st, body) = env.post_token(&req, &p).await;
                assert_eq!(st, 200, "{body}");
                let minted = Instant::now();
                let id = body["settlement_id"].as_str().unwrap().to_string();
                let env2 = env.clone();
                watchers.push(tokio::spawn(async move {
                    loop {
                        let s = env2.settlement(&id).await;
                        if s.state == SettlementState::Settled {
                            return (minted, minted.elapsed());
                        }
                        assert_ne!(s.state, SettlementState::Failed, "{s:?}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }));
            }
            watchers
        });
    }
    let mut watchers = Vec::new();
    while let Some(r) = set.join_next().await {
        watchers.extend(r.unwrap());
    }
    let mut last_token = start;
    let mut lat = Vec::new();
    for w in watchers {
        let (minted, l) = w.await.unwrap();
        last_token = last_token.max(minted);
        lat.push(l);
    }
    let all_settled = start.elapsed();
    let mint_secs = (last_token - start).as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    eprintln!(
        "50 payments / 10 payers: tokens {:.1}/s (all 50 minted in {:.2} s); token->settled median {:?}, p90 {:?}, max {:?}; all settled after {:.2} s",
        50.0 / mint_secs,
        mint_secs,
        pct(0.5),
        pct(0.9),
        lat[lat.len() - 1],
        all_settled.as_secs_f64()
    );
    assert_eq!(
        env.balance(env.pay_to).await,
        alloy::primitives::U256::from(50 * PRICE)
    );
    if std::env::var_os("BENCH_LOG").is_some() {
        eprintln!("{}", env.settler.log());
    }
}
