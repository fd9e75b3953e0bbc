//! Cost of checking one access token, per signature algorithm, the way the filter checks
//! it (`x402_protocol::token::KeySet::verify`: parse, algorithm and `kid`, signature, claims,
//! time window), over the same ~600-byte claims the settler mints:
//! - `ES256K` (secp256k1, k256): today's tokens;
//! - `ES256` (P-256, p256): the JOSE curve Envoy's `jwt_authn` and Istio verify natively;
//! - `EdDSA` (Ed25519, ed25519-dalek);
//! - `parse-only`: everything but the signature, the floor under any algorithm.
//!
//! Built as a wasm module (`verify_loop` export, run in V8 by `run.mjs`) and natively
//! (`verify-native`), so both costs come from one source.

use std::sync::OnceLock;

use alloy_primitives::{Address, U256};
use chrono::{Duration, TimeZone, Utc};
use jwt_compact::alg::{Ed25519, Es256, Es256k};
use jwt_compact::{AlgorithmExt, Claims, Header, TimeOptions, UntrustedToken};
use sha2::Sha256;
use x402_protocol::token::AccessClaims;
use x402_protocol::Network;

/// Unix time the tokens are issued and checked at.
pub const NOW: i64 = 1_800_000_000;

/// The algorithms measured, in `verify_loop`'s numbering.
pub const ALGS: [&str; 4] = ["ES256K", "ES256", "EdDSA", "parse-only"];

fn claims() -> Claims<AccessClaims> {
    let at = |t: i64| Utc.timestamp_opt(t, 0).single().unwrap_or_default();
    let mut c = Claims::new(AccessClaims {
        iss: "x402-settler".into(),
        sub: Address::repeat_byte(0x11),
        route: "weather".into(),
        amount: U256::from(10_000u64),
        asset: Address::repeat_byte(0x22),
        network: Network::eip155(84532),
        jti: "0192f7a0-3c4e-7d2a-9b1f-2e4d6c8a0b1c".into(),
    });
    c.issued_at = Some(at(NOW));
    c.not_before = Some(at(NOW));
    c.expiration = Some(at(NOW + 300));
    c
}

struct Keys {
    es256k: (k256::ecdsa::VerifyingKey, String),
    es256: (p256::ecdsa::VerifyingKey, String),
    eddsa: (ed25519_dalek::VerifyingKey, String),
}

/// Keys and one token per algorithm, made once (signing is deterministic: RFC 6979, Ed25519).
fn keys() -> Option<&'static Keys> {
    static KEYS: OnceLock<Option<Keys>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let header = Header::empty().with_key_id("k1");
        let c = claims();
        let k1 = k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).ok()?;
        let k2 = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).ok()?;
        let k3 = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        Some(Keys {
            es256k: (
                *k1.verifying_key(),
                Es256k::<Sha256>::default().token(&header, &c, &k1).ok()?,
            ),
            es256: (*k2.verifying_key(), Es256.token(&header, &c, &k2).ok()?),
            eddsa: (k3.verifying_key(), Ed25519.token(&header, &c, &k3).ok()?),
        })
    })
    .as_ref()
}

/// The filter's checks after the signature: `exp`, `nbf` with 5 s of leeway.
fn in_window(c: &Claims<AccessClaims>) -> bool {
    let opts = TimeOptions::new(Duration::seconds(5), || {
        Utc.timestamp_opt(NOW + 10, 0).single().unwrap_or_default()
    });
    c.validate_expiration(&opts).is_ok() && c.validate_maturity(&opts).is_ok()
}

fn check<A: jwt_compact::Algorithm>(alg: &A, key: &A::VerifyingKey, token: &str) -> bool {
    let Ok(t) = UntrustedToken::new(token) else {
        return false;
    };
    if t.algorithm() != alg.name() || t.header().key_id.as_deref() != Some("k1") {
        return false;
    }
    match alg.validator::<AccessClaims>(key).validate(&t) {
        Ok(checked) => in_window(checked.claims()),
        Err(_) => false,
    }
}

/// Everything but the signature: parse, header, claims JSON, time window.
fn parse_only(token: &str) -> bool {
    let Ok(t) = UntrustedToken::new(token) else {
        return false;
    };
    t.header().key_id.is_some()
        && t.deserialize_claims_unchecked::<AccessClaims>()
            .is_ok_and(|c| in_window(&c))
}

/// Checks algorithm `alg`'s token (see [`ALGS`]) once; `true` if it checks out.
pub fn verify_once(alg: u32) -> bool {
    let Some(k) = keys() else {
        return false;
    };
    match alg {
        0 => check(&Es256k::<Sha256>::default(), &k.es256k.0, &k.es256k.1),
        1 => check(&Es256, &k.es256.0, &k.es256.1),
        2 => check(&Ed25519, &k.eddsa.0, &k.eddsa.1),
        3 => parse_only(&k.es256k.1),
        _ => false,
    }
}

/// Length of algorithm `alg`'s token, in bytes.
pub fn token_len(alg: u32) -> usize {
    keys().map_or(0, |k| match alg {
        1 => k.es256.1.len(),
        2 => k.eddsa.1.len(),
        _ => k.es256k.1.len(),
    })
}

/// Checks algorithm `alg`'s token `n` times; the number that checked out (`n` unless broken).
#[no_mangle]
pub extern "C" fn verify_loop(alg: u32, n: u32) -> u32 {
    (0..n).map(|_| u32::from(verify_once(alg))).sum()
}

/// [`token_len`] for the wasm runner.
#[no_mangle]
pub extern "C" fn token_bytes(alg: u32) -> u32 {
    token_len(alg) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_checks_out_and_a_tampered_one_does_not() {
        for alg in 0..4 {
            assert!(verify_once(alg), "{}", ALGS[alg as usize]);
        }
        let k = keys().unwrap();
        let mut bad = k.es256.1.clone();
        bad.pop();
        bad.push('A');
        assert!(!check(&Es256, &k.es256.0, &bad));
        assert!(!check(&Es256, &k.es256.0, &k.es256k.1), "ES256K token");
    }
}
