//! What a verified access token grants at the edge: the claims the filter needs for a
//! request, computed once per token and shared (through the cache) by every request that
//! presents it. [`Grant::encode`]/[`Grant::decode`] are its form in the table the workers
//! share (see `shared_tokens`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
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

    /// The grant as JSON for the shared table; the payer goes checksummed, so that a worker
    /// reading it computes no keccak.
    pub fn encode(&self) -> Vec<u8> {
        let w = Wire {
            route: Cow::Borrowed(&self.route),
            network: self.network,
            asset: self.asset,
            amount: self.amount,
            payer: Cow::Borrowed(&self.payer_eip55),
            exp: self.expires_at,
            jti: Cow::Borrowed(&self.settlement_id),
        };
        // Serialising strings, numbers and addresses cannot fail; an empty value (which
        // decodes to nothing) if it did.
        serde_json::to_vec(&w).unwrap_or_default()
    }

    /// A grant [`Grant::encode`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Grant> {
        let w: Wire<'_> = serde_json::from_slice(bytes).ok()?;
        let payer: Address = w.payer.parse().ok()?;
        Some(Grant {
            route: w.route.into_owned(),
            network: w.network,
            asset: w.asset,
            amount: w.amount,
            payer,
            expires_at: w.exp,
            settlement_id: w.jti.into_owned(),
            payer_eip55: w.payer.into_owned(),
        })
    }

    /// Same rule as verification: valid while `now <= exp + leeway`.
    pub fn expired(&self, now: i64, leeway: i64) -> bool {
        now > self.expires_at.saturating_add(leeway)
    }
}

/// [`Grant`] in the shared table: short names, the payer as its checksummed text.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(rename = "r", borrow)]
    route: Cow<'a, str>,
    #[serde(rename = "n")]
    network: Network,
    #[serde(rename = "a")]
    asset: Address,
    #[serde(rename = "v", with = "x402_protocol::u256_serde")]
    amount: U256,
    #[serde(rename = "p", borrow)]
    payer: Cow<'a, str>,
    #[serde(rename = "e")]
    exp: i64,
    #[serde(rename = "j", borrow)]
    jti: Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_form_round_trips_with_the_checksummed_payer() {
        let g = Grant::new(
            "weather".into(),
            Network::eip155(84532),
            Address::repeat_byte(0x22),
            U256::from(10_000u64),
            Address::repeat_byte(0xab),
            1_800_000_300,
            "0190-abc".into(),
        );
        let bytes = g.encode();
        assert_eq!(Grant::decode(&bytes), Some(g.clone()));
        assert!(String::from_utf8_lossy(&bytes).contains(&g.payer_eip55));
        assert_eq!(Grant::decode(b""), None);
        assert_eq!(Grant::decode(b"{\"r\":\"weather\"}"), None);
    }
}
