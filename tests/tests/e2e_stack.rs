//! End to end over real processes: anvil + test USDC, the settler binary, Envoy with the
//! filter, an upstream. Payments come from real clients: the seed SDK's own Python client and
//! our `x402-client` library.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use serde_json::Value;
use x402_testkit::envoy::HttpRequest;
use x402_testkit::paths;
use x402_testkit::stack::{Stack, WEATHER_PRICE};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The seed SDK (x402-mock 0.3.x, from PyPI, unchanged) pays a priced route through our
/// Envoy with ERC-3009; the funds arrive at pay_to.
#[tokio::test(flavor = "multi_thread")]
async fn seed_sdk_client_pays_through_envoy() {
    let stack = Stack::start().await.unwrap();
    let payer = stack.funded_payer(5).await.unwrap();
    let before = stack.balance(stack.pay_to).await.unwrap();

    let out = Command::new(paths::python_bin())
        .arg(paths::root().join("tests/python/seed_pay.py"))
        .args(["--url", &format!("{}/api/weather", stack.base_url())])
        .args(["--rpc-url", &stack.anvil.rpc_url()])
        .args(["--token", &stack.token.to_checksum(None)])
        .args(["--amount", "0.5"])
        .env(
            "X402_SEED_PRIVATE_KEY",
            format!("0x{}", alloy::hex::encode(payer.to_bytes())),
        )
        .env_remove("EVM_PRIVATE_KEY")
        .output()
        .expect("run tests/python/seed_pay.py (make setup installs tools/.venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "seed client failed:\n{stdout}\n{}\nenvoy:\n{}\nsettler:\n{}",
        String::from_utf8_lossy(&out.stderr),
        stack.envoy.log_tail(30),
        stack.settler.log()
    );
    let line: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line");
    assert_eq!(line["status"], 200);
    assert_eq!(line["token_requests"], 1);
    // The upstream saw the paid request.
    assert!(stack
        .upstream
        .requests()
        .iter()
        .any(|r| r.path.starts_with("/api/weather")));

    // Settlement: the x402 access token's jti is the settlement id; follow it through the
    // settler's list of this payer's settlements by waiting on the balance instead.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let after = stack.balance(stack.pay_to).await.unwrap();
        if after == before + U256::from(WEATHER_PRICE) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pay_to never received the payment: {before} -> {after}\n{}",
            stack.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        stack.balance(payer.address()).await.unwrap(),
        U256::from(5_000_000u64 - WEATHER_PRICE)
    );
}

