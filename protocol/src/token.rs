//! The access token: a JWT signed ES256K (secp256k1, SHA-256) or EdDSA (Ed25519) with a
//! `kid` header. The settler mints it; the filter verifies it at the edge without calling
//! anyone, with the algorithm of the key the `kid` names (keys: [`crate::token_keys`]).

use std::collections::HashMap;

use alloy_primitives::{Address, U256};
use chrono::{DateTime, Duration, TimeZone, Utc};
use jwt_compact::alg::{Ed25519, Es256k};
use jwt_compact::{Algorithm, AlgorithmExt, Claims, Header, TimeOptions, Token, UntrustedToken};
use k256::ecdsa::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::chain::Network;
pub use crate::token_keys::{TokenAlg, TokenSigningKey, VerifyKey};

/// The JWS name of the first algorithm, ES256K (kept for the callers that name it).
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

/// What a minted token carries: [`AccessClaims`] and, as the JWT audience (`aud`), the
/// route again, so that Envoy's own `jwt_authn` (which checks `aud`, not custom claims) can
/// hold a token to its route (README: "Envoy verifies the tokens"). Verification reads
/// [`AccessClaims`] and ignores `aud`: the filter compares `route` itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MintedClaims {
    #[serde(flatten)]
    pub access: AccessClaims,
    pub aud: String,
}

impl From<AccessClaims> for MintedClaims {
    fn from(access: AccessClaims) -> MintedClaims {
        let aud = access.route.clone();
        MintedClaims { access, aud }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than {MAX_TOKEN_LEN} bytes")]
    Oversized,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm is not ES256K or EdDSA, or not the algorithm of its key")]
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

/// A key that signs tokens: a secp256k1 key (ES256K), an Ed25519 key (EdDSA), or the
/// settler's [`TokenSigningKey`] of either.
pub trait TokenSigner {
    /// The signed compact JWT. Signing a serializable struct with a valid key cannot fail.
    fn sign_token(&self, header: &Header, claims: &Claims<MintedClaims>) -> String;
}

impl TokenSigner for SigningKey {
    fn sign_token(&self, header: &Header, claims: &Claims<MintedClaims>) -> String {
        Es256k::<sha2::Sha256>::default()
            .token(header, claims, self)
            .unwrap_or_default()
    }
}

impl TokenSigner for ed25519_dalek::SigningKey {
    fn sign_token(&self, header: &Header, claims: &Claims<MintedClaims>) -> String {
        Ed25519.token(header, claims, self).unwrap_or_default()
    }
}

impl TokenSigner for TokenSigningKey {
    fn sign_token(&self, header: &Header, claims: &Claims<MintedClaims>) -> String {
        match self {
            TokenSigningKey::Es256k(k) => k.sign_token(header, claims),
            TokenSigningKey::Ed25519(k) => k.sign_token(header, claims),
        }
    }
}

/// Signs `claims` valid from `now` for `ttl_secs`. Used by the settler and by tests.
/// Deterministic for both algorithms (RFC 6979 nonces, Ed25519): same inputs, same token.
pub fn mint(
    key: &impl TokenSigner,
    kid: &str,
    claims: AccessClaims,
    now: i64,
    ttl_secs: u64,
) -> String {
    let mut c = Claims::new(MintedClaims::from(claims));
    c.issued_at = Some(at(now));
    c.not_before = Some(at(now));
    c.expiration = Some(at(
        now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX))
    ));
    let header = Header::empty().with_key_id(kid);
    key.sign_token(&header, &c)
}

/// Checks `untrusted`'s signature with `alg` under `key`.
fn check_signature<A: Algorithm>(
    alg: &A,
    key: &A::VerifyingKey,
    untrusted: &UntrustedToken<'_>,
) -> Result<Token<AccessClaims>, TokenError> {
    alg.validator::<AccessClaims>(key)
        .validate(untrusted)
        .map_err(|e| match e {
            jwt_compact::ValidationError::InvalidSignature => TokenError::BadSignature,
            jwt_compact::ValidationError::AlgorithmMismatch { .. } => {
                TokenError::UnsupportedAlgorithm
            }
            _ => TokenError::Malformed,
        })
}

