//! Fallback RPC endpoints (`--rpc eip155:<id>=<url>|<url>`) against a real anvil: with the
//! first endpoint dead, tokens are minted and payments settle through the other; an endpoint
//! serving another chain is refused at start, naming it.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use alloy::primitives::U256;
use common::*;
use x402_protocol::settler_api::SettlementState;
use x402_testkit::anvil::{Anvil, AnvilOptions};
use x402_testkit::ports::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_settle_through_a_fallback_when_the_first_endpoint_is_dead() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let env = Env::start_customised(
        None,
        None,
        &[],
        |_| {},
        |opts| {
            for (_, url) in opts.rpcs.iter_mut() {
                *url = format!("{dead}|{url}");
            }
        },
    )
    .await;
    let ready = env
        .http
        .get(format!("{}/readyz", env.settler.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    let payer = env.funded_payer(1_000_000).await;
    let req = env.requirement();
    let dl = env.now() + 600;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (st, body) = env
            .post_token(&req, &env.x402v2(&payer, PRICE, dl, random_nonce()))
            .await;
        assert_eq!(st, 200, "{body}\n{}", env.settler.log());
        ids.push(body["settlement_id"].as_str().unwrap().to_string());
    }
    let permit = env.permit(&payer, PRICE, 0, dl);
    let (st, body) = env.post_token(&req, &permit).await;
    assert_eq!(st, 200, "{body}");
    ids.push(body["settlement_id"].as_str().unwrap().to_string());
    for id in &ids {
        let s = env.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(
            s.state,
            SettlementState::Settled,
            "{s:?}\n{}",
            env.settler.log()
        );
    }
    assert_eq!(env.balance(env.pay_to).await, U256::from(4 * PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_endpoint_of_another_chain_is_refused_at_start() {
    let other = Anvil::start_with(AnvilOptions {
        chain_id: 31338,
        ..AnvilOptions::default()
    })
    .expect("second anvil");
    let env = Env::start().await;
    let mut opts = env.settler.options().clone();
    opts.port = Some(free_port());
    opts.log_file = Some(env.dir.path().join("second.log"));
    for (_, url) in opts.rpcs.iter_mut() {
        *url = format!("{url}|{}", other.rpc_url());
    }
    let err = x402_testkit::settler::SettlerProcess::start(opts)
        .await
        .err()
        .expect("the settler refuses to start");
    let msg = format!("{err:#}");
    assert!(msg.contains("serves chain id 31338"), "{msg}");
}
