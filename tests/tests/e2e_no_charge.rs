//! End to end over real processes (anvil + test USDC, the settler binary, Envoy with the
//! filter, an upstream): an x402 v2 payment (`PAYMENT-SIGNATURE`) is charged only when the
//! upstream answered below 400 (the payment is held, then released or voided); a retry with
//! the same `payment-identifier` gets the same token and is paid once; both settlement
//! timings (`async`, `before_response`) with the official x402 Python client.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::{json, Value};
use x402_protocol::challenge::PaymentRequired;
use x402_protocol::settler_api::SettlementState;
use x402_testkit::envoy::{HttpRequest, HttpResponse};
use x402_testkit::paths;
use x402_testkit::stack::{Stack, StackOptions, REPORT_PRICE, WEATHER_PRICE};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const FUND: u64 = 5_000_000; // funded_payer(5): 5 USDC

fn decode_b64_json(header: &str) -> Value {
    serde_json::from_slice(&x402_protocol::b64::decode(header).expect("base64")).expect("JSON")
}

/// A signed `PAYMENT-SIGNATURE` for `path`, with `payment-identifier` `id` if given.
fn payment_header(stack: &Stack, payer: &PrivateKeySigner, path: &str, id: Option<&str>) -> String {
    let challenge = stack.envoy.get(path);
    assert_eq!(challenge.status, 402, "{}", challenge.text());
    let required: PaymentRequired = serde_json::from_value(decode_b64_json(
        challenge
            .header("payment-required")
            .expect("PAYMENT-REQUIRED"),
    ))
    .unwrap();
    let accepted = required
        .accepts
        .iter()
        .find(|a| a.scheme == "exact")
        .unwrap()
        .clone();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut payload = x402_client::sign::x402_v2_payment(
        payer,
        &accepted,
        Some(&required.resource),
        now + accepted.max_timeout_seconds,
        x402_client::sign::random_nonce(),
    )
    .unwrap();
    if let Some(id) = id {
        payload.extensions = json!({"payment-identifier": {"info": {"required": false, "id": id}}})
            .as_object()
            .cloned();
    }
    x402_client::sign::x402_v2_header(&payload)
}

fn pay(stack: &Stack, path: &str, header: &str, upstream_status: Option<u16>) -> HttpResponse {
    let mut req = HttpRequest::new("GET", path).header("payment-signature", header);
    if let Some(s) = upstream_status {
        req = req.header("x-test-upstream-status", &s.to_string());
    }
    stack.envoy.send(&req)
}

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

/// Upstream 500: the payment is voided, the response says so, the payer keeps the funds;
/// upstream 200 with the next payment: charged.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_error_is_not_charged_success_is() {
    let stack = Stack::start().await.unwrap();
    let payer = stack.funded_payer(5).await.unwrap();

    let failed = pay(
        &stack,
        "/api/weather",
        &payment_header(&stack, &payer, "/api/weather", None),
        Some(500),
    );
    assert_eq!(
        failed.status,
        500,
        "the upstream's answer: {}",
        failed.text()
    );
    assert_eq!(
        failed.header("x-x402-settlement"),
        Some("voided"),
        "{:?}\nenvoy:\n{}\nsettler:\n{}",
        failed.headers,
        stack.envoy.log_tail(8),
        stack.settler.log()
    );
    assert!(
        failed.header("x-x402-access-token").is_none(),
        "no token for a voided payment"
    );
    let receipt = decode_b64_json(failed.header("payment-response").expect("PAYMENT-RESPONSE"));
    assert_eq!(receipt["success"], false, "{receipt}");
    assert_eq!(receipt["errorReason"], "upstream_error_not_charged");
    let voided_id = failed
        .header("x-x402-settlement-id")
        .expect("settlement id")
        .to_string();
    assert_eq!(receipt["extra"]["settlementId"], voided_id.as_str());
    let s = stack.settlement(&voided_id).await.unwrap();
    assert_eq!(s.state, SettlementState::Failed, "{s:?}");
    assert!(s.transfer_tx.is_none(), "never broadcast: {s:?}");

    let ok = pay(
        &stack,
        "/api/weather",
        &payment_header(&stack, &payer, "/api/weather", None),
        None,
    );
    assert_eq!(
        ok.status,
        200,
        "{}\nsettler:\n{}",
        ok.text(),
        stack.settler.log()
    );
    assert!(ok.header("x-x402-access-token").is_some());
    assert_eq!(ok.header("x-x402-settlement"), None);
    let id = ok.header("x-x402-settlement-id").unwrap().to_string();
    stack.wait_settled(&id, SETTLE_TIMEOUT).await.unwrap();

    // Charged once: the voided payment never reached the chain even after the lane settled
    // the later one.
    wait_balance(&stack, stack.pay_to, U256::from(WEATHER_PRICE)).await;
    assert_eq!(
        stack.balance(payer.address()).await.unwrap(),
        U256::from(FUND - WEATHER_PRICE)
    );
    assert_eq!(
        stack.settlement(&voided_id).await.unwrap().state,
        SettlementState::Failed
    );
}

