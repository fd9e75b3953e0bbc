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
            self.default_ttl
        }
    }

    /// A token for the stored payment `new`, valid from `now` for `ttl` seconds.
    pub(crate) fn mint(&self, new: &NewPayment, now: u64, ttl: u64) -> TokenResponse {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: new.payer,
            route: new.route.clone(),
            amount: new.value,
            asset: new.asset,
            network: new.network,
            jti: new.id.clone(),
        };
        let access_token = token::mint(&self.key, &self.kid, claims, now as i64, ttl);
        TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: ttl,
            settlement_id: new.id.clone(),
            payer: new.payer,
            network: new.network,
            route: new.route.clone(),
            amount: new.value,
            asset: new.asset,
        }
    }

    /// The JWKS entry of the signing key.
    pub(crate) fn jwk(&self) -> serde_json::Value {
        token::jwk(&self.kid, self.key.verifying_key())
    }
}
