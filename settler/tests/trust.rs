//! The trust boundary, against the real settler binary and a real anvil: mandatory caller
//! authentication, the settler's own terms (`--terms-file`), facilitator credentials, and the
//! EIP-712 domain check at start.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use common::*;
use serde_json::{json, Value};
use x402_testkit::anvil::{Anvil, DEV_KEYS};
use x402_testkit::settler::{SettlerOptions, SettlerProcess};

/// Runs the settler binary with `args` (and a signer key) and waits (bounded) for it to exit;
/// returns (exit code, stderr + stdout). Panics if it is still running after 20 s.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.log");
    let log = std::fs::File::create(&out).unwrap();
    let mut child = Command::new(settler_bin())
        .args(args)
        .env("EVM_PRIVATE_KEY", DEV_KEYS[SETTLER_DEV_INDEX])
        .env_remove("X402_API_SECRET_FILE")
        .env_remove("X402_TERMS_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), std::fs::read_to_string(&out).unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the settler is still running:\n{}",
                std::fs::read_to_string(&out).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn no_start_on_a_public_address_without_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let terms = dir.path().join("terms.json");
    let token: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
        .parse()
        .unwrap();
    let t = x402_testkit::settler::usdc_terms("eip155:31337", token, &[Address::repeat_byte(1)]);
    std::fs::write(&terms, t.to_string()).unwrap();
    let port = x402_testkit::ports::free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let db = sqlite_url(dir.path());
    let key = dir.path().join("token.key");
    let base = [
        "--listen",
        &listen,
        "--database-url",
        &db,
        "--rpc",
        "eip155:31337=http://127.0.0.1:9",
        "--token-key-file",
        key.to_str().unwrap(),
        "--terms-file",
        terms.to_str().unwrap(),
    ];

    // No secret at all.
    let (code, log) = run_to_exit(&base);
    assert_ne!(code, Some(0), "{log}");
    assert!(code.is_some(), "{log}");
    assert!(log.contains("--api-secret-file"), "{log}");
    assert!(log.contains("not a loopback address"), "{log}");

    // Facilitator credentials without the gateway's secret, even on loopback: refused
    // (the token API would be the open door next to a locked one).
    let creds = dir.path().join("partners");
    std::fs::write(&creds, format!("partner-a:{PARTNER_SECRET}\n")).unwrap();
    let local = format!("127.0.0.1:{port}");
    let mut args = base.to_vec();
    args[1] = &local;
    args.extend(["--facilitator-credentials-file", creds.to_str().unwrap()]);
    let (code, log) = run_to_exit(&args);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("--api-secret-file is not"), "{log}");

    // A secret that is too short is refused too, naming the flag.
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "only-twenty-chars-xx\n").unwrap();
    let mut args = base.to_vec();
    args.extend(["--api-secret-file", short.to_str().unwrap()]);
    let (code, log) = run_to_exit(&args);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("--api-secret-file"), "{log}");
    assert!(log.contains("at least 32"), "{log}");

    // No terms file (with a good secret): refused, naming the flag.
    let good = dir.path().join("good.secret");
    std::fs::write(&good, format!("{API_SECRET}\n")).unwrap();
    let mut args = base[..base.len() - 2].to_vec();
    args.extend(["--api-secret-file", good.to_str().unwrap()]);
    let (code, log) = run_to_exit(&args);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("--terms-file"), "{log}");
}

/// Terms with a minimum price of 0.001 USDC and tokens of at most 600 s.
fn strict(t: &mut Value) {
    t["assets"][0]["min_price"] = json!("0.001");
    t["assets"][0]["max_token_ttl_secs"] = json!(600);
}

