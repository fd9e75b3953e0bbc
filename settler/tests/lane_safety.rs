//! Settlement safety against a real anvil and the real settler binary: a payment front-run
//! by its payer is recorded settled with the payer's transaction; a payer-caused failure
//! blocks the payer until `unblock`; an empty signer wallet stalls the lane (`/readyz`,
//! `settlement_stalled`) until it is funded, and everything then settles exactly once.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{eip712_domain, SolStruct};
use common::*;
use serde_json::Value;
use x402_protocol::settler_api::SettlementState;
use x402_testkit::anvil::TestUsdc;

mod typed {
    alloy::sol! {
        struct CancelAuthorization { address authorizer; bytes32 nonce; }
    }
}

async fn give_eth(env: &Env, who: Address, wei: u128) {
    let _: Value = env
        .anvil
        .provider()
        .raw_request("anvil_setBalance".into(), (who, U256::from(wei)))
        .await
        .unwrap();
}

fn sig_bytes(v: u8, r: U256, s: U256) -> Bytes {
    let mut b = Vec::with_capacity(65);
    b.extend_from_slice(&r.to_be_bytes::<32>());
    b.extend_from_slice(&s.to_be_bytes::<32>());
    b.push(v);
    b.into()
}

async fn restart_with_worker(env: &mut Env) {
    env.settler
        .options_mut()
        .extra_args
        .retain(|a| a != "--no-worker");
    env.settler.restart().await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_the_payer_submits_first_is_settled_with_the_payers_transaction() {
    let mut env = Env::start_with(None, None, &["--no-worker"]).await;
    let req = env.requirement();
    let payer = env.funded_payer(PRICE).await;
    let nonce = random_nonce();
    let valid_before = env.now() + 3600;
    let (st, tok) = env
        .post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, 0, valid_before, nonce),
        )
        .await;
    assert_eq!(st, 200, "{tok}");
    // The payer front-runs the settler with the very authorization it paid with.
    give_eth(&env, payer.address(), 10u128.pow(18)).await;
    let (v, r, s) = env.sign_3009(&payer, env.pay_to, PRICE, 0, valid_before, nonce);
    let t = TestUsdc::new(env.token, env.anvil.provider_with(payer.clone()));
    let receipt = t
        .transferWithAuthorization_1(
            payer.address(),
            env.pay_to,
            U256::from(PRICE),
            U256::ZERO,
            U256::from(valid_before),
            nonce,
            sig_bytes(v, r, s),
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    restart_with_worker(&mut env).await;
    let st = env
        .wait_final(
            tok["settlement_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(st.state, SettlementState::Settled, "{st:?}");
    assert_eq!(
        st.transfer_tx.as_deref().map(str::to_lowercase),
        Some(format!("{:#x}", receipt.transaction_hash)),
        "recorded with the payer's transaction"
    );
    assert_eq!(
        env.balance(env.pay_to).await,
        U256::from(PRICE),
        "paid once"
    );
    // The payer is not blocked: a settled payment is no failure.
    let (st, body) = env
        .post_token(
            &req,
            &env.erc3009(
                &payer,
                env.pay_to,
                PRICE,
                0,
                env.now() + 3600,
                random_nonce(),
            ),
        )
        .await;
    assert_eq!((st, code(&body)), (402, "insufficient_balance"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_authorization_blocks_its_payer_until_unblock() {
    let mut env = Env::start_with(None, None, &["--no-worker"]).await;
    let req = env.requirement();
    let payer = env.funded_payer(10 * PRICE).await;
    let nonce = random_nonce();
    let (st, tok) = env
        .post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, 0, env.now() + 3600, nonce),
        )
        .await;
    assert_eq!(st, 200, "{tok}");
    let sid = tok["settlement_id"].as_str().unwrap().to_string();
    // After getting its token, the payer cancels the authorization on chain.
    give_eth(&env, payer.address(), 10u128.pow(18)).await;
    let domain = eip712_domain! { name: "USDC", version: "2", chain_id: env.anvil.chain_id(), verifying_contract: env.token, };
    let msg = typed::CancelAuthorization {
        authorizer: payer.address(),
        nonce,
    };
    let (v, r, s) = sign(&payer, msg.eip712_signing_hash(&domain));
    let t = TestUsdc::new(env.token, env.anvil.provider_with(payer.clone()));
    assert!(t
        .cancelAuthorization(payer.address(), nonce, sig_bytes(v, r, s))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap()
        .status());
    restart_with_worker(&mut env).await;
    let st = env.wait_final(&sid, Duration::from_secs(30)).await;
    assert_eq!(st.state, SettlementState::Failed, "{st:?}");

    // The same payer's next payment is refused, naming the failed settlement.
    let pay = |env: &Env, p: &PrivateKeySigner| {
        env.erc3009(p, env.pay_to, PRICE, 0, env.now() + 3600, random_nonce())
    };
    let (st, body) = env.post_token(&req, &pay(&env, &payer)).await;
    assert_eq!((st, code(&body)), (403, "payer_blocked"), "{body}");
    assert_eq!(body["settlement_id"].as_str(), Some(sid.as_str()));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("authorization_canceled"),
        "{body}"
    );
    // Another payer is not affected.
    let other = env.funded_payer(PRICE).await;
    let (st, body) = env.post_token(&req, &pay(&env, &other)).await;
    assert_eq!(st, 200, "{body}");

    // The operator clears it.
    let out = std::process::Command::new(settler_bin())
        .args(["unblock", "--payer"])
        .arg(format!("{:#x}", payer.address()))
        .args(["--database-url", &sqlite_url(env.dir.path())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["cleared"], 1, "{printed}");
    let (st, body) = env.post_token(&req, &pay(&env, &payer)).await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_failure_that_is_not_the_payers_does_not_block() {
    // A permit whose deadline passes before the lane gets to it: our slowness, not the payer's.
    let mut env = Env::start_with(None, None, &["--no-worker", "--deadline-margin", "10"]).await;
    let req = env.requirement();
    let payer = env.funded_payer(10 * PRICE).await;
    let (st, tok) = env
        .post_token(&req, &env.permit(&payer, PRICE, 0, env.now() + 12))
        .await;
    assert_eq!(st, 200, "{tok}");
    // The lane does not send a signature within 5 s of its deadline.
    tokio::time::sleep(Duration::from_millis(7500)).await;
    restart_with_worker(&mut env).await;
    let st = env
        .wait_final(
            tok["settlement_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(st.state, SettlementState::Failed, "{st:?}");
    let (st, body) = env
        .post_token(&req, &env.permit(&payer, PRICE, 0, env.now() + 3600))
        .await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_signer_wallet_stalls_the_lane_until_funded_then_settles_exactly_once() {
    let env = Env::start_with(None, None, &["--rebroadcast-secs", "1"]).await;
    let req = env.requirement();
    let signer = env.spender;
    give_eth(&env, signer, 0).await;
    // The lane notices within its health round (about a second).
    let mut stalled = Value::Null;
    for _ in 0..100 {
        let (st, body) = get(&env, "/readyz").await;
        if st == 503 {
            stalled = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let net = env.anvil.network().to_string();
    assert_eq!(stalled["stalled_lanes"][&net]["stalled"], true, "{stalled}");
    let payer = env.funded_payer(PRICE).await;
    let (st, body) = env
        .post_token(
            &req,
            &env.erc3009(
                &payer,
                env.pay_to,
                PRICE,
                0,
                env.now() + 3600,
                random_nonce(),
            ),
        )
        .await;
    assert_eq!((st, code(&body)), (503, "settlement_stalled"), "{body}");

    // Funded again: ready, the payment is accepted and settles once.
    give_eth(&env, signer, 10u128.pow(20)).await;
    let mut ready = false;
    for _ in 0..100 {
        if get(&env, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the lane recovers");
    let nonce: B256 = random_nonce();
    let (st, tok) = env
        .post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, 0, env.now() + 3600, nonce),
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
    assert_eq!(env.balance(env.pay_to).await, U256::from(PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_queued_when_the_signer_wallet_runs_dry_settle_once_it_is_funded() {
    // Three payments accepted with the lane off; the wallet is emptied before it runs.
    let mut env = Env::start_with(None, None, &["--no-worker", "--rebroadcast-secs", "1"]).await;
    let req = env.requirement();
    let payer = env.funded_payer(3 * PRICE).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let body = env.erc3009(
            &payer,
            env.pay_to,
            PRICE,
            0,
            env.now() + 3600,
            random_nonce(),
        );
        let (st, tok) = env.post_token(&req, &body).await;
        assert_eq!(st, 200, "{tok}");
        ids.push(tok["settlement_id"].as_str().unwrap().to_string());
    }
    let signer = env.spender;
    give_eth(&env, signer, 0).await;
    env.settler
        .options_mut()
        .extra_args
        .retain(|a| a != "--no-worker");
    env.settler.restart().await.unwrap();

    // The lane cannot pay for them: stalled, and nothing is given up meanwhile.
    let mut stalled = false;
    for _ in 0..100 {
        if get(&env, "/readyz").await.0 == 503 {
            stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stalled,
        "an empty wallet with payments queued stalls the lane"
    );
    for id in &ids {
        let s = env.settlement(id).await;
        assert!(
            matches!(
                s.state,
                SettlementState::Pending | SettlementState::Submitted
            ),
            "{id} is {:?} while the wallet is empty",
            s.state
        );
    }

    // Funded: every payment settles, each exactly once.
    give_eth(&env, signer, 10u128.pow(20)).await;
    for id in &ids {
        let s = env.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(s.state, SettlementState::Settled, "{id}: {s:?}");
    }
    assert_eq!(env.balance(env.pay_to).await, U256::from(3 * PRICE));
    assert_eq!(env.balance(payer.address()).await, U256::ZERO);
}

/// Facilitator `/settle` body for an ERC-3009 payload (`Env::x402v2`) at `PRICE`.
fn facilitator_body(env: &Env, payload: &Value) -> Value {
    serde_json::json!({"x402Version": 2, "paymentPayload": payload,
        "paymentRequirements": {"scheme": "exact", "network": env.anvil.network().to_string(),
            "amount": PRICE.to_string(), "asset": env.token, "payTo": env.pay_to,
            "maxTimeoutSeconds": 300, "extra": {"name": "USDC", "version": "2"}}})
}

async fn facilitator(env: &Env, base: &str, path: &str, body: &Value) -> Value {
    let r = env
        .http
        .post(format!("{base}{path}"))
        .header("authorization", bearer())
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The payer sends its own `transferWithAuthorization` with the signed authorization (tip
/// `tip_gwei`), without waiting for a receipt: the transaction hash.
async fn payer_submits(
    env: &Env,
    payer: &PrivateKeySigner,
    valid_before: u64,
    nonce: B256,
    tip_gwei: u128,
) -> B256 {
    give_eth(env, payer.address(), 10u128.pow(18)).await;
    let (v, r, s) = env.sign_3009(payer, env.pay_to, PRICE, 0, valid_before, nonce);
    let t = TestUsdc::new(env.token, env.anvil.provider_with(payer.clone()));
    let gwei = 1_000_000_000u128;
    *t.transferWithAuthorization_1(
        payer.address(),
        env.pay_to,
        U256::from(PRICE),
        U256::ZERO,
        U256::from(valid_before),
        nonce,
        sig_bytes(v, r, s),
    )
    .max_priority_fee_per_gas(tip_gwei * gwei)
    .max_fee_per_gas(1000 * gwei)
    .gas(200_000)
    .send()
    .await
    .unwrap()
    .tx_hash()
}

/// Waits (bounded) until `hash` has a receipt; its status.
async fn mined_status(env: &Env, hash: B256) -> bool {
    let start = std::time::Instant::now();
    loop {
        if let Some(r) = env
            .anvil
            .provider()
            .get_transaction_receipt(hash)
            .await
            .unwrap()
        {
            return r.status();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{hash} not mined"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facilitator_settle_front_run_in_the_mempool_by_the_payer_answers_success_with_the_payers_transaction(
) {
    let env = Env::start_with(None, None, &["--settle-timeout-secs", "30"]).await;
    let payer = env.funded_payer(PRICE).await;
    let (valid_before, nonce) = (env.now() + 3600, random_nonce());
    let body = facilitator_body(&env, &env.x402v2(&payer, PRICE, valid_before, nonce));
    let v = facilitator(&env, &env.settler.url(), "/verify", &body).await;
    assert_eq!(v["isValid"], true, "{v}");
    // Blocks only when asked: /settle stores the payment and the lane sends its transaction.
    let p = env.anvil.provider();
    let _: Value = p
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .unwrap();
    let settle = {
        let (http, base, body) = (env.http.clone(), env.settler.url(), body.clone());
        tokio::spawn(async move {
            let r = http
                .post(format!("{base}/settle"))
                .header("authorization", bearer())
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let start = std::time::Instant::now();
    while p
        .get_transaction_count(env.spender)
        .pending()
        .await
        .unwrap()
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            env.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The payer sees it coming and gets its own transaction in first (higher tip).
    let theirs = payer_submits(&env, &payer, valid_before, nonce, 50).await;
    let _: Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
    let _: Value = p
        .raw_request("evm_setAutomine".into(), (true,))
        .await
        .unwrap();
    assert!(
        mined_status(&env, theirs).await,
        "the payer's transfer executed"
    );
    let (st, s) = settle.await.unwrap();
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["success"], true, "{s}\n{}", env.settler.log());
    assert_eq!(
        s["transaction"].as_str().map(str::to_lowercase),
        Some(format!("{theirs:#x}")),
        "the payer's transaction: {s}"
    );
    assert_eq!(s["payer"], format!("{:#x}", payer.address()).to_lowercase());
    assert_eq!(
        env.balance(env.pay_to).await,
        U256::from(PRICE),
        "paid once"
    );
    // The settler's own transaction reverted; the payload cannot be settled again.
    assert_eq!(p.get_transaction_count(env.spender).await.unwrap(), 1);
    let again = facilitator(&env, &env.settler.url(), "/settle", &body).await;
    assert_eq!(
        again["errorReason"], "invalid_exact_evm_nonce_already_used",
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facilitator_settle_of_a_payment_the_payer_executed_before_the_lane_answers_success_with_the_payers_transaction(
) {
    // The replica answering /settle has no lane; the one settling starts after the payer's
    // transaction is mined, so its preflight finds the authorization used.
    let env = Env::start_with(None, None, &["--no-worker", "--settle-timeout-secs", "40"]).await;
    let payer = env.funded_payer(PRICE).await;
    let (valid_before, nonce) = (env.now() + 3600, random_nonce());
    let body = facilitator_body(&env, &env.x402v2(&payer, PRICE, valid_before, nonce));
    let v = facilitator(&env, &env.settler.url(), "/verify", &body).await;
    assert_eq!(v["isValid"], true, "{v}");
    let settle = {
        let (http, base, body) = (env.http.clone(), env.settler.url(), body.clone());
        tokio::spawn(async move {
            let r = http
                .post(format!("{base}/settle"))
                .header("authorization", bearer())
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    // Stored (pending): the same payload to /verify is now a replay.
    let start = std::time::Instant::now();
    loop {
        let v = facilitator(&env, &env.settler.url(), "/verify", &body).await;
        if v["isValid"] == false {
            assert_eq!(
                v["invalidReason"], "invalid_exact_evm_nonce_already_used",
                "{v}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            env.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let theirs = payer_submits(&env, &payer, valid_before, nonce, 1).await;
    assert!(mined_status(&env, theirs).await);
    // The settling replica (same database, same wallet) starts now.
    let mut opts = env.settler.options().clone();
    opts.port = None;
    opts.log_file = None;
    opts.extra_args.retain(|a| a != "--no-worker");
    let worker = x402_testkit::settler::SettlerProcess::start(opts)
        .await
        .unwrap();
    let (st, s) = settle.await.unwrap();
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["success"], true, "{s}\n{}", worker.log());
    assert_eq!(
        s["transaction"].as_str().map(str::to_lowercase),
        Some(format!("{theirs:#x}")),
        "the payer's transaction: {s}"
    );
    assert_eq!(
        env.balance(env.pay_to).await,
        U256::from(PRICE),
        "paid once"
    );
    assert_eq!(
        env.anvil
            .provider()
            .get_transaction_count(env.spender)
            .await
            .unwrap(),
        0,
        "the settler sent nothing"
    );
}
