//! The verified tokens every worker of one Envoy shares (proxy-wasm shared data), so that a
//! token one worker verified -- or relayed freshly minted from the settler -- costs the
//! other workers no signature check: the paying client's first request on any worker is a
//! shared-table hit.
//!
//! Shared data has no delete in the proxy-wasm 0.2.1 ABI, so the table is bounded by its
//! shape: `slots` keys `x402.tokens.<settler cluster>.<key set fingerprint>.<i>`, a token
//! stored in the slot its hash names (direct mapped: a newer token takes the slot of an
//! older one). A value is `<token>\n<grant JSON>`, the token at most
//! [`MAX_TOKEN_LEN`] bytes, so the table never exceeds `slots` x ~4.5 KB (about 1 KB a slot
//! with the settler's ~600-byte tokens). An entry past its `exp` is never served.
//!
//! A lookup compares the whole stored token with the presented one, so a slot shared by two
//! tokens is a miss, never the other token's grant. The fingerprint of the trusted keys in
//! the key names keeps configurations with other keys (another plugin on the same VM id, a
//! key rotation) from reading each other's verdicts. Only tokens whose signature was
//! checked are written. Revocation still wins: the request flow checks the revocation list
//! whatever the verdict's source.

use std::hash::BuildHasher;

use serde::Deserialize;
use x402_protocol::token::{KeySet, MAX_TOKEN_LEN};

use crate::cache::TailHash;
use crate::grant::Grant;

pub(crate) struct SharedTokens {
    /// `x402.tokens.<cluster>.<fingerprint>.`
    prefix: String,
    /// 0: no shared table.
    slots: u64,
}

impl SharedTokens {
    pub(crate) fn new(cluster: &str, keys: &KeySet, slots: usize) -> SharedTokens {
        SharedTokens {
            prefix: format!("x402.tokens.{cluster}.{}.", keys.fingerprint()),
            slots: slots as u64,
        }
    }

    /// The shared-data key of `token`'s slot; `None` when the table is off or the token
    /// could never have been verified (too long).
    pub(crate) fn slot_key(&self, token: &str) -> Option<String> {
        if self.slots == 0 || token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        // The token's tail is its signature: pseudorandom, and chosen by the signer only.
        let slot = TailHash.hash_one(token) % self.slots;
        Some(format!("{}{slot}", self.prefix))
    }

    /// The value stored for a verified `token`.
    pub(crate) fn entry(token: &str, grant: &Grant) -> Vec<u8> {
        let mut v = Vec::with_capacity(token.len() + 256);
        v.extend_from_slice(token.as_bytes());
        v.push(b'\n');
        v.extend_from_slice(&grant.encode());
        v
    }

    /// The grant in `entry` if it was stored for exactly `token`.
    pub(crate) fn grant_in(entry: &[u8], token: &str) -> Option<Grant> {
        let rest = entry.strip_prefix(token.as_bytes())?.strip_prefix(b"\n")?;
        Grant::decode(rest)
    }
}

/// The `access_token` of the settler's success body, if it carries one.
pub(crate) fn minted_token(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Minted {
        access_token: String,
    }
    serde_json::from_slice::<Minted>(body)
        .ok()
        .map(|m| m.access_token)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x402_protocol::{Address, Network, U256};

    use crate::test_fixtures::sample_config;

    fn grant() -> Grant {
        Grant::new(
            "weather".into(),
            Network::eip155(84532),
            Address::repeat_byte(0x22),
            U256::from(10_000u64),
            Address::repeat_byte(0x11),
            1_800_000_300,
            "s-1".into(),
        )
    }

    #[test]
    fn slots_are_bounded_and_named_by_cluster_and_keys() {
        let cfg = sample_config();
        let t = SharedTokens::new("x402_settler", &cfg.keys, 8);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let key = t.slot_key(&format!("a.b.signature{i}")).unwrap();
            let prefix = format!("x402.tokens.x402_settler.{}.", cfg.keys.fingerprint());
            let slot: u64 = key.strip_prefix(&prefix).unwrap().parse().unwrap();
            assert!(slot < 8);
            seen.insert(slot);
        }
        assert_eq!(seen.len(), 8, "tokens spread over every slot");
        assert_eq!(t.slot_key(""), None);
        assert_eq!(t.slot_key(&"a".repeat(MAX_TOKEN_LEN + 1)), None);
        let off = SharedTokens::new("x402_settler", &cfg.keys, 0);
        assert_eq!(off.slot_key("a.b.c"), None);
        let other = SharedTokens::new("other_cluster", &cfg.keys, 8);
        assert_ne!(other.slot_key("a.b.c"), t.slot_key("a.b.c"));
    }

    #[test]
    fn an_entry_serves_its_own_token_only() {
        let e = SharedTokens::entry("a.b.sig", &grant());
        assert_eq!(SharedTokens::grant_in(&e, "a.b.sig"), Some(grant()));
        assert_eq!(SharedTokens::grant_in(&e, "a.b.si"), None, "a prefix");
        assert_eq!(SharedTokens::grant_in(&e, "a.b.sig2"), None);
        assert_eq!(SharedTokens::grant_in(b"a.b.sig\n{}", "a.b.sig"), None);
        assert_eq!(SharedTokens::grant_in(b"", "a.b.sig"), None);
    }

    #[test]
    fn the_minted_token_is_read_from_the_settlers_body() {
        assert_eq!(
            minted_token(br#"{"access_token":"t","expires_in":300}"#),
            Some("t".into())
        );
        assert_eq!(minted_token(br#"{"access_token":""}"#), None);
        assert_eq!(minted_token(br#"{"error":"x"}"#), None);
        assert_eq!(minted_token(b"not json"), None);
    }
}