async fn post_raw(env: &Env, auth: Option<&str>, req: &Value, payment: &Value) -> (u16, Value) {
    let mut r = env
        .http
        .post(format!("{}/v1/tokens", env.settler.url()))
        .json(&json!({"requirement": req, "payment": payment}));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = r.send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_api_needs_the_gateway_secret_and_a_requirement_within_the_terms() {
    let env = Env::start_with_terms(None, None, &[], strict).await;
    let payer = env.funded_payer(1_000_000).await;
    let dl = env.now() + 3600;
    let req = serde_json::to_value(env.requirement()).unwrap();
    let p = env.permit(&payer, PRICE, 0, dl);

    // No credentials, or a wrong one: 401, nothing stored.
    for auth in [None, Some("Bearer nope"), Some("Basic Zm9vOmJhcg==")] {
        let (st, body) = post_raw(&env, auth, &req, &p).await;
        assert_eq!((st, code(&body)), (401, "unauthorized"), "{auth:?}: {body}");
    }

    // With the gateway's secret, every requirement outside the terms is refused with its code.
    let mut cases: Vec<(&str, Value, Value, &str)> = Vec::new();
    // A pay_to the terms do not list: the payer would pay someone else and get a valid token.
    let mut r = req.clone();
    for m in r["accepts"].as_array_mut().unwrap() {
        m["method"]["pay_to"] = json!(Address::repeat_byte(0x66));
    }
    cases.push(("foreign pay_to", r, p.clone(), "pay_to_not_accepted"));
    // A token the terms do not list (paid in a token of the caller's choice).
    let foreign = Address::repeat_byte(0x77);
    let mut r = req.clone();
    for m in r["accepts"].as_array_mut().unwrap() {
        m["method"]["asset"]["address"] = json!(foreign);
    }
    let pf = env.permit_to(
        &payer,
        env.spender,
        PRICE,
        0,
        dl,
        foreign,
        env.anvil.chain_id(),
    );
    cases.push(("foreign asset", r, pf, "asset_not_accepted"));
    // A token lifetime over the asset's maximum.
    let mut r = req.clone();
    r["token_ttl_secs"] = json!(601);
    cases.push(("ttl over max", r, p.clone(), "token_ttl_too_long"));
    // A price below the minimum (0.000999 < 0.001), paid in full.
    let mut r = req.clone();
    for m in r["accepts"].as_array_mut().unwrap() {
        m["amount"] = json!("999");
    }
    cases.push((
        "price below min",
        r,
        env.permit(&payer, 999, 0, dl),
        "price_below_minimum",
    ));
    // An EIP-712 name the terms do not say (payments would verify under it and never settle).
    let mut r = req.clone();
    for m in r["accepts"].as_array_mut().unwrap() {
        m["method"]["asset"]["name"] = json!("USD Coin");
    }
    cases.push(("wrong EIP-712 name", r, p.clone(), "eip712_domain_mismatch"));
    for (name, r, pay, want) in cases {
        let (st, body) = post_raw(&env, Some(&bearer()), &r, &pay).await;
        assert_eq!((st, code(&body)), (403, want), "{name}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {body}"
        );
    }

    // Within the terms: a token, of at most the asset's max TTL even when the default is longer.
    let mut ids = Vec::new();
    let mut r = req.clone();
    r["token_ttl_secs"] = json!(600);
    let (st, body) = post_raw(&env, Some(&bearer()), &r, &p).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["expires_in"], json!(600), "{body}");
    ids.push(body["settlement_id"].as_str().unwrap().to_string());
    let mut r = req.clone();
    r["token_ttl_secs"] = json!(0);
    let p1 = env.permit(&payer, PRICE, 1, dl);
    let (st, body) = post_raw(&env, Some(&bearer()), &r, &p1).await;
    assert_eq!(st, 200, "{body}");
    assert!(body["expires_in"].as_u64().unwrap() <= 600, "{body}");
    ids.push(body["settlement_id"].as_str().unwrap().to_string());
    // Exactly the payments within the terms were taken.
    for id in &ids {
        let s = env.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(
            s.state,
            x402_protocol::settler_api::SettlementState::Settled,
            "{s:?}"
        );
    }
    assert_eq!(env.balance(env.pay_to).await, U256::from(2 * PRICE));
}

