//! Payments that can never settle end `failed` with a reason, and the token-key subcommand.

// A test crate (helpers and the shared `common` included): a failed assumption is a failed
// test, so unwrap/expect/panic are the point here, as clippy.toml allows them in #[test]s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use common::*;
use x402_protocol::settler_api::SettlementState;
use x402_testkit::anvil::TestUsdc;

async fn give_eth(env: &Env, who: Address) {
    let _: serde_json::Value = env
        .anvil
        .provider()
        .raw_request("anvil_setBalance".into(), (who, U256::from(10u128.pow(18))))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettleable_payments_end_failed_with_reason() {
    // Accept payments without settling them (--no-worker), spoil them, then settle.
    let mut env = Env::start_with(None, None, &["--no-worker", "--deadline-margin", "10"]).await;
    let req = env.requirement();
    let now = env.now();

    // A: a permit whose deadline passes before the settler gets to it.
    let a = env.funded_payer(1_000_000).await;
    let (st, ra) = env
        .post_token(&req, &env.permit(&a, PRICE, 0, now + 12))
        .await;
    assert_eq!(st, 200, "{ra}");
    // B: an authorization whose payer then spends the balance elsewhere.
    let b = env.funded_payer(PRICE).await;
    let (st, rb) = env
        .post_token(
            &req,
            &env.erc3009(&b, env.pay_to, PRICE, 0, now + 3600, random_nonce()),
        )
        .await;
    assert_eq!(st, 200, "{rb}");
    give_eth(&env, b.address()).await;
    let tb = TestUsdc::new(env.token, env.anvil.provider_with(b.clone()));
    assert!(tb
        .transfer(Address::repeat_byte(0x77), U256::from(PRICE))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap()
        .status());
    // C: a permit whose nonce the payer consumes with another permit on chain.
    let c = env.funded_payer(1_000_000).await;
    let (st, rc) = env
        .post_token(&req, &env.permit(&c, PRICE, 0, now + 3600))
        .await;
    assert_eq!(st, 200, "{rc}");
    give_eth(&env, c.address()).await;
    let other = env.permit_to(&c, c.address(), 1, 0, now + 3600, env.token, 31337);
    let sig = &other["permit"]["signature"];
    let word = |k: &str| {
        alloy::primitives::B256::from(
            U256::from_str_radix(sig[k].as_str().unwrap().trim_start_matches("0x"), 16).unwrap(),
        )
    };
    let tc = TestUsdc::new(env.token, env.anvil.provider_with(c.clone()));
    assert!(tc
        .permit(
            c.address(),
            c.address(),
            U256::from(1),
            U256::from(now + 3600),
            sig["v"].as_u64().unwrap() as u8,
            word("r"),
            word("s")
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap()
        .status());

    // A's deadline (accepted 10 s ahead, the lowest --deadline-margin) comes within the
    // lane's own margin.
    tokio::time::sleep(Duration::from_millis(7500)).await;
    env.settler
        .options_mut()
        .extra_args
        .retain(|a| a != "--no-worker");
    env.settler.restart().await.unwrap();

    let sa = env
        .wait_final(
            ra["settlement_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(sa.state, SettlementState::Failed);
    assert!(
        sa.error.as_deref().unwrap_or("").contains("deadline"),
        "{sa:?}"
    );
    let sb = env
        .wait_final(
            rb["settlement_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(sb.state, SettlementState::Failed);
    assert!(
        sb.error.as_deref().unwrap_or("").contains("balance"),
        "{sb:?}"
    );
    assert!(
        sb.transfer_tx.is_some(),
        "the reverted transaction is recorded: {sb:?}"
    );
    let sc = env
        .wait_final(
            rc["settlement_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(sc.state, SettlementState::Failed);
    assert!(
        sc.error.as_deref().unwrap_or("").contains("nonce"),
        "{sc:?}"
    );
    assert_eq!(env.balance(env.pay_to).await, U256::ZERO);

    // A's dead permit released its nonce: A signs nonce 0 again and pays.
    let (st, ra2) = env
        .post_token(&req, &env.permit(&a, PRICE, 0, env.now() + 3600))
        .await;
    assert_eq!(st, 200, "{ra2}");
    let s = env
        .wait_final(
            ra2["settlement_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(s.state, SettlementState::Settled, "{s:?}");
    assert_eq!(env.balance(env.pay_to).await, U256::from(PRICE));
    let m = env.metrics().await;
    assert!(
        m.contains("x402_settlements_total{state=\"failed\"} 3"),
        "{m}"
    );
}

#[test]
fn token_key_subcommand_creates_and_prints_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k.hex");
    let run = || {
        let out = std::process::Command::new(settler_bin())
            .args(["token-key", "--token-key-file"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    let second = run();
    assert_eq!(first, second, "the key is persisted and reused");
    let pk = first["public_key"].as_str().unwrap();
    assert!(pk.starts_with("0x02") || pk.starts_with("0x03"), "{pk}");
    let vk = x402_protocol::token::verifying_key_from_hex(pk).unwrap();
    assert_eq!(
        first["kid"].as_str().unwrap(),
        x402_protocol::token::key_id(&vk)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&f).unwrap();
    assert_eq!(
        x402_protocol::token::signing_key_from_hex(&text)
            .unwrap()
            .verifying_key(),
        &vk
    );
}
