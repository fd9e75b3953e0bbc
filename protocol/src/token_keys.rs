//! Access-token keys of either signature algorithm: ES256K (secp256k1, the first tokens)
//! and EdDSA (Ed25519, half the cost of a check in the filter's V8: bench/results/verify.md).
//!
//! One type per role: [`TokenSigningKey`] (the settler's secret), [`VerifyKey`] (what the
//! filter trusts, one per `kid`). Both carry their algorithm, so a token is only ever checked
//! with the algorithm its key was configured for (no algorithm confusion).
//!
//! Text forms: both secrets are 32 bytes of hex (a secp256k1 scalar, or an Ed25519 seed);
//! public keys are hex too (SEC1 compressed/uncompressed for ES256K, the 32-byte point for
//! Ed25519), and JWKs (RFC 7517 / RFC 8037) for `/.well-known/jwks.json`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// A token signature algorithm, by its JWS `alg` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenAlg {
    /// `ES256K`: ECDSA over secp256k1 with SHA-256.
    Es256k,
    /// `EdDSA`: Ed25519.
    EdDsa,
}

impl TokenAlg {
    pub const ALL: [TokenAlg; 2] = [TokenAlg::Es256k, TokenAlg::EdDsa];

    /// The JWS `alg` header value.
    pub fn jws_name(self) -> &'static str {
        match self {
            TokenAlg::Es256k => "ES256K",
            TokenAlg::EdDsa => "EdDSA",
        }
    }

    /// The algorithm a JWS `alg` header names, exactly (JWS names are case-sensitive).
    pub fn from_jws_name(name: &str) -> Option<TokenAlg> {
        TokenAlg::ALL.into_iter().find(|a| a.jws_name() == name)
    }
}

/// A public key the filter verifies tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyKey {
    Es256k(k256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl From<k256::ecdsa::VerifyingKey> for VerifyKey {
    fn from(k: k256::ecdsa::VerifyingKey) -> Self {
        VerifyKey::Es256k(k)
    }
}

impl From<ed25519_dalek::VerifyingKey> for VerifyKey {
    fn from(k: ed25519_dalek::VerifyingKey) -> Self {
        VerifyKey::Ed25519(k)
    }
}

impl VerifyKey {
    pub fn alg(&self) -> TokenAlg {
        match self {
            VerifyKey::Es256k(_) => TokenAlg::Es256k,
            VerifyKey::Ed25519(_) => TokenAlg::EdDsa,
        }
    }

    /// Canonical bytes: compressed SEC1 (33) for secp256k1, the 32-byte point for Ed25519.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            VerifyKey::Es256k(k) => k.to_encoded_point(true).as_bytes().to_vec(),
            VerifyKey::Ed25519(k) => k.to_bytes().to_vec(),
        }
    }

    /// `0x` + hex of [`VerifyKey::to_bytes`], the form the filter config takes.
    pub fn to_hex(&self) -> String {
        format!("0x{}", alloy_primitives::hex::encode(self.to_bytes()))
    }

    /// Parses a public key of `alg` from hex (optional `0x`): SEC1 (33 or 65 bytes) for
    /// ES256K, 32 bytes for EdDSA. Ed25519 points of small order are refused: any signature
    /// "verifies" under them.
    pub fn from_hex(alg: TokenAlg, hex: &str) -> Option<VerifyKey> {
        let bytes = alloy_primitives::hex::decode(hex.trim()).ok()?;
        Self::from_bytes(alg, &bytes)
    }

    fn from_bytes(alg: TokenAlg, bytes: &[u8]) -> Option<VerifyKey> {
        match alg {
            TokenAlg::Es256k => k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .ok()
                .map(VerifyKey::Es256k),
            TokenAlg::EdDsa => {
                let raw: [u8; 32] = bytes.try_into().ok()?;
                let k = ed25519_dalek::VerifyingKey::from_bytes(&raw).ok()?;
                (!k.is_weak()).then_some(VerifyKey::Ed25519(k))
            }
        }
    }

    /// The `kid` the settler gives this key: hex of the first 8 bytes of SHA-256 over
    /// [`VerifyKey::to_bytes`], so the filter config and the settler agree without
    /// coordination.
    pub fn key_id(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.to_bytes());
        alloy_primitives::hex::encode(&digest[..8])
    }

    /// The key's JWK (RFC 7517; OKP per RFC 8037 for Ed25519), as the settler's
    /// `/.well-known/jwks.json` lists it. `x402_public_key` is the hex the filter config takes.
    pub fn jwk(&self, kid: &str) -> Value {
        let alg = self.alg().jws_name();
        match self {
            VerifyKey::Es256k(k) => {
                let p = k.to_encoded_point(false);
                let x = p.x().map(|x| URL_SAFE_NO_PAD.encode(x)).unwrap_or_default();
                let y = p.y().map(|y| URL_SAFE_NO_PAD.encode(y)).unwrap_or_default();
                serde_json::json!({"kty": "EC", "crv": "secp256k1", "alg": alg, "use": "sig", "kid": kid, "x": x, "y": y, "x402_public_key": self.to_hex()})
            }
            VerifyKey::Ed25519(k) => {
                let x = URL_SAFE_NO_PAD.encode(k.to_bytes());
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": alg, "use": "sig", "kid": kid, "x": x, "x402_public_key": self.to_hex()})
            }
        }
    }

    /// Reads one JWK of a JWKS: `(kid, key)`. Needs `kid`, and `kty`/`crv` of a supported
    /// algorithm (`alg`, when present, must agree); the coordinates are read from `x` (and
    /// `y`), never from the informative `x402_public_key`.
    pub fn from_jwk(jwk: &Value) -> Result<(String, VerifyKey), JwkError> {
        let field = |name: &'static str| jwk.get(name).and_then(Value::as_str);
        let kid = field("kid").ok_or(JwkError::Missing("kid"))?;
        let coord = |name: &'static str| -> Result<Vec<u8>, JwkError> {
            let text = field(name).ok_or(JwkError::Missing(name))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| JwkError::BadKey("coordinates are not base64url"))
        };
        let alg = match (field("kty"), field("crv")) {
            (Some("EC"), Some("secp256k1")) => TokenAlg::Es256k,
            (Some("OKP"), Some("Ed25519")) => TokenAlg::EdDsa,
            _ => return Err(JwkError::Unsupported),
        };
        if let Some(named) = field("alg") {
            if named != alg.jws_name() {
                return Err(JwkError::Unsupported);
            }
        }
        let key = match alg {
            TokenAlg::Es256k => {
                let (x, y) = (coord("x")?, coord("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwkError::BadKey("x and y must be 32 bytes each"));
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(0x04);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                Self::from_bytes(alg, &sec1)
            }
            TokenAlg::EdDsa => Self::from_bytes(alg, &coord("x")?),
        }
        .ok_or(JwkError::BadKey("not a valid public key of its curve"))?;
        Ok((kid.to_string(), key))
    }
}