/// The same PAYMENT-SIGNATURE with the same `payment-identifier` after its settlement was
/// mined: the same token and the transaction; paid once.
#[tokio::test(flavor = "multi_thread")]
async fn retry_with_the_same_identifier_gets_the_same_token_paid_once() {
    let stack = Stack::start().await.unwrap();
    let payer = stack.funded_payer(5).await.unwrap();
    let header = payment_header(
        &stack,
        &payer,
        "/api/weather",
        Some("pay_e2e_retry_0123456789"),
    );

    let first = pay(&stack, "/api/weather", &header, None);
    assert_eq!(
        first.status,
        200,
        "{}\nsettler:\n{}",
        first.text(),
        stack.settler.log()
    );
    let token = first.header("x-x402-access-token").unwrap().to_string();
    let id = first.header("x-x402-settlement-id").unwrap().to_string();
    let settled = stack.wait_settled(&id, SETTLE_TIMEOUT).await.unwrap();

    let again = pay(&stack, "/api/weather", &header, None);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.header("x-x402-access-token"), Some(token.as_str()));
    assert_eq!(again.header("x-x402-settlement-id"), Some(id.as_str()));
    let receipt = decode_b64_json(again.header("payment-response").unwrap());
    assert_eq!(
        receipt["transaction"].as_str(),
        settled.transfer_tx.as_deref(),
        "{receipt}"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        U256::from(WEATHER_PRICE),
        "paid once"
    );
    assert_eq!(
        stack.balance(payer.address()).await.unwrap(),
        U256::from(FUND - WEATHER_PRICE)
    );
}

/// Runs the official x402 v2 Python client against `path`; its JSON line.
fn python_pay(stack: &Stack, payer: &PrivateKeySigner, path: &str, extra: &[&str]) -> Value {
    let out = Command::new(paths::python_bin())
        .arg(paths::root().join("tests/python/x402_v2_pay.py"))
        .args(["--url", &format!("{}{path}", stack.base_url())])
        .args(["--asset", &stack.token.to_checksum(None)])
        .args(["--network", &stack.anvil.network().to_string()])
        .args(["--max-amount", "500000"])
        .args(extra)
        .env(
            "X402_V2_PRIVATE_KEY",
            format!("0x{}", alloy::hex::encode(payer.to_bytes())),
        )
        .env("X402_V2_PAY_TRACEBACK", "1")
        .output()
        .expect("run tests/python/x402_v2_pay.py (make setup installs tools/.venv with x402)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!(
            "x402 v2 client printed no JSON line:\n{stdout}\n{}\nsettler:\n{}",
            String::from_utf8_lossy(&out.stderr),
            stack.settler.log()
        )
    })
}

/// The official client on a `before_response` route (the receipt carries the mined
/// transaction) and on an `async` one (the receipt carries the settlement id to follow);
/// its upstream failing is not charged.
#[tokio::test(flavor = "multi_thread")]
async fn official_python_client_with_both_settlement_timings() {
    let stack = Stack::start_with_filter(StackOptions::default(), |cfg| {
        cfg["routes"][0]["settlement"] = json!("before_response");
    })
    .await
    .unwrap();
    let payer = stack.funded_payer(5).await.unwrap();

    // before_response: mined before the upstream is called.
    let line = python_pay(&stack, &payer, "/api/weather", &[]);
    assert_eq!(
        line["status"],
        200,
        "{line}\nsettler:\n{}",
        stack.settler.log()
    );
    let receipt = &line["payment_response"];
    assert_eq!(receipt["success"], true, "{line}");
    assert_eq!(receipt["extra"]["settlement"], "settled", "{line}");
    let tx = receipt["transaction"].as_str().unwrap_or("");
    assert!(tx.starts_with("0x") && tx.len() == 66, "{line}");
    assert_eq!(line["payment_response_sdk_ok"], true, "{line}");
    let id = receipt["extra"]["settlementId"].as_str().unwrap();
    let s = stack.settlement(id).await.unwrap();
    assert_eq!(s.state, SettlementState::Settled);
    assert_eq!(s.transfer_tx.as_deref(), Some(tx));
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        U256::from(WEATHER_PRICE),
        "settled when the answer came"
    );

    // async: answered at once, the settlement id to follow.
    let line = python_pay(&stack, &payer, "/api/report", &[]);
    assert_eq!(
        line["status"],
        200,
        "{line}\nsettler:\n{}",
        stack.settler.log()
    );
    let receipt = &line["payment_response"];
    assert_eq!(receipt["success"], true, "{line}");
    assert_eq!(receipt["transaction"], "", "{line}");
    assert_eq!(line["payment_response_sdk_ok"], true, "{line}");
    let id = receipt["extra"]["settlementId"]
        .as_str()
        .unwrap()
        .to_string();
    stack.wait_settled(&id, SETTLE_TIMEOUT).await.unwrap();

    // async, upstream failing: not charged.
    let line = python_pay(
        &stack,
        &payer,
        "/api/report",
        &["--header", "x-test-upstream-status:503"],
    );
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["payment_response"]["success"], false, "{line}");
    assert_eq!(
        line["payment_response"]["extra"]["settlement"], "voided",
        "{line}"
    );

    wait_balance(
        &stack,
        stack.pay_to,
        U256::from(WEATHER_PRICE + REPORT_PRICE),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stack.balance(payer.address()).await.unwrap(),
        U256::from(FUND - WEATHER_PRICE - REPORT_PRICE)
    );
}
