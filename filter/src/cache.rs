//! Per-worker cache of verified tokens, keyed by the token string, so the ~170 us ES256K
//! signature check runs once per token and worker. Bounded: when full, an insert evicts the
//! oldest entry (first in, first out: the filter's tokens share one TTL, so the oldest is
//! also the first to expire), in O(1) -- no pass over the entries. An entry never outlives
//! its token's `exp`: an expired one is removed when looked up.
//!
//! A hit costs one hash of the token's tail and one comparison of the whole token, and
//! hands out the shared [`Grant`] (which carries the precomputed identity header values):
//! no allocation, no keccak.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

use crate::grant::Grant;

struct Entry {
    grant: Rc<Grant>,
    seq: u64,
}

/// Hashes a token by its length and its last 16 bytes instead of SipHash over all ~600:
/// a JWT ends with its signature, which is pseudorandom, and only tokens whose signature
/// verified are ever inserted, so clients cannot pile entries into one bucket. A lookup
/// still compares the whole token.
#[derive(Clone, Copy, Default)]
pub struct TailHash;

impl BuildHasher for TailHash {
    type Hasher = TailHasher;
    fn build_hasher(&self) -> TailHasher {
        TailHasher(0x9e37_79b9_7f4a_7c15)
    }
}

pub struct TailHasher(u64);

const MUL: u64 = 0xff51_afd7_ed55_8ccd;

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = &bytes[bytes.len().saturating_sub(16)..];
        let mut buf = [0u8; 16];
        buf[16 - tail.len()..].copy_from_slice(tail);
        let (lo, hi) = buf.split_at(8);
        let lo = u64::from_le_bytes(lo.try_into().unwrap_or_default());
        let hi = u64::from_le_bytes(hi.try_into().unwrap_or_default());
        let h = (self.0 ^ bytes.len() as u64 ^ lo).wrapping_mul(MUL);
        self.0 = (h.rotate_left(31) ^ hi).wrapping_mul(MUL);
    }

    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(MUL);
    }

    fn finish(&self) -> u64 {
        // murmur3's fmix64: every input bit reaches the bucket index and the tag bits.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

pub struct TokenCache {
    capacity: usize,
    map: HashMap<Rc<str>, Entry, TailHash>,
    /// Insertion order; entries whose `seq` no longer matches the map are stale.
    order: VecDeque<(Rc<str>, u64)>,
    next_seq: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit(Rc<Grant>),
    /// Was cached, now past `exp` (+ leeway): removed.
    Expired,
    Miss,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            map: HashMap::with_hasher(TailHash),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Removes the oldest live entry: O(1) amortised (stale queue slots, left by removed or
    /// re-inserted tokens, are skipped; there are never more of them than live entries + 16).
    fn evict_oldest(&mut self) {
        while let Some((key, seq)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                self.map.remove(&key);
                return;
            }
        }
    }

    pub fn get(&mut self, token: &str, now: i64, leeway: i64) -> Lookup {
        match self.map.get(token) {
            None => Lookup::Miss,
            Some(e) if !e.grant.expired(now, leeway) => Lookup::Hit(e.grant.clone()),
            Some(_) => {
                self.map.remove(token);
                Lookup::Expired
            }
        }
    }

    pub fn insert(&mut self, token: &str, grant: impl Into<Rc<Grant>>) {
        if self.capacity == 0 {
            return;
        }
        let grant = grant.into();
        if self.map.len() >= self.capacity && !self.map.contains_key(token) {
            self.evict_oldest();
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let key: Rc<str> = Rc::from(token);
        self.order.push_back((key.clone(), seq));
        self.map.insert(key, Entry { grant, seq });
        if self.order.len() > 2 * self.capacity + 16 {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x402_protocol::{Address, Network, U256};

    fn grant(exp: i64) -> Grant {
        Grant::new(
            "r".into(),
            Network::eip155(1),
            Address::ZERO,
            U256::from(1u64),
            Address::ZERO,
            exp,
            "s".into(),
        )
    }

    #[test]
    fn hit_miss_and_expiry() {
        let mut c = TokenCache::new(10);
        assert_eq!(c.get("a", 0, 5), Lookup::Miss);
        c.insert("a", grant(100));
        assert!(matches!(c.get("a", 50, 5), Lookup::Hit(_)));
        assert!(matches!(c.get("a", 105, 5), Lookup::Hit(_)), "leeway");
        assert_eq!(c.get("a", 106, 5), Lookup::Expired);
        assert_eq!(c.get("a", 50, 5), Lookup::Miss, "expired entry was removed");
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_evicts_oldest_first() {
        let mut c = TokenCache::new(3);
        c.insert("a", grant(10));
        c.insert("b", grant(1000));
        c.insert("c", grant(1000));
        // Full: the oldest ("a") goes.
        c.insert("d", grant(1000));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("a", 20, 0), Lookup::Miss);
        // Full, nothing expired: the oldest ("b") goes.
        c.insert("e", grant(1000));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("b", 20, 0), Lookup::Miss);
        assert!(matches!(c.get("c", 20, 0), Lookup::Hit(_)));
        assert!(matches!(c.get("e", 20, 0), Lookup::Hit(_)));
        // Many inserts keep the order queue bounded.
        for i in 0..1000 {
            c.insert(&format!("t{i}"), grant(1000));
            c.insert("c", grant(1000));
        }
        assert!(c.len() <= 3);
        assert!(c.order.len() <= 2 * 3 + 16 + 1);
    }

    #[test]
    fn tail_hash_spreads_and_compares_whole_tokens() {
        let h = |s: &str| TailHash.hash_one(s);
        assert_ne!(h("a.b.sig1"), h("a.b.sig2"));
        assert_ne!(h("xx.0123456789abcdef"), h("y.0123456789abcdef"), "length");
        assert_ne!(h(""), h("a"));
        // Same tail and length, different heads: same hash, still distinct entries.
        let (t1, t2) = ("AAAA.0123456789abcdef", "BBBB.0123456789abcdef");
        assert_eq!(h(t1), h(t2));
        let mut c = TokenCache::new(10);
        c.insert(t1, grant(100));
        assert_eq!(c.get(t2, 0, 0), Lookup::Miss);
        c.insert(t2, grant(200));
        assert!(matches!(c.get(t1, 0, 0), Lookup::Hit(g) if g.expires_at == 100));
        assert!(matches!(c.get(t2, 0, 0), Lookup::Hit(g) if g.expires_at == 200));
    }

    #[test]
    fn zero_capacity_disables() {
        let mut c = TokenCache::new(0);
        c.insert("a", grant(100));
        assert_eq!(c.get("a", 0, 0), Lookup::Miss);
    }
}
