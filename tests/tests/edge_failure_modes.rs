//! Failure modes that cannot be forced, paid responses that caches do not keep, bodies that
//! arrive after the decision, and the shipped connection-manager settings, in the real Envoy
//! with the real filter, in front of a real upstream that records every request.
//!
//! - `failure_mode: allow` opens a route only when the settler cannot be reached (here: it
//!   is slower than `settler.timeout_ms`, or nothing listens); a settler that answers, even
//!   503 "store unavailable", keeps it closed.
//! - A signature `v` of 2^64 is a 4xx on the token endpoint and as `PAYMENT-SIGNATURE`, on a
//!   `deny` and on an `allow` route (the real settler binary on anvil answers 400).
//! - Paid responses carry `Cache-Control: private, no-store`, unless the route keeps the
//!   upstream's.
//! - envoy/envoy.yaml as shipped refuses header names with underscores and normalises paths.
//!
//! Needs `target/x402_filter.wasm` (`make wasm`), `tools/bin/envoy` and, for the stack test,
//! the settler binary and anvil (`cargo build --workspace --bins`, `make setup`).

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use k256::ecdsa::SigningKey;
use serde_json::{json, Value};
use sha2::Digest;
use x402_protocol::token::{key_id, mint, verifying_key_to_hex, AccessClaims};
use x402_protocol::{Network, U256};
use x402_testkit::envoy::{Envoy, EnvoyOpts, HttpRequest};
use x402_testkit::stack::{Stack, StackOptions};
use x402_testkit::upstream::{echo, Reply, Upstream};

const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAY_TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const PAYER: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
const TWO_64: &str = "18446744073709551616";

