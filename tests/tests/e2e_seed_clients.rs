//! Every seed SDK client version we support pays through the real stack (anvil, settler,
//! Envoy + filter), whatever order the route lists its payment methods in.
//!
//! - x402-mock 0.1.x (the version whose README the product implements, in
//!   `tools/.venv-seed01`): signs an EIP-2612 permit for the FIRST component whose token is in
//!   its built-in table, to that component's `metadata.wallet_address`. Its table knows
//!   Sepolia (eip155:11155111) USDC at 0x1c7D…7238, so anvil runs with that chain id and the
//!   test token's runtime code is placed at that address (`anvil_setCode`, name/symbol
//!   storage copied; the EIP-712 domain uses the new address).
//! - x402-mock 0.3.x (`tools/.venv`): signs ERC-3009 `transferWithAuthorization` to the
//!   `pay_to` of the first component matching its local method.
//!
//! Both run their own client code (`tests/python/seed01_pay.py`, `tests/python/seed_pay.py`
//! only configure them), offline.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::{json, Value};
use x402_testkit::paths;
use x402_testkit::stack::{ChainSetup, Stack, StackOptions, WEATHER_PRICE};

const SEPOLIA: u64 = 11155111;
const SEPOLIA_USDC: &str = "0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238";
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn sepolia() -> ChainSetup {
    ChainSetup {
        chain_id: Some(SEPOLIA),
        token_at: Some(SEPOLIA_USDC.parse().unwrap()),
    }
}

/// The `weather` route with its methods in this order.
fn order(methods: [&'static str; 2]) -> impl FnOnce(&mut Value) {
    move |c: &mut Value| c["routes"][0]["payment_methods"] = json!(methods)
}

fn key_hex(k: &PrivateKeySigner) -> String {
    format!("0x{}", alloy::hex::encode(k.to_bytes()))
}

/// Runs a seed client script; returns its JSON line.
fn run_client(stack: &Stack, mut cmd: Command, what: &str) -> Value {
    let out = cmd
        .env_remove("EVM_PRIVATE_KEY")
        .output()
        .unwrap_or_else(|e| panic!("run {what} (make setup installs its venv): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!(
            "{what}: no JSON line\n{stdout}\n{}\nenvoy:\n{}\nsettler:\n{}",
            String::from_utf8_lossy(&out.stderr),
            stack.envoy.log_tail(30),
            stack.settler.log()
        )
    })
}

/// x402-mock 0.1.1's `Http402Client` GETs /api/weather paying as `payer`.
fn seed01(stack: &Stack, payer: &PrivateKeySigner) -> Value {
    let mut cmd = Command::new(paths::python_seed01_bin());
    cmd.arg(paths::root().join("tests/python/seed01_pay.py"))
        .args(["--url", &format!("{}/api/weather", stack.base_url())])
        .args(["--rpc-url", &stack.anvil.rpc_url()])
        .args(["--amount", "0.5"])
        .env("X402_SEED_PRIVATE_KEY", key_hex(payer));
    run_client(stack, cmd, "tests/python/seed01_pay.py (x402-mock 0.1.1)")
}

/// x402-mock 0.3.x's `Http402Client` GETs /api/weather paying as `payer`.
fn seed03(stack: &Stack, payer: &PrivateKeySigner) -> Value {
    let mut cmd = Command::new(paths::python_bin());
    cmd.arg(paths::root().join("tests/python/seed_pay.py"))
        .args(["--url", &format!("{}/api/weather", stack.base_url())])
        .args(["--rpc-url", &stack.anvil.rpc_url()])
        .args(["--token", &stack.token.to_checksum(None)])
        .args(["--caip2", &stack.anvil.network().to_string()])
        .args(["--amount", "0.5"])
        .env("X402_SEED_PRIVATE_KEY", key_hex(payer));
    run_client(stack, cmd, "tests/python/seed_pay.py (x402-mock 0.3)")
}

