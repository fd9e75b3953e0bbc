//! Access tokens: ES256K JWTs for a route, minted once a payment is stored.

use k256::ecdsa::SigningKey;
use x402_protocol::settler_api::TokenResponse;
use x402_protocol::token::{self, AccessClaims};

use crate::store::NewPayment;

/// The token signing key and the lifetime rules.
pub(crate) struct Minter {
    pub(crate) key: SigningKey,
    pub(crate) kid: String,
    pub(crate) issuer: String,
    /// Lifetime when the requirement names none (`token_ttl_secs` 0).
    pub(crate) default_ttl: u64,
    /// Cap on any requirement's lifetime.
    pub(crate) max_ttl: u64,
}

impl Minter {
    pub(crate) fn new(key: SigningKey, issuer: String, default_ttl: u64, max_ttl: u64) -> Minter {
        let kid = token::key_id(key.verifying_key());
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
    /// nonces, claims serialised in a fixed order): a payment answered again gets the token
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

    /// The JWKS entry of the signing key.
    pub(crate) fn jwk(&self) -> serde_json::Value {
        token::jwk(&self.kid, self.key.verifying_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minting_is_deterministic_so_a_token_can_be_given_again() {
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let minter = Minter::new(key, "x402-settler".into(), 300, 3600);
        let p = crate::test_fixtures::new_payment("0190-abc");
        let first = minter.mint(&p, 1_700_000_000, 300);
        let again = minter.mint_at(&p, 1_700_000_000, 1_700_000_300, 1_700_000_100);
        assert_eq!(first.access_token, again.access_token);
        assert_eq!((first.expires_in, again.expires_in), (300, 200));
        assert_ne!(
            minter.mint(&p, 1_700_000_001, 300).access_token,
            first.access_token
        );
    }
}
