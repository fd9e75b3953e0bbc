//! The x402 filter inside the real Envoy binary, over real HTTP on 127.0.0.1.
//!
//! Needs `target/x402_filter.wasm` (`make wasm` / `bash tools/build-wasm.sh`) and
//! `tools/bin/envoy` (`make setup`).

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use k256::ecdsa::SigningKey;
use serde_json::{json, Value};
use sha2::Digest;
use x402_protocol::challenge::{PaymentRequired, Reason};
use x402_protocol::settler_api::TokenRequest;
use x402_protocol::token::{key_id, mint, verifying_key_to_hex, AccessClaims};
use x402_protocol::{Address, Network, U256};
use x402_testkit::envoy::{Envoy, EnvoyOpts, HttpRequest, HttpResponse};
use x402_testkit::upstream::{Reply, Upstream};

const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAY_TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const SPENDER: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
const PAYER: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

/// A fresh secp256k1 key for this test run (from the clock, the pid and a label).
fn fresh_key(label: &str) -> SigningKey {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = sha2::Sha256::digest(format!("{nanos}-{}-{label}", std::process::id()).as_bytes());
    SigningKey::from_slice(&seed).expect("a SHA-256 output is a valid secp256k1 scalar")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn filter_config(key: &SigningKey, settler_timeout_ms: u64, failure_mode: &str) -> Value {
    json!({
        "token_endpoint_prefix": "/x402/token/",
        "settler": {"cluster": "x402_settler", "authority": "x402-settler", "path": "/v1/tokens",
                    "timeout_ms": settler_timeout_ms, "failure_mode": failure_mode},
        "token_keys": [{"kid": key_id(key.verifying_key()), "public_key": verifying_key_to_hex(key.verifying_key())}],
        "clock_leeway_secs": 5, "token_ttl_secs": 300, "max_timeout_seconds": 300,
        "token_cache_size": 100, "max_body_bytes": 4096,
        "payment_methods": {
            "usdc-base": {"scheme": "exact", "network": "eip155:84532",
                "asset": {"address": USDC, "decimals": 6, "name": "USDC", "version": "2", "symbol": "USDC"},
                "pay_to": PAY_TO},
            "usdc-permit": {"scheme": "permit", "network": "eip155:84532",
                "asset": {"address": USDC, "decimals": 6, "name": "USDC", "version": "2", "symbol": "USDC"},
                "pay_to": PAY_TO, "spender": SPENDER}
        },
        "routes": [
            {"name": "weather", "match": {"prefix": "/api/weather"}, "methods": ["GET"], "price": "0.01",
             "description": "Weather report", "mime_type": "application/json",
             "payment_methods": ["usdc-base", "usdc-permit"]},
            {"name": "report", "match": {"template": "/api/users/{id}/report"}, "price": "1.5",
             "payment_methods": ["usdc-base"]}
        ]
    })
}

fn claims(route: &str, amount: u64) -> AccessClaims {
    AccessClaims {
        iss: "test-settler".into(),
        sub: PAYER.parse().unwrap(),
        route: route.into(),
        amount: U256::from(amount),
        asset: USDC.parse().unwrap(),
        network: Network::eip155(84532),
        jti: "settlement-1".into(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn b64url(bytes: &[u8]) -> String {
    x402_protocol::b64::encode(bytes)
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_string()
}

fn start_envoy(cfg: &Value, opts: EnvoyOpts) -> Envoy {
    Envoy::start(&cfg.to_string(), opts).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Asserts a 402 with the given reason, and returns the decoded x402 v2 header.
fn assert_challenge(
    envoy: &Envoy,
    r: &HttpResponse,
    reason: Reason,
    what: &str,
) -> PaymentRequired {
    assert_eq!(
        r.status,
        402,
        "{what}: expected 402, got {} {}\n{}",
        r.status,
        r.text(),
        envoy.log_tail(20)
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
    let body = r.json();
    assert_eq!(body["reason"], reason.message(), "{what}: {body}");
    assert_eq!(body["error"], reason.code(), "{what}: {body}");
    let header = r
        .header("payment-required")
        .unwrap_or_else(|| panic!("{what}: no PAYMENT-REQUIRED header"));
    let decoded = x402_protocol::b64::decode(header).expect("PAYMENT-REQUIRED is base64");
    serde_json::from_slice(&decoded).expect("PAYMENT-REQUIRED is x402 v2 JSON")
}

#[test]
fn priced_routes_challenge_and_accept_tokens() {
    let key = fresh_key("main");
    let kid = key_id(key.verifying_key());
    let upstream = Upstream::start().unwrap();
    let envoy = start_envoy(
        &filter_config(&key, 3000, "deny"),
        EnvoyOpts {
            upstream_port: Some(upstream.port()),
            ..Default::default()
        },
    );

    // Unpriced path: straight to the upstream, untouched.
    let r = envoy.get("/public/hello?x=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/public/hello?x=1");
    // A priced path with a method the route does not price: 405 listing the priced ones
    // (changed by the "hardened edge" issue: it used to pass unpriced; `other_methods:
    // "pass"` keeps that, see edge_tricks.rs).
    let r = envoy.send(&HttpRequest::new("POST", "/api/weather").body("{}"));
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    // No token: 402 with the seed body and the x402 v2 header.
    let r = envoy.send(
        &HttpRequest::new("GET", "/api/weather?city=Paris").header("host", "api.example.com:8080"),
    );
    let pr = assert_challenge(&envoy, &r, Reason::MissingToken, "no token");
    let body = r.json();
    assert_eq!(body["access_token_endpoint"], "/x402/token/weather");
    assert_eq!(body["route"], "weather");
    assert_eq!(body["payment_scheme"]["protocol_version"], "Version 0.1");
    let comps = body["payment_scheme"]["payment_components"]
        .as_array()
        .unwrap();
    assert_eq!(comps.len(), 2);
    assert_eq!(comps[0]["payment_type"], "evm");
    assert_eq!(comps[0]["amount"].to_string(), "0.01");
    assert_eq!(comps[0]["amount_base_units"], "10000");
    assert_eq!(comps[0]["token"], USDC);
    assert_eq!(comps[0]["chain_id"], 84532);
    assert_eq!(comps[1]["scheme"], "permit");
    assert_eq!(comps[1]["metadata"]["wallet_address"], SPENDER);
    assert_eq!(pr.x402_version, 2);
    assert_eq!(
        pr.resource.url,
        "http://api.example.com:8080/api/weather?city=Paris"
    );
    assert_eq!(pr.resource.description, "Weather report");
    assert_eq!(pr.resource.mime_type, "application/json");
    assert_eq!(pr.accepts.len(), 1, "x402 v2 lists only the exact method");
    let a = &pr.accepts[0];
    assert_eq!(
        (a.scheme.as_str(), a.network.as_str(), a.amount.as_str()),
        ("exact", "eip155:84532", "10000")
    );
    assert_eq!(
        (a.asset.as_str(), a.pay_to.as_str(), a.max_timeout_seconds),
        (USDC, PAY_TO, 300)
    );
    assert_eq!(a.extra.as_ref().unwrap().name, "USDC");
    // x-forwarded-proto decides the scheme of resource.url.
    let r = envoy.send(
        &HttpRequest::new("GET", "/api/users/7/report")
            .header("x-forwarded-proto", "https")
            .header("host", "a.test"),
    );
    let pr = assert_challenge(&envoy, &r, Reason::MissingToken, "template route");
    assert_eq!(pr.resource.url, "https://a.test/api/users/7/report");
    assert_eq!(pr.accepts[0].amount, "1500000");
    assert_eq!(r.json()["access_token_endpoint"], "/x402/token/report");

    // A valid token reaches the upstream; the second use is a cache hit.
    let t = now();
    let token = mint(&key, &kid, claims("weather", 10_000), t, 300);
    let misses_before = envoy.stat("wasmcustom.x402_token_cache_misses");
    let r = envoy.send(
        &HttpRequest::new("GET", "/api/weather?city=Paris")
            .header("authorization", &bearer(&token)),
    );
    assert_eq!(
        r.status,
        200,
        "valid token: {}\n{}",
        r.text(),
        envoy.log_tail(20)
    );
    let echoed = r.json();
    assert_eq!(echoed["path"], "/api/weather?city=Paris");
    // Our token is not forwarded (routes[].forward_token is off by default), as Envoy
    // jwt_authn's `forward: false`.
    assert_eq!(echoed["headers"]["authorization"], serde_json::Value::Null);
    assert!(
        upstream
            .requests()
            .iter()
            .all(|q| q.header("authorization").is_none()),
        "the access token reached the upstream"
    );
    // The upstream learns who paid.
    assert_eq!(
        echoed["headers"]["x-x402-payer"], PAYER,
        "checksummed payer"
    );
    assert_eq!(echoed["headers"]["x-x402-route"], "weather");
    assert_eq!(echoed["headers"]["x-x402-settlement-id"], "settlement-1");
    assert_eq!(
        upstream
            .requests()
            .iter()
            .filter(|q| q.path.starts_with("/api/weather"))
            .count(),
        1,
        "the 402s and the 405 never reached the upstream"
    );
    let hits_before = envoy.stat("wasmcustom.x402_token_cache_hits");
    let r = envoy
        .send(&HttpRequest::new("GET", "/api/weather").header("authorization", &bearer(&token)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        envoy.stat("wasmcustom.x402_token_cache_misses"),
        misses_before + 1,
        "one signature check"
    );
    assert_eq!(
        envoy.stat("wasmcustom.x402_token_cache_hits"),
        hits_before + 1,
        "second use served from the cache"
    );
    // Client-supplied x-x402-* headers never reach the upstream on a priced route, whatever
    // their case or name; the filter's own values replace them.
    let r = envoy.send(
        &HttpRequest::new("GET", "/api/weather")
            .header("authorization", &bearer(&token))
            .header("X-X402-Payer", "0x0000000000000000000000000000000000000bad")
            .header("x-x402-route", "everything")
            .header("x-x402-settlement-id", "forged")
            .header("x-x402-admin", "yes"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(h["x-x402-payer"], PAYER, "{h}");
    assert_eq!(h["x-x402-route"], "weather", "{h}");
    assert_eq!(h["x-x402-settlement-id"], "settlement-1", "{h}");
    assert!(h.get("x-x402-admin").is_none(), "{h}");
    // Unpriced requests: the identity names are removed (one host call each); other
    // x-x402-* names pass there.
    for (method, path) in [("GET", "/public/hello"), ("POST", "/public/form")] {
        let r = envoy.send(
            &HttpRequest::new(method, path)
                .header("x-x402-payer", PAYER)
                .header("x-x402-route", "weather")
                .header("x-x402-settlement-id", "forged")
                .header("x-x402-other", "kept"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let h = &r.json()["headers"];
        for n in ["x-x402-payer", "x-x402-route", "x-x402-settlement-id"] {
            assert!(
                h.get(n).is_none(),
                "{method} {path}: {n} reached the upstream: {h}"
            );
        }
        assert_eq!(h["x-x402-other"], "kept", "{h}");
    }
    let forged_count = upstream
        .requests()
        .iter()
        .filter(|q| q.header("x-x402-payer").is_some_and(|v| v != PAYER))
        .count();
    assert_eq!(
        forged_count, 0,
        "a client-supplied x-x402-payer reached the upstream"
    );
    // A 402 never reaches the upstream, forged headers or not.
    let before = upstream.requests().len();
    let r = envoy.send(&HttpRequest::new("GET", "/api/weather").header("x-x402-payer", PAYER));
    assert_eq!(r.status, 402);
    assert_eq!(upstream.requests().len(), before);

    // Paying more than the price is fine; the permit scheme's token also opens the route.
    let rich = mint(&key, &kid, claims("weather", 50_000), t, 300);
    assert_eq!(
        envoy
            .send(&HttpRequest::new("GET", "/api/weather").header("authorization", &bearer(&rich)))
            .status,
        200
    );
    // The cached token still only opens its own route.
    let r = envoy.send(
        &HttpRequest::new("GET", "/api/users/1/report").header("authorization", &bearer(&token)),
    );
    assert_challenge(
        &envoy,
        &r,
        Reason::WrongRoute,
        "cached token on another route",
    );

    // Every bad token: 402 with its reason.
    let forged = mint(
        &fresh_key("forger"),
        &kid,
        claims("weather", 10_000),
        t,
        300,
    );
    let expired = mint(&key, &kid, claims("weather", 10_000), t - 1000, 300);
    let future = mint(&key, &kid, claims("weather", 10_000), t + 600, 300);
    let other_route = mint(&key, &kid, claims("report", 1_500_000), t, 300);
    let unknown_kid = mint(&key, "0000000000000000", claims("weather", 10_000), t, 300);
    let too_cheap = mint(&key, &kid, claims("weather", 9_999), t, 300);
    let mut wrong_asset_claims = claims("weather", 10_000);
    wrong_asset_claims.asset = Address::repeat_byte(0x42);
    let wrong_asset = mint(&key, &kid, wrong_asset_claims, t, 300);
    let payload = token.split('.').nth(1).unwrap().to_string();
    let alg_none = format!(
        "{}.{payload}.",
        b64url(format!(r#"{{"alg":"none","kid":"{kid}"}}"#).as_bytes())
    );
    let hs256 = format!(
        "{}.{payload}.{}",
        b64url(format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#).as_bytes()),
        b64url(b"sig")
    );
    let cases: Vec<(&str, String, Reason)> = vec![
        ("forged signature", bearer(&forged), Reason::BadSignature),
        ("expired", bearer(&expired), Reason::Expired),
        ("not yet valid", bearer(&future), Reason::NotYetValid),
        (
            "token for another route",
            bearer(&other_route),
            Reason::WrongRoute,
        ),
        ("unknown kid", bearer(&unknown_kid), Reason::UnknownKey),
        (
            "amount below the price",
            bearer(&too_cheap),
            Reason::WrongRoute,
        ),
        ("other asset", bearer(&wrong_asset), Reason::WrongRoute),
        ("alg none", bearer(&alg_none), Reason::UnsupportedAlgorithm),
        ("alg HS256", bearer(&hs256), Reason::UnsupportedAlgorithm),
        ("garbage token", bearer("garbage"), Reason::MalformedToken),
        (
            "three garbage parts",
            bearer("a.b.c"),
            Reason::MalformedToken,
        ),
        (
            "malformed header",
            format!("Token {token}"),
            Reason::MalformedHeader,
        ),
        (
            "bearer without token",
            "Bearer".to_string(),
            Reason::MalformedHeader,
        ),
    ];
    let rejected_before = envoy.stat("wasmcustom.x402_rejected_bad_signature");
    for (what, header, reason) in &cases {
        let r =
            envoy.send(&HttpRequest::new("GET", "/api/weather").header("authorization", header));
        assert_challenge(&envoy, &r, *reason, what);
    }
    assert_eq!(
        envoy.stat("wasmcustom.x402_rejected_bad_signature"),
        rejected_before + 1
    );
    assert!(envoy.stat("wasmcustom.x402_rejected_wrong_route") >= 4);
    assert!(envoy.stat("wasmcustom.x402_challenges") >= cases.len() as u64 + 3);
    assert!(envoy.stat("wasmcustom.x402_accepted") >= 3);

    // A token for the template route opens it.
    let r = envoy.send(
        &HttpRequest::new("GET", "/api/users/9/report")
            .header("authorization", &bearer(&other_route)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Path tricks do not escape the price: Envoy normalizes before the filter.
    for p in [
        "/api//weather",
        "/api/./weather",
        "/public/../api/weather",
        "/api/users/9/report/",
    ] {
        let r = envoy.get(p);
        assert_eq!(r.status, 402, "{p}: {} {}", r.status, r.text());
    }
    let stats = envoy.stats().unwrap();
    assert!(
        stats.contains("wasmcustom.x402_token_requests"),
        "metrics are defined:\n{stats}"
    );
}

#[test]
fn token_endpoint_fails_closed_and_bounds_bodies() {
    let key = fresh_key("endpoint");
    // settler_port None: the x402_settler cluster points at a port nobody listens on.
    let envoy = start_envoy(&filter_config(&key, 1500, "deny"), EnvoyOpts::default());

    let started = Instant::now();
    let r = envoy.send(
        &HttpRequest::new("POST", "/x402/token/weather?ref=1")
            .header("content-type", "application/json")
            .body(r#"{"version":"Version 0.1","permit":{}}"#),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within the settler timeout, took {:?}",
        started.elapsed()
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    assert_eq!(body["error"], "settler_unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("settler"),
        "{body}"
    );
    assert!(envoy.stat("wasmcustom.x402_settler_errors") >= 1);
    assert!(envoy.stat("wasmcustom.x402_token_requests") >= 1);

    // Oversized bodies: 413, announced by content-length or discovered while streaming.
    let big = vec![b'a'; 10_000];
    let r = envoy.send(&HttpRequest::new("POST", "/x402/token/weather").body(big.clone()));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (413, json!("payload_too_large")),
        "{}",
        r.text()
    );
    let r = envoy.send(
        &HttpRequest::new("POST", "/x402/token/weather")
            .body(big)
            .chunked(),
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (413, json!("payload_too_large")),
        "{}",
        r.text()
    );

    // Not JSON: 400. Empty: 400.
    let r = envoy.send(&HttpRequest::new("POST", "/x402/token/weather").body("not json"));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_json")),
        "{}",
        r.text()
    );
    let r = envoy.send(&HttpRequest::new("POST", "/x402/token/weather").body(""));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("invalid_json")),
        "{}",
        r.text()
    );
    let r = envoy.send(&HttpRequest::new("POST", "/x402/token/weather"));
    assert_eq!(r.status, 400, "{}", r.text());

    // Unknown route: 404. Wrong method: 405.
    let r = envoy.send(&HttpRequest::new("POST", "/x402/token/nope").body("{}"));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("unknown_route")),
        "{}",
        r.text()
    );
    let r = envoy.get("/x402/token/weather");
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (405, json!("method_not_allowed")),
        "{}",
        r.text()
    );
    assert_eq!(r.header("allow"), Some("POST"));
}

/// A fake settler: records what the filter sends and answers like the real one (an empty
/// revocation list to the filter's timed `GET /v1/revocations`).
fn fake_settler(minted: String) -> Upstream {
    Upstream::with_handler(move |req| {
        if req.path.starts_with("/v1/revocations") {
            return Reply::json(200, &json!({"revoked": [], "as_of": 0, "truncated": false}));
        }
        let body = req.json();
        let payment = &body["payment"];
        if payment["mode"] == "refuse" {
            return Reply::json(402, &json!({"error": "invalid_exact_evm_payload_signature", "message": "signature does not match"}));
        }
        if payment["mode"] == "crash" {
            return Reply::empty(500);
        }
        if payment["mode"] == "slow" {
            return Reply::json(200, &json!({})).delayed(Duration::from_secs(3));
        }
        Reply::json(
            200,
            &json!({"access_token": minted, "token_type": "Bearer", "expires_in": 300, "settlement_id": "s-1",
                    "payer": PAYER, "network": "eip155:84532", "route": body["requirement"]["route"],
                    "amount": "10000", "asset": USDC}),
        )
    })
    .unwrap()
}

/// What the filter sent the fake settler for requests (its timed revocation-list fetches
/// left out).
fn settler_calls(settler: &Upstream) -> Vec<x402_testkit::upstream::Request> {
    settler
        .requests()
        .into_iter()
        .filter(|r| !r.path.starts_with("/v1/revocations"))
        .collect()
}

#[test]
fn token_endpoint_and_x402_v2_payments_use_the_settler() {
    let key = fresh_key("settler");
    let kid = key_id(key.verifying_key());
    let minted = mint(&key, &kid, claims("weather", 10_000), now(), 300);
    let settler = fake_settler(minted.clone());
    let upstream = Upstream::start().unwrap();
    const API_SECRET: &str = "edge-to-settler-secret-7Qk2";
    let mut cfg = filter_config(&key, 1000, "deny");
    cfg["settler"]["api_secret"] = json!(API_SECRET);
    // The fake settler has no release endpoint: charged whatever the upstream answers
    // (tests/tests/e2e_no_charge.rs covers held payments against the real settler).
    for r in cfg["routes"].as_array_mut().unwrap() {
        r["charge_on_upstream_error"] = json!(true);
    }
    let envoy = start_envoy(
        &cfg,
        EnvoyOpts {
            upstream_port: Some(upstream.port()),
            settler_port: Some(settler.port()),
            ..Default::default()
        },
    );

    // Seed flow: POST the payment to the token endpoint; the settler's answer is relayed.
    let payment =
        json!({"version": "Version 0.1", "permit": {"permit_type": "ERC3009", "value": 10000}});
    let r = envoy.send(
        &HttpRequest::new("POST", "/x402/token/weather")
            .header("content-type", "application/json")
            .body(payment.to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.json()["access_token"], minted.as_str());
    let sent = settler_calls(&settler);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].method.as_str(), sent[0].path.as_str()),
        ("POST", "/v1/tokens")
    );
    assert_eq!(sent[0].header("host"), Some("x402-settler"));
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {API_SECRET}").as_str()),
        "settler.api_secret goes with every callout"
    );
    let req: TokenRequest =
        serde_json::from_slice(&sent[0].body).expect("the filter sends a TokenRequest");
    assert_eq!(req.requirement.route, "weather");
    assert_eq!(req.requirement.token_ttl_secs, 300);
    assert_eq!(req.requirement.accepts.len(), 2);
    assert_eq!(
        req.requirement.accepts[0].amount,
        U256::from(10_000u64),
        "price from the config, in base units"
    );
    assert_eq!(
        serde_json::from_str::<Value>(req.payment.get()).unwrap(),
        payment,
        "payment relayed as sent"
    );
    // Settler refusals are relayed with their status.
    let r = envoy.send(
        &HttpRequest::new("POST", "/x402/token/weather")
            .body(json!({"mode": "refuse"}).to_string()),
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (402, json!("invalid_exact_evm_payload_signature"))
    );
    // A 5xx without a body is an outage: 503.
    let r = envoy.send(
        &HttpRequest::new("POST", "/x402/token/weather").body(json!({"mode": "crash"}).to_string()),
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("settler_unavailable")),
        "{}",
        r.text()
    );
    // A settler slower than timeout_ms: 503, in about timeout_ms.
    let started = Instant::now();
    let r = envoy.send(
        &HttpRequest::new("POST", "/x402/token/weather").body(json!({"mode": "slow"}).to_string()),
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("settler_unavailable")),
        "{}",
        r.text()
    );
    assert!(
        started.elapsed() < Duration::from_millis(2800),
        "timeout honoured: {:?}",
        started.elapsed()
    );

    // x402 v2: PAYMENT-SIGNATURE on the resource itself.
    let sig_json = json!({"x402Version": 2, "payload": {"authorization": {"from": PAYER}}, "accepted": {"scheme": "exact"}});
    let sig = x402_protocol::b64::encode(sig_json.to_string().as_bytes());
    let before = settler_calls(&settler).len();
    let misses_before = envoy.stat("wasmcustom.x402_token_cache_misses");
    let r = envoy.send(
        &HttpRequest::new("GET", "/api/weather?v=2")
            .header("payment-signature", &sig)
            .header("host", "shop.test")
            .header("x-x402-payer", "0x0000000000000000000000000000000000000bad")
            .header("x-x402-settlement-id", "forged"),
    );
    assert_eq!(
        r.status,
        200,
        "paid request reaches the upstream: {}\n{}",
        r.text(),
        envoy.log_tail(20)
    );
    assert_eq!(r.json()["path"], "/api/weather?v=2");
    // The upstream learns who paid, from the minted token; the client's values are gone.
    let h = &r.json()["headers"];
    assert_eq!(h["x-x402-payer"], PAYER, "{h}");
    assert_eq!(h["x-x402-route"], "weather", "{h}");
    assert_eq!(h["x-x402-settlement-id"], "settlement-1", "{h}");
    let up = upstream.requests();
    let last = up.last().unwrap();
    assert_eq!(last.header("x-x402-payer"), Some(PAYER));
    let receipt: Value = serde_json::from_slice(
        &x402_protocol::b64::decode(r.header("payment-response").expect("PAYMENT-RESPONSE"))
            .unwrap(),
    )
    .unwrap();
    let settlement_id = receipt["extra"]["settlementId"].clone();
    assert!(settlement_id.is_string(), "{receipt}");
    assert_eq!(
        receipt,
        json!({"success": true, "transaction": "", "network": "eip155:84532", "payer": PAYER,
               "extra": {"settlementId": settlement_id, "settlement": "pending"}})
    );
    assert_eq!(r.header("x-x402-access-token"), Some(minted.as_str()));
    let sent = settler_calls(&settler);
    assert_eq!(sent.len(), before + 1);
    let req: TokenRequest = serde_json::from_slice(&sent[before].body).unwrap();
    assert_eq!(
        req.requirement.resource.as_deref(),
        Some("http://shop.test/api/weather?v=2")
    );
    assert_eq!(
        serde_json::from_str::<Value>(req.payment.get()).unwrap(),
        sig_json
    );
    // The returned token works as a bearer token afterwards, straight from the cache: the
    // filter verified it once when the settler returned it.
    let hits_before = envoy.stat("wasmcustom.x402_token_cache_hits");
    let r = envoy
        .send(&HttpRequest::new("GET", "/api/weather").header("authorization", &bearer(&minted)));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-x402-payer"], PAYER);
    assert_eq!(
        envoy.stat("wasmcustom.x402_token_cache_hits"),
        hits_before + 1,
        "reuse is a cache hit"
    );
    assert_eq!(
        envoy.stat("wasmcustom.x402_token_cache_misses"),
        misses_before,
        "no signature check on reuse"
    );

    // Settler refuses the v2 payment: 402 challenge carrying the settler's error.
    let bad = x402_protocol::b64::encode(json!({"mode": "refuse"}).to_string().as_bytes());
    let r = envoy.send(&HttpRequest::new("GET", "/api/weather").header("payment-signature", &bad));
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_exact_evm_payload_signature");
    let pr: PaymentRequired = serde_json::from_slice(
        &x402_protocol::b64::decode(r.header("payment-required").unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        pr.error.as_deref(),
        Some("invalid_exact_evm_payload_signature")
    );
    // Unusable PAYMENT-SIGNATURE: 402 without calling the settler.
    let before = settler_calls(&settler).len();
    let r = envoy.send(&HttpRequest::new("GET", "/api/weather").header("payment-signature", "%%%"));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (402, json!("invalid_payment_signature"))
    );
    assert_eq!(settler_calls(&settler).len(), before);
    // Settler outage on a v2 payment with failure_mode deny: 503.
    let crash = x402_protocol::b64::encode(json!({"mode": "crash"}).to_string().as_bytes());
    let r =
        envoy.send(&HttpRequest::new("GET", "/api/weather").header("payment-signature", &crash));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("settler_unavailable")),
        "{}",
        r.text()
    );
    // A valid token wins: no second payment.
    let before = settler_calls(&settler).len();
    let r = envoy.send(
        &HttpRequest::new("GET", "/api/weather")
            .header("authorization", &bearer(&minted))
            .header("payment-signature", &sig),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        settler_calls(&settler).len(),
        before,
        "no settler call when the token is valid"
    );
    assert!(r.header("payment-response").is_none());

    // Every callout carried the secret; the filter never logs it.
    let sent = settler_calls(&settler);
    assert!(sent.len() >= 6);
    for q in &sent {
        assert_eq!(
            q.header("authorization"),
            Some(format!("Bearer {API_SECRET}").as_str())
        );
    }
    assert!(
        !envoy.log().contains(API_SECRET),
        "the secret is never logged"
    );
}

#[test]
fn failure_mode_allow_lets_paid_requests_through_on_outage() {
    let key = fresh_key("allow");
    let upstream = Upstream::start().unwrap();
    let envoy = start_envoy(
        &filter_config(&key, 800, "allow"),
        EnvoyOpts {
            upstream_port: Some(upstream.port()),
            ..Default::default()
        },
    );
    let sig = x402_protocol::b64::encode(br#"{"x402Version":2,"payload":{}}"#);
    let r = envoy.send(&HttpRequest::new("GET", "/api/weather").header("payment-signature", &sig));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        envoy.log().contains("failure_mode=allow"),
        "a warning is logged"
    );
    // Without a payment it is still a 402: allow only concerns settler outages.
    assert_eq!(envoy.get("/api/weather").status, 402);
    // The token endpoint always fails closed.
    assert_eq!(
        envoy
            .send(&HttpRequest::new("POST", "/x402/token/weather").body("{}"))
            .status,
        503
    );
}

#[test]
fn invalid_plugin_config_is_refused_with_the_field_named() {
    let key = fresh_key("bad");
    let mut cfg = filter_config(&key, 3000, "deny");
    cfg["routes"][1]["price"] = json!("0.0000001");
    let failed = Envoy::start_expect_failure(&cfg.to_string(), EnvoyOpts::default()).unwrap();
    assert!(
        !failed.became_ready,
        "Envoy must not serve with a refused plugin config:\n{}",
        failed.log
    );
    assert_ne!(failed.exit_code, Some(0), "{}", failed.log);
    assert!(
        failed.exit_code.is_some(),
        "Envoy exits (does not hang):\n{}",
        failed.log
    );
    assert!(
        failed.log.contains("x402 config: routes[1].price: "),
        "log names the field:\n{}",
        failed.log
    );
    assert!(
        failed.log.contains("Unable to create Wasm plugin x402"),
        "{}",
        failed.log
    );

    let mut cfg = filter_config(&key, 3000, "deny");
    cfg["settler"]["failure_mod"] = json!("allow");
    let failed = Envoy::start_expect_failure(&cfg.to_string(), EnvoyOpts::default()).unwrap();
    assert!(!failed.became_ready);
    assert!(
        failed
            .log
            .contains("x402 config: settler.failure_mod: unknown field"),
        "{}",
        failed.log
    );

    // `--mode validate` runs the plugin's configure too.
    let good = x402_testkit::envoy::bootstrap_yaml(
        &filter_config(&key, 3000, "deny").to_string(),
        &EnvoyOpts::default(),
        10001,
        10002,
        10003,
    );
    let (ok, out) = Envoy::validate(&good).unwrap();
    assert!(ok, "{out}");
    let mut cfg = filter_config(&key, 3000, "deny");
    cfg["token_keys"][0]["public_key"] = json!("0x02abcd");
    let bad = x402_testkit::envoy::bootstrap_yaml(
        &cfg.to_string(),
        &EnvoyOpts::default(),
        10001,
        10002,
        10003,
    );
    let (ok, out) = Envoy::validate(&bad).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("x402 config: token_keys[0].public_key: "),
        "{out}"
    );
}

#[test]
fn token_endpoint_never_hangs_on_missing_bodies() {
    use std::io::{Read, Write};
    let key = fresh_key("bodies");
    let mut cfg = filter_config(&key, 1000, "deny");
    cfg["body_timeout_ms"] = json!(1000);

    // A client that announces 100 bytes and sends 10: 408 after body_timeout_ms.
    let envoy = start_envoy(&cfg, EnvoyOpts::default());
    let mut s = std::net::TcpStream::connect(envoy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(
        b"POST /x402/token/weather HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"a\":12345",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer}\n{}",
        envoy.log_tail(20)
    );
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(envoy);

    // An Envoy whose wasm plugin lacks allow_on_headers_stop_iteration never hands the body
    // to the filter: the request is answered 500 (not left hanging) and the log says why.
    let envoy = start_envoy(
        &cfg,
        EnvoyOpts {
            allow_on_headers_stop_iteration: false,
            ..Default::default()
        },
    );
    let started = Instant::now();
    let r = envoy.send(&HttpRequest::new("POST", "/x402/token/weather").body("{}"));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (500, json!("filter_misconfigured")),
        "{}",
        r.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        envoy.log().contains("allow_on_headers_stop_iteration"),
        "{}",
        envoy.log_tail(20)
    );
    // Everything else works without the option.
    assert_eq!(envoy.get("/api/weather").status, 402);
    assert_eq!(envoy.get("/x402/token/weather").status, 405);
}

#[test]
fn non_utf8_header_values_do_not_crash_the_filter() {
    use std::io::{Read, Write};
    let key = fresh_key("bytes");
    let upstream = Upstream::start().unwrap();
    let envoy = start_envoy(
        &filter_config(&key, 1000, "deny"),
        EnvoyOpts {
            upstream_port: Some(upstream.port()),
            ..Default::default()
        },
    );
    let raw = |head: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(envoy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(head).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    // obs-text bytes (not UTF-8) in header values the filter reads. Envoy hands these two to the filter as they are: a malformed token, an unusable payment.
    for head in [
        &b"GET /api/weather HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \xff\xfe\r\nconnection: close\r\n\r\n"[..],
        b"GET /api/weather HTTP/1.1\r\nhost: x\r\npayment-signature: \xc3\x28\r\nconnection: close\r\n\r\n",
    ] {
        let answer = raw(head);
        assert!(
            answer.starts_with("HTTP/1.1 402"),
            "{answer}\n{}",
            envoy.log_tail(20)
        );
    }
    // Envoy may refuse these itself (400); either way nothing breaks.
    for head in [
        &b"GET /api/weather HTTP/1.1\r\nhost: \xe9x\r\nconnection: close\r\n\r\n"[..],
        &b"GET /public HTTP/1.1\r\nhost: x\r\nx-x402-payer: \xff\r\nconnection: close\r\n\r\n"[..],
    ] {
        let answer = raw(head);
        assert!(
            answer.starts_with("HTTP/1.1 402")
                || answer.starts_with("HTTP/1.1 400")
                || answer.starts_with("HTTP/1.1 200"),
            "{answer}\n{}",
            envoy.log_tail(20)
        );
    }
    // The filter is still alive and enforcing.
    assert_eq!(
        envoy.get("/api/weather").status,
        402,
        "{}",
        envoy.log_tail(30)
    );
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log_tail(30));
}

/// The wasm filter config inside envoy/istio/envoyfilter.yaml (the Istio EnvoyFilter patch)
/// is real Envoy 1.40 config: its `typed_config` block, with the module path pointed at the
/// built filter and the key placeholders filled, passes `envoy --mode validate`, which also
/// runs the filter's own configuration check.
#[test]
fn istio_envoyfilter_wasm_config_validates() {
    let text =
        std::fs::read_to_string(x402_testkit::paths::root().join("envoy/istio/envoyfilter.yaml"))
            .unwrap();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "typed_config:")
        .expect("the EnvoyFilter has a typed_config");
    let base = indent(lines[start]);
    let block: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > base)
        .copied()
        .collect();
    assert!(
        block
            .iter()
            .any(|l| l.trim() == "allow_on_headers_stop_iteration: true"),
        "the EnvoyFilter sets allow_on_headers_stop_iteration"
    );
    let key = fresh_key("istio");
    let wasm = x402_testkit::paths::filter_wasm();
    let typed_config: String = block
        .iter()
        .map(|l| {
            let l = if l.trim().is_empty() {
                ""
            } else {
                &l[base + 2..]
            };
            format!("              {l}\n")
        })
        .collect::<String>()
        .replace(
            "/var/local/lib/wasm/x402_filter.wasm",
            &wasm.to_string_lossy(),
        )
        .replace("REPLACE_WITH_KID", &key_id(key.verifying_key()))
        .replace(
            "REPLACE_WITH_SETTLER_PUBLIC_KEY",
            &verifying_key_to_hex(key.verifying_key()),
        );
    let bootstrap = format!(
        r#"static_resources:
  listeners:
  - name: gateway
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10080}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200}}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
{typed_config}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: "outbound|8402||x402-settler.x402.svc.cluster.local"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "outbound|8402||x402-settler.x402.svc.cluster.local"
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 8402}}}}}}}}]}}]
"#
    );
    let (ok, out) = Envoy::validate(&bootstrap).unwrap();
    assert!(ok, "{out}\n---\n{bootstrap}");
    // With the placeholders left in, the filter itself refuses the config, naming the field.
    let unfilled = bootstrap.replace(
        &verifying_key_to_hex(key.verifying_key()),
        "REPLACE_WITH_SETTLER_PUBLIC_KEY",
    );
    let (ok, out) = Envoy::validate(&unfilled).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("x402 config: token_keys[0].public_key: "),
        "{out}"
    );
}