fn fresh_key(label: &str) -> SigningKey {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = sha2::Sha256::digest(format!("{nanos}-{}-{label}", std::process::id()).as_bytes());
    SigningKey::from_slice(&seed).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(route: &str) -> AccessClaims {
    AccessClaims {
        iss: "test-settler".into(),
        sub: PAYER.parse().unwrap(),
        route: route.into(),
        amount: U256::from(10_000u64),
        asset: USDC.parse().unwrap(),
        network: Network::eip155(84532),
        jti: "settlement-1".into(),
    }
}

/// Three priced routes: `open` (GET and POST /api/open, `failure_mode: allow`), `closed`
/// (/api/closed, the settler-wide `deny`), `cached` (/api/cached, `cache_control: upstream`).
fn filter_config(key: &SigningKey, settler_timeout_ms: u64) -> Value {
    json!({
        "settler": {"cluster": "x402_settler", "authority": "x402-settler", "path": "/v1/tokens",
                    "timeout_ms": settler_timeout_ms, "failure_mode": "deny"},
        "token_keys": [{"kid": key_id(key.verifying_key()), "public_key": verifying_key_to_hex(key.verifying_key())}],
        "payment_methods": {
            "usdc": {"scheme": "exact", "network": "eip155:84532",
                "asset": {"address": USDC, "decimals": 6, "name": "USDC", "version": "2", "symbol": "USDC"},
                "pay_to": PAY_TO}
        },
        "routes": [
            {"name": "open", "match": {"prefix": "/api/open"}, "price": "0.01",
             "failure_mode": "allow", "payment_methods": ["usdc"]},
            {"name": "closed", "match": {"prefix": "/api/closed"}, "price": "0.01",
             "payment_methods": ["usdc"]},
            {"name": "cached", "match": {"prefix": "/api/cached"}, "price": "0.01",
             "cache_control": "upstream", "payment_methods": ["usdc"]}
        ]
    })
}

/// A fake settler (the test is about how the filter reads its answers): by the payment's
/// `mode`, slower than any timeout here, 503/500 in the settler's own JSON, or a minted token.
fn fake_settler(minted: String) -> Upstream {
    Upstream::with_handler(move |req| {
        if req.path.starts_with("/v1/revocations") {
            return Reply::json(200, &json!({"revoked": [], "as_of": 0, "truncated": false}));
        }
        let body = req.json();
        match body["payment"]["mode"].as_str() {
            Some("slow") => Reply::json(200, &json!({})).delayed(Duration::from_secs(3)),
            Some("store_down") => Reply::json(
                503,
                &json!({"error": "store_unavailable", "message": "the payment store is unavailable",
                        "detail": "sqlite: database is locked (/var/lib/x402/settler.db)"}),
            ),
            Some("internal") => Reply::json(
                500,
                &json!({"error": "internal", "message": "internal error", "panic": "at src/x.rs:1"}),
            ),
            _ => Reply::json(
                200,
                &json!({"access_token": minted, "token_type": "Bearer", "expires_in": 300,
                        "settlement_id": "s-1", "payer": PAYER, "network": "eip155:84532"}),
            ),
        }
    })
    .unwrap()
}

/// An upstream that records requests and answers the echo JSON with a public cache header.
fn cacheable_upstream() -> Upstream {
    Upstream::with_handler(|req| {
        let mut r = Reply::json(200, &echo(req));
        r.headers
            .push(("cache-control".into(), "public, max-age=600".into()));
        r
    })
    .unwrap()
}

/// The fake settler reads `payment.mode`: the v2 payload is the payment.
fn pay(path: &str, mode: &str) -> HttpRequest {
    HttpRequest::new("GET", path).header(
        "payment-signature",
        &x402_protocol::b64::encode(
            json!({"x402Version": 2, "mode": mode})
                .to_string()
                .as_bytes(),
        ),
    )
}

fn upstream_paths(up: &Upstream) -> Vec<String> {
    up.requests().into_iter().map(|r| r.path).collect()
}

#[test]
fn only_an_unreachable_settler_opens_an_allow_route() {
    let key = fresh_key("modes");
    let settler = fake_settler(mint(
        &key,
        &key_id(key.verifying_key()),
        claims("open"),
        now(),
        300,
    ));
    let upstream = Upstream::start().unwrap();
    let envoy = Envoy::start(
        &filter_config(&key, 800).to_string(),
        EnvoyOpts {
            upstream_port: Some(upstream.port()),
            settler_port: Some(settler.port()),
            ..Default::default()
        },
    )
    .unwrap();

    // A settler slower than timeout_ms: unreachable, the allow route lets the request
    // through unpaid (documented), counted in x402_fail_open.
    let started = Instant::now();
    let r = envoy.send(&pay("/api/open/slow", "slow"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.log_tail(20));
    assert!(
        started.elapsed() < Duration::from_millis(2800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(upstream_paths(&upstream), ["/api/open/slow"]);
    let seen = upstream.requests().pop().unwrap();
    assert_eq!(seen.header("x-x402-payer"), None, "unpaid: no identity");
    assert_eq!(envoy.stat("wasmcustom.x402_fail_open"), 1);
    assert!(envoy
        .log()
        .contains("failure_mode=allow lets the request through unpaid"));
    assert!(r.header("payment-response").is_none());

    // The same on a deny route: 503.
    let r = envoy.send(&pay("/api/closed/slow", "slow"));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("settler_unavailable"))
    );

    // The settler answers 503 (its store is down) or 500: the allow route stays closed,
    // with the settler's code and message and nothing else.
    for (mode, code) in [
        ("store_down", "store_unavailable"),
        ("internal", "internal"),
    ] {
        let r = envoy.send(&pay("/api/open/answered", mode));
        assert_eq!(r.status, 503, "{mode}: {}", r.text());
        let body = r.json();
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body.get("detail").is_none() && body.get("panic").is_none(),
            "{body}"
        );
        assert!(!r.text().contains("sqlite") && !r.text().contains("src/x.rs"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    assert_eq!(
        upstream_paths(&upstream),
        ["/api/open/slow"],
        "nothing more got through"
    );
    assert_eq!(envoy.stat("wasmcustom.x402_fail_open"), 1);

    // The token endpoint relays the settler's 503 reduced to what clients need.
    let r = envoy.send(
        &HttpRequest::new("POST", "/x402/token/open")
            .body(json!({"mode": "store_down"}).to_string()),
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (503, json!("store_unavailable"))
    );
    assert!(!r.text().contains("sqlite"), "{}", r.text());
}

/// One HTTP/1.1 request over a raw socket: the headers now, the body once `ready()` says
/// the filter has decided (bounded wait), then the whole answer.
fn post_with_late_body(
    envoy: &Envoy,
    path: &str,
    sig: &str,
    body: &[u8],
    ready: impl Fn() -> bool,
) -> (u16, Vec<u8>, Duration) {
    let mut s = TcpStream::connect(envoy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: api.test\r\npayment-signature: {sig}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "the filter did not decide:\n{}",
            envoy.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    // A request answered locally may be reset after the answer (its body unread): keep
    // what arrived.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let at = text.find("\r\n\r\n").map_or(raw.len(), |i| i + 4);
    (status, raw[at..].to_vec(), sent.elapsed())
}

#[test]
fn a_post_body_sent_after_the_fail_open_decision_reaches_the_upstream() {
    let key = fresh_key("late-body");
    let upstream = Upstream::start().unwrap();
    // No settler listening: Envoy answers the callout 503 "upstream connect error".
    let envoy = Envoy::start(
        &filter_config(&key, 1000).to_string(),
        EnvoyOpts {
            upstream_port: Some(upstream.port()),
            ..Default::default()
        },
    )
    .unwrap();
    let sig = x402_protocol::b64::encode(br#"{"x402Version":2,"payload":{}}"#);
    let (status, body, took) =
        post_with_late_body(&envoy, "/api/open/upload", &sig, b"late body!", || {
            envoy.stat("wasmcustom.x402_fail_open") >= 1
        });
    assert_eq!(
        status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        envoy.log_tail(30)
    );
    assert!(
        took < Duration::from_secs(10),
        "answered without waiting for a timeout: {took:?}"
    );
    let echoed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echoed["body"], "late body!");
    assert_eq!(echoed["method"], "POST");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"late body!");
    // On a deny route the same request is a 503, and nothing reaches the upstream.
    let (status, _, _) =
        post_with_late_body(&envoy, "/api/closed/upload", &sig, b"late body!", || {
            envoy.stat("wasmcustom.x402_settler_errors") >= 2
        });
    assert_eq!(status, 503);
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn paid_responses_are_private_no_store() {
    let key = fresh_key("cache");
    let kid = key_id(key.verifying_key());
    let settler = fake_settler(mint(&key, &kid, claims("open"), now(), 300));
    let upstream = cacheable_upstream();
    // The fake settler answers every call with a token: it has no release endpoint, so
    // x402 v2 payments here are charged whatever the upstream answers (not held).
    let mut config = filter_config(&key, 1000);
    for r in config["routes"].as_array_mut().unwrap() {
        r["charge_on_upstream_error"] = json!(true);
    }
    let envoy = Envoy::start(
        &config.to_string(),
        EnvoyOpts {
            upstream_port: Some(upstream.port()),
            settler_port: Some(settler.port()),
            ..Default::default()
        },
    )
    .unwrap();
    let bearer = |route: &str| format!("Bearer {}", mint(&key, &kid, claims(route), now(), 300));

    // Unpriced: the upstream's own header.
    let r = envoy.get("/free");
    assert_eq!(
        (r.status, r.header("cache-control")),
        (200, Some("public, max-age=600"))
    );
    // 402: no-store.
    let r = envoy.get("/api/open");
    assert_eq!(
        (r.status, r.header("cache-control")),
        (402, Some("no-store"))
    );
    // Paid with a bearer token: replaced (not appended) by private, no-store.
    let r =
        envoy.send(&HttpRequest::new("GET", "/api/open").header("authorization", &bearer("open")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    // Paid with x402 v2: the response carries the token in a header, private, no-store.
    let r = envoy.send(&pay("/api/open", "mint"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.log_tail(20));
    assert!(r.header("x-x402-access-token").is_some());
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    // cache_control "upstream": the route keeps the upstream's header for bearer requests...
    let r = envoy
        .send(&HttpRequest::new("GET", "/api/cached").header("authorization", &bearer("cached")));
    assert_eq!(
        (r.status, r.header("cache-control")),
        (200, Some("public, max-age=600"))
    );
    // ... but never for a response carrying a fresh token.
    let r = envoy.send(&pay("/api/cached", "mint"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
}

/// envoy/envoy.yaml as shipped (rendered as `make demo` does, ports moved to free ones): a
/// header name with an underscore is refused with 400 before the filter, on priced and free
/// paths alike; `//` is merged and `%2F` redirected to the canonical, priced path.
#[test]
fn the_shipped_envoy_config_refuses_underscore_headers_path_parameters_and_normalises_paths() {
    let key = fresh_key("shipped");
    let vk = *key.verifying_key();
    let upstream = Upstream::start().unwrap();
    let settler_port = x402_testkit::ports::free_port();
    let template =
        std::fs::read_to_string(x402_testkit::paths::root().join("envoy/envoy.yaml")).unwrap();
    let render = |listen: u16, admin: u16| {
        let mut y = template.clone();
        for (k, v) in [
            ("X402_KID", key_id(&vk)),
            ("X402_PUBLIC_KEY", verifying_key_to_hex(&vk)),
            (
                "X402_TOKEN_ADDRESS",
                "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            ),
            (
                "X402_PAY_TO",
                "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720".into(),
            ),
            (
                "X402_SPENDER",
                "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".into(),
            ),
        ] {
            y = y.replace(&format!("${{{k}}}"), &v);
        }
        for (from, to) in [
            (10000, listen),
            (9901, admin),
            (8080, upstream.port()),
            (8402, settler_port),
        ] {
            assert_eq!(
                y.matches(&format!("port_value: {from}}}")).count(),
                1,
                "port {from} in envoy/envoy.yaml"
            );
            y = y.replace(
                &format!("port_value: {from}}}"),
                &format!("port_value: {to}}}"),
            );
        }
        y
    };
    let envoy = Envoy::start_bootstrap(
        render,
        EnvoyOpts {
            settler_secret: Some("edge-failure-modes-secret-0123".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let payer = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
    for (path, name) in [
        ("/api/weather", "x_x402_payer"),
        ("/free", "x_x402_payer"),
        ("/api/weather", "X_X402_Route"),
        ("/free", "x_anything"),
    ] {
        let r = envoy.send(&HttpRequest::new("GET", path).header(name, payer));
        assert_eq!(r.status, 400, "{path} {name}: {}", r.text());
    }
    // Without the underscore: the usual answers.
    assert_eq!(envoy.get("/api/weather").status, 402);
    assert_eq!(
        envoy
            .send(&HttpRequest::new("GET", "/free").header("x-x402-payer", payer))
            .status,
        200
    );
    // `//` merged: still the priced path.
    let r = envoy.get("/api//weather");
    assert_eq!(r.status, 402, "{}", r.text());
    // `%2F` unescaped by a redirect to the canonical path.
    let r = envoy.get("/api%2Fweather");
    assert!(
        matches!(r.status, 301 | 302 | 307 | 308),
        "{} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.header("location"), Some("/api/weather"));
    // `;` path parameters that would miss the priced Envoy routes and fall to the free one
    // (where the filter is off) are refused; under a priced prefix the filter prices them.
    for path in [
        "/api;x/weather",
        "/api;jsessionid=1/weather?city=lisbon",
        "/api;x/users/1/report",
        "/free;x",
    ] {
        let r = envoy.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_path", "{path}");
    }
    assert_eq!(envoy.get("/api/weather;x").status, 402);
    let seen = upstream.requests();
    assert_eq!(
        seen.len(),
        1,
        "only the header-clean free request got through: {seen:?}"
    );
    assert_eq!(seen[0].path, "/free");
    assert_eq!(
        seen[0].header("x-x402-payer"),
        None,
        "stripped by the filter"
    );
}

/// A seed ERC-3009 payment whose signature `v` is the raw JSON `v` (2^64 as a number or a
/// string): unsigned, it never gets past the settler's parsing.
fn payment_with_v(stack: &Stack, v: &str) -> String {
    let doc = json!({"version": "Version 0.1", "permit": {
        "permit_type": "ERC3009",
        "signature": {"v": "__V__", "r": format!("0x{}", "1f".repeat(32)), "s": format!("0x{}", "2e".repeat(32))},
        "token": stack.token, "chain_id": stack.anvil.chain_id(),
        "authorizer": PAYER, "recipient": stack.pay_to, "value": 10_000,
        "validAfter": 0, "validBefore": now() + 3600, "nonce": format!("0x{}", "ab".repeat(32))}});
    doc.to_string().replace("\"__V__\"", v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_v_of_2_pow_64_is_a_4xx_under_both_failure_modes() {
    // The real settler on anvil; weather fails closed, report is `failure_mode: allow`.
    let stack = Stack::start_with_filter(StackOptions::default(), |cfg| {
        cfg["routes"][0]["failure_mode"] = json!("deny");
        cfg["routes"][1]["failure_mode"] = json!("allow");
    })
    .await
    .unwrap();
    let envoy = &stack.envoy;
    for v in [TWO_64.to_string(), format!("\"{TWO_64}\"")] {
        let body = payment_with_v(&stack, &v);
        for route in ["weather", "report"] {
            let r = envoy.send(
                &HttpRequest::new("POST", &format!("/x402/token/{route}")).body(body.clone()),
            );
            assert_eq!(r.status, 400, "token endpoint {route} v={v}: {}", r.text());
            let b = r.json();
            assert_eq!(b["error"], "invalid_payment", "{b}");
            assert!(b["message"].as_str().unwrap().contains("`v`"), "{b}");
            assert!(
                b.as_object()
                    .unwrap()
                    .keys()
                    .all(|k| k == "error" || k == "message"),
                "{b}"
            );
        }
        let sig = x402_protocol::b64::encode(body.as_bytes());
        for path in ["/api/weather", "/api/report"] {
            let r = envoy.send(&HttpRequest::new("GET", path).header("payment-signature", &sig));
            assert!(
                (400..500).contains(&r.status),
                "{path} v={v}: {} {}",
                r.status,
                r.text()
            );
            assert_eq!(r.status, 402, "{path}: {}", r.text());
            assert_eq!(r.json()["error"], "invalid_payment", "{}", r.text());
        }
    }
    assert!(
        stack.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    assert_eq!(envoy.stat("wasmcustom.x402_fail_open"), 0);
}
