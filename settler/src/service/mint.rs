//! Access tokens: ES256K or EdDSA JWTs for a route (`--token-alg`), minted once a payment
//! is stored.

use x402_protocol::settler_api::TokenResponse;
use x402_protocol::token::{self, AccessClaims, KeySet, TokenSigningKey};

use crate::store::NewPayment;

/// The token signing key and the lifetime rules.
pub(crate) struct Minter {
    pub(crate) key: TokenSigningKey,
    pub(crate) kid: String,
    pub(crate) issuer: String,
    /// Lifetime when the requirement names none (`token_ttl_secs` 0).
    pub(crate) default_ttl: u64,
    /// Cap on any requirement's lifetime.
    pub(crate) max_ttl: u64,
}

impl Minter {
    pub(crate) fn new(
        key: impl Into<TokenSigningKey>,
        issuer: String,
        default_ttl: u64,
        max_ttl: u64,
    ) -> Minter {
        let key = key.into();
        let kid = key.verifying_key().key_id();
        Minter {
            key,
            kid,
            issuer,
            default_ttl,
            max_ttl,
        }
    }

    /// The lifetime of a token for a requirement asking `requested` seconds (0: default).
    pub(crate) fn ttl(&self, requested: u64) -> u64 {
        if requested > 0 {
            requested.min(self.max_ttl)
        } else {
            self.default_ttl.min(self.max_ttl)
        }
    }

    /// A token for the stored payment `new`, valid from `now` for `ttl` seconds.
    pub(crate) fn mint(&self, new: &NewPayment, now: u64, ttl: u64) -> TokenResponse {
        self.mint_at(new, now, now.saturating_add(ttl), now)
    }

    /// The token for `new` issued at `iat` and expiring at `exp`; `expires_in` counts from
    /// `now`. The same inputs give the same token byte for byte (ES256K with RFC 6979
    /// nonces or Ed25519, claims serialised in a fixed order): a payment answered again gets the token
    /// it got first.
    pub(crate) fn mint_at(&self, new: &NewPayment, iat: u64, exp: u64, now: u64) -> TokenResponse {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: new.payer,
            route: new.route.clone(),
            amount: new.value,
            asset: new.asset,
            network: new.network,
            jti: new.id.clone(),
        };
        let access_token = token::mint(
            &self.key,
            &self.kid,
            claims,
            iat as i64,
            exp.saturating_sub(iat),
        );
        TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: exp.saturating_sub(now),
            settlement_id: new.id.clone(),
            payer: new.payer,
            network: new.network,
            route: new.route.clone(),
            amount: new.value,
            asset: new.asset,
            transaction: None,
        }
    }

    /// The JWKS entry of the signing key (EC secp256k1, or OKP Ed25519).
    pub(crate) fn jwk(&self) -> serde_json::Value {
        self.key.verifying_key().jwk(&self.kid)
    }

    /// The one key the settler's own tokens verify under (token renewal checks them).
    pub(crate) fn key_set(&self) -> KeySet {
        let mut keys = KeySet::new();
        keys.insert(self.kid.clone(), self.key.verifying_key());
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minting_is_deterministic_so_a_token_can_be_given_again() {
        for alg in x402_protocol::token::TokenAlg::ALL {
            deterministic_for(alg);
        }
    }

    fn deterministic_for(alg: x402_protocol::token::TokenAlg) {
        let key = TokenSigningKey::from_secret(alg, &[7u8; 32]).unwrap();
        let minter = Minter::new(key, "x402-settler".into(), 300, 3600);
        assert_eq!(minter.jwk()["alg"], alg.jws_name());
        let p = crate::test_fixtures::new_payment("0190-abc");
        let first = minter.mint(&p, 1_700_000_000, 300);
        let again = minter.mint_at(&p, 1_700_000_000, 1_700_000_300, 1_700_000_100);
        assert_eq!(first.access_token, again.access_token);
        assert_eq!((first.expires_in, again.expires_in), (300, 200));
        assert_ne!(
            minter.mint(&p, 1_700_000_001, 300).access_token,
            first.access_token
        );
        let checked = minter
            .key_set()
            .verify(&first.access_token, 1_700_000_010, 0)
            .unwrap();
        assert_eq!(checked.claims.jti, "0190-abc");
    }
}
