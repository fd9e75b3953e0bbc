//! "No payer charged without a token", through the real Envoy + filter, the settler binary
//! and anvil: the filter's callout gives up while the settler accepts (slow RPC), or after it
//! committed (the answer held back on its way to Envoy), or the settler is killed after the
//! commit; the client retries the same signed payment and gets its token. After settlement
//! every payer's balance is down by exactly the payments it holds tokens for.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::{eip712_domain, SolStruct};
use serde_json::{json, Value};
use x402_protocol::settler_api::SettlementState;
use x402_protocol::token::signing_key_from_hex;
use x402_testkit::anvil::{dev_address, Anvil, DEV_KEYS};
use x402_testkit::envoy::{Envoy, EnvoyOpts};
use x402_testkit::settler::{usdc_terms, SettlerOptions, SettlerProcess};
use x402_testkit::slow_proxy::SlowProxy;
use x402_testkit::stack::{attach_settler_secret, Stack, WEATHER_PRICE};
use x402_testkit::upstream::Upstream;

alloy::sol! {
    struct TransferWithAuthorization { address from; address to; uint256 value; uint256 validAfter; uint256 validBefore; bytes32 nonce; }
}

const FUND: u64 = 1_000_000; // 1 USDC

/// The product with two relays: the settler's RPC goes through `rpc` (slow chain reads), and
/// Envoy reaches the settler through `callout` (slow answers to the filter).
struct Paid {
    anvil: Anvil,
    token: Address,
    pay_to: Address,
    settler: SettlerProcess,
    envoy: Envoy,
    rpc: SlowProxy,
    callout: SlowProxy,
    http: reqwest::Client,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

impl Paid {
    /// `filter_timeout_ms`: the filter's `settler.timeout_ms`.
    async fn start(filter_timeout_ms: u64, settler_args: &[&str]) -> Paid {
        let dir = tempfile::Builder::new()
            .prefix("x402-paid-")
            .tempdir()
            .unwrap();
        let anvil = Anvil::start().unwrap();
        let token = anvil.deploy_token().await.unwrap();
        let rpc = SlowProxy::start(&format!("127.0.0.1:{}", anvil.port()))
            .await
            .unwrap();
        let key_file = dir.path().join("token.key");
        let db = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("settler.db").display()
        );
        let (spender, pay_to) = (dev_address(8), dev_address(9));
        let network = anvil.network().to_string();
        let mut opts = SettlerOptions::new(db, &network, rpc.url(), DEV_KEYS[8], &key_file)
            .with_terms(usdc_terms(&network, token, &[pay_to]));
        opts.env.push(("RUST_LOG".into(), "info".into()));
        opts.extra_args = settler_args.iter().map(|s| s.to_string()).collect();
        let settler = SettlerProcess::start(opts).await.unwrap();
        let callout = SlowProxy::start(&format!("127.0.0.1:{}", settler.port()))
            .await
            .unwrap();
        let upstream = Upstream::start().unwrap();
        let key = signing_key_from_hex(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
        let mut config = Stack::filter_config(&key, token, network, spender, pay_to);
        config["settler"]["timeout_ms"] = json!(filter_timeout_ms);
        let mut envoy_opts = EnvoyOpts {
            upstream_port: Some(upstream.port()),
            settler_port: Some(callout_port(&callout)),
            ..EnvoyOpts::default()
        };
        attach_settler_secret(&mut config, &mut envoy_opts, settler.api_secret());
        let envoy = Envoy::start(&config.to_string(), envoy_opts).unwrap();
        Paid {
            anvil,
            token,
            pay_to,
            settler,
            envoy,
            rpc,
            callout,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            _upstream: upstream,
            _dir: dir,
        }
    }

    async fn payer(&self) -> PrivateKeySigner {
        let k = PrivateKeySigner::random();
        self.anvil
            .mint(self.token, k.address(), U256::from(FUND))
            .await
            .unwrap();
        k
    }

