//! Every check before a token is minted, with its exact error code, against a real anvil.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use common::*;
use serde_json::json;
use x402_protocol::settler_api::SettlementState;
use x402_protocol::{Network, Scheme};
use x402_testkit::anvil::TestUsdc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_check_has_its_error_code() {
    let env = Env::start().await;
    let req = env.requirement();
    let payer = env.funded_payer(1_000_000).await;
    let now = env.now();
    let dl = now + 3600;
    let mut seen = Vec::new();
    let mut expect = |name: &str, (st, body): (u16, serde_json::Value), status: u16, want: &str| {
        assert_eq!((st, code(&body)), (status, want), "{name}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {body}"
        );
        seen.push(want.to_string());
    };

    // Shape.
    let raw = |b: &'static str| {
        let http = env.http.clone();
        let url = format!("{}/v1/tokens", env.settler.url());
        async move {
            let r = http
                .post(url)
                .header("authorization", bearer())
                .header("content-type", "application/json")
                .body(b)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            (st, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    expect("bad json", raw("{").await, 400, "invalid_json");
    expect(
        "no payment",
        raw(r#"{"requirement": {"route": "r", "accepts": [], "token_ttl_secs": 1}}"#).await,
        400,
        "invalid_request",
    );
    let mut p = env.permit(&payer, PRICE, 0, dl);
    p["permit"].as_object_mut().unwrap().remove("value");
    let r = env.post_token(&req, &p).await;
    assert!(
        r.1["message"].as_str().unwrap().contains("value"),
        "{}",
        r.1
    );
    expect("missing value", r, 400, "invalid_payment");
    let mut p = env.permit(&payer, PRICE, 0, dl);
    p["permit"]["permit_type"] = json!("Permit2");
    expect(
        "permit2",
        env.post_token(&req, &p).await,
        400,
        "unsupported_payment_type",
    );
    let big = format!(
        r#"{{"requirement": {{}}, "payment": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let r = env
        .http
        .post(format!("{}/v1/tokens", env.settler.url()))
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    expect(
        "too large",
        (st, r.json().await.unwrap_or_default()),
        413,
        "payload_too_large",
    );

    // Matching the requirement.
    let mut only_permit = req.clone();
    only_permit
        .accepts
        .retain(|m| m.method.scheme == Scheme::Permit);
    expect(
        "scheme",
        env.post_token(
            &only_permit,
            &env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce()),
        )
        .await,
        402,
        "scheme_not_accepted",
    );
    let p = env.permit_to(&payer, env.spender, PRICE, 0, dl, env.token, 1);
    expect(
        "network",
        env.post_token(&req, &p).await,
        402,
        "network_mismatch",
    );
    let p = env.permit_to(
        &payer,
        env.spender,
        PRICE,
        0,
        dl,
        Address::repeat_byte(0x42),
        31337,
    );
    expect(
        "asset",
        env.post_token(&req, &p).await,
        402,
        "asset_mismatch",
    );
    let mut other_net = req.clone();
    for m in &mut other_net.accepts {
        m.method.network = Network::eip155(1);
    }
    let p = env.permit_to(&payer, env.spender, PRICE, 0, dl, env.token, 1);
    expect(
        "no rpc for network",
        env.post_token(&other_net, &p).await,
        400,
        "network_unsupported",
    );

    // Signatures.
    let mut p = env.permit(&payer, PRICE, 0, dl);
    p["permit"]["owner"] = json!(PrivateKeySigner::random().address());
    expect(
        "wrong signer",
        env.post_token(&req, &p).await,
        402,
        "invalid_signature",
    );
    // A requirement naming another EIP-712 domain than the settler's terms is refused before
    // any signature is checked (the terms' name is the contract's, verified at start).
    let mut renamed = req.clone();
    renamed.accepts[0].method.asset.name = "USD Coin".into();
    expect(
        "domain",
        env.post_token(&renamed, &env.permit(&payer, PRICE, 0, dl))
            .await,
        403,
        "eip712_domain_mismatch",
    );
    let mut p = env.permit(&payer, PRICE, 0, dl);
    let s = U256::from_str_radix(
        p["permit"]["signature"]["s"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .unwrap();
    p["permit"]["signature"]["s"] = json!(unpadded(n - s));
    let v = p["permit"]["signature"]["v"].as_u64().unwrap();
    p["permit"]["signature"]["v"] = json!(if v == 27 { 28 } else { 27 });
    expect(
        "high s",
        env.post_token(&req, &p).await,
        402,
        "malleable_signature",
    );

    // Parties, value, time.
    let p = env.permit_to(
        &payer,
        Address::repeat_byte(0x99),
        PRICE,
        0,
        dl,
        env.token,
        31337,
    );
    expect(
        "spender",
        env.post_token(&req, &p).await,
        402,
        "spender_mismatch",
    );
    expect(
        "recipient",
        env.post_token(
            &req,
            &env.erc3009(
                &payer,
                Address::repeat_byte(0x98),
                PRICE,
                0,
                dl,
                random_nonce(),
            ),
        )
        .await,
        402,
        "recipient_mismatch",
    );
    expect(
        "value",
        env.post_token(&req, &env.permit(&payer, PRICE - 1, 0, dl))
            .await,
        402,
        "insufficient_value",
    );
    expect(
        "soon",
        env.post_token(&req, &env.permit(&payer, PRICE, 0, now + 30))
            .await,
        402,
        "deadline_too_soon",
    );
    expect(
        "expired",
        env.post_token(&req, &env.permit(&payer, PRICE, 0, now - 10))
            .await,
        402,
        "expired",
    );
    expect(
        "3009 soon",
        env.post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, 0, now + 20, random_nonce()),
        )
        .await,
        402,
        "deadline_too_soon",
    );
    expect(
        "3009 expired",
        env.post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, 0, now - 1, random_nonce()),
        )
        .await,
        402,
        "expired",
    );
    expect(
        "not yet",
        env.post_token(
            &req,
            &env.erc3009(&payer, env.pay_to, PRICE, now + 600, dl, random_nonce()),
        )
        .await,
        402,
        "not_yet_valid",
    );

    // Chain state.
    let poor = env.funded_payer(PRICE - 1).await;
    expect(
        "balance",
        env.post_token(&req, &env.permit(&poor, PRICE, 0, dl)).await,
        402,
        "insufficient_balance",
    );
    expect(
        "balance 3009",
        env.post_token(
            &req,
            &env.erc3009(&poor, env.pay_to, PRICE, 0, dl, random_nonce()),
        )
        .await,
        402,
        "insufficient_balance",
    );
    let r = env
        .post_token(&req, &env.permit(&payer, PRICE, 5, dl))
        .await;
    assert_eq!(r.1["expected_nonce"], json!("0"), "{}", r.1);
    expect("nonce", r, 409, "nonce_mismatch");
    // An authorization already used on chain (by someone else) is refused.
    let used = random_nonce();
    let (v, r_, s_) = env.sign_3009(&payer, env.pay_to, PRICE, 0, dl, used);
    let tok = TestUsdc::new(env.token, env.anvil.dev_provider(1));
    let rc = tok
        .transferWithAuthorization_0(
            payer.address(),
            env.pay_to,
            U256::from(PRICE),
            U256::ZERO,
            U256::from(dl),
            used,
            v,
            r_.into(),
            s_.into(),
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(rc.status());
    // The token API takes an authorization's state from the payer facts, which know it used
    // once the watcher applied its block (polled every 200 ms by default).
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    expect(
        "3009 nonce used",
        env.post_token(&req, &env.erc3009(&payer, env.pay_to, PRICE, 0, dl, used))
            .await,
        409,
        "nonce_already_used",
    );

    // Balance counts unsettled payments: two payments of 0.6 against a balance of 1 (the
    // second is refused while the first is unsettled; here the first may already be settled,
    // which reduces the on-chain balance instead: either way, refused).
    let half = env.funded_payer(2 * PRICE - 1).await;
    let (st, b) = env.post_token(&req, &env.permit(&half, PRICE, 0, dl)).await;
    assert_eq!(st, 200, "{b}");
    expect(
        "balance minus pending",
        env.post_token(&req, &env.permit(&half, PRICE, 1, dl)).await,
        402,
        "insufficient_balance",
    );

    // Single use: the accepted permit again, before and after it settled. Right after, the
    // same token (not broadcast yet) or 409 naming the settlement (already sent).
    let p0 = env.permit(&payer, PRICE, 0, dl);
    let (st, first) = env.post_token(&req, &p0).await;
    assert_eq!(st, 200, "{first}");
    assert_same_or_used(&first, &env.post_token(&req, &p0).await);
    // Next permit nonce counts the unsettled one (or the chain's, once settled): 1 either way.
    let r = env
        .post_token(&req, &env.permit(&payer, PRICE, 7, dl))
        .await;
    assert_eq!(r.1["expected_nonce"], json!("1"), "{}", r.1);
    let s = env
        .wait_final(
            first["settlement_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(s.state, SettlementState::Settled);
    expect(
        "replay after settle",
        env.post_token(&req, &p0).await,
        409,
        "payment_already_used",
    );
    let a = env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce());
    let (st, first_a) = env.post_token(&req, &a).await;
    assert_eq!(st, 200, "{first_a}");
    assert_same_or_used(&first_a, &env.post_token(&req, &a).await);

    // Rejections are counted by code.
    let m = env.metrics().await;
    assert!(
        m.contains("x402_token_rejections_total{code=\"nonce_mismatch\"}"),
        "{m}"
    );
    eprintln!("codes checked: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_chain_fails_closed() {
    let env = Env::start().await;
    let payer = env.funded_payer(1_000_000).await;
    let p = env.permit(&payer, PRICE, 0, env.now() + 3600);
    // A second settler on the same DB kind whose RPC is a dead port.
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", x402_testkit::ports::free_port());
    let mut opts = x402_testkit::settler::SettlerOptions::new(
        sqlite_url(dir.path()),
        "eip155:31337",
        dead,
        x402_testkit::anvil::DEV_KEYS[SETTLER_DEV_INDEX],
        dir.path().join("k"),
    );
    opts.bin = Some(settler_bin());
    opts.api_secret = Some(API_SECRET.into());
    opts.terms = Some(test_terms(env.anvil.network(), env.token));
    opts.extra_args = vec!["--rpc-timeout-ms".into(), "1000".into()];
    let s2 = x402_testkit::settler::SettlerProcess::start(opts)
        .await
        .unwrap();
    // The chain was down at start, so the token's EIP-712 domain is not verified yet: payments
    // on it are refused (503) until it is.
    let (st, body) = post_token(&env.http, &s2.url(), &env.requirement(), &p).await;
    assert_eq!((st, code(&body)), (503, "asset_unverified"), "{body}");
    let r = env
        .http
        .get(format!("{}/readyz", s2.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["chains"]["eip155:31337"]["ok"], json!(false), "{body}");
    assert_eq!(body["database"]["ok"], json!(true), "{body}");
    // The payment was not stored: the real settler still accepts it.
    assert_eq!(env.post_token(&env.requirement(), &p).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mined_but_unconfirmed_payment_is_not_subtracted_twice() {
    // Receipts are looked at every 10 s: a transfer stays mined-but-`submitted` for a while.
    let env = Env::start_with(None, None, &["--poll-interval-ms", "10000"]).await;
    let req = env.requirement();
    let dl = env.now() + 3600;
    let mut checked = false;
    for _ in 0..3 {
        let payer = env.funded_payer(2 * PRICE).await;
        let (st, first) = env
            .post_token(
                &req,
                &env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce()),
            )
            .await;
        assert_eq!(st, 200, "{first}");
        let id = first["settlement_id"].as_str().unwrap().to_string();
        let start = std::time::Instant::now();
        while env.balance(payer.address()).await != U256::from(PRICE) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "first transfer not mined:\n{}",
                env.settler.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if env.settlement(&id).await.state != SettlementState::Submitted {
            continue; // the confirm loop was quicker this time; try again
        }
        // Balance PRICE, the mined payment still open: PRICE is available, not 0.
        let (st, second) = env
            .post_token(
                &req,
                &env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce()),
            )
            .await;
        assert_eq!(st, 200, "{second}");
        // Nothing is left now.
        let (st, third) = env
            .post_token(
                &req,
                &env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce()),
            )
            .await;
        assert_eq!((st, code(&third)), (402, "insufficient_balance"), "{third}");
        for id in [id.as_str(), second["settlement_id"].as_str().unwrap()] {
            assert_eq!(
                env.wait_final(id, Duration::from_secs(30)).await.state,
                SettlementState::Settled
            );
        }
        assert_eq!(env.balance(payer.address()).await, U256::ZERO);
        checked = true;
        break;
    }
    assert!(
        checked,
        "the mined-but-unconfirmed window was never observed"
    );
}
