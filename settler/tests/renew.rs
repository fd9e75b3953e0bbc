//! `POST /v1/tokens/renew` against a real anvil and the real settler binary: a short-lived
//! token is renewed once its payment has settled (same claims, the full lifetime from now),
//! not while it is pending (409 `settlement_pending`), never once it failed (403
//! `payment_failed`); the gateway's secret is required and only this settler's own, short-lived
//! tokens are renewed.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use alloy::primitives::{Address, Bytes, U256};
use alloy::providers::Provider;
use alloy::sol_types::{eip712_domain, SolStruct};
use common::*;
use serde_json::{json, Value};
use x402_protocol::settler_api::{Requirement, SettlementState};
use x402_protocol::token::{mint, signing_key_from_hex, AccessClaims};
use x402_testkit::anvil::TestUsdc;

mod typed {
    alloy::sol! {
        struct CancelAuthorization { address authorizer; bytes32 nonce; }
    }
}

/// The route's requirement for a fresh payment: 5 s tokens while unsettled.
fn short(env: &Env) -> Requirement {
    let mut r = env.requirement();
    r.token_ttl_secs = 5;
    r
}

async fn renew(env: &Env, auth: Option<&str>, token: &str, req: &Requirement) -> (u16, Value) {
    let mut r = env
        .http
        .post(format!("{}/v1/tokens/renew", env.settler.url()))
        .json(&json!({"token": token, "requirement": req}));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The JWT's payload claims (base64url without padding), as JSON.
fn claims_of(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in part.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    serde_json::from_slice(&out).unwrap()
}

async fn restart_with_worker(env: &mut Env) {
    env.settler
        .options_mut()
        .extra_args
        .retain(|a| a != "--no-worker");
    env.settler.restart().await.unwrap();
}

/// The settler's own token key (the key file it created).
fn settler_key(env: &Env) -> k256::ecdsa::SigningKey {
    let hex = std::fs::read_to_string(env.dir.path().join("token.key")).unwrap();
    signing_key_from_hex(&hex).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_token_is_renewed_with_the_same_claims_once_its_payment_settled() {
    let mut env = Env::start_with(None, None, &["--no-worker"]).await;
    let payer = env.funded_payer(PRICE).await;
    let pay = env.erc3009(
        &payer,
        env.pay_to,
        PRICE,
        0,
        env.now() + 3600,
        random_nonce(),
    );
    let (st, first) = env.post_token(&short(&env), &pay).await;
    assert_eq!(st, 200, "{first}");
    let old = first["access_token"].as_str().unwrap().to_string();
    let sid = first["settlement_id"].as_str().unwrap().to_string();
    let c = claims_of(&old);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 5);
    let normal = env.requirement(); // token_ttl_secs 120
    let gw = bearer();

    // Not settled yet (no worker runs): 409 with the settlement and its state.
    let (st, body) = renew(&env, Some(&gw), &old, &normal).await;
    assert_eq!((st, code(&body)), (409, "settlement_pending"), "{body}");
    assert_eq!(body["settlement_id"], sid.as_str());
    assert_eq!(body["state"], "pending");

    // The gateway's secret is required.
    let (st, body) = renew(&env, None, &old, &normal).await;
    assert_eq!((st, code(&body)), (401, "unauthorized"), "{body}");
    let (st, body) = renew(&env, Some("Bearer wrong-secret"), &old, &normal).await;
    assert_eq!((st, code(&body)), (401, "unauthorized"), "{body}");

    // Only this settler's tokens: the same claims signed by another key are refused.
    let claims: AccessClaims = serde_json::from_value(c.clone()).unwrap();
    let iat = c["iat"].as_i64().unwrap();
    let other_key = k256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let kid = x402_protocol::token::key_id(settler_key(&env).verifying_key());
    let forged = mint(&other_key, &kid, claims.clone(), iat, 5);
    let (st, body) = renew(&env, Some(&gw), &forged, &normal).await;
    assert_eq!((st, code(&body)), (401, "invalid_token"), "{body}");
    let (st, body) = renew(&env, Some(&gw), "not-a-jwt", &normal).await;
    assert_eq!((st, code(&body)), (401, "invalid_token"), "{body}");
    // Its own key, but no such settlement.
    let mut ghost = claims.clone();
    ghost.jti = "00000000-0000-0000-0000-000000000000".into();
    let ghost = mint(&settler_key(&env), &kid, ghost, iat, 5);
    let (st, body) = renew(&env, Some(&gw), &ghost, &normal).await;
    assert_eq!((st, code(&body)), (404, "not_found"), "{body}");
    // Claims that are not the stored payment's (more paid than it did).
    let mut richer = claims.clone();
    richer.amount = U256::from(PRICE * 100);
    let richer = mint(&settler_key(&env), &kid, richer, iat, 5);
    let (st, body) = renew(&env, Some(&gw), &richer, &normal).await;
    assert_eq!((st, code(&body)), (401, "invalid_token"), "{body}");
    // Another route's requirement.
    let mut elsewhere = normal.clone();
    elsewhere.route = "report".into();
    let (st, body) = renew(&env, Some(&gw), &old, &elsewhere).await;
    assert_eq!((st, code(&body)), (401, "invalid_token"), "{body}");
    // Bad bodies.
    let r = env
        .http
        .post(format!("{}/v1/tokens/renew", env.settler.url()))
        .header("authorization", &gw)
        .json(&json!({"token": old}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Settled: a new token with the same claims and the full lifetime, counted from now.
    restart_with_worker(&mut env).await;
    let s = env.wait_final(&sid, Duration::from_secs(30)).await;
    assert_eq!(s.state, SettlementState::Settled, "{s:?}");
    let (st, renewed) = renew(&env, Some(&gw), &old, &normal).await;
    assert_eq!(st, 200, "{renewed}");
    assert_eq!(renewed["settlement_id"], sid.as_str());
    assert_eq!(renewed["expires_in"], 120);
    assert_eq!(renewed["token_type"], "Bearer");
    let new = renewed["access_token"].as_str().unwrap();
    assert_ne!(new, old);
    let n = claims_of(new);
    for field in ["jti", "sub", "route", "amount", "asset", "network", "iss"] {
        assert_eq!(n[field], c[field], "{field}");
    }
    assert_eq!(n["exp"].as_i64().unwrap() - n["iat"].as_i64().unwrap(), 120);
    assert!(n["exp"].as_i64().unwrap() > c["exp"].as_i64().unwrap() + 100);
    // It verifies with the settler's published key.
    let mut keys = x402_protocol::token::KeySet::new();
    keys.insert(kid.clone(), *settler_key(&env).verifying_key());
    let v = keys.verify(new, env.now() as i64, 0).unwrap();
    assert_eq!(v.claims.jti, sid);
    assert_eq!(v.claims.sub, payer.address());

    // The short token keeps renewing within the grace, also after it expired...
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (st, again) = renew(&env, Some(&gw), &old, &normal).await;
    assert_eq!(st, 200, "{again}");
    // ...but a renewed (full-lifetime) token is not renewed again: one payment, one lifetime.
    let (st, body) = renew(&env, Some(&gw), new, &normal).await;
    assert_eq!((st, code(&body)), (401, "invalid_token"), "{body}");
    // Past the grace (600 s after exp), a short token is not renewed either.
    let stale = mint(&settler_key(&env), &kid, claims, iat - 700, 5);
    let (st, body) = renew(&env, Some(&gw), &stale, &normal).await;
    assert_eq!((st, code(&body)), (401, "invalid_token"), "{body}");
    // The requested lifetime is capped by the settler (terms max_token_ttl_secs 86400).
    let mut long = normal.clone();
    long.token_ttl_secs = 100_000;
    let (st, body) = renew(&env, Some(&gw), &old, &long).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["expires_in"], 86_400, "{body}");
}

fn sig_bytes(v: u8, r: U256, s: U256) -> Bytes {
    let mut b = Vec::with_capacity(65);
    b.extend_from_slice(&r.to_be_bytes::<32>());
    b.extend_from_slice(&s.to_be_bytes::<32>());
    b.push(v);
    b.into()
}

async fn give_eth(env: &Env, who: Address) {
    let _: Value = env
        .anvil
        .provider()
        .raw_request("anvil_setBalance".into(), (who, U256::from(10u128.pow(18))))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_payment_failed_is_never_renewed() {
    let mut env = Env::start_with(None, None, &["--no-worker"]).await;
    let payer = env.funded_payer(PRICE).await;
    let nonce = random_nonce();
    let pay = env.erc3009(&payer, env.pay_to, PRICE, 0, env.now() + 3600, nonce);
    let (st, first) = env.post_token(&short(&env), &pay).await;
    assert_eq!(st, 200, "{first}");
    let sid = first["settlement_id"].as_str().unwrap().to_string();
    // The payer cancels the authorization before the settler could use it.
    give_eth(&env, payer.address()).await;
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
    let s = env.wait_final(&sid, Duration::from_secs(30)).await;
    assert_eq!(s.state, SettlementState::Failed, "{s:?}");
    let (st, body) = renew(
        &env,
        Some(&bearer()),
        first["access_token"].as_str().unwrap(),
        &env.requirement(),
    )
    .await;
    assert_eq!((st, code(&body)), (403, "payment_failed"), "{body}");
    assert_eq!(body["settlement_id"], sid.as_str());
    assert_eq!(body["state"], "failed");
    assert!(body.get("access_token").is_none());
}
