//! Short-lived tokens while unsettled, renewed after settlement, on the real stack (anvil +
//! test USDC, the settler binary, Envoy with the filter): the `weather` route has
//! `unsettled_token_ttl_secs: 5`. A payment gets a 5 s token; renewing it while the payment
//! is pending answers 409 `settlement_pending`; once settled, the renew action gives a token
//! with the same claims and the route's normal lifetime (300 s), which keeps working after
//! the first one expired. `x402-pay` (the client library) renews its cached token the same
//! way instead of paying again.

// A test crate: a failed assumption is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::U256;
use serde_json::{json, Value};
use x402_client::caps::Caps;
use x402_client::pay::{Config, Payer};
use x402_client::sign::{random_nonce, sign_authorization, TokenDomain};
use x402_protocol::Network;
use x402_testkit::envoy::HttpRequest;
use x402_testkit::stack::{Stack, StackOptions, WEATHER_PRICE};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The short token's 5 s plus the filter's clock leeway (5 s), with room for a loaded machine.
const EXPIRY_TIMEOUT: Duration = Duration::from_secs(30);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The JWT's payload claims (base64url without padding), as JSON.
fn claims_of(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
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

fn lifetime(jwt: &str) -> i64 {
    let c = claims_of(jwt);
    c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap()
}

fn get_with(token: &str) -> HttpRequest {
    HttpRequest::new("GET", "/api/weather").header("authorization", &format!("Bearer {token}"))
}

fn renew(token: &str) -> HttpRequest {
    HttpRequest::new("POST", "/x402/token/weather/renew")
        .header("authorization", &format!("Bearer {token}"))
}

fn short_lived(config: &mut Value) {
    config["routes"][0]["unsettled_token_ttl_secs"] = json!(5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_token_is_renewed_at_the_edge_after_settlement() {
    let mut stack = Stack::start_with_filter(
        StackOptions {
            settler_args: vec!["--no-worker".into()],
            envoy_concurrency: 1,
            ..StackOptions::default()
        },
        short_lived,
    )
    .await
    .unwrap();

    // The 402 says where to renew.
    let r = stack.envoy.send(&HttpRequest::new("GET", "/api/weather"));
    assert_eq!(r.status, 402);
    assert_eq!(
        r.json()["access_token_renew_endpoint"],
        "/x402/token/weather/renew"
    );

    let signer = stack.funded_payer(1).await.unwrap();
    let domain = TokenDomain::usdc(stack.anvil.chain_id(), stack.token);
    let body = sign_authorization(
        &signer,
        &domain,
        signer.address(),
        stack.pay_to,
        U256::from(WEATHER_PRICE),
        U256::ZERO,
        U256::from(now() + 3600),
        random_nonce(),
    )
    .unwrap();
    let r = stack.envoy.send(
        &HttpRequest::new("POST", "/x402/token/weather")
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let minted: Value = r.json();
    let short = minted["access_token"].as_str().unwrap().to_string();
    let id = minted["settlement_id"].as_str().unwrap().to_string();
    assert_eq!(lifetime(&short), 5, "the unsettled lifetime");
    assert_eq!(minted["expires_in"], 5);
    assert_eq!(stack.envoy.send(&get_with(&short)).status, 200);

    // Pending (the settler runs without its worker): 409, with the state.
    let r = stack.envoy.send(&renew(&short));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"], "settlement_pending");
    assert_eq!(r.json()["state"], "pending");
    assert_eq!(r.json()["settlement_id"], id.as_str());
    // A bad token never reaches the settler.
    let r = stack.envoy.send(&renew("not-a-token"));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("invalid_token"))
    );

    // Settled: the renewal gives the route's normal lifetime, same claims.
    stack
        .settler
        .options_mut()
        .extra_args
        .retain(|a| a != "--no-worker");
    stack.settler.restart().await.unwrap();
    stack.wait_settled(&id, SETTLE_TIMEOUT).await.unwrap();

    // Wait for the short token to expire at the edge (bounded).
    let start = Instant::now();
    loop {
        let r = stack.envoy.send(&get_with(&short));
        if r.status == 402 {
            assert_eq!(r.json()["error"], "expired");
            break;
        }
        assert!(
            start.elapsed() < EXPIRY_TIMEOUT,
            "short token still accepted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Expired, but within the renewal grace: renewed.
    let r = stack.envoy.send(&renew(&short));
    assert_eq!(r.status, 200, "{}", r.text());
    let renewed: Value = r.json();
    let long = renewed["access_token"].as_str().unwrap().to_string();
    assert_eq!(lifetime(&long), 300, "the route's normal lifetime");
    assert_eq!(renewed["settlement_id"], id.as_str());
    let (a, b) = (claims_of(&short), claims_of(&long));
    for field in ["jti", "sub", "route", "amount", "asset", "network"] {
        assert_eq!(a[field], b[field], "{field}");
    }
    // It works, after the first one expired; the first one stays refused.
    let r = stack.envoy.send(&get_with(&long));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stack.envoy.send(&get_with(&short)).status, 402);
    // The renewed token has its full lifetime: it is not renewed again.
    let r = stack.envoy.send(&renew(&long));
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("invalid_token"))
    );
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        U256::from(WEATHER_PRICE),
        "paid once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_renews_its_short_token_instead_of_paying_again() {
    let stack = Stack::start_with_filter(StackOptions::default(), short_lived)
        .await
        .unwrap();
    let signer = stack.funded_payer(1).await.unwrap();
    let network = Network::eip155(stack.anvil.chain_id());
    let caps = Caps::default()
        .with_max("0.5")
        .unwrap()
        .allow_network(network)
        .allow_asset(stack.token)
        .asset_decimals(stack.token, 6);
    let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = steps.clone();
    let config = Config::new(signer, caps).on_step(move |s| s2.lock().unwrap().push(s.to_string()));
    let payer = Payer::new(config).unwrap();
    let url = format!("{}/api/weather", stack.base_url());

    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let receipt = r.paid.expect("the first call pays");
    assert_eq!(receipt.expires_in, 5);
    let id = receipt.settlement_id.expect("settlement id");
    stack.wait_settled(&id, SETTLE_TIMEOUT).await.unwrap();

    // Within 10 s of expiry (it lives 5 s): renewed, not paid again.
    let again = payer.get(&url).await.unwrap();
    let text = steps.lock().unwrap().join("\n");
    assert_eq!(again.status, 200, "{}\n{text}", again.text());
    assert!(again.paid.is_none(), "nothing paid again:\n{text}");
    assert!(text.contains("token renewed, expires in 300s"), "{text}");
    let cached = payer
        .cached_token(&url)
        .expect("the renewed token is cached");
    assert_eq!(lifetime(&cached.access_token), 300);
    assert_eq!(cached.renew_endpoint, None);
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        U256::from(WEATHER_PRICE),
        "paid once"
    );
}
