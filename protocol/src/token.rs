//! The access token: a JWT signed ES256K (secp256k1, SHA-256) with a `kid` header.
//! The settler mints it; the filter verifies it at the edge without calling anyone.

use std::collections::HashMap;

use alloy_primitives::{Address, U256};
use chrono::{DateTime, Duration, TimeZone, Utc};
use jwt_compact::alg::Es256k;
use jwt_compact::{AlgorithmExt, Claims, Header, TimeOptions, UntrustedToken};
use k256::ecdsa::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::chain::Network;

pub const ALGORITHM: &str = "ES256K";
/// Tokens longer than this are refused before any parsing (a real one is ~600 bytes).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Custom claims. Standard `exp`, `nbf`, `iat` come from jwt-compact's `Claims`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the settler that minted the token.
    pub iss: String,
    /// Payer address.
    pub sub: Address,
    /// Route name the token opens; no other.
    pub route: String,
    /// Amount paid, in the asset's base units.
    #[serde(with = "crate::u256_serde")]
    pub amount: U256,
    pub asset: Address,
    pub network: Network,
    /// Unique id: the settlement id.
    pub jti: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than {MAX_TOKEN_LEN} bytes")]
    Oversized,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm is not ES256K")]
    UnsupportedAlgorithm,
    #[error("token names no key or an unknown key")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
}

impl TokenError {
    /// The 402 reason a client sees for this failure.
    pub fn reason(self) -> crate::challenge::Reason {
        use crate::challenge::Reason;
        match self {
            TokenError::Oversized | TokenError::Malformed => Reason::MalformedToken,
            TokenError::UnsupportedAlgorithm => Reason::UnsupportedAlgorithm,
            TokenError::UnknownKey => Reason::UnknownKey,
            TokenError::BadSignature => Reason::BadSignature,
            TokenError::Expired => Reason::Expired,
            TokenError::NotYetValid => Reason::NotYetValid,
        }
    }
}

fn at(unix: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(unix, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Signs `claims` valid from `now` for `ttl_secs`. Used by the settler and by tests.
pub fn mint(key: &SigningKey, kid: &str, claims: AccessClaims, now: i64, ttl_secs: u64) -> String {
    let mut c = Claims::new(claims);
    c.issued_at = Some(at(now));
    c.not_before = Some(at(now));
    c.expiration = Some(at(
        now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX))
    ));
    let header = Header::empty().with_key_id(kid);
    // Signing a serializable struct with a valid key cannot fail.
    Es256k::<sha2::Sha256>::default()
        .token(&header, &c, key)
        .unwrap_or_default()
}

/// A token whose signature and time window have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub claims: AccessClaims,
    pub expires_at: i64,
    pub kid: String,
}

/// Verification keys by `kid`; several at once so keys can rotate.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

impl KeySet {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, kid: impl Into<String>, key: VerifyingKey) {
        self.keys.insert(kid.into(), key);
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Hex of the first 8 bytes of SHA-256 over every (kid, compressed key), in kid order:
    /// what names this key set in storage other configurations may share (the filter's
    /// shared verified-token table), so a verdict made under one set of trusted keys is
    /// never read under another.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        let mut h = sha2::Sha256::new();
        for kid in kids {
            if let Some(key) = self.keys.get(kid) {
                h.update((kid.len() as u64).to_le_bytes());
                h.update(kid.as_bytes());
                h.update(key.to_encoded_point(true).as_bytes());
            }
        }
        alloy_primitives::hex::encode(&h.finalize()[..8])
    }

    /// Checks size, header, algorithm, key, signature and `exp`/`nbf` against `now`
    /// (unix seconds from the host clock) with `leeway_secs` of tolerance.
    pub fn verify(
        &self,
        token: &str,
        now: i64,
        leeway_secs: i64,
    ) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Oversized);
        }
        let untrusted = UntrustedToken::new(token).map_err(|_| TokenError::Malformed)?;
        if untrusted.algorithm() != ALGORITHM {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let kid = untrusted
            .header()
            .key_id
            .as_deref()
            .ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        let alg = Es256k::<sha2::Sha256>::default();
        let checked = alg
            .validator::<AccessClaims>(key)
            .validate(&untrusted)
            .map_err(|e| match e {
                jwt_compact::ValidationError::InvalidSignature => TokenError::BadSignature,
                jwt_compact::ValidationError::AlgorithmMismatch { .. } => {
                    TokenError::UnsupportedAlgorithm
                }
                _ => TokenError::Malformed,
            })?;
        let claims = checked.claims();
        let opts = TimeOptions::new(Duration::seconds(leeway_secs), move || at(now));
        let exp = claims.expiration.ok_or(TokenError::Malformed)?;
        claims
            .validate_expiration(&opts)
            .map_err(|_| TokenError::Expired)?;
        if claims.not_before.is_some() {
            claims
                .validate_maturity(&opts)
                .map_err(|_| TokenError::NotYetValid)?;
        }
        Ok(VerifiedToken {
            claims: claims.custom.clone(),
            expires_at: exp.timestamp(),
            kid: kid.to_string(),
        })
    }
}

/// Parses a SEC1 public key given as hex (compressed 33 or uncompressed 65 bytes).
pub fn verifying_key_from_hex(hex: &str) -> Option<VerifyingKey> {
    let bytes = alloy_primitives::hex::decode(hex.trim()).ok()?;
    VerifyingKey::from_sec1_bytes(&bytes).ok()
}

/// Compressed SEC1 hex of a public key, the form the filter config takes.
pub fn verifying_key_to_hex(key: &VerifyingKey) -> String {
    format!(
        "0x{}",
        alloy_primitives::hex::encode(key.to_encoded_point(true).as_bytes())
    )
}

