//! The discovery document (`GET /.well-known/x402`) through the real Envoy with the real
//! filter: what an agent reads there is what the 402 says, and is enough to pay.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloy::primitives::{Address, U256};
use serde_json::{json, Value};
use x402_client::sign::{random_nonce, sign_authorization, TokenDomain};
use x402_testkit::envoy::HttpRequest;
use x402_testkit::stack::{Stack, StackOptions, WEATHER_PRICE};

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_discovers_the_prices_and_pays_from_the_document_alone() {
    let stack = Stack::start().await.unwrap();

    let r = stack.envoy.get("/.well-known/x402");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    let doc = r.json();
    assert_eq!(doc["x402Version"], 2);
    let routes = doc["routes"].as_array().unwrap();
    assert_eq!(
        routes.iter().map(|r| r["name"].clone()).collect::<Vec<_>>(),
        [json!("weather"), json!("report")]
    );
    let weather = &routes[0];
    assert_eq!(weather["match"], json!({"prefix": "/api/weather"}));
    assert_eq!(weather["methods"], json!(["GET", "HEAD"]));
    assert_eq!(weather["description"], "Weather report");
    assert_eq!(weather["price"], "0.01");
    let token = stack.token.to_checksum(None);
    let methods = weather["payment_methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2);
    for m in methods {
        assert_eq!(m["network"], stack.anvil.network().to_string());
        assert_eq!(m["asset"]["address"], token);
        assert_eq!(m["asset"]["symbol"], "USDC");
        assert_eq!(m["asset"]["decimals"], 6);
        assert_eq!(m["pay_to"], stack.pay_to.to_checksum(None));
        assert_eq!(
            (m["price"].clone(), m["amount"].clone()),
            (json!("0.01"), json!("10000"))
        );
    }
    assert_eq!(methods[1]["spender"], stack.spender.to_checksum(None));
    assert_eq!(routes[1]["price"], "0.25");
    assert_eq!(routes[1]["payment_methods"][0]["amount"], "250000");

    // The accepts are the route's PAYMENT-REQUIRED accepts.
    let challenge = stack.envoy.get("/api/weather");
    assert_eq!(challenge.status, 402);
    let pr: Value = serde_json::from_slice(
        &x402_protocol::b64::decode(challenge.header("payment-required").unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(weather["x402Version"], 2);
    assert_eq!(weather["accepts"], pr["accepts"]);

    // HEAD gets the same headers; other methods 405; never forwarded upstream.
    let head = stack
        .envoy
        .send(&HttpRequest::new("HEAD", "/.well-known/x402"));
    assert_eq!(head.status, 200);
    assert_eq!(head.header("cache-control"), Some("public, max-age=60"));
    let post = stack
        .envoy
        .send(&HttpRequest::new("POST", "/.well-known/x402").body(b"{}".to_vec()));
    assert_eq!(post.status, 405, "{}", post.text());
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert!(!stack
        .upstream
        .requests()
        .iter()
        .any(|q| q.path.starts_with("/.well-known")));

    // Paying from the document alone: an ERC-3009 authorization of `amount` to `pay_to`,
    // posted to `token_endpoint`, buys a token the route accepts.
    let exact = &methods[0];
    assert_eq!(exact["scheme"], "exact");
    let signer = stack.funded_payer(1).await.unwrap();
    let asset: Address = exact["asset"]["address"].as_str().unwrap().parse().unwrap();
    let domain = TokenDomain::new(
        exact["asset"]["name"].as_str().unwrap(),
        exact["asset"]["version"].as_str().unwrap(),
        stack.anvil.chain_id(),
        asset,
    );
    let now = stack.anvil.timestamp().await.unwrap();
    let body = sign_authorization(
        &signer,
        &domain,
        signer.address(),
        exact["pay_to"].as_str().unwrap().parse().unwrap(),
        exact["amount"].as_str().unwrap().parse().unwrap(),
        U256::ZERO,
        U256::from(now + 600),
        random_nonce(),
    )
    .unwrap();
    let r = stack.envoy.send(
        &HttpRequest::new("POST", weather["token_endpoint"].as_str().unwrap())
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes()),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), stack.settler.log());
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let paid = stack.envoy.send(
        &HttpRequest::new("GET", "/api/weather")
            .header("authorization", &format!("Bearer {access}")),
    );
    assert_eq!(paid.status, 200, "{}", paid.text());
    let id = r.json()["settlement_id"].as_str().unwrap().to_string();
    stack
        .wait_settled(&id, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        U256::from(WEATHER_PRICE)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_discovery_path_moves_or_turns_off() {
    let stack = Stack::start_with_filter(StackOptions::default(), |c| {
        c["discovery"] = json!({"path": "/pricing.json"});
    })
    .await
    .unwrap();
    let r = stack.envoy.get("/pricing.json");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["routes"][0]["name"], "weather");
    // The default path is the upstream's again (unpriced, forwarded).
    let r = stack.envoy.get("/.well-known/x402");
    assert_ne!(r.header("cache-control"), Some("public, max-age=60"));
    assert!(stack
        .upstream
        .requests()
        .iter()
        .any(|q| q.path == "/.well-known/x402"));
    drop(stack);

    let stack = Stack::start_with_filter(StackOptions::default(), |c| {
        c["discovery"] = json!({"enabled": false});
    })
    .await
    .unwrap();
    let _ = stack.envoy.get("/.well-known/x402");
    assert!(stack
        .upstream
        .requests()
        .iter()
        .any(|q| q.path == "/.well-known/x402"));
}
