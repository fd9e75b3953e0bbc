//! x402 v2 end to end over real processes (anvil + test USDC, the settler binary, Envoy with the
//! filter, an upstream): a 402 with `PAYMENT-REQUIRED`, a retry with `PAYMENT-SIGNATURE`, the
//! answer with `PAYMENT-RESPONSE`, the funds at pay_to. Payments come from the official x402 v2
//! Python client (PyPI `x402`, unchanged) and from our `x402-client` signer.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, U256};
use serde_json::Value;
use x402_protocol::challenge::PaymentRequired;
use x402_testkit::envoy::{HttpRequest, HttpResponse};
use x402_testkit::paths;
use x402_testkit::stack::{Stack, WEATHER_PRICE};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until `who` holds exactly `expected` of the test USDC.
async fn wait_balance(stack: &Stack, who: Address, expected: U256) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let now = stack.balance(who).await.unwrap();
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "balance of {who} is {now}, expected {expected}\nsettler:\n{}",
            stack.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn decode_b64_json(header: &str) -> Value {
    let bytes = x402_protocol::b64::decode(header).expect("standard base64");
    serde_json::from_slice(&bytes).expect("base64 of JSON")
}

fn same_address(a: &Value, b: Address) -> bool {
    a.as_str().map(str::to_lowercase) == Some(b.to_checksum(None).to_lowercase())
}

/// The official x402 v2 Python client (PyPI `x402` 2.x, httpx transport, `ExactEvmScheme`)
/// pays the weather route through Envoy; the settler settles it on chain to pay_to.
#[tokio::test(flavor = "multi_thread")]
async fn official_x402_v2_python_client_pays_through_envoy() {
    let stack = Stack::start().await.unwrap();
    let payer = stack.funded_payer(5).await.unwrap();
    let before = stack.balance(stack.pay_to).await.unwrap();

    let out = Command::new(paths::python_bin())
        .arg(paths::root().join("tests/python/x402_v2_pay.py"))
        .args(["--url", &format!("{}/api/weather", stack.base_url())])
        .args(["--asset", &stack.token.to_checksum(None)])
        .args(["--network", &stack.anvil.network().to_string()])
        .args(["--max-amount", "500000"])
        .env(
            "X402_V2_PRIVATE_KEY",
            format!("0x{}", alloy::hex::encode(payer.to_bytes())),
        )
        .env("X402_V2_PAY_TRACEBACK", "1")
        .output()
        .expect("run tests/python/x402_v2_pay.py (make setup installs tools/.venv with x402)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "x402 v2 client failed:\n{stdout}\n{}\nenvoy:\n{}\nsettler:\n{}",
        String::from_utf8_lossy(&out.stderr),
        stack.envoy.log_tail(30),
        stack.settler.log()
    );
    let line: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line");
    eprintln!("x402_v2_pay.py: {line}");
    assert_eq!(line["status"], 200, "{line}");

    // Two requests: the unpaid one (402), the retry with PAYMENT-SIGNATURE (200).
    let reqs = line["requests"].as_array().expect("requests");
    assert_eq!(reqs.len(), 2, "{line}");
    assert_eq!(reqs[0]["status"], 402);
    assert_eq!(reqs[0]["payment_signature"], false);
    assert_eq!(reqs[1]["status"], 200);
    assert_eq!(reqs[1]["payment_signature"], true);
    // It paid the route's price in our asset, to pay_to.
    let accepted = &line["accepted"];
    assert_eq!(accepted["scheme"], "exact");
    assert_eq!(accepted["amount"], WEATHER_PRICE.to_string());
    assert!(same_address(&accepted["payTo"], stack.pay_to), "{accepted}");
    assert!(same_address(&accepted["asset"], stack.token), "{accepted}");

    // PAYMENT-RESPONSE: success, by this payer; the SDK's own parser accepts it.
    let receipt = &line["payment_response"];
    assert_eq!(receipt["success"], true, "{line}");
    assert!(
        same_address(&receipt["payer"], payer.address()),
        "{receipt}"
    );
    assert_eq!(receipt["network"], stack.anvil.network().to_string());
    assert_eq!(line["payment_response_sdk_ok"], true, "{line}");

    // The upstream saw the paid request, with the payer named by the filter.
    let seen = stack.upstream.requests();
    let paid = seen
        .iter()
        .find(|r| r.path.starts_with("/api/weather"))
        .expect("upstream reached");
    assert_eq!(
        paid.header("x-x402-payer").map(str::to_lowercase),
        Some(payer.address().to_checksum(None).to_lowercase())
    );

    wait_balance(&stack, stack.pay_to, before + U256::from(WEATHER_PRICE)).await;
    assert_eq!(
        stack.balance(payer.address()).await.unwrap(),
        U256::from(5_000_000u64 - WEATHER_PRICE)
    );
}

