//! Idempotent retries and held payments, against the real settler binary, its SQLite store
//! and a real anvil with the test token:
//! - the same payment with the same idempotency key (x402 `payment-identifier`, or the
//!   gateway's `payment_id` from `Idempotency-Key`) gets the same token also after it
//!   settled, and is paid once; without the key the broadcast signature gets nothing; another
//!   payment under a used key is 409 `payment_identifier_mismatch`;
//! - a held payment is not settled until released; voided (or left to expire) it is never
//!   broadcast and the payer keeps the funds; release after void is 409.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use alloy::primitives::U256;
use common::*;
use serde_json::{json, Value};
use x402_protocol::settler_api::{Requirement, SettlementState};

const FUND: u64 = 1_000_000; // 1 USDC
const SETTLE: Duration = Duration::from_secs(60);

/// POST /v1/tokens with the extra request fields (`payment_id`, `hold_secs`).
async fn post(env: &Env, req: &Requirement, payment: &Value, extra: Value) -> (u16, Value) {
    let mut body = json!({"requirement": req, "payment": payment});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = env
        .http
        .post(format!("{}/v1/tokens", env.settler.url()))
        .header("authorization", bearer())
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// POST /v1/settlements/{id}/{verb} as the gateway.
async fn hold_call(env: &Env, id: &str, verb: &str, status: u16) -> (u16, Value) {
    let r = env
        .http
        .post(format!("{}/v1/settlements/{id}/{verb}", env.settler.url()))
        .header("authorization", bearer())
        .json(&json!({"upstream_status": status}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn with_id(mut payment: Value, id: &str) -> Value {
    payment["extensions"] = json!({"payment-identifier": {"info": {"required": false, "id": id}}});
    payment
}

fn id_of(body: &Value) -> String {
    body["settlement_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_identifier_same_token_after_settlement_paid_once() {
    let env = Env::start().await;
    let payer = env.funded_payer(FUND).await;
    let req = env.requirement();
    let dl = env.now() + 600;
    let pid = "pay_0123456789abcdef0123";
    let payment = with_id(env.x402v2(&payer, PRICE, dl, random_nonce()), pid);

    let (st, first) = env.post_token(&req, &payment).await;
    assert_eq!(st, 200, "{first}");
    let id = id_of(&first);
    let settled = env.wait_final(&id, SETTLE).await;
    assert_eq!(settled.state, SettlementState::Settled, "{settled:?}");

    // After broadcast and settlement: with the identifier, the same token again (and the
    // transaction); the signature alone - public now - gets nothing.
    let (st, again) = env.post_token(&req, &payment).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["access_token"], first["access_token"]);
    assert_eq!(again["settlement_id"], first["settlement_id"]);
    assert_eq!(
        again["transaction"].as_str(),
        settled.transfer_tx.as_deref(),
        "{again}"
    );
    let mut bare = payment.clone();
    bare.as_object_mut().unwrap().remove("extensions");
    let (st, replay) = env.post_token(&req, &bare).await;
    assert_eq!(
        (st, code(&replay)),
        (409, "payment_already_used"),
        "{replay}"
    );
    assert!(replay.get("access_token").is_none());

    // Another payment under the used identifier: refused, nothing named.
    let other = with_id(env.x402v2(&payer, PRICE, dl, random_nonce()), pid);
    let (st, body) = env.post_token(&req, &other).await;
    assert_eq!(
        (st, code(&body)),
        (409, "payment_identifier_mismatch"),
        "{body}"
    );
    assert!(body.get("settlement_id").is_none(), "{body}");

    // Paid once.
    assert_eq!(env.balance(env.pay_to).await, U256::from(PRICE));
    assert_eq!(env.balance(payer.address()).await, U256::from(FUND - PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_field_and_bad_identifiers() {
    let env = Env::start().await;
    let payer = env.funded_payer(FUND).await;
    let req = env.requirement();
    let dl = env.now() + 600;
    let key = "idem-key-abcdefghijkl";
    let permit = env.permit(&payer, PRICE, 0, dl);

    let (st, first) = post(&env, &req, &permit, json!({"payment_id": key})).await;
    assert_eq!(st, 200, "{first}");
    let settled = env.wait_final(&id_of(&first), SETTLE).await;
    assert_eq!(settled.state, SettlementState::Settled);
    let (st, again) = post(&env, &req, &permit, json!({"payment_id": key})).await;
    assert_eq!((st, &again["access_token"]), (200, &first["access_token"]));
    let (st, body) = env.post_token(&req, &permit).await;
    assert_eq!((st, code(&body)), (409, "payment_already_used"));

    // Malformed identifiers are refused before anything is stored.
    let fresh = env.x402v2(&payer, PRICE, dl, random_nonce());
    for bad in ["short", "has space in it 0123", &"x".repeat(129)] {
        let (st, body) = post(&env, &req, &fresh, json!({"payment_id": bad})).await;
        assert_eq!((st, code(&body)), (400, "invalid_payment"), "{bad}: {body}");
    }
    let (st, body) = post(
        &env,
        &req,
        &with_id(fresh.clone(), "pay_aaaaaaaaaaaaaaaa"),
        json!({"payment_id": "pay_bbbbbbbbbbbbbbbb"}),
    )
    .await;
    assert_eq!((st, code(&body)), (400, "invalid_request"), "{body}");
    assert_eq!(env.balance(env.pay_to).await, U256::from(PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_payments_settle_only_when_released_and_voided_ones_never() {
    let env = Env::start().await;
    let payer = env.funded_payer(FUND).await;
    let req = env.requirement();
    let dl = env.now() + 600;
    let hold = json!({"hold_secs": 300});

    // Voided: never broadcast, not charged; its release afterwards is refused.
    let voided = env.x402v2(&payer, PRICE, dl, random_nonce());
    let (st, body) = post(&env, &req, &voided, hold.clone()).await;
    assert_eq!(st, 200, "{body}");
    let void_id = id_of(&body);
    assert!(env.settlement(&void_id).await.held);
    let (st, s) = hold_call(&env, &void_id, "void", 500).await;
    assert_eq!((st, s["state"].as_str()), (200, Some("failed")), "{s}");
    assert!(s["error"].as_str().unwrap().contains("500"), "{s}");
    let (st, again) = hold_call(&env, &void_id, "void", 500).await;
    assert_eq!(st, 200, "voiding twice is answered: {again}");
    let (st, r) = hold_call(&env, &void_id, "release", 200).await;
    assert_eq!((st, code(&r)), (409, "settlement_not_held"), "{r}");

    // Released: settles.
    let released = env.x402v2(&payer, PRICE, dl, random_nonce());
    let (st, body) = post(&env, &req, &released, hold.clone()).await;
    assert_eq!(st, 200, "{body}");
    let rel_id = id_of(&body);
    // Held, it waits for the word (the lane runs: a payment accepted after it settles).
    let plain = env.x402v2(&payer, PRICE, dl, random_nonce());
    let (st, body) = env.post_token(&req, &plain).await;
    assert_eq!(st, 200, "{body}");
    env.wait_final(&id_of(&body), SETTLE).await;
    let s = env.settlement(&rel_id).await;
    assert_eq!((s.state, s.held), (SettlementState::Pending, true));
    let (st, s) = hold_call(&env, &rel_id, "release", 200).await;
    assert_eq!(st, 200, "{s}");
    let (st, r) = hold_call(&env, &rel_id, "void", 500).await;
    assert_eq!((st, code(&r)), (409, "settlement_not_held"), "{r}");
    let s = env.wait_final(&rel_id, SETTLE).await;
    assert_eq!(s.state, SettlementState::Settled);

    // Expired: a hold nobody releases is voided by the settler itself.
    let expiring = env.x402v2(&payer, PRICE, dl, random_nonce());
    let (st, body) = post(&env, &req, &expiring, json!({"hold_secs": 1})).await;
    assert_eq!(st, 200, "{body}");
    let exp_id = id_of(&body);
    let s = env.wait_final(&exp_id, Duration::from_secs(20)).await;
    assert_eq!(s.state, SettlementState::Failed);
    assert!(s.error.as_deref().unwrap().contains("expired"), "{s:?}");

    // Two charged (released, plain), two voided: balances on chain say so, also after the
    // lane had every chance to send the voided ones.
    let deadline = Instant::now() + SETTLE;
    while env.balance(env.pay_to).await != U256::from(2 * PRICE) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.balance(env.pay_to).await, U256::from(2 * PRICE));
    assert_eq!(
        env.balance(payer.address()).await,
        U256::from(FUND - 2 * PRICE)
    );

    // A voided payment's signature may be used again: not charged means not spent.
    let (st, body) = env.post_token(&req, &voided).await;
    assert_eq!(st, 200, "{body}");
    assert_ne!(id_of(&body), void_id);
    let s = env.wait_final(&id_of(&body), SETTLE).await;
    assert_eq!(s.state, SettlementState::Settled);

    // Holding a permit is refused (it would stall the payer's later permits), as is a bad
    // hold.
    let permit = env.permit(&payer, PRICE, 0, dl);
    let (st, body) = post(&env, &req, &permit, hold).await;
    assert_eq!((st, code(&body)), (400, "invalid_request"), "{body}");
    let (st, body) = post(&env, &req, &plain, json!({"hold_secs": 0})).await;
    assert_eq!((st, code(&body)), (400, "invalid_request"), "{body}");
}

/// Two requests in flight with the same held payment and identifier (the client retried, or
/// sent both at once): the one whose upstream failed cannot void the payment of the one that
/// was served. Its void is answered "held for another request" (409 `settlement_not_held`,
/// state `pending`); the other's release charges it, once. When both fail, the last void
/// voids it, and nothing is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_held_payment_is_voided_only_by_its_last_holder() {
    let env = Env::start().await;
    let payer = env.funded_payer(FUND).await;
    let req = env.requirement();
    let dl = env.now() + 600;
    let hold = json!({"hold_secs": 300});

    // Served by one of the two: charged.
    let served = with_id(
        env.x402v2(&payer, PRICE, dl, random_nonce()),
        "shared-hold-served-0123456789",
    );
    let (st, first) = post(&env, &req, &served, hold.clone()).await;
    assert_eq!(st, 200, "{first}");
    let (st, second) = post(&env, &req, &served, hold.clone()).await;
    assert_eq!(st, 200, "{second}");
    let id = id_of(&first);
    assert_eq!(id_of(&second), id, "the same settlement");
    let (st, r) = hold_call(&env, &id, "void", 500).await;
    assert_eq!((st, code(&r)), (409, "settlement_not_held"), "{r}");
    assert_eq!(r["state"], "pending", "{r}");
    assert!(env.settlement(&id).await.held, "still held for the other");
    let (st, s) = hold_call(&env, &id, "release", 200).await;
    assert_eq!(st, 200, "{s}");
    let s = env.wait_final(&id, SETTLE).await;
    assert_eq!(s.state, SettlementState::Settled);

    // Both failed: the second void voids it.
    let failed = with_id(
        env.x402v2(&payer, PRICE, dl, random_nonce()),
        "shared-hold-failed-0123456789",
    );
    let (st, a) = post(&env, &req, &failed, hold.clone()).await;
    assert_eq!(st, 200, "{a}");
    let (st, _) = post(&env, &req, &failed, hold.clone()).await;
    assert_eq!(st, 200);
    let fid = id_of(&a);
    let (st, r) = hold_call(&env, &fid, "void", 500).await;
    assert_eq!((st, r["state"].as_str()), (409, Some("pending")), "{r}");
    let (st, s) = hold_call(&env, &fid, "void", 502).await;
    assert_eq!((st, s["state"].as_str()), (200, Some("failed")), "{s}");

    // A request that would not hold it (no hold asked) while it is held must wait.
    let third = with_id(
        env.x402v2(&payer, PRICE, dl, random_nonce()),
        "shared-hold-nohold-0123456789",
    );
    let (st, t) = post(&env, &req, &third, hold).await;
    assert_eq!(st, 200, "{t}");
    let (st, r) = post(&env, &req, &third, json!({})).await;
    assert_eq!((st, code(&r)), (409, "settlement_pending"), "{r}");
    let (st, _) = hold_call(&env, &id_of(&t), "void", 500).await;
    assert_eq!(st, 200);

    // Exactly one price moved: the served one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.balance(env.pay_to).await, U256::from(PRICE));
    assert_eq!(env.balance(payer.address()).await, U256::from(FUND - PRICE));
}
