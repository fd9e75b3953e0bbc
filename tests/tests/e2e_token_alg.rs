//! EdDSA access tokens end to end: the settler binary started with `--token-alg eddsa`
//! (Ed25519 seed in its key file) publishes an OKP/Ed25519 JWK and mints EdDSA tokens; the
//! real Envoy with the wasm filter, configured with the `token_keys` entry that
//! `x402-settler token-key --token-alg eddsa` prints, accepts them, and refuses a tampered
//! one, one signed by another Ed25519 key under the same `kid`, and an ES256K token naming
//! the Ed25519 `kid` (the key decides the algorithm, not the token).
//!
//! Key rotation without a config push (`settler.jwks`): the settler restarted with a new
//! key; the filter, its configuration unchanged, learns the key from the settler's JWKS on
//! its timer and accepts the new tokens, only for the configured issuer, and keeps the key
//! while the settler is down.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloy::signers::local::PrivateKeySigner;
use serde_json::{json, Value};
use x402_client::pay::Payer;
use x402_protocol::token::{mint, AccessClaims, TokenAlg, TokenSigningKey};
use x402_protocol::Scheme;
use x402_testkit::envoy::HttpRequest;
use x402_testkit::stack::{Stack, StackOptions, WEATHER};

/// The stack ([`Stack`]) with the settler on `--token-alg <alg>` and the filter trusting
/// the settler's key as `token-key` prints it.
struct AlgStack {
    stack: Stack,
    key_entry: Value,
}

impl std::ops::Deref for AlgStack {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl std::ops::DerefMut for AlgStack {
    fn deref_mut(&mut self) -> &mut Stack {
        &mut self.stack
    }
}

impl AlgStack {
    async fn start(alg: &str) -> AlgStack {
        Self::start_with(alg, |_| {}).await
    }

    /// [`AlgStack::start`] with the filter config changed by `edit` before Envoy starts.
    async fn start_with(alg: &str, edit: impl FnOnce(&mut Value)) -> AlgStack {
        let opts = StackOptions {
            token_alg: Some(alg.to_string()),
            ..StackOptions::default()
        };
        let stack = Stack::start_with_filter(opts, edit).await.unwrap();
        let key_entry = stack.settler.token_key_entry().unwrap();
        AlgStack { stack, key_entry }
    }

    async fn payer(&self) -> Payer {
        self.stack.payer(1, vec![Scheme::Exact]).await.unwrap().0
    }