/// The v2 flow from Rust (`x402_client::sign::x402_v2_payment`): one signed `PAYMENT-SIGNATURE`
/// opens the route once; the very same header replayed gets a 402 with the settler's error,
/// and pay_to is paid once.
#[tokio::test(flavor = "multi_thread")]
async fn x402_v2_payment_signature_is_single_use() {
    let stack = Stack::start().await.unwrap();
    let payer = stack.funded_payer(5).await.unwrap();
    let before = stack.balance(stack.pay_to).await.unwrap();

    // The challenge, as a v2 client reads it.
    let challenge = stack.envoy.get("/api/weather");
    assert_eq!(challenge.status, 402, "{}", challenge.text());
    let required: PaymentRequired = serde_json::from_value(decode_b64_json(
        challenge
            .header("payment-required")
            .expect("PAYMENT-REQUIRED header"),
    ))
    .unwrap();
    assert_eq!(required.x402_version, 2);
    let accepted = required
        .accepts
        .iter()
        .find(|a| a.scheme == "exact")
        .expect("an exact accept")
        .clone();
    assert_eq!(accepted.network, stack.anvil.network().to_string());
    assert_eq!(accepted.amount, WEATHER_PRICE.to_string());

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let payload = x402_client::sign::x402_v2_payment(
        &payer,
        &accepted,
        Some(&required.resource),
        now + accepted.max_timeout_seconds,
        x402_client::sign::random_nonce(),
    )
    .unwrap();
    let header = x402_client::sign::x402_v2_header(&payload);
    let pay = || HttpRequest::new("GET", "/api/weather").header("payment-signature", &header);

    let first = stack.envoy.send(&pay());
    assert_eq!(
        first.status,
        200,
        "{}\nsettler:\n{}",
        first.text(),
        stack.settler.log()
    );
    let receipt = decode_b64_json(
        first
            .header("payment-response")
            .expect("PAYMENT-RESPONSE header"),
    );
    assert_eq!(receipt["success"], true, "{receipt}");
    assert!(
        same_address(&receipt["payer"], payer.address()),
        "{receipt}"
    );
    let upstream_hits = || {
        stack
            .upstream
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/api/weather"))
            .count()
    };
    assert_eq!(upstream_hits(), 1);
    let seen = stack.upstream.requests();
    let paid = seen
        .iter()
        .find(|r| r.path.starts_with("/api/weather"))
        .unwrap();
    assert_eq!(
        paid.header("x-x402-payer").map(str::to_lowercase),
        Some(payer.address().to_checksum(None).to_lowercase())
    );
    // The spent payment is not passed on to the API; the payer is, checksummed.
    assert!(
        paid.header("payment-signature").is_none(),
        "the signed payment stays at the edge"
    );
    assert_eq!(receipt["payer"], payer.address().to_checksum(None));
    // The client can follow the asynchronous settlement.
    let id = first
        .header("x-x402-settlement-id")
        .expect("x-x402-settlement-id header")
        .to_string();
    let settled = stack
        .wait_settled(&id, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(settled.transfer_tx.is_some());

    // The same header again: no second paid pass.
    let second: HttpResponse = stack.envoy.send(&pay());
    assert_eq!(second.status, 402, "{}", second.text());
    assert!(
        second.header("payment-response").is_none(),
        "a replay carries no receipt"
    );
    let body = second.json();
    assert_eq!(body["error"], "payment_already_used", "{body}");
    let again = decode_b64_json(
        second
            .header("payment-required")
            .expect("a replay is answered with a new challenge"),
    );
    assert_eq!(again["x402Version"], 2);
    assert_eq!(
        upstream_hits(),
        1,
        "the upstream was not reached by the replay"
    );

    wait_balance(&stack, stack.pay_to, before + U256::from(WEATHER_PRICE)).await;
    // Still one payment after the replay had every chance to settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        before + U256::from(WEATHER_PRICE),
        "paid once"
    );
    assert_eq!(
        stack.balance(payer.address()).await.unwrap(),
        U256::from(5_000_000u64 - WEATHER_PRICE)
    );
}
