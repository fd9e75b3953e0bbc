//! Access-token checks as the edge runs them: an `Authorization` header value, its bearer
//! token, and `KeySet::verify` (size, JWT shape, algorithm, kid, ES256K signature, time
//! window) against a fixed two-key set (the filter's rotation case).
//!
//! The filter's own `auth::bearer` and token cache are crate-private; this target splits the
//! header the same way (scheme `Bearer`, case-insensitive, one token without whitespace) and
//! fuzzes everything public behind it: protocol's token verification.
//!
//! First byte even (seeds: 0): the rest is a header value checked at a fixed clock (seeds: real tokens
//! minted for that clock). First byte odd: fuzzed claims and times are minted with a key of
//! the set and must verify back to the same claims (mint/verify round trip).

#![no_main]

use std::sync::OnceLock;

use k256::ecdsa::SigningKey;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use x402_protocol::token::{mint, AccessClaims, KeySet, TokenError, MAX_TOKEN_LEN};
use x402_protocol::{Address, Network, U256};

/// The clock the seed tokens were minted for (iat 1_800_000_000, ttl 300).
const NOW: i64 = 1_800_000_100;
const LEEWAY: i64 = 5;

fn signing(b: u8) -> Option<SigningKey> {
    SigningKey::from_slice(&[b; 32]).ok()
}

fn keys() -> &'static (KeySet, Vec<SigningKey>) {
    static KEYS: OnceLock<(KeySet, Vec<SigningKey>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut ks = KeySet::new();
        let mut sk = Vec::new();
        for (kid, b) in [("k1", 7u8), ("k2", 8u8)] {
            if let Some(k) = signing(b) {
                ks.insert(kid, *k.verifying_key());
                sk.push(k);
            }
        }
        assert_eq!(ks.len(), 2);
        (ks, sk)
    })
}

/// The token of an `Authorization: Bearer <token>` value, as the filter reads it.
fn bearer(h: &str) -> Option<&str> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = rest.trim_start();
    (!t.is_empty() && !t.bytes().any(|b| b.is_ascii_whitespace())).then_some(t)
}

#[derive(Arbitrary, Debug)]
struct MintCase {
    second_key: bool,
    iss: String,
    sub: [u8; 20],
    route: String,
    amount: [u8; 32],
    asset: [u8; 20],
    chain_id: u64,
    jti: String,
    /// Issued at, within about a century of 2020 (the settler's clock).
    iat: u32,
    /// Up to the config's maximum token lifetime (7 days).
    ttl: u32,
    /// When the edge checks, relative to `iat`.
    check_after: i32,
}

fn header_case(data: &[u8]) {
    let Ok(h) = std::str::from_utf8(data) else {
        return;
    };
    // The header as sent, and the bare value (clients that forget the scheme).
    for token in [bearer(h), Some(h)].into_iter().flatten() {
        match keys().0.verify(token, NOW, LEEWAY) {
            Ok(v) => {
                assert!(v.kid == "k1" || v.kid == "k2", "{v:?}");
                assert!(
                    v.expires_at >= NOW - LEEWAY,
                    "expired token accepted: {v:?}"
                );
                assert!(token.len() <= MAX_TOKEN_LEN);
            }
            Err(TokenError::Oversized) => assert!(token.len() > MAX_TOKEN_LEN),
            Err(e) => {
                let _ = (e.reason().code(), e.to_string());
            }
        }
    }
}

fn mint_case(data: &[u8]) {
    let Ok(c) = MintCase::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let (ks, sk) = keys();
    let (kid, key) = if c.second_key {
        ("k2", &sk[1])
    } else {
        ("k1", &sk[0])
    };
    let claims = AccessClaims {
        iss: c.iss,
        sub: Address::from(c.sub),
        route: c.route,
        amount: U256::from_be_bytes(c.amount),
        asset: Address::from(c.asset),
        network: Network::eip155(c.chain_id.max(1)),
        jti: c.jti,
    };
    let iat = 1_577_836_800 + i64::from(c.iat);
    let ttl = u64::from(c.ttl % (7 * 24 * 3600 + 1));
    let token = mint(key, kid, claims.clone(), iat, ttl);
    let now = iat + i64::from(c.check_after);
    let got = ks.verify(&token, now, LEEWAY);
    if token.len() > MAX_TOKEN_LEN {
        assert_eq!(got, Err(TokenError::Oversized));
        return;
    }
    let exp = iat + ttl as i64;
    match got {
        Ok(v) => {
            assert_eq!(v.claims, claims);
            assert_eq!(v.kid, kid);
            assert_eq!(v.expires_at, exp);
            assert!(
                now <= exp + LEEWAY && now >= iat - LEEWAY,
                "{now} outside [{iat}, {exp}]"
            );
        }
        Err(TokenError::Expired) => assert!(now > exp + LEEWAY, "{now} {exp}"),
        Err(TokenError::NotYetValid) => assert!(now < iat - LEEWAY, "{now} {iat}"),
        Err(e) => panic!("minted token refused: {e:?} ({token})"),
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((m, rest)) if m & 1 == 0 => header_case(rest),
        Some((_, rest)) => mint_case(rest),
        None => {}
    }
});
