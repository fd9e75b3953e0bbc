//! First use as cheap as a cache hit, in the real Envoy with two workers (`--concurrency 2`,
//! one wasm VM each) in front of the real settler and anvil: the filter checks the token it
//! relays from the settler once and shares it with every worker (proxy-wasm shared data),
//! so the paying client's first request -- and every later one, on either worker -- checks
//! no signature (`x402_token_signature_checks` does not move; `x402_token_shared_hits`
//! counts the verdicts read from the shared table).

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloy::signers::local::PrivateKeySigner;
use serde_json::json;
use x402_client::caps::Caps;
use x402_client::pay::{Config, Payer};
use x402_protocol::{Network, Scheme};
use x402_testkit::envoy::HttpRequest;
use x402_testkit::stack::{Stack, StackOptions, WEATHER};

const SIGNATURE_CHECKS: &str = "wasmcustom.x402_token_signature_checks";
const SHARED_HITS: &str = "wasmcustom.x402_token_shared_hits";
const CACHE_HITS: &str = "wasmcustom.x402_token_cache_hits";
const ACCEPTED: &str = "wasmcustom.x402_accepted";

fn payer_for(stack: &Stack, signer: PrivateKeySigner, v2: bool) -> Payer {
    let network = Network::eip155(stack.anvil.chain_id());
    let caps = Caps::default()
        .with_max("0.5")
        .unwrap()
        .allow_network(network)
        .allow_asset(stack.token)
        .asset_decimals(stack.token, 6)
        .schemes(vec![Scheme::Exact]);
    let config = Config::new(signer, caps)
        .with_rpc(network, stack.anvil.rpc_url())
        .prefer_x402_v2(v2);
    Payer::new(config).unwrap()
}

/// Two Envoy workers; `token_cache_size` 0 turns the workers' own caches off, so that every
/// verdict that is not a signature check must come from the shared table.
async fn stack(worker_cache: bool) -> Stack {
    Stack::start_with_filter(
        StackOptions {
            envoy_concurrency: 2,
            ..StackOptions::default()
        },
        |config| {
            if !worker_cache {
                config["token_cache_size"] = json!(0);
            }
        },
    )
    .await
    .unwrap()
}

/// `n` requests with the token, each on a new connection (either worker may take it).
fn use_token(stack: &Stack, token: &str, n: usize) {
    for i in 0..n {
        let r = stack.envoy.send(
            &HttpRequest::new("GET", "/api/weather")
                .header("authorization", &format!("Bearer {token}")),
        );
        assert_eq!(r.status, 200, "use {i}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_paying_clients_first_request_checks_no_signature_on_any_worker() {
    let stack = stack(false).await;
    let signer = stack.funded_payer(1).await.unwrap();
    let payer = payer_for(&stack, signer, false);
    let url = format!("{}/api/weather", stack.base_url());
    assert_eq!(stack.envoy.stat(SIGNATURE_CHECKS), 0);

    // 402, token endpoint (the settler mints, the filter relays), first use: 200.
    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let receipt = r.paid.expect("this call paid");
    assert_eq!(receipt.route.as_deref(), Some(WEATHER));
    assert!(r.token_used, "the final request carried the new token");
    // One signature check, for the relayed token; its first use read the shared table.
    assert_eq!(stack.envoy.stat(SIGNATURE_CHECKS), 1);
    assert_eq!(stack.envoy.stat(SHARED_HITS), 1);
    assert_eq!(stack.envoy.stat(CACHE_HITS), 0, "no worker cache");

    // Later uses, on whichever worker: still no signature checked.
    let token = payer.cached_token(&url).expect("cached").access_token;
    use_token(&stack, &token, 6);
    assert_eq!(stack.envoy.stat(SIGNATURE_CHECKS), 1);
    assert_eq!(stack.envoy.stat(SHARED_HITS), 7);
    assert_eq!(stack.envoy.stat(ACCEPTED), 7);

    // The same token with one signature character changed shares nothing with it: its
    // signature is checked, and refused.
    let mut forged: Vec<char> = token.chars().collect();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let r = stack.envoy.send(
        &HttpRequest::new("GET", "/api/weather")
            .header("authorization", &format!("Bearer {forged}")),
    );
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(
        stack.envoy.stat("wasmcustom.x402_rejected_bad_signature"),
        1
    );
    assert_eq!(stack.envoy.stat(SIGNATURE_CHECKS), 2);
    assert_eq!(stack.envoy.stat(SHARED_HITS), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_a_payment_signature_is_shared_too_and_the_worker_caches_stay_in_front() {
    let stack = stack(true).await;
    let signer = stack.funded_payer(1).await.unwrap();
    // An x402 v2 client: PAYMENT-SIGNATURE on the priced request, the token comes back in
    // x-x402-access-token.
    let payer = payer_for(&stack, signer, true);
    let url = format!("{}/api/weather", stack.base_url());
    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.paid.is_some());
    assert!(r.headers.get("x-x402-access-token").is_some());
    assert_eq!(
        stack.envoy.stat(SIGNATURE_CHECKS),
        1,
        "the exchange's check"
    );

    let token = r.headers["x-x402-access-token"]
        .to_str()
        .unwrap()
        .to_string();
    use_token(&stack, &token, 8);
    // The worker that made the exchange has the token in its own cache; the other reads
    // the shared table once, then its own cache serves.
    assert_eq!(stack.envoy.stat(SIGNATURE_CHECKS), 1);
    let (shared, cached) = (stack.envoy.stat(SHARED_HITS), stack.envoy.stat(CACHE_HITS));
    assert_eq!(shared + cached, 8);
    assert!(shared <= 1, "{shared} shared hits");
}
