//! End to end: our `x402-client` forced onto the x402 v2 path (`prefer_x402_v2`, the CLI's
//! `--x402-v2`) against the real stack (anvil + test USDC, settler, Envoy with the filter).
//! It answers the `PAYMENT-REQUIRED` header with `PAYMENT-SIGNATURE`, gets the resource in the
//! same round trip, caches `x-x402-access-token`, and the funds arrive at pay_to.

use std::time::Duration;

use alloy::primitives::U256;
use x402_client::caps::Caps;
use x402_client::pay::{Config, Payer};
use x402_protocol::{Network, Scheme};
use x402_testkit::stack::{Stack, WEATHER_PRICE};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn client_pays_over_x402_v2_then_reuses_the_token() {
    let stack = Stack::start().await.unwrap();
    let signer = stack.funded_payer(1).await.unwrap();
    let payer_addr = signer.address();
    let network = Network::eip155(stack.anvil.chain_id());
    let caps = Caps::default()
        .with_max("0.5")
        .unwrap()
        .allow_network(network)
        .allow_asset(stack.token)
        .asset_decimals(stack.token, 6);
    let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = steps.clone();
    let config = Config::new(signer, caps)
        .prefer_x402_v2(true)
        .on_step(move |s| s2.lock().unwrap().push(s.to_string()));
    let payer = Payer::new(config).unwrap();
    let url = format!("{}/api/weather", stack.base_url());

    let r = payer.get(&url).await.unwrap();
    let text = steps.lock().unwrap().join("\n");
    assert_eq!(r.status, 200, "{}\n{text}", r.text());
    assert!(text.contains("with PAYMENT-SIGNATURE"), "{text}");
    assert!(
        !text.contains("POST "),
        "the token endpoint must not be used: {text}"
    );
    let receipt = r.paid.expect("this call paid");
    assert_eq!(receipt.scheme, Scheme::Exact);
    assert_eq!(receipt.amount, U256::from(WEATHER_PRICE));
    assert_eq!(receipt.payer, payer_addr);
    assert!(
        payer.cached_token(&url).is_some(),
        "x-x402-access-token cached:\n{text}"
    );

    let again = payer.get(&url).await.unwrap();
    assert_eq!(again.status, 200);
    assert!(
        again.paid.is_none() && again.token_used,
        "the second call pays nothing"
    );

    let id = receipt.settlement_id.expect("x-x402-settlement-id");
    let s = stack.wait_settled(&id, SETTLE_TIMEOUT).await.unwrap();
    assert!(s.transfer_tx.is_some());
    assert_eq!(
        stack.balance(stack.pay_to).await.unwrap(),
        U256::from(WEATHER_PRICE),
        "funds arrived at pay_to"
    );
}