/// Why a JWK was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("JWK has no {0}")]
    Missing(&'static str),
    #[error("JWK is not a key of ES256K (EC secp256k1) or EdDSA (OKP Ed25519)")]
    Unsupported,
    #[error("JWK key is invalid: {0}")]
    BadKey(&'static str),
}

/// The settler's token signing key.
#[derive(Clone)]
pub enum TokenSigningKey {
    Es256k(k256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl From<k256::ecdsa::SigningKey> for TokenSigningKey {
    fn from(k: k256::ecdsa::SigningKey) -> Self {
        TokenSigningKey::Es256k(k)
    }
}

impl From<ed25519_dalek::SigningKey> for TokenSigningKey {
    fn from(k: ed25519_dalek::SigningKey) -> Self {
        TokenSigningKey::Ed25519(k)
    }
}

impl TokenSigningKey {
    /// Reads a secret of `alg` from 32 bytes of hex (optional `0x`, whitespace ignored): the
    /// secp256k1 scalar, or the Ed25519 seed (RFC 8032 private key).
    pub fn from_hex(alg: TokenAlg, hex: &str) -> Option<TokenSigningKey> {
        let bytes = alloy_primitives::hex::decode(hex.trim()).ok()?;
        let raw: [u8; 32] = bytes.as_slice().try_into().ok()?;
        Self::from_secret(alg, &raw)
    }

    /// The key of `alg` with secret `raw`; `None` for the (vanishingly rare) 32 bytes that
    /// are no secp256k1 scalar. Any 32 bytes are an Ed25519 seed.
    pub fn from_secret(alg: TokenAlg, raw: &[u8; 32]) -> Option<TokenSigningKey> {
        match alg {
            TokenAlg::Es256k => k256::ecdsa::SigningKey::from_slice(raw)
                .ok()
                .map(TokenSigningKey::Es256k),
            TokenAlg::EdDsa => Some(TokenSigningKey::Ed25519(
                ed25519_dalek::SigningKey::from_bytes(raw),
            )),
        }
    }

    /// Hex of the 32-byte secret, the key file's content.
    pub fn secret_hex(&self) -> String {
        match self {
            TokenSigningKey::Es256k(k) => alloy_primitives::hex::encode(k.to_bytes()),
            TokenSigningKey::Ed25519(k) => alloy_primitives::hex::encode(k.to_bytes()),
        }
    }

    pub fn alg(&self) -> TokenAlg {
        self.verifying_key().alg()
    }

    pub fn verifying_key(&self) -> VerifyKey {
        match self {
            TokenSigningKey::Es256k(k) => VerifyKey::Es256k(*k.verifying_key()),
            TokenSigningKey::Ed25519(k) => VerifyKey::Ed25519(k.verifying_key()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_names_are_exact() {
        assert_eq!(TokenAlg::from_jws_name("EdDSA"), Some(TokenAlg::EdDsa));
        assert_eq!(TokenAlg::from_jws_name("ES256K"), Some(TokenAlg::Es256k));
        assert_eq!(TokenAlg::from_jws_name("eddsa"), None);
        assert_eq!(TokenAlg::from_jws_name("ES256"), None);
    }

    #[test]
    fn hex_and_jwk_round_trip_for_both_algorithms() {
        for alg in TokenAlg::ALL {
            let sk = TokenSigningKey::from_hex(alg, &"07".repeat(32)).unwrap();
            assert_eq!(sk.alg(), alg);
            let again = TokenSigningKey::from_hex(alg, &sk.secret_hex()).unwrap();
            assert_eq!(again.verifying_key(), sk.verifying_key());
            let vk = sk.verifying_key();
            assert_eq!(VerifyKey::from_hex(alg, &vk.to_hex()), Some(vk));
            let jwk = vk.jwk(&vk.key_id());
            assert_eq!(jwk["alg"], alg.jws_name());
            assert_eq!(VerifyKey::from_jwk(&jwk), Ok((vk.key_id(), vk)));
        }
        // The same 32 secret bytes are different keys under each algorithm.
        let a = TokenSigningKey::from_hex(TokenAlg::Es256k, &"07".repeat(32)).unwrap();
        let b = TokenSigningKey::from_hex(TokenAlg::EdDsa, &"07".repeat(32)).unwrap();
        assert_ne!(a.verifying_key().key_id(), b.verifying_key().key_id());
    }

    #[test]
    fn ed25519_jwk_is_okp() {
        let vk = TokenSigningKey::from_secret(TokenAlg::EdDsa, &[9; 32])
            .unwrap()
            .verifying_key();
        let jwk = vk.jwk("k");
        assert_eq!(
            (&jwk["kty"], &jwk["crv"]),
            (&"OKP".into(), &"Ed25519".into())
        );
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43, "32 bytes base64url");
        assert!(jwk.get("y").is_none());
    }

    #[test]
    fn bad_keys_are_refused() {
        // Wrong length for Ed25519 (a secp256k1 key's 33 bytes).
        let es = TokenSigningKey::from_secret(TokenAlg::Es256k, &[7; 32])
            .unwrap()
            .verifying_key();
        assert_eq!(VerifyKey::from_hex(TokenAlg::EdDsa, &es.to_hex()), None);
        // The identity point (small order): every signature would verify.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            VerifyKey::from_hex(TokenAlg::EdDsa, &alloy_primitives::hex::encode(identity)),
            None
        );
        assert_eq!(VerifyKey::from_hex(TokenAlg::EdDsa, "0xzz"), None);
        assert_eq!(
            TokenSigningKey::from_hex(TokenAlg::EdDsa, "0x07").map(|k| k.alg()),
            None
        );
        // JWKs: unknown type, alg disagreeing with the curve, missing or bad coordinates.
        let ed = TokenSigningKey::from_secret(TokenAlg::EdDsa, &[9; 32])
            .unwrap()
            .verifying_key();
        let mut j = ed.jwk("k");
        j["alg"] = "ES256K".into();
        assert_eq!(VerifyKey::from_jwk(&j), Err(JwkError::Unsupported));
        let mut j = ed.jwk("k");
        j["kty"] = "RSA".into();
        assert_eq!(VerifyKey::from_jwk(&j), Err(JwkError::Unsupported));
        let mut j = ed.jwk("k");
        j.as_object_mut().unwrap().remove("kid");
        assert_eq!(VerifyKey::from_jwk(&j), Err(JwkError::Missing("kid")));
        let mut j = ed.jwk("k");
        j["x"] = "!!".into();
        assert!(matches!(VerifyKey::from_jwk(&j), Err(JwkError::BadKey(_))));
        let mut j = es.jwk("k");
        j.as_object_mut().unwrap().remove("y");
        assert_eq!(VerifyKey::from_jwk(&j), Err(JwkError::Missing("y")));
    }
}