/// Settler down: the token endpoint answers 503 with a JSON error at once (fail closed, no
/// hang); settler back: the same endpoint reaches it again.
#[tokio::test(flavor = "multi_thread")]
async fn settler_outage_is_503_and_recovers() {
    let mut stack = Stack::start().await.unwrap();
    let post = || {
        HttpRequest::new("POST", "/x402/token/weather")
            .header("content-type", "application/json")
            .body(br#"{"version":"Version 0.1","permit":{}}"#.to_vec())
    };

    stack.settler.kill9();
    let started = Instant::now();
    let r = stack.envoy.send(&post());
    assert_eq!(r.status, 503, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "settler_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "answered within the callout timeout"
    );

    stack.settler.restart().await.unwrap();
    let r = stack.envoy.send(&post());
    // The settler itself now answers: the payment is malformed, 400 naming the field.
    assert_eq!(r.status, 400, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "invalid_payment", "{v}");
}

// ---- our client library (x402-client) against the real stack -------------------------------

use alloy::signers::local::PrivateKeySigner;
use x402_client::caps::Caps;
use x402_client::pay::{Config, Payer};
use x402_protocol::{Network, Scheme};
use x402_testkit::stack::{REPORT_PRICE, WEATHER};

fn payer_for(stack: &Stack, signer: PrivateKeySigner, schemes: Vec<Scheme>) -> Payer {
    let network = Network::eip155(stack.anvil.chain_id());
    let caps = Caps::default()
        .with_max("0.5")
        .unwrap()
        .allow_network(network)
        .allow_asset(stack.token)
        .asset_decimals(stack.token, 6)
        .schemes(schemes);
    Payer::new(Config::new(signer, caps).with_rpc(network, stack.anvil.rpc_url())).unwrap()
}

async fn pay_and_settle(scheme: Scheme) {
    let stack = Stack::start().await.unwrap();
    let signer = stack.funded_payer(1).await.unwrap();
    let payer_addr = signer.address();
    let payer = payer_for(&stack, signer, vec![scheme]);
    let url = format!("{}/api/weather", stack.base_url());

    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let receipt = r.paid.expect("this call paid");
    assert_eq!(receipt.scheme, scheme);
    assert_eq!(receipt.amount, U256::from(WEATHER_PRICE));
    assert_eq!(receipt.route.as_deref(), Some(WEATHER));
    // The API saw who paid (identity headers set by the filter).
    let seen = stack.upstream.requests();
    let last = seen.last().expect("upstream reached");
    assert_eq!(
        last.header("x-x402-payer").map(str::to_lowercase),
        Some(payer_addr.to_checksum(None).to_lowercase())
    );

    // A second call uses the cached token: nothing is paid, the upstream answers.
    let again = payer.get(&url).await.unwrap();
    assert_eq!(again.status, 200);
    assert!(again.paid.is_none() && again.token_used);

    let id = receipt.settlement_id.expect("settlement id");
    let s = stack.wait_settled(&id, SETTLE_TIMEOUT).await.unwrap();
    assert!(s.transfer_tx.is_some());
    if scheme == Scheme::Permit {
        assert!(
            s.permit_tx.is_some(),
            "EIP-2612 settles with permit() then transferFrom()"
        );
    }
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        U256::from(WEATHER_PRICE),
        "funds arrived at pay_to"
    );
    assert_eq!(
        stack.balance(payer_addr).await.unwrap(),
        U256::from(1_000_000 - WEATHER_PRICE)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn eip2612_permit_flow_settles_to_pay_to() {
    pay_and_settle(Scheme::Permit).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn erc3009_flow_settles_to_pay_to() {
    pay_and_settle(Scheme::Exact).await;
}

/// A token bought for route A does not open route B; B must be paid for itself.
#[tokio::test(flavor = "multi_thread")]
async fn token_for_one_route_is_refused_on_another() {
    let stack = Stack::start().await.unwrap();
    let signer = stack.funded_payer(1).await.unwrap();
    let payer = payer_for(&stack, signer, vec![Scheme::Exact]);
    let weather = payer
        .get(&format!("{}/api/weather", stack.base_url()))
        .await
        .unwrap();
    assert_eq!(weather.status, 200);
    let token = payer
        .cached_token(&format!("{}/api/weather", stack.base_url()))
        .expect("cached")
        .access_token;

    let r = stack.envoy.send(
        &HttpRequest::new("GET", "/api/report").header("authorization", &format!("Bearer {token}")),
    );
    assert_eq!(r.status, 402, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["reason"], "Token was issued for another route");

    // Paying for the report route itself works (a different, higher price).
    let report = payer
        .get(&format!("{}/api/report", stack.base_url()))
        .await
        .unwrap();
    assert_eq!(report.status, 200, "{}", report.text());
    assert_eq!(report.paid.unwrap().amount, U256::from(REPORT_PRICE));
}

/// The same signed payment POSTed twice to the token endpoint yields one token only.
#[tokio::test(flavor = "multi_thread")]
async fn replayed_token_request_never_mints_twice() {
    let stack = Stack::start().await.unwrap();
    let signer = stack.funded_payer(1).await.unwrap();
    let from = signer.address();
    let domain =
        x402_client::sign::TokenDomain::new("USDC", "2", stack.anvil.chain_id(), stack.token);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = x402_client::sign::sign_authorization(
        &signer,
        &domain,
        from,
        stack.pay_to,
        U256::from(WEATHER_PRICE),
        U256::ZERO,
        U256::from(now + 600),
        x402_client::sign::random_nonce(),
    )
    .unwrap();
    let post = || {
        HttpRequest::new("POST", "/x402/token/weather")
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes())
    };

    let first = stack.envoy.send(&post());
    assert_eq!(first.status, 200, "{}", first.text());
    // The same payment again: the same token while its settlement is not broadcast yet,
    // else 409 naming the settlement.
    let second = stack.envoy.send(&post());
    let v: Value = serde_json::from_slice(&second.body).unwrap();
    let f: Value = serde_json::from_slice(&first.body).unwrap();
    match second.status {
        200 => assert_eq!(v["access_token"], f["access_token"], "{v}"),
        409 => {
            assert_eq!(v["error"], "payment_already_used");
            assert_eq!(v["settlement_id"], f["settlement_id"]);
            assert!(v.get("access_token").is_none());
        }
        st => panic!("same payment again: {st} {v}"),
    }

    let id = serde_json::from_slice::<Value>(&first.body).unwrap()["settlement_id"]
        .as_str()
        .unwrap()
        .to_string();
    stack.wait_settled(&id, SETTLE_TIMEOUT).await.unwrap();
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        U256::from(WEATHER_PRICE),
        "paid once"
    );
}

/// 20 payers at once through Envoy: all get their response, all payments settle.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_payers_are_served_and_settled() {
    let stack = Stack::start().await.unwrap();
    let mut signers = Vec::new();
    for _ in 0..20 {
        signers.push(stack.funded_payer(1).await.unwrap());
    }
    let url = format!("{}/api/weather", stack.base_url());
    let mut tasks = Vec::new();
    for (i, signer) in signers.into_iter().enumerate() {
        // Half pay by permit, half by ERC-3009.
        let scheme = if i % 2 == 0 {
            Scheme::Permit
        } else {
            Scheme::Exact
        };
        let payer = payer_for(&stack, signer, vec![scheme]);
        let url = url.clone();
        tasks.push(tokio::spawn(async move { payer.get(&url).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        ids.push(r.paid.unwrap().settlement_id.unwrap());
    }
    for id in &ids {
        stack.wait_settled(id, SETTLE_TIMEOUT).await.unwrap();
    }
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        U256::from(20 * WEATHER_PRICE)
    );
}
