//! What a verified access token grants at the edge: the claims the filter needs for a
//! request, computed once per token and shared (through the cache) by every request that
//! presents it.

use x402_protocol::token::VerifiedToken;
use x402_protocol::{Address, Network, U256};

/// What a verified token grants: the claims the edge needs, kept in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub route: String,
    pub network: Network,
    pub asset: Address,
    pub amount: U256,
    pub payer: Address,
    pub expires_at: i64,
    /// The token's `jti`: the settler's settlement id.
    pub settlement_id: String,
    /// `payer` EIP-55 checksummed (a keccak), computed once per token for the
    /// `x-x402-payer` header rather than once per request.
    pub payer_eip55: String,
}

impl Grant {
    pub fn new(
        route: String,
        network: Network,
        asset: Address,
        amount: U256,
        payer: Address,
        expires_at: i64,
        settlement_id: String,
    ) -> Self {
        Grant {
            route,
            network,
            asset,
            amount,
            payer,
            expires_at,
            settlement_id,
            payer_eip55: payer.to_checksum(None),
        }
    }

    pub fn from_verified(v: &VerifiedToken) -> Self {
        Grant::new(
            v.claims.route.clone(),
            v.claims.network,
            v.claims.asset,
            v.claims.amount,
            v.claims.sub,
            v.expires_at,
            v.claims.jti.clone(),
        )
    }

    /// Same rule as verification: valid while `now <= exp + leeway`.
    pub fn expired(&self, now: i64, leeway: i64) -> bool {
        now > self.expires_at.saturating_add(leeway)
    }
}