const PARTNER_SECRET: &str = "partner-a-facilitator-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facilitator_callers_have_their_own_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("facilitators");
    std::fs::write(
        &creds,
        format!("# name:secret\npartner-a:{PARTNER_SECRET}\n"),
    )
    .unwrap();
    let env = Env::start_with(
        None,
        None,
        &[
            "--facilitator-credentials-file",
            creds.to_str().unwrap(),
            "--settle-timeout-secs",
            "3",
        ],
    )
    .await;
    let payer = env.funded_payer(1_000_000).await;
    let payload = env.x402v2(&payer, PRICE, env.now() + 3600, random_nonce());
    let reqs = |pay_to: Address| {
        json!({"scheme": "exact", "network": env.anvil.network().to_string(), "amount": PRICE.to_string(),
            "asset": env.token, "payTo": pay_to, "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2"}})
    };
    let call = |path: &'static str, auth: Option<String>, reqs: Value| {
        let body = json!({"x402Version": 2, "paymentPayload": payload.clone(), "paymentRequirements": reqs});
        let mut r = env
            .http
            .post(format!("{}{path}", env.settler.url()))
            .json(&body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move {
            let r = r.send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let partner = Some(format!("Bearer {PARTNER_SECRET}"));

    // A named caller may verify; so may the gateway.
    let (st, v) = call("/verify", partner.clone(), reqs(env.pay_to)).await;
    assert_eq!((st, &v["isValid"]), (200, &json!(true)), "{v}");
    let (st, v) = call("/verify", Some(bearer()), reqs(env.pay_to)).await;
    assert_eq!((st, &v["isValid"]), (200, &json!(true)), "{v}");
    // An unknown secret, or none, may not.
    for auth in [
        None,
        Some("Bearer partner-b-facilitator-secret-0123456789".to_string()),
    ] {
        let (st, v) = call("/verify", auth.clone(), reqs(env.pay_to)).await;
        assert_eq!(st, 401, "{auth:?}: {v}");
        assert_eq!(v["invalidReason"], json!("unauthorized"), "{v}");
        let (st, _) = call("/settle", auth.clone(), reqs(env.pay_to)).await;
        assert_eq!(st, 401, "{auth:?}");
    }
    let r = env
        .http
        .get(format!("{}/supported", env.settler.url()))
        .bearer_auth(PARTNER_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The partner cannot use it to state terms of its own: a payTo outside the terms.
    let (st, v) = call("/verify", partner.clone(), reqs(Address::repeat_byte(0x66))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["isValid"], json!(false), "{v}");
    assert_eq!(
        v["invalidReason"],
        json!("invalid_payment_requirements"),
        "{v}"
    );

    // The token API takes only the gateway's secret.
    let p = env.permit(&payer, PRICE, 0, env.now() + 3600);
    let req = serde_json::to_value(env.requirement()).unwrap();
    let (st, body) = post_raw(&env, partner.as_deref(), &req, &p).await;
    assert_eq!((st, code(&body)), (401, "unauthorized"), "{body}");

    // The caller's name is in the metrics.
    let metrics = env.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("x402_facilitator_requests_total")
                && l.contains("caller=\"partner-a\"")
                && l.contains("endpoint=\"verify\"")
        })
        .unwrap_or_else(|| panic!("no partner-a verify counter in:\n{metrics}"));
    assert!(line.ends_with(" 2"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_eip712_name_in_the_terms_refuses_the_start() {
    let anvil = Anvil::start().unwrap();
    let token = anvil.deploy_token().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut terms = test_terms(anvil.network(), token);
    terms["assets"][0]["name"] = json!("USD Coin");
    let mut opts = SettlerOptions::new(
        sqlite_url(dir.path()),
        anvil.network().to_string(),
        anvil.rpc_url(),
        DEV_KEYS[SETTLER_DEV_INDEX],
        dir.path().join("token.key"),
    )
    .with_terms(terms);
    opts.bin = Some(settler_bin());
    opts.start_timeout = Duration::from_secs(20);
    let err = match SettlerProcess::start(opts).await {
        Ok(_) => panic!("the settler started with a wrong EIP-712 name"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("exited during start-up"), "{err}");
    assert!(
        err.contains("terms assets[0]: EIP-712 domain mismatch"),
        "{err}"
    );
    assert!(
        err.contains(r#"configured name "USD Coin" version "2""#),
        "{err}"
    );
    assert!(
        err.contains(r#"the contract says name "USDC" version "2""#),
        "{err}"
    );
}
