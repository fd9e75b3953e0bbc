//! Host, path and method tricks against the real Envoy with the real filter, in front of a
//! real upstream that records every request it gets: none of them may reach it unpaid.
//!
//! Each Envoy here is configured as the README recommends for routes with `hosts`
//! (virtual host `domains` = the routes' hosts, `strip_any_host_port`), and the path tests
//! run with the connection manager's path normalisation OFF, so the filter's own rules are
//! what is tested.
//!
//! Needs `target/x402_filter.wasm` (`bash tools/build-wasm.sh`) and `tools/bin/envoy`.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k256::ecdsa::SigningKey;
use serde_json::{json, Value};
use sha2::Digest;
use x402_protocol::token::{key_id, mint, verifying_key_to_hex, AccessClaims};
use x402_protocol::{Network, U256};
use x402_testkit::envoy::{Envoy, EnvoyOpts, HttpRequest, HttpResponse};
use x402_testkit::upstream::Upstream;

const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAY_TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const PAYER: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
const HOST: &str = "api.example.com";

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

/// A valid bearer token for route `weather` (0.01 USDC).
fn bearer(key: &SigningKey) -> String {
    let claims = AccessClaims {
        iss: "test-settler".into(),
        sub: PAYER.parse().unwrap(),
        route: "weather".into(),
        amount: U256::from(10_000u64),
        asset: USDC.parse().unwrap(),
        network: Network::eip155(84532),
        jti: "settlement-1".into(),
    };
    let token = mint(key, &key_id(key.verifying_key()), claims, now(), 300);
    format!("Bearer {token}")
}