    fn get_with(&self, token: &str) -> x402_testkit::envoy::HttpResponse {
        self.envoy.send(
            &HttpRequest::new("GET", "/api/weather")
                .header("authorization", &format!("Bearer {token}")),
        )
    }
}

fn jose_header(token: &str) -> Value {
    let head = token.split('.').next().unwrap();
    let bytes = x402_protocol::b64::decode(head).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The claims of a token, unchecked (to re-sign them with another key).
fn claims_of(token: &str) -> AccessClaims {
    let body = token.split('.').nth(1).unwrap();
    let bytes = x402_protocol::b64::decode(body).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn the_settler_mints_eddsa_and_the_filter_accepts_it_and_refuses_forgeries() {
    let s = AlgStack::start("eddsa").await;
    let kid = s.key_entry["kid"].as_str().unwrap().to_string();
    assert_eq!(s.key_entry["alg"], "EdDSA");
    assert_eq!(
        s.key_entry["public_key"].as_str().unwrap().len(),
        2 + 64,
        "32-byte Ed25519 point"
    );

    // The JWKS lists the key as an OKP/Ed25519 JWK.
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", s.settler.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (&jwk["kty"], &jwk["crv"], &jwk["alg"], &jwk["kid"]),
        (
            &json!("OKP"),
            &json!("Ed25519"),
            &json!("EdDSA"),
            &json!(kid)
        ),
        "{jwks}"
    );
    assert_eq!(jwk["x402_public_key"], s.key_entry["public_key"]);

    // A real client pays through Envoy; the token it gets is EdDSA under the settler's kid.
    let payer = s.payer().await;
    let url = format!("{}/api/weather", s.envoy.base_url());
    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.paid.expect("this call paid").route.as_deref(),
        Some(WEATHER)
    );
    let token = payer.cached_token(&url).expect("cached").access_token;
    let header = jose_header(&token);
    assert_eq!(
        (&header["alg"], &header["kid"]),
        (&json!("EdDSA"), &json!(kid))
    );
    let r = s.get_with(&token);
    assert_eq!(r.status, 200, "{}", r.text());

    // One signature character changed: refused as a bad signature.
    let mut forged: Vec<char> = token.chars().collect();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = forged.into_iter().collect();
    let r = s.get_with(&tampered);
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(s.envoy.stat("wasmcustom.x402_rejected_bad_signature"), 1);

    // The same claims signed by another Ed25519 key under the settler's kid: refused.
    let claims = claims_of(&token);
    let other = TokenSigningKey::from_secret(TokenAlg::EdDsa, &[0x42; 32]).unwrap();
    let foreign = mint(&other, &kid, claims.clone(), now(), 300);
    let r = s.get_with(&foreign);
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(s.envoy.stat("wasmcustom.x402_rejected_bad_signature"), 2);

    // An ES256K token naming the Ed25519 kid: refused for its algorithm, before any check.
    let es = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    let confused = mint(&es, &kid, claims, now(), 300);
    let r = s.get_with(&confused);
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(
        s.envoy
            .stat("wasmcustom.x402_rejected_unsupported_algorithm"),
        1
    );

    // The genuine token still works after all that.
    assert_eq!(s.get_with(&token).status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn es256k_stays_available_by_the_flag() {
    let s = AlgStack::start("es256k").await;
    assert_eq!(s.key_entry["alg"], "ES256K");
    let payer = s.payer().await;
    let url = format!("{}/api/weather", s.envoy.base_url());
    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let token = payer.cached_token(&url).expect("cached").access_token;
    assert_eq!(jose_header(&token)["alg"], "ES256K");
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", s.settler.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&jwks["keys"][0]["kty"], &jwks["keys"][0]["crv"]),
        (&json!("EC"), &json!("secp256k1"))
    );
}

/// A token for the weather route signed with the key in the settler's key file now, with
/// the claims of `like` and a new `jti` (so no cache knows it) and issuer `iss`.
fn token_from_key_file(s: &AlgStack, like: &AccessClaims, iss: &str) -> (String, String) {
    let hex = std::fs::read_to_string(&s.key_file).unwrap();
    let key = TokenSigningKey::from_hex(TokenAlg::EdDsa, &hex).unwrap();
    let kid = key.verifying_key().key_id();
    let mut claims = like.clone();
    claims.iss = iss.to_string();
    claims.jti = format!("test-{}", rand_suffix());
    (mint(&key, &kid, claims, now(), 300), kid)
}

fn rand_suffix() -> String {
    alloy::primitives::hex::encode(PrivateKeySigner::random().to_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_settler_key_is_learned_from_the_jwks_without_a_config_push() {
    let mut s = AlgStack::start_with("eddsa", |config| {
        config["settler"]["jwks"] = json!({"issuer": "x402-settler", "interval_ms": 200});
    })
    .await;
    let old_kid = s.key_entry["kid"].as_str().unwrap().to_string();
    let payer = s.payer().await;
    let url = format!("{}/api/weather", s.envoy.base_url());
    let r = payer.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let old_token = payer.cached_token(&url).expect("cached").access_token;
    let claims = claims_of(&old_token);

    // Rotation: the settler restarts with a new key; the filter config is not touched.
    s.settler.terminate(std::time::Duration::from_secs(5));
    std::fs::remove_file(&s.key_file).unwrap();
    s.settler.restart().await.unwrap();
    let new_entry = s.settler.token_key_entry().unwrap();
    let new_kid = new_entry["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid, "a new key");

    // The filter learns the new key on its timer: a token under it is accepted once the
    // JWKS was fetched (the wait is for the fetch, never asserted as a time).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (t, kid) = token_from_key_file(&s, &claims, "x402-settler");
        assert_eq!(kid, new_kid);
        let r = s.get_with(&t);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 402, "{}", r.text());
        assert!(
            std::time::Instant::now() < deadline,
            "the filter never learned the rotated key; Envoy log:\n{}",
            s.envoy.log_tail(40)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A real client pays and gets a token of the new key, accepted.
    let payer2 = s.payer().await;
    let r = payer2.get(&url).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let new_token = payer2.cached_token(&url).expect("cached").access_token;
    assert_eq!(jose_header(&new_token)["kid"], json!(new_kid));
    // The configured key still opens its tokens.
    assert_eq!(s.get_with(&old_token).status, 200);

    // A learned key verifies only the configured issuer's tokens.
    let unknown_before = s.envoy.stat("wasmcustom.x402_rejected_unknown_key");
    let (foreign, _) = token_from_key_file(&s, &claims, "someone-else");
    let r = s.get_with(&foreign);
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(
        s.envoy.stat("wasmcustom.x402_rejected_unknown_key"),
        unknown_before + 1
    );

    // The settler down: fetches fail, the learned key stays (a token no cache has seen).
    s.settler.kill9();
    let fails_logged = || {
        s.envoy
            .log()
            .contains("x402: jwks: fetching the settler's keys")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !fails_logged() {
        assert!(std::time::Instant::now() < deadline, "no failed fetch seen");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (fresh, _) = token_from_key_file(&s, &claims, "x402-settler");
    let r = s.get_with(&fresh);
    assert_eq!(r.status, 200, "{}", r.text());
}