/// The `kid` the settler uses for a key: hex of the first 8 bytes of SHA-256 over the
/// compressed public key, so the filter config and the settler agree without coordination.
pub fn key_id(key: &VerifyingKey) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.to_encoded_point(true).as_bytes());
    alloy_primitives::hex::encode(&digest[..8])
}

/// Reads a token signing key: hex of 32 bytes, optional 0x, surrounding whitespace ignored.
pub fn signing_key_from_hex(hex: &str) -> Option<SigningKey> {
    let bytes = alloy_primitives::hex::decode(hex.trim()).ok()?;
    SigningKey::from_slice(&bytes).ok()
}

/// JWK (RFC 7517) of a secp256k1 public key, as `/.well-known/jwks.json` lists it.
pub fn jwk(kid: &str, key: &VerifyingKey) -> serde_json::Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let p = key.to_encoded_point(false);
    let x = p.x().map(|x| URL_SAFE_NO_PAD.encode(x)).unwrap_or_default();
    let y = p.y().map(|y| URL_SAFE_NO_PAD.encode(y)).unwrap_or_default();
    serde_json::json!({"kty": "EC", "crv": "secp256k1", "alg": ALGORITHM, "use": "sig", "kid": kid, "x": x, "y": y, "x402_public_key": verifying_key_to_hex(key)})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_slice(&[b; 32]).unwrap()
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "settler".into(),
            sub: Address::repeat_byte(0x11),
            route: "weather".into(),
            amount: U256::from(500_000u64),
            asset: Address::repeat_byte(0x22),
            network: Network::eip155(31337),
            jti: "s-1".into(),
        }
    }

    fn keys() -> KeySet {
        let mut ks = KeySet::new();
        ks.insert("k1", *key(1).verifying_key());
        ks.insert("k2", *key(2).verifying_key());
        ks
    }

    #[test]
    fn good_token_verifies_with_either_rotated_key() {
        let now = 1_800_000_000;
        for (kid, k) in [("k1", key(1)), ("k2", key(2))] {
            let t = mint(&k, kid, claims(), now, 300);
            let v = keys().verify(&t, now + 10, 5).unwrap();
            assert_eq!(v.claims, claims());
            assert_eq!(v.expires_at, now + 300);
        }
    }

    #[test]
    fn time_window_is_enforced_with_leeway() {
        let now = 1_800_000_000;
        let t = mint(&key(1), "k1", claims(), now, 300);
        assert!(keys().verify(&t, now + 303, 5).is_ok());
        assert_eq!(keys().verify(&t, now + 306, 5), Err(TokenError::Expired));
        assert_eq!(keys().verify(&t, now - 60, 5), Err(TokenError::NotYetValid));
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let now = 1_800_000_000;
        // Right kid, wrong key.
        let forged = mint(&key(9), "k1", claims(), now, 300);
        assert_eq!(
            keys().verify(&forged, now, 5),
            Err(TokenError::BadSignature)
        );
        let unknown = mint(&key(1), "k9", claims(), now, 300);
        assert_eq!(keys().verify(&unknown, now, 5), Err(TokenError::UnknownKey));
        // Tampered payload.
        let t = mint(&key(1), "k1", claims(), now, 300);
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims();
        c.route = "other".into();
        let body = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, serde_json::to_vec(&serde_json::json!({"exp": now + 300, "iat": now, "iss": c.iss, "sub": c.sub, "route": c.route, "amount": "500000", "asset": c.asset, "network": "eip155:31337", "jti": "s-1"})).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], body, parts[2]);
        assert_eq!(
            keys().verify(&tampered, now, 5),
            Err(TokenError::BadSignature)
        );
        // alg none.
        let none_header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"none","kid":"k1"}"#,
        );
        let none = format!("{none_header}.{}.", parts[1]);
        assert!(matches!(
            keys().verify(&none, now, 5),
            Err(TokenError::UnsupportedAlgorithm | TokenError::Malformed)
        ));
        // HS256 with the public key as secret (classic confusion).
        let hs_header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"HS256","kid":"k1"}"#,
        );
        assert_eq!(
            keys().verify(&format!("{hs_header}.{}.{}", parts[1], parts[2]), now, 5),
            Err(TokenError::UnsupportedAlgorithm)
        );
        assert_eq!(keys().verify("garbage", now, 5), Err(TokenError::Malformed));
        assert_eq!(
            keys().verify(&"a".repeat(MAX_TOKEN_LEN + 1), now, 5),
            Err(TokenError::Oversized)
        );
    }

    #[test]
    fn fingerprint_names_the_trusted_keys() {
        let mut one = KeySet::new();
        one.insert("k1", *key(1).verifying_key());
        assert_eq!(one.fingerprint(), one.clone().fingerprint());
        assert_eq!(one.fingerprint().len(), 16);
        assert_ne!(one.fingerprint(), keys().fingerprint(), "one more key");
        let mut other_key = KeySet::new();
        other_key.insert("k1", *key(2).verifying_key());
        assert_ne!(
            one.fingerprint(),
            other_key.fingerprint(),
            "same kid, other key"
        );
        let mut other_kid = KeySet::new();
        other_kid.insert("k2", *key(1).verifying_key());
        assert_ne!(
            one.fingerprint(),
            other_kid.fingerprint(),
            "same key, other kid"
        );
    }

    #[test]
    fn key_hex_round_trip() {
        let k = *key(3).verifying_key();
        assert_eq!(verifying_key_from_hex(&verifying_key_to_hex(&k)), Some(k));
        assert_eq!(jwk("k", &k)["crv"], "secp256k1");
    }
}
