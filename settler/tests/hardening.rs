//! Hostile input against the real settler (process) on a real anvil: numbers out of range,
//! negative, fractional or huge in every numeric field of the token API and the facilitator
//! API are refused with a JSON answer naming the field, never a dropped connection, and the
//! settler keeps serving. Outages (chain RPC down, database broken) answer without the
//! database's or the RPC's own text.

// A test crate: a failed assumption is a failed test (clippy.toml allows these in tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use x402_testkit::anvil::{Anvil, DEV_KEYS};
use x402_testkit::settler::{SettlerOptions, SettlerProcess};

const TWO_64: &str = "18446744073709551616";
const U256_MAX: &str =
    "115792089237316195423570985008687907853269984665640564039457584007913129639935";
const TWO_256: &str =
    "115792089237316195423570985008687907853269984665640564039457584007913129639936";

/// A placeholder replaced by raw JSON text (numbers serde_json cannot hold, e.g. 2^256).
const RAW: &str = "__raw_json_here__";

/// `doc` with the value at `pointer` replaced by the raw JSON text `raw`.
fn with_raw(doc: &Value, pointer: &str, raw: &str) -> String {
    let mut d = doc.clone();
    *d.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer} in {doc}")) = json!(RAW);
    let text = d.to_string();
    let placeholder = format!("\"{RAW}\"");
    assert_eq!(text.matches(&placeholder).count(), 1);
    text.replace(&placeholder, raw)
}

/// The hostile values of an integer field, as raw JSON.
fn bad_integers() -> Vec<String> {
    vec![
        format!("\"{TWO_256}\""),             // 2^256 as a decimal string (overflow)
        format!("\"0x1{}\"", "0".repeat(64)), // 2^256 as hex
        TWO_256.to_string(),                  // as a JSON number
        "-1".into(),
        "\"-1\"".into(),
        "1.5".into(),
        "1e80".into(),
        "\"12.5\"".into(),
        format!("\"{}\"", "9".repeat(50_000)), // a huge string within the body limit
        "true".into(),
        "{}".into(),
    ]
}

async fn post_raw(env: &Env, path: &str, body: String) -> (u16, Value) {
    let r = env
        .http
        .post(format!("{}{path}", env.settler.url()))
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: the settler must answer, not drop: {e}"));
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{path}: answer is not JSON: {st} {text}"));
    (st, v)
}

/// A token request whose payment has `raw` at `pointer`: 400 `invalid_payment` (or the
/// given code) naming `field`.
async fn token_refused(env: &Env, payment: &Value, pointer: &str, raw: &str, field: &str) {
    let req = serde_json::to_value(env.requirement()).unwrap();
    let body = json!({"requirement": req, "payment": payment});
    let body = with_raw(&body, &format!("/payment{pointer}"), raw);
    let (st, v) = post_raw(env, "/v1/tokens", body).await;
    let shown = &raw[..raw.len().min(60)];
    assert_eq!(
        (st, code(&v)),
        (400, "invalid_payment"),
        "{pointer}={shown}: {v}"
    );
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("`{field}`")),
        "{pointer}={shown}: the message names `{field}`: {message}"
    );
    assert!(message.len() < 400, "short message: {}", message.len());
}

/// The facilitator's body of `payload` (x402 v2) and its requirements.
fn facilitator_body(payload: &Value) -> Value {
    let mut reqs = payload["accepted"].clone();
    reqs["amount"] = json!(PRICE.to_string());
    json!({"x402Version": 2, "paymentPayload": payload, "paymentRequirements": reqs})
}