/// A token whose signature and time window have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub claims: AccessClaims,
    pub expires_at: i64,
    pub kid: String,
}

/// Verification keys by `kid`, each of one algorithm; several at once so keys can rotate.
/// A key may be bound to an issuer (keys learned from a settler's JWKS): tokens it verifies
/// must then name that `iss`.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct KeySet {
    keys: HashMap<String, VerifyKey>,
    /// `kid` -> the only `iss` its tokens may carry.
    issuers: HashMap<String, String>,
}

impl KeySet {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, kid: impl Into<String>, key: impl Into<VerifyKey>) {
        let kid = kid.into();
        self.issuers.remove(&kid);
        self.keys.insert(kid, key.into());
    }
    /// Adds a key whose tokens are accepted only when their `iss` is `issuer`.
    pub fn insert_for_issuer(
        &mut self,
        kid: impl Into<String>,
        key: impl Into<VerifyKey>,
        issuer: impl Into<String>,
    ) {
        let kid = kid.into();
        self.issuers.insert(kid.clone(), issuer.into());
        self.keys.insert(kid, key.into());
    }
    /// This set with `other`'s keys added where this set has no key of that `kid` (the
    /// keys of this set win: configured keys over learned ones).
    pub fn merged_under(&self, other: &KeySet) -> KeySet {
        let mut out = self.clone();
        for (kid, key) in &other.keys {
            if out.keys.contains_key(kid) {
                continue;
            }
            out.keys.insert(kid.clone(), *key);
            if let Some(iss) = other.issuers.get(kid) {
                out.issuers.insert(kid.clone(), iss.clone());
            }
        }
        out
    }
    pub fn get(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.get(kid)
    }
    /// Every `(kid, key)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &VerifyKey)> {
        self.keys.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Hex of the first 8 bytes of SHA-256 over every (kid, key), in kid order (an Ed25519
    /// key is tagged with its algorithm; a secp256k1 key is its compressed SEC1 bytes):
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
                if let VerifyKey::Ed25519(_) = key {
                    h.update(b"EdDSA");
                }
                h.update(key.to_bytes());
                if let Some(iss) = self.issuers.get(kid) {
                    h.update(b"iss");
                    h.update((iss.len() as u64).to_le_bytes());
                    h.update(iss.as_bytes());
                }
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
        let named = TokenAlg::from_jws_name(untrusted.algorithm())
            .ok_or(TokenError::UnsupportedAlgorithm)?;
        let kid = untrusted
            .header()
            .key_id
            .as_deref()
            .ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        // The key decides the algorithm, never the token: an EdDSA token naming a
        // secp256k1 key's kid (or the reverse) is refused before any signature check.
        if named != key.alg() {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        let checked = match key {
            VerifyKey::Es256k(k) => {
                check_signature(&Es256k::<sha2::Sha256>::default(), k, &untrusted)?
            }
            VerifyKey::Ed25519(k) => check_signature(&Ed25519, k, &untrusted)?,
        };
        let claims = checked.claims();
        // A key bound to an issuer opens nothing another issuer signed with it.
        if let Some(iss) = self.issuers.get(kid) {
            if claims.custom.iss != *iss {
                return Err(TokenError::UnknownKey);
            }
        }
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

/// Most keys taken from one JWKS document (a settler publishes one or two).
pub const MAX_JWKS_KEYS: usize = 16;

/// The keys of a JWKS document (`{"keys": [JWK, ...]}`, as the settler's
/// `/.well-known/jwks.json` serves it), each bound to `issuer`: `(keys, skipped)`, where
/// `skipped` counts the entries that are no key of a supported algorithm, or repeat a `kid`.
/// An error when the document is no JWKS or has more than [`MAX_JWKS_KEYS`] keys.
pub fn jwks_keys(doc: &[u8], issuer: &str) -> Result<(KeySet, usize), &'static str> {
    let doc: serde_json::Value = serde_json::from_slice(doc).map_err(|_| "not JSON")?;
    let list = doc
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("no \"keys\" array")?;
    if list.len() > MAX_JWKS_KEYS {
        return Err("more keys than the filter takes (16)");
    }
    let mut set = KeySet::new();
    let mut skipped = 0;
    for jwk in list {
        match VerifyKey::from_jwk(jwk) {
            Ok((kid, key)) if set.get(&kid).is_none() => set.insert_for_issuer(kid, key, issuer),
            _ => skipped += 1,
        }
    }
    Ok((set, skipped))
}

/// Parses a SEC1 public key given as hex (compressed 33 or uncompressed 65 bytes).
pub fn verifying_key_from_hex(hex: &str) -> Option<VerifyingKey> {
    let bytes = alloy_primitives::hex::decode(hex.trim()).ok()?;
    VerifyingKey::from_sec1_bytes(&bytes).ok()
}

/// Compressed SEC1 hex of a public key, the form the filter config takes.
pub fn verifying_key_to_hex(key: &VerifyingKey) -> String {
    VerifyKey::Es256k(*key).to_hex()
}

/// The `kid` the settler uses for a secp256k1 key ([`VerifyKey::key_id`]: hex of the first
/// 8 bytes of SHA-256 over the compressed public key).
pub fn key_id(key: &VerifyingKey) -> String {
    VerifyKey::Es256k(*key).key_id()
}

/// Reads a token signing key: hex of 32 bytes, optional 0x, surrounding whitespace ignored.
pub fn signing_key_from_hex(hex: &str) -> Option<SigningKey> {
    let bytes = alloy_primitives::hex::decode(hex.trim()).ok()?;
    SigningKey::from_slice(&bytes).ok()
}

/// JWK (RFC 7517) of a secp256k1 public key, as `/.well-known/jwks.json` lists it.
pub fn jwk(kid: &str, key: &VerifyingKey) -> serde_json::Value {
    VerifyKey::Es256k(*key).jwk(kid)
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
    fn a_minted_token_names_its_route_as_audience_and_still_verifies() {
        let now = 1_800_000_000;
        let t = mint(&key(1), "k1", claims(), now, 300);
        let payload = t.split('.').nth(1).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&crate::b64::decode(payload).unwrap()).unwrap();
        assert_eq!(json["aud"], "weather");
        assert_eq!(json["route"], "weather");
        assert_eq!(keys().verify(&t, now, 5).unwrap().claims, claims());
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

    fn ed_key(b: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn eddsa_tokens_verify_beside_es256k_and_tampering_is_caught() {
        let now = 1_800_000_000;
        let mut ks = keys();
        ks.insert("e1", ed_key(1).verifying_key());
        let t = mint(&ed_key(1), "e1", claims(), now, 300);
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                t.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "EdDSA");
        let v = ks.verify(&t, now + 10, 5).unwrap();
        assert_eq!((v.claims, v.kid.as_str()), (claims(), "e1"));
        // ES256K tokens still verify in the same set.
        assert!(ks
            .verify(&mint(&key(1), "k1", claims(), now, 300), now, 5)
            .is_ok());
        // The enum signer mints the same token as the raw key.
        let sk = TokenSigningKey::Ed25519(ed_key(1));
        assert_eq!(mint(&sk, "e1", claims(), now, 300), t);
        // One flipped signature bit; another Ed25519 key under the same kid.
        let mut bytes = t.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(ks.verify(&flipped, now, 5), Err(TokenError::BadSignature));
        let forged = mint(&ed_key(2), "e1", claims(), now, 300);
        assert_eq!(ks.verify(&forged, now, 5), Err(TokenError::BadSignature));
        assert_eq!(
            ks.verify(&t, now + 400, 5),
            Err(TokenError::Expired),
            "time window as for ES256K"
        );
    }

    #[test]
    fn the_key_decides_the_algorithm_not_the_token() {
        let now = 1_800_000_000;
        let mut ks = keys();
        ks.insert("e1", ed_key(1).verifying_key());
        // An EdDSA token naming a secp256k1 kid, and an ES256K token naming an Ed25519 kid.
        let ed_on_k1 = mint(&ed_key(1), "k1", claims(), now, 300);
        assert_eq!(
            ks.verify(&ed_on_k1, now, 5),
            Err(TokenError::UnsupportedAlgorithm)
        );
        let es_on_e1 = mint(&key(1), "e1", claims(), now, 300);
        assert_eq!(
            ks.verify(&es_on_e1, now, 5),
            Err(TokenError::UnsupportedAlgorithm)
        );
        // A key set of only ES256K keys refuses an EdDSA token by its kid.
        let t = mint(&ed_key(1), "e1", claims(), now, 300);
        assert_eq!(keys().verify(&t, now, 5), Err(TokenError::UnknownKey));
    }

    #[test]
    fn a_key_bound_to_an_issuer_verifies_only_its_tokens() {
        let now = 1_800_000_000;
        let mut learned = KeySet::new();
        learned.insert_for_issuer("e1", ed_key(1).verifying_key(), "settler");
        learned.insert_for_issuer("k1", ed_key(2).verifying_key(), "settler");
        let t = mint(&ed_key(1), "e1", claims(), now, 300);
        assert!(learned.verify(&t, now, 5).is_ok());
        let mut other = claims();
        other.iss = "someone-else".into();
        let foreign = mint(&ed_key(1), "e1", other, now, 300);
        assert_eq!(
            learned.verify(&foreign, now, 5),
            Err(TokenError::UnknownKey)
        );
        // Configured keys win a kid both name; the learned ones fill in the rest.
        let all = keys().merged_under(&learned);
        assert_eq!(all.len(), 3);
        assert!(all
            .verify(&mint(&key(1), "k1", claims(), now, 300), now, 5)
            .is_ok());
        assert!(all.verify(&t, now, 5).is_ok());
        assert_eq!(all.verify(&foreign, now, 5), Err(TokenError::UnknownKey));
        let mut unbound = KeySet::new();
        unbound.insert("e1", ed_key(1).verifying_key());
        assert_ne!(unbound.fingerprint(), {
            let mut b = KeySet::new();
            b.insert_for_issuer("e1", ed_key(1).verifying_key(), "settler");
            b.fingerprint()
        });
    }

    #[test]
    fn jwks_documents_give_issuer_bound_keys() {
        let ed = VerifyKey::from(ed_key(1).verifying_key());
        let es = VerifyKey::from(*key(1).verifying_key());
        let doc = serde_json::json!({"keys": [ed.jwk("e1"), es.jwk("k1"), {"kty": "RSA", "kid": "r"}, ed.jwk("e1")]});
        let (set, skipped) = jwks_keys(doc.to_string().as_bytes(), "settler").unwrap();
        assert_eq!((set.len(), skipped), (2, 2));
        let now = 1_800_000_000;
        let t = mint(&ed_key(1), "e1", claims(), now, 300);
        assert!(set.verify(&t, now, 5).is_ok());
        let (strict, _) = jwks_keys(doc.to_string().as_bytes(), "other").unwrap();
        assert_eq!(strict.verify(&t, now, 5), Err(TokenError::UnknownKey));
        assert!(jwks_keys(b"[]", "s").is_err());
        assert!(jwks_keys(b"nope", "s").is_err());
        let many = serde_json::json!({"keys": vec![ed.jwk("e"); MAX_JWKS_KEYS + 1]});
        assert!(jwks_keys(many.to_string().as_bytes(), "s").is_err());
    }

    #[test]
    fn fingerprint_tells_the_algorithms_apart() {
        let mut a = KeySet::new();
        a.insert("k", ed_key(1).verifying_key());
        let mut b = KeySet::new();
        b.insert("k", ed_key(2).verifying_key());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), keys().fingerprint());
    }

    #[test]
    fn key_hex_round_trip() {
        let k = *key(3).verifying_key();
        assert_eq!(verifying_key_from_hex(&verifying_key_to_hex(&k)), Some(k));
        assert_eq!(jwk("k", &k)["crv"], "secp256k1");
    }
}
