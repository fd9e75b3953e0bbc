//! The official x402 TypeScript client, `@x402/fetch` 2.27 with `@x402/evm`'s `ExactEvmScheme`
//! over a viem local account, unchanged, under Node (`tests/node/pay.mjs`), paying through the
//! real stack (anvil + test USDC, the settler binary, Envoy with the filter, an upstream): the
//! 402's `PAYMENT-REQUIRED`, a retry with `PAYMENT-SIGNATURE`, the upstream's 200 with
//! `PAYMENT-RESPONSE`, the price moved on chain once. Without the token listed in its
//! `spendControls.allowedAssets` the client refuses to pay (as the README says), and nothing
//! is signed or spent.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::Value;
use x402_protocol::settler_api::SettlementState;
use x402_testkit::paths;
use x402_testkit::stack::{Stack, WEATHER_PRICE};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const FUNDS: u64 = 5_000_000; // 5 USDC, what `funded_payer(5)` mints

/// Runs `node tests/node/pay.mjs` against the weather route; `allow` lists our token in the
/// client's spend controls (cap 0.5 USDC). Returns the exit status and its JSON line.
fn pay_with_node(stack: &Stack, payer: &PrivateKeySigner, allow: bool) -> (Output, Value) {
    let mut cmd = Command::new(paths::node_bin());
    cmd.arg(paths::root().join("tests/node/pay.mjs"))
        .args(["--url", &format!("{}/api/weather", stack.base_url())])
        .args(["--network", &stack.anvil.network().to_string()])
        .env(
            "X402_NODE_PRIVATE_KEY",
            format!("0x{}", alloy::hex::encode(payer.to_bytes())),
        );
    if allow {
        cmd.args(["--asset", &stack.token.to_checksum(None)])
            .args(["--max-amount", "500000"]);
    }
    let out = cmd.output().expect(
        "run node tests/node/pay.mjs (make setup installs @x402/fetch in tools/node_modules)",
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
            panic!(
                "pay.mjs printed no JSON line ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("pay.mjs: {line}");
    (out, line)
}

fn same_address(a: &Value, b: Address) -> bool {
    a.as_str().map(str::to_lowercase) == Some(b.to_checksum(None).to_lowercase())
}

fn weather_hits(stack: &Stack) -> usize {
    stack
        .upstream
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/weather"))
        .count()
}

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

/// With our token in `spendControls.allowedAssets`, @x402/fetch pays the route's price over
/// `PAYMENT-SIGNATURE`; the upstream answers, the settlement is recorded and settled, and the
/// payer's balance moves by exactly the price.
#[tokio::test(flavor = "multi_thread")]
async fn x402_fetch_under_node_pays_through_envoy() {
    let stack = Stack::start().await.unwrap();
    let payer = stack.funded_payer(5).await.unwrap();
    let before = stack.balance(stack.pay_to).await.unwrap();

    let (out, line) = pay_with_node(&stack, &payer, true);
    assert!(
        out.status.success(),
        "@x402/fetch failed: {line}\n{}\nenvoy:\n{}\nsettler:\n{}",
        String::from_utf8_lossy(&out.stderr),
        stack.envoy.log_tail(30),
        stack.settler.log()
    );
    assert_eq!(line["status"], 200, "{line}");

    // The unpaid request (402), then the retry with PAYMENT-SIGNATURE (200): nothing else.
    let reqs = line["requests"].as_array().expect("requests");
    assert_eq!(reqs.len(), 2, "{line}");
    assert_eq!(reqs[0]["status"], 402);
    assert_eq!(reqs[0]["payment_signature"], false);
    assert_eq!(reqs[1]["status"], 200);
    assert_eq!(reqs[1]["payment_signature"], true);

    // It paid the route's price, in our token, to pay_to, with ERC-3009 (`exact`).
    let accepted = &line["accepted"];
    assert_eq!(accepted["scheme"], "exact", "{accepted}");
    assert_eq!(accepted["network"], stack.anvil.network().to_string());
    assert_eq!(accepted["amount"], WEATHER_PRICE.to_string());
    assert!(same_address(&accepted["payTo"], stack.pay_to), "{accepted}");
    assert!(same_address(&accepted["asset"], stack.token), "{accepted}");

    // PAYMENT-RESPONSE, as the package's own decoder reads it: success, by this payer.
    let receipt = &line["payment_response"];
    assert_eq!(receipt["success"], true, "{line}");
    assert!(
        same_address(&receipt["payer"], payer.address()),
        "{receipt}"
    );
    assert_eq!(receipt["network"], stack.anvil.network().to_string());
    assert_eq!(line["access_token"], true, "x-x402-access-token: {line}");

    // The body is the upstream's, reached once, with the payer named by the filter.
    let body: Value = serde_json::from_str(line["body"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("the upstream's JSON echo expected ({e}): {line}"));
    assert_eq!(body["path"], "/api/weather", "{body}");
    assert_eq!(weather_hits(&stack), 1);
    let seen = stack.upstream.requests();
    let paid = seen
        .iter()
        .find(|r| r.path.starts_with("/api/weather"))
        .unwrap();
    assert_eq!(
        paid.header("x-x402-payer").map(str::to_lowercase),
        Some(payer.address().to_checksum(None).to_lowercase())
    );
    assert!(paid.header("payment-signature").is_none());

    // The settlement is recorded under the id the filter answered, and settles on chain.
    let id = line["settlement_id"]
        .as_str()
        .expect("x-x402-settlement-id header")
        .to_string();
    let settled = stack.wait_settled(&id, SETTLE_TIMEOUT).await.unwrap();
    assert_eq!(settled.state, SettlementState::Settled);
    assert!(settled.transfer_tx.is_some(), "{settled:?}");

    wait_balance(&stack, stack.pay_to, before + U256::from(WEATHER_PRICE)).await;
    assert_eq!(
        stack.balance(payer.address()).await.unwrap(),
        U256::from(FUNDS - WEATHER_PRICE),
        "the payer paid exactly the price"
    );
}

/// Without our token in `spendControls.allowedAssets`, @x402/fetch refuses the 402 itself
/// (`@x402/core`'s default spend controls only allow the assets of its built-in table): it
/// signs nothing and sends no payment, the upstream is not reached, and no funds move.
#[tokio::test(flavor = "multi_thread")]
async fn x402_fetch_refuses_a_token_not_in_allowed_assets() {
    let stack = Stack::start().await.unwrap();
    let payer = stack.funded_payer(5).await.unwrap();

    let (out, line) = pay_with_node(&stack, &payer, false);
    assert!(!out.status.success(), "{line}");
    let error = line["error"].as_str().unwrap_or("");
    assert!(
        error.contains("spendControls") && error.contains("allowedAssets"),
        "the refusal names the setting to change: {line}"
    );
    let reqs = line["requests"].as_array().expect("requests");
    assert_eq!(reqs.len(), 1, "only the unpaid request: {line}");
    assert_eq!(reqs[0]["status"], 402);
    assert_eq!(reqs[0]["payment_signature"], false);
    assert_eq!(weather_hits(&stack), 0, "the upstream was not reached");
    assert_eq!(
        stack.balance(payer.address()).await.unwrap(),
        U256::from(FUNDS)
    );
}