    /// A seed-format ERC-3009 payment of the weather route's price.
    fn payment(&self, key: &PrivateKeySigner) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let nonce = B256::from(rand_bytes());
        let msg = TransferWithAuthorization {
            from: key.address(),
            to: self.pay_to,
            value: U256::from(WEATHER_PRICE),
            validAfter: U256::ZERO,
            validBefore: U256::from(now + 3600),
            nonce,
        };
        let domain = eip712_domain! { name: "USDC", version: "2", chain_id: self.anvil.chain_id(), verifying_contract: self.token, };
        let sig = key
            .sign_hash_sync(&msg.eip712_signing_hash(&domain))
            .unwrap();
        json!({"version": "Version 0.1", "permit": {
            "permit_type": "ERC3009",
            "signature": {"v": 27 + sig.v() as u8, "r": format!("{:#x}", sig.r()), "s": format!("{:#x}", sig.s())},
            "token": self.token, "chain_id": self.anvil.chain_id(),
            "authorizer": key.address(), "recipient": self.pay_to, "value": WEATHER_PRICE,
            "validAfter": 0, "validBefore": now + 3600, "nonce": nonce}})
    }

    /// POST /x402/token/weather through Envoy: (status, body).
    async fn buy(&self, payment: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/x402/token/weather", self.envoy.base_url()))
            .json(payment)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    /// The paid route with the token: the HTTP status.
    async fn use_token(&self, token: &str) -> u16 {
        self.http
            .get(format!("{}/api/weather", self.envoy.base_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn balance(&self, who: Address) -> U256 {
        self.anvil.balance_of(self.token, who).await.unwrap()
    }

    /// Restarts the settler with its settlement lane and waits until `pay_to` has `expected`.
    async fn settle_all(&mut self, expected: U256) {
        self.rpc.set_delay(Duration::ZERO);
        self.callout.set_delay(Duration::ZERO);
        self.settler
            .options_mut()
            .extra_args
            .retain(|a| a != "--no-worker");
        self.settler.restart().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.balance(self.pay_to).await != expected {
            assert!(
                Instant::now() < deadline,
                "pay_to has {} of {expected}; settler log:\n{}",
                self.balance(self.pay_to).await,
                self.settler.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Nothing else is left to settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(self.balance(self.pay_to).await, expected);
    }
}

fn callout_port(p: &SlowProxy) -> u16 {
    p.url().rsplit(':').next().unwrap().parse().unwrap()
}

fn rand_bytes() -> [u8; 32] {
    let k = PrivateKeySigner::random();
    k.to_bytes().0
}

fn token_of(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_string()
}

/// Every payer is charged exactly for the tokens it holds, each token opens the route.
async fn assert_charged_for_tokens_held(paid: &Paid, held: &[(PrivateKeySigner, Vec<String>)]) {
    let mut charged = 0usize;
    let mut tokens = 0usize;
    for (payer, toks) in held {
        let paid_amount = U256::from(FUND) - paid.balance(payer.address()).await;
        if !paid_amount.is_zero() {
            charged += 1;
        }
        tokens += toks.len();
        assert_eq!(
            paid_amount,
            U256::from(WEATHER_PRICE * toks.len() as u64),
            "payer {} charged {paid_amount} holding {} token(s)",
            payer.address(),
            toks.len()
        );
        for t in toks {
            assert_eq!(paid.use_token(t).await, 200);
        }
    }
    eprintln!("payers charged: {charged}; tokens held: {tokens}");
}

/// The settler commits, its answer is held back past the filter's timeout: 503 to the client.
/// The client's retry with the same payment gets the very token of the stored payment.
#[tokio::test(flavor = "multi_thread")]
async fn answer_lost_after_commit_the_retry_gets_the_same_token() {
    let mut paid = Paid::start(1000, &["--no-worker"]).await;
    let payer = paid.payer().await;
    let payment = paid.payment(&payer);

    paid.callout.set_delay(Duration::from_millis(1500));
    let (st, body) = paid.buy(&payment).await;
    assert_eq!(
        (st, body["error"].as_str()),
        (503, Some("settler_unavailable")),
        "{body}"
    );

    paid.callout.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1000)).await; // the held answer drains
    let (st, first) = paid.buy(&payment).await;
    assert_eq!(st, 200, "{first}");
    let (st, again) = paid.buy(&payment).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(
        token_of(&again),
        token_of(&first),
        "same payment, same token"
    );
    assert_eq!(paid.use_token(&token_of(&first)).await, 200);

    paid.settle_all(U256::from(WEATHER_PRICE)).await;
    let (st, after) = paid.buy(&payment).await;
    assert_eq!(st, 409, "{after}");
    assert_eq!(after["error"], "payment_already_used");
    assert_eq!(after["settlement_id"], first["settlement_id"]);
    assert_eq!(after["state"], "settled");
    assert_charged_for_tokens_held(&paid, &[(payer, vec![token_of(&first)])]).await;
}

/// The filter's callout (800 ms) gives up while the settler's acceptance waits on slow chain
/// reads (900 ms each, so even reads made side by side outlast it): every client gets 503. Whether the settler then stored the payment
/// or dropped it, the client's retry of the same payment gets a token, and after settlement
/// no payer is charged for a payment it holds no token for.
#[tokio::test(flavor = "multi_thread")]
async fn callout_timeout_during_acceptance_never_charges_without_a_token() {
    let mut paid = Paid::start(800, &["--no-worker", "--accept-deadline-ms", "2800"]).await;
    let mut payers = Vec::new();
    for _ in 0..4 {
        let k = paid.payer().await;
        let p = paid.payment(&k);
        payers.push((k, p));
    }
    paid.rpc.set_delay(Duration::from_millis(900));
    let mut timed_out = 0;
    for (_, p) in &payers {
        let (st, body) = paid.buy(p).await;
        assert_eq!(st, 503, "{body}");
        timed_out += 1;
    }
    assert_eq!(timed_out, payers.len());

    // The retries, with the chain fast again.
    paid.rpc.set_delay(Duration::ZERO);
    let mut held = Vec::new();
    for (k, p) in payers {
        let (st, body) = paid.buy(&p).await;
        assert_eq!(st, 200, "{body}\n{}", paid.settler.log());
        let (st, again) = paid.buy(&p).await;
        assert_eq!(st, 200, "{again}");
        assert_eq!(token_of(&again), token_of(&body));
        held.push((k, vec![token_of(&body)]));
    }
    // How many first attempts the settler stored after the filter gave up (their first retry
    // got the stored token too; every payer's second retry is a re-issue anyway) - the rest
    // were dropped with the closed callout, before the commit.
    let reissued = paid
        .settler
        .log()
        .matches("same payment posted again before broadcast")
        .count();
    eprintln!(
        "first attempts committed after the callout gave up: {} of {}",
        reissued.saturating_sub(held.len()),
        held.len()
    );
    paid.settle_all(U256::from(WEATHER_PRICE * held.len() as u64))
        .await;
    assert_charged_for_tokens_held(&paid, &held).await;
}

/// kill -9 after the commit: the restarted settler gives the same payment the same token.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_after_commit_the_same_payment_gets_the_same_token() {
    let mut paid = Paid::start(5000, &["--no-worker"]).await;
    let payer = paid.payer().await;
    let payment = paid.payment(&payer);
    let (st, first) = paid.buy(&payment).await;
    assert_eq!(st, 200, "{first}");
    paid.settler.kill9();
    paid.settler.restart().await.unwrap();
    let (st, again) = paid.buy(&payment).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(token_of(&again), token_of(&first));
    assert_eq!(again["settlement_id"], first["settlement_id"]);
    paid.settle_all(U256::from(WEATHER_PRICE)).await;
    let s: x402_protocol::settler_api::SettlementStatus = paid
        .http
        .get(format!(
            "{}/v1/settlements/{}",
            paid.settler.url(),
            first["settlement_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s.state, SettlementState::Settled);
    assert_charged_for_tokens_held(&paid, &[(payer, vec![token_of(&first)])]).await;
}
