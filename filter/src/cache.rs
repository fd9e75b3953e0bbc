//! Per-worker cache of verified tokens, keyed by the token string, so the ~170 us ES256K
//! signature check runs once per token and worker. Bounded: when full, expired entries go
//! first, then the oldest. An entry never outlives its token's `exp`.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::auth::Grant;

struct Entry {
    grant: Grant,
    seq: u64,
}

pub struct TokenCache {
    capacity: usize,
    map: HashMap<Rc<str>, Entry>,
    /// Insertion order; entries whose `seq` no longer matches the map are stale.
    order: VecDeque<(Rc<str>, u64)>,
    next_seq: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Hit(&'a Grant),
    /// Was cached, now past `exp` (+ leeway): removed.
    Expired,
    Miss,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&mut self, token: &str, now: i64, leeway: i64) -> Lookup<'_> {
        let expired = match self.map.get(token) {
            None => return Lookup::Miss,
            Some(e) => e.grant.expired(now, leeway),
        };
        if expired {
            self.map.remove(token);
            return Lookup::Expired;
        }
        match self.map.get(token) {
            Some(e) => Lookup::Hit(&e.grant),
            None => Lookup::Miss,
        }
    }

    pub fn insert(&mut self, token: &str, grant: Grant, now: i64, leeway: i64) {
        if self.capacity == 0 {
            return;
        }
        if !self.map.contains_key(token) && self.map.len() >= self.capacity {
            self.map.retain(|_, e| !e.grant.expired(now, leeway));
            while self.map.len() >= self.capacity {
                let Some((key, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                    self.map.remove(&key);
                }
            }
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
        Grant {
            route: "r".into(),
            network: Network::eip155(1),
            asset: Address::ZERO,
            amount: U256::from(1u64),
            payer: Address::ZERO,
            expires_at: exp,
            settlement_id: "s".into(),
        }
    }

    #[test]
    fn hit_miss_and_expiry() {
        let mut c = TokenCache::new(10);
        assert_eq!(c.get("a", 0, 5), Lookup::Miss);
        c.insert("a", grant(100), 0, 5);
        assert!(matches!(c.get("a", 50, 5), Lookup::Hit(_)));
        assert!(matches!(c.get("a", 105, 5), Lookup::Hit(_)), "leeway");
        assert_eq!(c.get("a", 106, 5), Lookup::Expired);
        assert_eq!(c.get("a", 50, 5), Lookup::Miss, "expired entry was removed");
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_evicts_expired_then_oldest() {
        let mut c = TokenCache::new(3);
        c.insert("a", grant(10), 0, 0);
        c.insert("b", grant(1000), 0, 0);
        c.insert("c", grant(1000), 0, 0);
        // Full: "a" is expired at t=20 and goes first.
        c.insert("d", grant(1000), 20, 0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("a", 20, 0), Lookup::Miss);
        // Full, nothing expired: the oldest ("b") goes.
        c.insert("e", grant(1000), 20, 0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("b", 20, 0), Lookup::Miss);
        assert!(matches!(c.get("c", 20, 0), Lookup::Hit(_)));
        assert!(matches!(c.get("e", 20, 0), Lookup::Hit(_)));
        // Many inserts keep the order queue bounded.
        for i in 0..1000 {
            c.insert(&format!("t{i}"), grant(1000), 20, 0);
            c.insert("c", grant(1000), 20, 0);
        }
        assert!(c.len() <= 3);
        assert!(c.order.len() <= 2 * 3 + 16 + 1);
    }

    #[test]
    fn zero_capacity_disables() {
        let mut c = TokenCache::new(0);
        c.insert("a", grant(100), 0, 0);
        assert_eq!(c.get("a", 0, 0), Lookup::Miss);
    }
}