async fn wait_balance(stack: &Stack, who: Address, want: U256) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let now = stack.balance(who).await.unwrap();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: balance {now}, expected {want}\n{}",
            stack.settler.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Both seed client versions pay the route with its methods in `methods` order, each once,
/// and the funds of both arrive at pay_to.
async fn both_versions_pay(methods: [&'static str; 2]) {
    let stack = Stack::start_on_chain(sepolia(), StackOptions::default(), order(methods))
        .await
        .unwrap();
    assert_eq!(stack.token, SEPOLIA_USDC.parse::<Address>().unwrap());
    let before = stack.balance(stack.pay_to).await.unwrap();

    // 0.1.1: an EIP-2612 permit to the settler's wallet.
    let p01 = stack.funded_payer(1).await.unwrap();
    let r = seed01(&stack, &p01);
    assert_eq!(
        r["status"],
        200,
        "{methods:?}: {r}\n{}",
        stack.settler.log()
    );
    assert_eq!(r["token_requests"], 1, "{r}");
    let permit = &r["permits"][0];
    assert_eq!(permit["permit_type"], "EIP2612", "{r}");
    assert_eq!(
        permit["spender"].as_str().unwrap().to_lowercase(),
        stack.spender.to_checksum(None).to_lowercase(),
        "{r}"
    );
    assert_eq!(permit["value"], WEATHER_PRICE, "{r}");

    // 0.3.x: an ERC-3009 authorization to pay_to.
    let p03 = stack.funded_payer(1).await.unwrap();
    let r = seed03(&stack, &p03);
    assert_eq!(
        r["status"],
        200,
        "{methods:?}: {r}\n{}",
        stack.settler.log()
    );
    assert_eq!(r["token_requests"], 1, "{r}");

    // The upstream served both; the funds arrive.
    let served = stack
        .upstream
        .requests()
        .iter()
        .filter(|q| q.path.starts_with("/api/weather"))
        .count();
    assert_eq!(served, 2);
    let price = U256::from(WEATHER_PRICE);
    wait_balance(&stack, stack.pay_to, before + price + price).await;
    let left = U256::from(1_000_000u64 - WEATHER_PRICE);
    assert_eq!(stack.balance(p01.address()).await.unwrap(), left);
    assert_eq!(stack.balance(p03.address()).await.unwrap(), left);
}

/// The order of the README and envoy/envoy.yaml: exact first.
#[tokio::test(flavor = "multi_thread")]
async fn seed_clients_0_1_and_0_3_pay_a_route_listing_exact_first() {
    both_versions_pay(["usdc-exact", "usdc-permit"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_clients_0_1_and_0_3_pay_a_route_listing_permit_first() {
    both_versions_pay(["usdc-permit", "usdc-exact"]).await;
}

/// 0.1.1 signs with the owner's on-chain nonce: a second payment before the first permit is
/// mined reuses it. The answer says which nonce to sign (409 `nonce_mismatch`,
/// `expected_nonce`), not that the payment was replayed.
#[tokio::test(flavor = "multi_thread")]
async fn seed_0_1_second_payment_before_the_first_is_mined_gets_the_expected_nonce() {
    let stack = Stack::start_on_chain(
        sepolia(),
        StackOptions {
            settler_args: vec!["--no-worker".into()],
            ..StackOptions::default()
        },
        order(["usdc-exact", "usdc-permit"]),
    )
    .await
    .unwrap();
    let payer = stack.funded_payer(1).await.unwrap();
    let first = seed01(&stack, &payer);
    assert_eq!(first["status"], 200, "{first}");

    // A new client (no token kept): pays again, signing nonce 0 again.
    let second = seed01(&stack, &payer);
    assert_eq!(second["token_statuses"], json!([409]), "{second}");
    assert_eq!(second["permits"][0]["nonce"], 0, "{second}");
    let body: Value = serde_json::from_str(second["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"], "nonce_mismatch", "{body}");
    assert_eq!(body["expected_nonce"], "1", "{body}");
}
