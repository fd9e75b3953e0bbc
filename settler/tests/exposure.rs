//! Safe optimistic access, against the real settler binary and a real anvil with the test
//! token: bounded exposure (per payer and in total, from the terms file), the same payment
//! posted again gets the same token before its settlement is broadcast (also after kill -9)
//! and a 409 naming its settlement after, the acceptance deadline (slow RPC through a relay),
//! and the start-up refusals of unsafe acceptance flags.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use common::*;
use serde_json::{json, Value};
use x402_protocol::settler_api::SettlementState;
use x402_testkit::slow_proxy::SlowProxy;

const FUND: u64 = 1_000_000; // 1 USDC

/// Settler with `--no-worker` (nothing settles until [`with_worker`]) and changed terms.
async fn start(extra: &[&str], terms: impl FnOnce(&mut Value)) -> Env {
    let mut args = vec!["--no-worker"];
    args.extend_from_slice(extra);
    Env::start_with_terms(None, None, &args, terms).await
}

/// Restarts the settler with its settlement lane running (same database, keys, port).
async fn with_worker(env: &mut Env) {
    env.settler
        .options_mut()
        .extra_args
        .retain(|a| a != "--no-worker");
    env.settler.restart().await.unwrap();
}

/// Posts every payment at once; (status, body) in completion order.
async fn post_all(env: &Arc<Env>, payments: Vec<Value>) -> Vec<(u16, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for p in payments {
        let env = env.clone();
        set.spawn(async move { env.post_token(&env.requirement(), &p).await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

fn id(body: &Value) -> String {
    body["settlement_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payer_cap_refuses_concurrent_payments_above_it_and_frees_as_they_settle() {
    // 0.03 USDC per payer: three payments of 0.01 at a time.
    let env = start(&[], |t| {
        t["assets"][0]["max_unsettled_per_payer"] = json!("0.03");
    })
    .await;
    let payer = env.funded_payer(FUND).await;
    let dl = env.now() + 3600;
    let env = Arc::new(env);
    let payments = (0..6)
        .map(|_| env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce()))
        .collect();
    let answers = post_all(&env, payments).await;
    let mut ids = Vec::new();
    for (st, body) in &answers {
        match (*st, code(body)) {
            (200, _) => ids.push(id(body)),
            (429, "payer_exposure_limit") => {
                let m = body["message"].as_str().unwrap();
                assert!(
                    m.contains("has 30000 accepted but not yet settled")
                        && m.contains("30000 per payer"),
                    "the message names the unsettled amount and the cap: {m}"
                );
            }
            _ => panic!("unexpected {st}: {body}"),
        }
    }
    assert_eq!(
        ids.len(),
        3,
        "exactly the cap's worth accepted: {answers:?}"
    );
    // Another payer has a cap of its own.
    let other = env.funded_payer(FUND).await;
    let (st, body) = env
        .post_token(
            &env.requirement(),
            &env.erc3009(&other, env.pay_to, PRICE, 0, dl, random_nonce()),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    ids.push(id(&body));

    // Settlement frees the cap: everything accepted settles, the payer may pay again.
    let mut env = Arc::try_unwrap(env).ok().unwrap();
    with_worker(&mut env).await;
    for i in &ids {
        assert_eq!(
            env.wait_final(i, Duration::from_secs(60)).await.state,
            SettlementState::Settled
        );
    }
    assert_eq!(
        env.balance(payer.address()).await,
        U256::from(FUND - 3 * PRICE)
    );
    assert_eq!(env.balance(env.pay_to).await, U256::from(4 * PRICE));
    for _ in 0..3 {
        let (st, body) = env
            .post_token(
                &env.requirement(),
                &env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce()),
            )
            .await;
        assert_eq!(st, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_cap_refuses_with_503_and_every_charged_payer_holds_a_token() {
    // 0.05 USDC in total; three payers send two payments each, all at once.
    let env = start(&[], |t| {
        t["assets"][0]["max_unsettled_total"] = json!("0.05");
    })
    .await;
    let mut payers = Vec::new();
    for _ in 0..3 {
        payers.push(env.funded_payer(FUND).await);
    }
    let dl = env.now() + 3600;
    let env = Arc::new(env);
    let mut payments = Vec::new();
    for p in &payers {
        for _ in 0..2 {
            payments.push(env.erc3009(p, env.pay_to, PRICE, 0, dl, random_nonce()));
        }
    }
    let answers = post_all(&env, payments).await;
    let mut tokens = Vec::new();
    let mut refused = 0;
    for (st, body) in &answers {
        match (*st, code(body)) {
            (200, _) => tokens.push(body.clone()),
            (503, "total_exposure_limit") => {
                let m = body["message"].as_str().unwrap();
                assert!(m.contains("50000"), "names the cap: {m}");
                refused += 1;
            }
            _ => panic!("unexpected {st}: {body}"),
        }
    }
    assert_eq!((tokens.len(), refused), (5, 1), "{answers:?}");

    let mut env = Arc::try_unwrap(env).ok().unwrap();
    with_worker(&mut env).await;
    for t in &tokens {
        assert_eq!(
            env.wait_final(&id(t), Duration::from_secs(60)).await.state,
            SettlementState::Settled
        );
    }
    // Charged exactly for the tokens held, payer by payer.
    for p in &payers {
        let held = tokens
            .iter()
            .filter(|t| {
                t["payer"]
                    .as_str()
                    .unwrap()
                    .eq_ignore_ascii_case(&p.address().to_string())
            })
            .count() as u64;
        assert_eq!(
            env.balance(p.address()).await,
            U256::from(FUND - held * PRICE),
            "payer {} holds {held} token(s)",
            p.address()
        );
    }
    assert_eq!(env.balance(env.pay_to).await, U256::from(5 * PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_payment_gets_the_same_token_until_broadcast_then_409_naming_the_settlement() {
    let env = start(&[], |_| {}).await;
    let req = env.requirement();
    let payer = env.funded_payer(FUND).await;
    let dl = env.now() + 3600;

    // Same payment twice, both schemes and the x402 v2 format: 200, same settlement, same
    // token byte for byte.
    let permit = env.permit(&payer, PRICE, 0, dl);
    let nonce = random_nonce();
    let auth = env.erc3009(&payer, env.pay_to, PRICE, 0, dl, nonce);
    let v2 = env.x402v2(&payer, PRICE, dl, random_nonce());
    let mut firsts = Vec::new();
    for p in [&permit, &auth, &v2] {
        let (st, first) = env.post_token(&req, p).await;
        assert_eq!(st, 200, "{first}");
        tokio::time::sleep(Duration::from_millis(1100)).await; // another second: iat would differ
        let (st, again) = env.post_token(&req, p).await;
        assert_eq!(st, 200, "{again}");
        assert_eq!(again["settlement_id"], first["settlement_id"]);
        assert_eq!(
            again["access_token"], first["access_token"],
            "byte-identical token"
        );
        assert!(again["expires_in"].as_u64().unwrap() <= first["expires_in"].as_u64().unwrap());
        firsts.push(first);
    }
    // Concurrent re-posts: all the same token.
    let fresh = env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce());
    let env_a = Arc::new(env);
    let answers = post_all(&env_a, vec![fresh.clone(); 8]).await;
    let mut env = Arc::try_unwrap(env_a).ok().unwrap();
    let tok: Vec<&Value> = answers
        .iter()
        .map(|(st, b)| {
            assert_eq!(*st, 200, "{b}");
            &b["access_token"]
        })
        .collect();
    assert!(
        tok.iter().all(|t| *t == tok[0]),
        "one token for one payment"
    );
    let fresh_id = id(&answers[0].1);

    // Another payment under the same key (same nonce, other validBefore): 409, nothing named.
    let other = env.erc3009(&payer, env.pay_to, PRICE, 0, dl + 1, nonce);
    let (st, body) = env.post_token(&req, &other).await;
    assert_eq!((st, code(&body)), (409, "payment_already_used"), "{body}");
    assert!(body.get("settlement_id").is_none(), "{body}");
    // The same payment on another route: 409 naming its settlement.
    let mut elsewhere = req.clone();
    elsewhere.route = "other".into();
    let (st, body) = env.post_token(&elsewhere, &auth).await;
    assert_eq!((st, code(&body)), (409, "payment_already_used"), "{body}");
    assert_eq!(body["settlement_id"], firsts[1]["settlement_id"]);
    assert_eq!(body["state"], "pending");

    // kill -9 after the commit: the restarted settler gives the same token again.
    env.settler.kill9();
    env.settler.restart().await.unwrap();
    let (st, again) = env.post_token(&req, &permit).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["access_token"], firsts[0]["access_token"]);

    // Broadcast: the signature may be public now, 409 with the settlement and its state.
    with_worker(&mut env).await;
    for first in &firsts {
        assert_eq!(
            env.wait_final(&id(first), Duration::from_secs(60))
                .await
                .state,
            SettlementState::Settled
        );
    }
    env.wait_final(&fresh_id, Duration::from_secs(60)).await;
    for (p, first) in [&permit, &auth, &v2].into_iter().zip(&firsts) {
        let (st, body) = env.post_token(&req, p).await;
        assert_eq!((st, code(&body)), (409, "payment_already_used"), "{body}");
        assert_eq!(body["settlement_id"], first["settlement_id"], "{body}");
        assert_eq!(body["state"], "settled", "{body}");
        assert!(body.get("access_token").is_none());
    }
    // Each payment charged once.
    assert_eq!(
        env.balance(payer.address()).await,
        U256::from(FUND - 4 * PRICE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facilitator_settle_of_the_same_payload_answers_from_the_stored_settlement() {
    let mut env = start(&["--settle-timeout-secs", "1"], |_| {}).await;
    let payer = env.funded_payer(FUND).await;
    let dl = env.now() + 3600;
    let payload = env.x402v2(&payer, PRICE, dl, random_nonce());
    let reqs = json!({"scheme": "exact", "network": env.anvil.network().to_string(), "amount": PRICE.to_string(),
        "asset": env.token, "payTo": env.pay_to, "maxTimeoutSeconds": 300,
        "extra": {"name": "USDC", "version": "2"}});
    let settle = |env: &Env| {
        let body =
            json!({"x402Version": 2, "paymentPayload": payload, "paymentRequirements": reqs});
        let r = env
            .http
            .post(format!("{}/settle", env.settler.url()))
            .header("authorization", bearer())
            .json(&body);
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // Not broadcast (no worker): both posts wait on the one stored settlement.
    for _ in 0..2 {
        let (st, v) = settle(&env).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["errorReason"], "settlement_pending", "{v}");
    }
    with_worker(&mut env).await;
    // Broadcast and settled: a replay, naming the settlement.
    let start = Instant::now();
    loop {
        let (st, v) = settle(&env).await;
        assert_eq!(st, 200, "{v}");
        if v["errorReason"] == "invalid_exact_evm_nonce_already_used" {
            assert!(
                v["errorMessage"].as_str().unwrap().contains("settlement"),
                "{v}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(env.balance(payer.address()).await, U256::from(FUND - PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_past_its_deadline_stores_nothing_and_answers_503() {
    let mut env = start(&["--accept-deadline-ms", "400"], |_| {}).await;
    // The settler's RPC through a relay that can hold answers back.
    let proxy = SlowProxy::start(&format!("127.0.0.1:{}", env.anvil.port()))
        .await
        .unwrap();
    let network = env.anvil.network().to_string();
    env.settler.options_mut().rpcs = vec![(network, proxy.url())];
    env.settler.restart().await.unwrap();
    let req = env.requirement();
    let payer = env.funded_payer(FUND).await;
    let dl = env.now() + 3600;
    let nonce = random_nonce();

    proxy.set_delay(Duration::from_millis(700));
    let started = Instant::now();
    let (st, body) = env
        .post_token(&req, &env.erc3009(&payer, env.pay_to, PRICE, 0, dl, nonce))
        .await;
    assert_eq!(
        (st, code(&body)),
        (503, "accept_deadline_exceeded"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at the deadline"
    );

    // Nothing was stored: another payment with that very nonce is accepted.
    proxy.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(800)).await; // late answers drain
    let (st, body) = env
        .post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, 0, dl + 1, nonce),
        )
        .await;
    assert_eq!(st, 200, "{body}");

    // ERC-3009 validAfter must be strictly before now (a second boundary just passed).
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis()
        > 300
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = env.now();
    let (st, body) = env
        .post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, now, dl, random_nonce()),
        )
        .await;
    assert_eq!((st, code(&body)), (402, "not_yet_valid"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_acceptance_flags_are_refused_at_start_naming_the_flag() {
    let mut env = Env::start().await;
    for (args, flag) in [
        (vec!["--deadline-margin", "9"], "--deadline-margin"),
        (vec!["--accept-deadline-ms", "50"], "--accept-deadline-ms"),
        (
            vec!["--accept-deadline-ms", "600000"],
            "--accept-deadline-ms",
        ),
    ] {
        env.settler.options_mut().extra_args = args.iter().map(|s| s.to_string()).collect();
        let e = env.settler.restart().await.unwrap_err().to_string();
        assert!(e.contains("exited during start-up"), "{e}");
        let last = e.lines().rev().find(|l| l.contains(flag));
        assert!(last.is_some(), "{args:?}: the refusal names {flag}:\n{e}");
    }
    env.settler.options_mut().extra_args = vec!["--deadline-margin".into(), "10".into()];
    env.settler.restart().await.unwrap();
}