/// `/verify` and `/settle` with `raw` at `pointer` of the facilitator body: the x402 answer
/// of an invalid payload (`isValid`/`success` false, `invalid_payload`, HTTP 200 as the x402
/// facilitator API answers invalid payments) naming `field`.
async fn facilitator_refused(env: &Env, body: &Value, pointer: &str, raw: &str, field: &str) {
    let text = with_raw(body, pointer, raw);
    let shown = &raw[..raw.len().min(60)];
    for (path, ok, reason, message) in [
        ("/verify", "isValid", "invalidReason", "invalidMessage"),
        ("/settle", "success", "errorReason", "errorMessage"),
    ] {
        let (st, v) = post_raw(env, path, text.clone()).await;
        assert_eq!(st, 200, "{path} {pointer}={shown}: {v}");
        assert_eq!(v[ok], json!(false), "{path} {pointer}={shown}: {v}");
        assert_eq!(
            v[reason],
            json!("invalid_payload"),
            "{path} {pointer}={shown}: {v}"
        );
        let m = v[message].as_str().unwrap();
        assert!(
            m.contains(field),
            "{path} {pointer}={shown}: the message names {field}: {m}"
        );
        assert!(m.len() < 400, "short message: {}", m.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_numbers_are_refused_naming_the_field_and_the_settler_keeps_serving() {
    let env = Env::start().await;
    let payer = env.funded_payer(1_000_000).await;
    let dl = env.now() + 3600;
    let permit = env.permit(&payer, PRICE, 0, dl);
    let auth = env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce());
    let v2 = env.x402v2(&payer, PRICE, dl, random_nonce());

    // The recovery id `v`: out of u64, out of uint256 range as decimal and hex, 29, ...
    for raw in [
        format!("\"{TWO_64}\""),
        TWO_64.to_string(),
        format!("\"{U256_MAX}\""),
        format!("\"0x{}\"", "f".repeat(64)),
        "29".into(),
        "283".into(), // 27 + 256
        "-1".into(),
        "27.5".into(),
    ] {
        for p in [&permit, &auth] {
            token_refused(&env, p, "/permit/signature/v", &raw, "v").await;
        }
    }
    // `s` (and `r`) of 33 bytes.
    let hex33 = format!("\"0x{}\"", "1f".repeat(33));
    for p in [&permit, &auth] {
        token_refused(&env, p, "/permit/signature/s", &hex33, "s").await;
        token_refused(&env, p, "/permit/signature/r", &hex33, "r").await;
    }
    token_refused(&env, &auth, "/permit/nonce", &hex33, "nonce").await;
    // Every integer of both seed schemes.
    for raw in bad_integers() {
        for field in ["value", "nonce", "deadline"] {
            token_refused(&env, &permit, &format!("/permit/{field}"), &raw, field).await;
        }
        for field in ["value", "validAfter", "validBefore"] {
            token_refused(&env, &auth, &format!("/permit/{field}"), &raw, field).await;
        }
        for field in ["value", "validAfter", "validBefore"] {
            let pointer = format!("/payload/authorization/{field}");
            token_refused(&env, &v2, &pointer, &raw, field).await;
        }
    }
    // chain_id at 2^64 and beyond.
    for raw in [
        TWO_64.to_string(),
        format!("\"{TWO_64}\""),
        format!("\"{TWO_256}\""),
        "0".into(),
        "-1".into(),
    ] {
        for p in [&permit, &auth] {
            token_refused(&env, p, "/permit/chain_id", &raw, "chain_id").await;
        }
    }
    // The x402 v2 signature: 66 bytes, or a recovery byte of 29.
    let sig = v2["payload"]["signature"].as_str().unwrap();
    let long = format!("\"{sig}00\"");
    token_refused(&env, &v2, "/payload/signature", &long, "signature").await;
    let v29 = format!("\"{}1d\"", &sig[..sig.len() - 2]);
    token_refused(&env, &v2, "/payload/signature", &v29, "signature").await;
    let net = format!("\"eip155:{TWO_64}\"");
    token_refused(&env, &v2, "/accepted/network", &net, "accepted.network").await;

    // The requirement's own integers (the gateway's side): 400 `invalid_request` naming them.
    let req = serde_json::to_value(env.requirement()).unwrap();
    let body = json!({"requirement": req, "payment": permit});
    for (pointer, raw, field) in [
        (
            "/requirement/token_ttl_secs",
            TWO_64.to_string(),
            "token_ttl_secs",
        ),
        ("/requirement/token_ttl_secs", "-1".into(), "token_ttl_secs"),
        (
            "/requirement/accepts/0/amount",
            format!("\"{TWO_256}\""),
            "amount",
        ),
        (
            "/requirement/accepts/0/method/asset/decimals",
            "256".into(),
            "decimals",
        ),
    ] {
        let (st, v) = post_raw(&env, "/v1/tokens", with_raw(&body, pointer, &raw)).await;
        assert_eq!((st, code(&v)), (400, "invalid_request"), "{pointer}: {v}");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains(field), "{pointer}: {m}");
    }

    // The facilitator API: the same values in the authorization and the signature.
    let fbody = facilitator_body(&v2);
    for raw in bad_integers() {
        for field in ["value", "validAfter", "validBefore"] {
            let pointer = format!("/paymentPayload/payload/authorization/{field}");
            facilitator_refused(&env, &fbody, &pointer, &raw, field).await;
        }
    }
    facilitator_refused(
        &env,
        &fbody,
        "/paymentPayload/payload/authorization/nonce",
        &hex33,
        "nonce",
    )
    .await;
    for raw in [&long, &v29] {
        facilitator_refused(
            &env,
            &fbody,
            "/paymentPayload/payload/signature",
            raw,
            "signature",
        )
        .await;
    }
    for raw in [TWO_64.to_string(), "-1".into(), "1.5".into()] {
        facilitator_refused(
            &env,
            &fbody,
            "/paymentRequirements/maxTimeoutSeconds",
            &raw,
            "maxTimeoutSeconds",
        )
        .await;
    }
    // A version of 2^64 is not version 2.
    let (st, v) = post_raw(&env, "/verify", with_raw(&fbody, "/x402Version", TWO_64)).await;
    assert_eq!(
        (st, v["invalidReason"].as_str()),
        (200, Some("invalid_x402_version")),
        "{v}"
    );

    // Still serving: the untouched payments get their tokens, the facilitator verifies.
    let (st, v) = env.post_token(&env.requirement(), &permit).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    let (st, v) = env.post_token(&env.requirement(), &auth).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = post_raw(&env, "/verify", fbody.to_string()).await;
    assert_eq!((st, &v["isValid"]), (200, &json!(true)), "{v}");
    assert!(
        !env.settler.log().contains("panicked"),
        "no handler panicked:\n{}",
        env.settler.log()
    );
}

/// No database, RPC, URL or SQL text in a public answer.
fn assert_no_internals(what: &str, message: &str) {
    for needle in [
        "http://",
        "https://",
        "sqlx",
        "error returned from database",
        "SELECT",
        "INSERT",
        "127.0.0.1",
        "error sending request",
    ] {
        assert!(
            !message.contains(needle),
            "{what}: public message carries {needle:?}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_chain_answers_without_rpc_text() {
    // A settler whose chain was up at start (domain verified), then goes away.
    let anvil = Anvil::start().expect("anvil");
    let token = anvil.deploy_token().await.expect("token");
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SettlerOptions::new(
        sqlite_url(dir.path()),
        anvil.network().to_string(),
        anvil.rpc_url(),
        DEV_KEYS[SETTLER_DEV_INDEX],
        dir.path().join("token.key"),
    );
    opts.bin = Some(settler_bin());
    opts.api_secret = Some(API_SECRET.into());
    opts.terms = Some(test_terms(anvil.network(), token));
    opts.extra_args = vec!["--rpc-timeout-ms".into(), "2000".into()];
    let settler = SettlerProcess::start(opts).await.expect("settler");
    let env = Env {
        token,
        settler,
        dir,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        pay_to: x402_testkit::anvil::dev_address(PAY_TO_DEV_INDEX),
        spender: x402_testkit::anvil::dev_address(SETTLER_DEV_INDEX),
        anvil,
    };
    let payer = env.funded_payer(1_000_000).await;
    let dl = env.now() + 3600;
    let auth = env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce());
    let v2 = env.x402v2(&payer, PRICE, dl, random_nonce());
    let fbody = facilitator_body(&v2);
    let requirement = env.requirement();
    let Env {
        anvil,
        settler,
        dir: _dir,
        http,
        ..
    } = env;
    drop(anvil);

    let (st, v) = post_token(&http, &settler.url(), &requirement, &auth).await;
    assert_eq!((st, code(&v)), (503, "chain_unavailable"), "{v}");
    assert_eq!(v["message"], json!("chain RPC unavailable"), "{v}");
    assert_no_internals("token API", &v.to_string());

    let r = http
        .post(format!("{}/verify", settler.url()))
        .header("authorization", bearer())
        .json(&fbody)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["invalidReason"], json!("unexpected_verify_error"), "{v}");
    assert_eq!(v["invalidMessage"], json!("chain RPC unavailable"), "{v}");
    assert_no_internals("facilitator", &v.to_string());

    // The details are in the log, for the operator.
    let log = settler.log();
    assert!(
        log.contains("chain RPC error; answered chain_unavailable"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_database_answers_without_database_text() {
    let env = Env::start().await;
    let payer = env.funded_payer(1_000_000).await;
    let dl = env.now() + 3600;
    // One payment stored, so the database is open and in use.
    let (st, v) = env
        .post_token(&env.requirement(), &env.permit(&payer, PRICE, 0, dl))
        .await;
    assert_eq!(st, 200, "{v}");
    // The database file is overwritten under the running settler: every query fails.
    let db = env.dir.path().join("settler.db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0x5au8; len.max(8192)]).unwrap();
    for ext in ["settler.db-wal", "settler.db-shm"] {
        let p = env.dir.path().join(ext);
        if p.exists() {
            let len = std::fs::metadata(&p).unwrap().len() as usize;
            std::fs::write(&p, vec![0x5au8; len]).unwrap();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (st, v) = env
            .post_token(
                &env.requirement(),
                &env.erc3009(&payer, env.pay_to, PRICE, 0, dl, random_nonce()),
            )
            .await;
        if st == 503 && code(&v) == "store_unavailable" {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broken database is not noticed: {st} {v}\n{}",
            env.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(v["message"], json!("database unavailable"), "{v}");
    assert_no_internals("token API", &v.to_string());
    let log = env.settler.log();
    assert!(
        log.contains("database error; answered store_unavailable"),
        "{log}"
    );
}
