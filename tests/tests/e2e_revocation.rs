//! Revocation at the edge, on the real stack (anvil + test USDC, the settler binary, Envoy
//! with the filter): a payer gets a token, then undoes the payment on chain before it
//! settles — cancels the ERC-3009 authorization, moves the funds away, or spends the permit
//! nonce with another permit. The settler (started with `--no-worker`, so nothing settles
//! first, then restarted with its worker) ends the settlement `failed`, lists its id at
//! `GET /v1/revocations`, and the filter, which fetches that list on its timer, refuses the
//! token with the 402 reason `revoked` — also when the token's verdict is cached.
//!
//! Each case prints the delay from the settlement's `failed` state to the first refused
//! request (both polled every 100 ms).

// A test crate: a failed assumption is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Bytes, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::SolStruct;
use serde_json::Value;
use x402_client::sign::{random_nonce, sign_authorization, sign_permit, TokenDomain};
use x402_protocol::settler_api::SettlementState;
use x402_testkit::anvil::dev_address;
use x402_testkit::envoy::HttpRequest;
use x402_testkit::stack::{Stack, StackOptions, WEATHER_PRICE};

/// The longest the edge may take to refuse a revoked token once its settlement failed: the
/// issue's target of 5 s (the filter's fetch interval, 1 s by default, plus a tick of 250 ms,
/// leave room for a loaded machine).
const WINDOW: Duration = Duration::from_secs(5);
/// How long the restarted settler may take to find that the payment cannot settle.
const FAIL_TIMEOUT: Duration = Duration::from_secs(60);

alloy::sol! {
    struct Permit { address owner; address spender; uint256 value; uint256 nonce; uint256 deadline; }
    struct CancelAuthorization { address authorizer; bytes32 nonce; }
    struct TransferWithAuthorization { address from; address to; uint256 value; uint256 validAfter; uint256 validBefore; bytes32 nonce; }
}

