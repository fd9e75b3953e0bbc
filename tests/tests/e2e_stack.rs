//! End to end over real processes: anvil + test USDC, the settler binary, Envoy with the
//! filter, an upstream. Payments come from real clients: the seed SDK's own Python client and
//! our `x402-client` library.

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
        .env("X402_SEED_PRIVATE_KEY", format!("0x{}", alloy::hex::encode(payer.to_bytes())))
        .env_remove("EVM_PRIVATE_KEY")
        .output()
        .expect("run tests/python/seed_pay.py (make setup installs tools/.venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "seed client failed:\n{stdout}\n{}\nenvoy:\n{}\nsettler:\n{}", String::from_utf8_lossy(&out.stderr), stack.envoy.log_tail(30), stack.settler.log());
    let line: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line");
    assert_eq!(line["status"], 200);
    assert_eq!(line["token_requests"], 1);
    // The upstream saw the paid request.
    assert!(stack.upstream.requests().iter().any(|r| r.path.starts_with("/api/weather")));

    // Settlement: the x402 access token's jti is the settlement id; follow it through the
    // settler's list of this payer's settlements by waiting on the balance instead.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let after = stack.balance(stack.pay_to).await.unwrap();
        if after == before + U256::from(WEATHER_PRICE) {
            break;
        }
        assert!(Instant::now() < deadline, "pay_to never received the payment: {before} -> {after}\n{}", stack.settler.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stack.balance(payer.address()).await.unwrap(), U256::from(5_000_000u64 - WEATHER_PRICE));
}

/// Settler down: the token endpoint answers 503 with a JSON error at once (fail closed, no
/// hang); settler back: the same endpoint reaches it again.
#[tokio::test(flavor = "multi_thread")]
async fn settler_outage_is_503_and_recovers() {
    let mut stack = Stack::start().await.unwrap();
    let post = || HttpRequest::new("POST", "/x402/token/weather").header("content-type", "application/json").body(br#"{"version":"Version 0.1","permit":{}}"#.to_vec());

    stack.settler.kill9();
    let started = Instant::now();
    let r = stack.envoy.send(&post());
    assert_eq!(r.status, 503, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "settler_unavailable");
    assert!(started.elapsed() < Duration::from_secs(6), "answered within the callout timeout");

    stack.settler.restart().await.unwrap();
    let r = stack.envoy.send(&post());
    // The settler itself now answers: the payment is malformed, 400 naming the field.
    assert_eq!(r.status, 400, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["error"], "invalid_payment", "{v}");
}