/// One priced route `weather` (prefix `/api/weather`, GET, host api.example.com) plus
/// `extra` fields on it.
fn filter_config(key: &SigningKey, extra: Value) -> Value {
    let mut route = json!({"name": "weather", "match": {"prefix": "/api/weather"}, "methods": ["GET"],
        "hosts": [HOST], "price": "0.01", "payment_methods": ["usdc-base"]});
    if let (Some(r), Some(e)) = (route.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    json!({
        "settler": {"cluster": "x402_settler", "authority": "x402-settler", "timeout_ms": 1000},
        "token_keys": [{"kid": key_id(key.verifying_key()), "public_key": verifying_key_to_hex(key.verifying_key())}],
        "payment_methods": {
            "usdc-base": {"scheme": "exact", "network": "eip155:84532",
                "asset": {"address": USDC, "decimals": 6, "name": "USDC", "version": "2", "symbol": "USDC"},
                "pay_to": PAY_TO}
        },
        "routes": [route]
    })
}

/// Envoy as the README recommends for routes with hosts; `normalize_paths` as given.
fn start(cfg: &Value, upstream: &Upstream, normalize_paths: bool) -> Envoy {
    Envoy::start(
        &cfg.to_string(),
        EnvoyOpts {
            upstream_port: Some(upstream.port()),
            domains: vec![HOST.to_string()],
            strip_any_host_port: true,
            normalize_paths,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn req(method: &str, path: &str, host: &str) -> HttpRequest {
    HttpRequest::new(method, path).header("host", host)
}

/// Sends `r`, expects one of `statuses`, and that the upstream got nothing from it.
fn refused(envoy: &Envoy, upstream: &Upstream, r: HttpRequest, statuses: &[u16]) -> HttpResponse {
    let before = upstream.requests().len();
    let what = format!(
        "{} {} (host {:?})",
        r.method,
        r.path,
        r.headers
            .iter()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| v.clone())
    );
    let resp = envoy.send(&r);
    assert!(
        statuses.contains(&resp.status),
        "{what}: expected one of {statuses:?}, got {} {}\n{}",
        resp.status,
        resp.text(),
        envoy.log_tail(20)
    );
    assert_eq!(
        upstream.requests().len(),
        before,
        "{what}: the upstream must not see it: {:?}",
        upstream.requests().last()
    );
    resp
}

fn assert_error(resp: &HttpResponse, code: &str) {
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["error"], code, "{}", resp.text());
}

#[test]
fn host_tricks_never_reach_the_upstream_unpaid() {
    let key = fresh_key("hosts");
    let upstream = Upstream::start().unwrap();
    let envoy = start(&filter_config(&key, json!({})), &upstream, true);

    // Control: the upstream answers an unpriced path on the route's host.
    let r = envoy.send(&req("GET", "/public", HOST));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.requests().len(), 1);

    // A port that is not a number: Envoy leaves it on, the filter refuses it.
    let r = refused(
        &envoy,
        &upstream,
        req("GET", "/api/weather", "api.example.com:abc"),
        &[400],
    );
    assert_error(&r, "invalid_authority");
    // Case, a numeric port and a trailing dot do not make another host: priced.
    for host in [
        "API.EXAMPLE.COM",
        "Api.Example.Com:10000",
        "api.example.com:8443",
    ] {
        refused(&envoy, &upstream, req("GET", "/api/weather", host), &[402]);
    }
    refused(
        &envoy,
        &upstream,
        req("GET", "/api/weather", "api.example.com."),
        &[402, 404],
    );
    // Other hosts (an IP, another name) are not the route's, and not the virtual host's
    // either: Envoy's 404, never the upstream.
    for host in [
        "127.0.0.1",
        "127.0.0.1:10000",
        "[::1]",
        "evil.example.com",
        "example.com",
    ] {
        refused(&envoy, &upstream, req("GET", "/api/weather", host), &[404]);
    }
    // Hosts that do not parse at all (Envoy strips a numeric port first, even 99999: that
    // one is priced).
    for host in [
        "api.example.com:",
        "api.example.com:99999",
        "api..example.com",
    ] {
        refused(
            &envoy,
            &upstream,
            req("GET", "/api/weather", host),
            &[400, 402, 404],
        );
    }
    // Paid: through, with the payer.
    let r = envoy.send(
        &req("GET", "/api/weather", "API.example.com:443").header("authorization", &bearer(&key)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream.requests().last().unwrap().header("x-x402-payer"),
        Some(PAYER)
    );
}

#[test]
fn path_tricks_without_envoy_normalisation_are_priced_or_refused() {
    let key = fresh_key("paths");
    let upstream = Upstream::start().unwrap();
    let envoy = start(&filter_config(&key, json!({})), &upstream, false);

    // `;` parameters (Tomcat/Spring read these as /api/weather) and escaped letters: priced.
    for path in [
        "/api;x/weather",
        "/api/weather;x",
        "/api;jsessionid=1/weather?city=x",
        "/api/%77eather",
    ] {
        let r = refused(&envoy, &upstream, req("GET", path, HOST), &[402]);
        assert_eq!(r.json()["error"], "missing_token", "{path}");
    }
    // Escaped separators, empty and dot segments on the priced path: 400.
    for path in [
        "/api%2Fweather",
        "/api%2fweather",
        "/api%5Cweather",
        "/api//weather",
        "//api/weather",
        "/api/./weather",
        "/static/../api/weather",
        "/static/%2e%2e/api/weather",
        "/static/..;/api/weather",
    ] {
        let r = refused(&envoy, &upstream, req("GET", path, HOST), &[400]);
        assert_error(&r, "invalid_path");
    }
    // Paid with `;` parameters: the upstream gets the path that was priced.
    let r = envoy.send(
        &req("GET", "/api;x/weather;y?city=lisbon", HOST).header("authorization", &bearer(&key)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = upstream.requests().last().cloned().unwrap();
    assert_eq!(got.path, "/api/weather?city=lisbon");
    assert_eq!(got.header("x-x402-route"), Some("weather"));
    // Unpriced paths are forwarded as sent.
    let before = upstream.requests().len();
    let r = envoy.send(&req("GET", "/static//x;y", HOST));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.requests().len(), before + 1);
    assert_eq!(upstream.requests().last().unwrap().path, "/static//x;y");
}

#[test]
fn case_insensitive_route_prices_every_spelling() {
    let key = fresh_key("case");
    let upstream = Upstream::start().unwrap();
    let envoy = start(
        &filter_config(&key, json!({"case_insensitive": true})),
        &upstream,
        true,
    );
    for path in [
        "/API/weather",
        "/Api/Weather",
        "/api/WEATHER/today",
        "/API;x/WEATHER",
    ] {
        refused(&envoy, &upstream, req("GET", path, HOST), &[402]);
    }
    let r = envoy.send(&req("GET", "/API/Weather", HOST).header("authorization", &bearer(&key)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.requests().last().unwrap().path, "/API/Weather");
}

#[test]
fn method_tricks_never_reach_the_upstream_unpaid() {
    let key = fresh_key("methods");
    let upstream = Upstream::start().unwrap();
    let envoy = start(&filter_config(&key, json!({})), &upstream, true);
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let r = refused(
            &envoy,
            &upstream,
            req(m, "/api/weather", HOST).header("content-length", "0"),
            &[405],
        );
        assert_error(&r, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{m}");
    }
    // A method override does not make a POST a GET.
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ] {
        refused(
            &envoy,
            &upstream,
            req("POST", "/api/weather", HOST)
                .header(name, "GET")
                .body("x"),
            &[405],
        );
    }
    // A paid GET never carries an override to the upstream either.
    let r = envoy.send(
        &req("GET", "/api/weather", HOST)
            .header("authorization", &bearer(&key))
            .header("x-http-method-override", "DELETE"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream
            .requests()
            .last()
            .unwrap()
            .header("x-http-method-override"),
        None
    );
}

#[test]
fn other_methods_pass_lets_them_through_without_the_override() {
    let key = fresh_key("pass");
    let upstream = Upstream::start().unwrap();
    let envoy = start(
        &filter_config(&key, json!({"other_methods": "pass"})),
        &upstream,
        true,
    );
    let r = envoy.send(
        &req("POST", "/api/weather", HOST)
            .header("x-http-method-override", "GET")
            .body("x"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = upstream.requests().last().cloned().unwrap();
    assert_eq!(got.method, "POST");
    assert_eq!(
        got.header("x-http-method-override"),
        None,
        "stripped: the upstream serves a POST"
    );
    refused(&envoy, &upstream, req("GET", "/api/weather", HOST), &[402]);
}