#[derive(Debug, Clone, Copy)]
enum Undo {
    /// `cancelAuthorization` of the ERC-3009 nonce the token was bought with.
    Cancel,
    /// The payer moves all its USDC away (its own ERC-3009 transfer, sent by another account).
    MoveFunds,
    /// The EIP-2612 nonce is used by another permit (another spender).
    SpendPermitNonce,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign_typed<T: SolStruct>(
    signer: &PrivateKeySigner,
    msg: &T,
    domain: &TokenDomain,
) -> alloy::signers::Signature {
    signer
        .sign_hash_sync(&msg.eip712_signing_hash(&domain.eip712()))
        .unwrap()
}

fn bearer(token: &str) -> HttpRequest {
    HttpRequest::new("GET", "/api/weather").header("authorization", &format!("Bearer {token}"))
}

/// Pays for `weather`, undoes the payment, lets it fail; returns the delay from `failed` to
/// the first refused request.
async fn pay_undo_and_refuse(undo: Undo, envoy_concurrency: u32) -> Duration {
    let mut stack = Stack::start_with(StackOptions {
        settler_args: vec!["--no-worker".into()],
        envoy_concurrency,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let signer = stack.funded_payer(1).await.unwrap();
    let payer = signer.address();
    let domain = TokenDomain::usdc(stack.anvil.chain_id(), stack.token);
    let deadline = U256::from(now() + 3600);
    let nonce = random_nonce();
    let body = match undo {
        Undo::Cancel | Undo::MoveFunds => sign_authorization(
            &signer,
            &domain,
            payer,
            stack.pay_to,
            U256::from(WEATHER_PRICE),
            U256::ZERO,
            deadline,
            nonce,
        ),
        Undo::SpendPermitNonce => sign_permit(
            &signer,
            &domain,
            payer,
            stack.spender,
            U256::from(WEATHER_PRICE),
            U256::ZERO,
            deadline,
        ),
    }
    .unwrap();
    let r = stack.envoy.send(
        &HttpRequest::new("POST", "/x402/token/weather")
            .header("content-type", "application/json")
            .body(body.to_string().into_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let minted: Value = r.json();
    let token = minted["access_token"].as_str().unwrap().to_string();
    let id = minted["settlement_id"].as_str().unwrap().to_string();

    // The token works (on every worker: new connections spread over them), and is cached.
    for _ in 0..10 {
        let r = stack.envoy.send(&bearer(&token));
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // The payer undoes the payment on chain before the settler settles it.
    let usdc = stack.anvil.token(stack.token);
    match undo {
        Undo::Cancel => {
            let msg = CancelAuthorization {
                authorizer: payer,
                nonce,
            };
            let sig = sign_typed(&signer, &msg, &domain);
            usdc.cancelAuthorization(payer, nonce, Bytes::from(sig.as_bytes().to_vec()))
                .send()
                .await
                .unwrap()
                .get_receipt()
                .await
                .unwrap();
            assert!(stack
                .anvil
                .authorization_state(stack.token, payer, nonce)
                .await
                .unwrap());
        }
        Undo::MoveFunds => {
            let all = stack.balance(payer).await.unwrap();
            let away = B256::from(U256::from(now()));
            let msg = TransferWithAuthorization {
                from: payer,
                to: dev_address(7),
                value: all,
                validAfter: U256::ZERO,
                validBefore: deadline,
                nonce: away,
            };
            let sig = sign_typed(&signer, &msg, &domain);
            usdc.transferWithAuthorization_1(
                payer,
                dev_address(7),
                all,
                U256::ZERO,
                deadline,
                away,
                Bytes::from(sig.as_bytes().to_vec()),
            )
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
            assert_eq!(stack.balance(payer).await.unwrap(), U256::ZERO);
        }
        Undo::SpendPermitNonce => {
            let other = dev_address(7);
            let msg = Permit {
                owner: payer,
                spender: other,
                value: U256::from(1u64),
                nonce: U256::ZERO,
                deadline,
            };
            let sig = sign_typed(&signer, &msg, &domain);
            let v = 27 + u8::from(sig.v());
            usdc.permit(
                payer,
                other,
                U256::from(1u64),
                deadline,
                v,
                sig.r().into(),
                sig.s().into(),
            )
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
            assert_eq!(
                stack.anvil.nonces(stack.token, payer).await.unwrap(),
                U256::from(1u64)
            );
        }
    }
    // Still accepted: nothing failed yet.
    assert_eq!(stack.envoy.send(&bearer(&token)).status, 200);

    // The settler with its worker: the settlement fails.
    stack
        .settler
        .options_mut()
        .extra_args
        .retain(|a| a != "--no-worker");
    stack.settler.restart().await.unwrap();

    let start = Instant::now();
    let mut failed_at: Option<Instant> = None;
    let refused_at = loop {
        assert!(
            start.elapsed() < FAIL_TIMEOUT + WINDOW,
            "{undo:?}: no refusal; settlement failed: {}; settler log:\n{}",
            failed_at.is_some(),
            stack.settler.log()
        );
        if failed_at.is_none() {
            let s = stack.settlement(&id).await.unwrap();
            assert_ne!(s.state, SettlementState::Settled, "{undo:?}: it settled");
            if s.state == SettlementState::Failed {
                failed_at = Some(Instant::now());
            } else {
                assert!(
                    start.elapsed() < FAIL_TIMEOUT,
                    "{undo:?}: still {:?}",
                    s.state
                );
            }
        }
        let r = stack.envoy.send(&bearer(&token));
        if r.status == 402 {
            let v = r.json();
            assert_eq!(v["error"], "revoked", "{undo:?}: {v}");
            assert_eq!(v["reason"], "Token was revoked: its payment did not settle");
            break Instant::now();
        }
        assert_eq!(r.status, 200, "{undo:?}: {}", r.text());
        if let Some(f) = failed_at {
            assert!(
                f.elapsed() <= WINDOW,
                "{undo:?}: not refused {WINDOW:?} after the failure"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failed_at = failed_at.unwrap_or(refused_at);
    let delay = refused_at.saturating_duration_since(failed_at);
    println!(
        "revocation delay ({undo:?}, {envoy_concurrency} Envoy worker(s)): {} ms from `failed` to the first refused request",
        delay.as_millis()
    );

    // Refused from now on, on every worker (new connections spread over them). The worker
    // that fetched the list refuses first; the others load it from shared data on their next
    // tick (250 ms), so give them two.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        let r = stack.envoy.send(&bearer(&token));
        assert_eq!(r.status, 402, "{undo:?}: {}", r.text());
        assert_eq!(r.json()["error"], "revoked");
    }
    assert!(stack.envoy.stat("wasmcustom.x402_rejected_revoked") >= 21);
    assert!(stack.envoy.stat("wasmcustom.x402_revocation_fetches") >= 1);

    // The payer's next token request is refused, naming the failed settlement.
    let again = sign_authorization(
        &signer,
        &domain,
        payer,
        stack.pay_to,
        U256::from(WEATHER_PRICE),
        U256::ZERO,
        deadline,
        random_nonce(),
    )
    .unwrap();
    let r = stack.envoy.send(
        &HttpRequest::new("POST", "/x402/token/weather")
            .header("content-type", "application/json")
            .body(again.to_string().into_bytes()),
    );
    assert_eq!(r.status, 403, "{undo:?}: {}", r.text());
    let refused = r.json();
    assert_eq!(refused["error"], "payer_blocked", "{undo:?}: {refused}");
    assert!(
        refused["message"].as_str().unwrap_or("").contains(&id),
        "{undo:?}: {refused}"
    );

    // Nothing was settled, nothing moved twice.
    let s = stack.settlement(&id).await.unwrap();
    assert_eq!(s.state, SettlementState::Failed, "{:?}", s.error);
    assert_eq!(stack.balance(stack.pay_to).await.unwrap(), U256::ZERO);
    let expected_payer = match undo {
        Undo::MoveFunds => U256::ZERO,
        _ => U256::from(1_000_000u64),
    };
    assert_eq!(stack.balance(payer).await.unwrap(), expected_payer);
    if let Undo::MoveFunds = undo {
        assert_eq!(
            stack.balance(dev_address(7)).await.unwrap(),
            U256::from(1_000_000u64)
        );
    }
    delay
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_authorization_is_refused_at_the_edge_on_both_workers() {
    pay_undo_and_refuse(Undo::Cancel, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn funds_moved_away_is_refused_at_the_edge() {
    pay_undo_and_refuse(Undo::MoveFunds, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn permit_nonce_spent_elsewhere_is_refused_at_the_edge() {
    pay_undo_and_refuse(Undo::SpendPermitNonce, 1).await;
}
