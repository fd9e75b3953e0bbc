//! Payer facts: each payer's on-chain balance and permit nonce, and the ERC-3009 nonces seen
//! used, as of the last block a watcher applied ([`watch`]), so that acceptance does not read
//! them from the node for a payer it has seen recently.
//!
//! How an entry stays exact: it is filled by reads *at* the watcher's head block `B`, and
//! from then on every block's `Transfer`, `Approval`, `AuthorizationUsed` and
//! `AuthorizationCanceled` logs of the asset are applied to it in block order (a transfer
//! moves the balance, an approval makes the permit nonce unknown, an authorization event
//! adds its nonce). So a [`Snapshot`] is the payer's state at block `B`, and acceptance
//! pairs it with the payer's payments still open *or settled after `B`* (their funds are
//! still in a balance as of `B`), minus the open ones whose transfer is among the logs
//! applied ([`Snapshot::mined`]).
//!
//! Staleness is bounded: a network's facts are used only while its watcher's last good poll
//! is younger than `max_age`; past it (node down, watcher behind), or on a reorg, acceptance
//! reads the node as before. An ERC-3009 authorization's nonce is random, new with each
//! payment: the facts know it used only once a log showed it. The token API takes that word
//! (its access is granted ahead of settlement anyway); the facilitator still asks the node
//! (`service::NonceSource`). What a snapshot cannot know is a chain change newer than its
//! block - a transfer away, an authorization used or cancelled since the last poll (or, for
//! the token API, before the payer was first seen): such a payment is accepted as one whose
//! payer undoes it right after, and the same rules bound it - the exposure caps; the lane
//! checks the authorization again before signing; a failed settlement blocks the payer and
//! revokes the token. A refusal is never decided on cached facts alone: a balance that falls
//! short is read again from the node.

pub(crate) mod watch;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};

use crate::store::OpenPayment;
use x402_protocol::settler_api::SettlementState;

/// Transfers out of one payer kept per entry (to tell mined open payments apart); past it the
/// oldest is dropped, which only makes the balance check more careful (counted twice).
const MOVES_KEPT: usize = 256;
/// Authorization nonces seen used per entry; past it the entry is dropped (read again).
const NONCES_KEPT: usize = 1024;

/// One asset log, decoded ([`watch`] turns the node's logs into these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FactLog {
    Transfer {
        token: Address,
        from: Address,
        to: Address,
        value: U256,
        tx: B256,
    },
    /// `Approval(owner, ..)`: a permit (its nonce moved) or a plain `approve`.
    Approval { token: Address, owner: Address },
    /// `AuthorizationUsed` or `AuthorizationCanceled`.
    Authorization {
        token: Address,
        authorizer: Address,
        nonce: B256,
    },
}

/// A transfer out of the payer, applied to its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) tx: B256,
    pub(crate) to: Address,
    pub(crate) value: U256,
}

#[derive(Debug, Clone)]
struct Entry {
    balance: U256,
    /// `None` once an `Approval` of the owner was seen (a permit or `approve`).
    permit_nonce: Option<U256>,
    used: HashSet<B256>,
    moved: VecDeque<Moved>,
    last_used: u64,
}

/// A network's facts: the block applied last and the entries at that block.
#[derive(Debug, Default)]
struct NetFacts {
    /// (number, hash) of the last block applied; `None` until the watcher's first poll.
    head: Option<(u64, B256)>,
    live_at: Option<Instant>,
    entries: HashMap<(Address, Address), Entry>,
    /// Being filled now (one fill per payer at a time).
    filling: HashSet<(Address, Address)>,
}

/// A payer's facts as of `block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) block: u64,
    pub(crate) balance: U256,
    pub(crate) permit_nonce: Option<U256>,
    /// Whether the ERC-3009 nonce asked about was seen used or cancelled.
    pub(crate) nonce_used: bool,
    moved: Vec<Moved>,
}

impl Snapshot {
    /// The value of `open` payments (submitted) whose transfer is among the logs applied to
    /// this snapshot: already out of its balance. Each transfer pays for one payment at most.
    pub(crate) fn mined(&self, open: &[OpenPayment]) -> U256 {
        let mut moved = self.moved.clone();
        let mut mined = U256::ZERO;
        for o in open
            .iter()
            .filter(|o| o.state == SettlementState::Submitted)
        {
            let Some(tx) = o.transfer_tx else { continue };
            if let Some(i) = moved
                .iter()
                .position(|m| m.tx == tx && m.to == o.pay_to && m.value == o.value)
            {
                moved.swap_remove(i);
                mined = mined.saturating_add(o.value);
            }
        }
        mined
    }
}

/// Every network's payer facts (one per settler process).
pub(crate) struct PayerFacts {
    nets: Mutex<HashMap<u64, NetFacts>>,
    max_age: Duration,
    capacity: usize,
    tick: std::sync::atomic::AtomicU64,
}

/// What [`PayerFacts::lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Hit(Snapshot),
    /// Not known; the watcher is live at this block: fill the entry by reads at it.
    Miss {
        block: u64,
    },
    /// Not known and being filled, or the network's facts are stale: read the node.
    Bypass,
}

impl PayerFacts {
    pub(crate) fn new(max_age: Duration, capacity: usize) -> PayerFacts {
        PayerFacts {
            nets: Mutex::new(HashMap::new()),
            max_age,
            capacity: capacity.max(1),
            tick: Default::default(),
        }
    }

    fn nets(&self) -> std::sync::MutexGuard<'_, HashMap<u64, NetFacts>> {
        // A panic while holding the lock leaves plain data behind: still usable.
        self.nets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The facts of (`token`, `payer`) on `chain_id`; `auth_nonce`: the ERC-3009 nonce to
    /// tell about. A miss marks the entry as being filled (see [`PayerFacts::fill`]).
    pub(crate) fn lookup(
        &self,
        chain_id: u64,
        token: Address,
        payer: Address,
        auth_nonce: Option<B256>,
        now: Instant,
    ) -> Lookup {
        let tick = self.tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut nets = self.nets();
        let Some(net) = nets.get_mut(&chain_id) else {
            return Lookup::Bypass;
        };
        let (Some((block, _)), Some(live)) = (net.head, net.live_at) else {
            return Lookup::Bypass;
        };
        if now.saturating_duration_since(live) > self.max_age {
            return Lookup::Bypass;
        }
        match net.entries.get_mut(&(token, payer)) {
            Some(e) => {
                e.last_used = tick;
                Lookup::Hit(Snapshot {
                    block,
                    balance: e.balance,
                    permit_nonce: e.permit_nonce,
                    nonce_used: auth_nonce.is_some_and(|n| e.used.contains(&n)),
                    moved: e.moved.iter().copied().collect(),
                })
            }
            None if net.filling.insert((token, payer)) => Lookup::Miss { block },
            None => Lookup::Bypass,
        }
    }

    /// Stores the facts read at `block` for an entry [`PayerFacts::lookup`] missed; kept only
    /// when `block` is still the network's head (else logs after it were not applied).
    pub(crate) fn fill(
        &self,
        chain_id: u64,
        token: Address,
        payer: Address,
        block: u64,
        read: Option<(U256, Option<U256>)>,
    ) {
        let tick = self.tick.load(std::sync::atomic::Ordering::Relaxed);
        let mut nets = self.nets();
        let Some(net) = nets.get_mut(&chain_id) else {
            return;
        };
        net.filling.remove(&(token, payer));
        let Some((balance, permit_nonce)) = read else {
            return;
        };
        if net.head.map(|(b, _)| b) != Some(block) {
            return;
        }
        if net.entries.len() >= self.capacity {
            evict(&mut net.entries);
        }
        net.entries.insert(
            (token, payer),
            Entry {
                balance,
                permit_nonce,
                used: HashSet::new(),
                moved: VecDeque::new(),
                last_used: tick,
            },
        );
    }

    /// Forgets one entry (a balance that fell short is read again from the node).
    pub(crate) fn forget(&self, chain_id: u64, token: Address, payer: Address) {
        if let Some(net) = self.nets().get_mut(&chain_id) {
            net.entries.remove(&(token, payer));
        }
    }

    /// The network's head block as applied, if any.
    pub(crate) fn head(&self, chain_id: u64) -> Option<(u64, B256)> {
        self.nets().get(&chain_id).and_then(|n| n.head)
    }

    /// The assets that have entries on `chain_id` (the logs the watcher asks for).
    pub(crate) fn tokens(&self, chain_id: u64) -> Vec<Address> {
        let nets = self.nets();
        let mut t: Vec<Address> = nets
            .get(&chain_id)
            .map(|n| n.entries.keys().map(|(t, _)| *t).collect())
            .unwrap_or_default();
        t.sort();
        t.dedup();
        t
    }

    /// Starts over at `head`: every entry of the network dropped (first poll, a reorg, or
    /// the watcher too far behind to catch up by logs).
    pub(crate) fn reset(&self, chain_id: u64, head: (u64, B256), now: Instant) {
        let mut nets = self.nets();
        let net = nets.entry(chain_id).or_default();
        net.entries.clear();
        net.head = Some(head);
        net.live_at = Some(now);
    }

    /// Marks the network's facts current (a poll found no new block).
    pub(crate) fn live(&self, chain_id: u64, now: Instant) {
        if let Some(net) = self.nets().get_mut(&chain_id) {
            net.live_at = Some(now);
        }
    }

    /// Applies the logs of `tokens` in the blocks after the head up to `head` (in block
    /// order), and moves the head there. Entries of other tokens (filled while the logs were
    /// asked for, so none of theirs is here) are dropped. Returns false, applying nothing,
    /// when `from` is not the block after the current head (the caller resets).
    pub(crate) fn apply(
        &self,
        chain_id: u64,
        from: u64,
        (tokens, logs): (&[Address], &[FactLog]),
        head: (u64, B256),
        now: Instant,
    ) -> bool {
        let mut nets = self.nets();
        let Some(net) = nets.get_mut(&chain_id) else {
            return false;
        };
        if net.head.map(|(b, _)| b.saturating_add(1)) != Some(from) {
            return false;
        }
        let entries = &mut net.entries;
        entries.retain(|(token, _), _| tokens.contains(token));
        for log in logs {
            match *log {
                FactLog::Transfer {
                    token,
                    from,
                    to,
                    value,
                    tx,
                } => {
                    if let Some(e) = entries.get_mut(&(token, from)) {
                        e.balance = e.balance.saturating_sub(value);
                        if e.moved.len() >= MOVES_KEPT {
                            e.moved.pop_front();
                        }
                        e.moved.push_back(Moved { tx, to, value });
                    }
                    if let Some(e) = entries.get_mut(&(token, to)) {
                        e.balance = e.balance.saturating_add(value);
                    }
                }
                FactLog::Approval { token, owner } => {
                    if let Some(e) = entries.get_mut(&(token, owner)) {
                        e.permit_nonce = None;
                    }
                }
                FactLog::Authorization {
                    token,
                    authorizer,
                    nonce,
                } => {
                    let full = entries
                        .get_mut(&(token, authorizer))
                        .map(|e| {
                            e.used.insert(nonce);
                            e.used.len() > NONCES_KEPT
                        })
                        .unwrap_or(false);
                    if full {
                        entries.remove(&(token, authorizer));
                    }
                }
            }
        }
        net.head = Some(head);
        net.live_at = Some(now);
        true
    }

    /// Entries held on `chain_id` (a gauge).
    pub(crate) fn len(&self, chain_id: u64) -> usize {
        self.nets().get(&chain_id).map_or(0, |n| n.entries.len())
    }
}

/// Makes room: drops the least recently used eighth of the entries.
fn evict(entries: &mut HashMap<(Address, Address), Entry>) {
    let mut ticks: Vec<u64> = entries.values().map(|e| e.last_used).collect();
    ticks.sort_unstable();
    let cut = ticks.get(ticks.len() / 8).copied().unwrap_or(u64::MAX);
    entries.retain(|_, e| e.last_used > cut);
}

#[cfg(test)]
mod tests {
    use super::*;
    use x402_protocol::Scheme;

    const CHAIN: u64 = 31337;
    fn token() -> Address {
        Address::repeat_byte(0x7a)
    }
    fn payer() -> Address {
        Address::repeat_byte(0x11)
    }
    fn shop() -> Address {
        Address::repeat_byte(0x22)
    }
    fn h(n: u64) -> B256 {
        B256::from(U256::from(n))
    }

    /// Facts live at block 10 with the payer filled: balance 1000, permit nonce 3.
    fn filled() -> (PayerFacts, Instant) {
        let f = PayerFacts::new(Duration::from_secs(2), 100);
        let now = Instant::now();
        f.reset(CHAIN, (10, h(10)), now);
        assert_eq!(
            f.lookup(CHAIN, token(), payer(), None, now),
            Lookup::Miss { block: 10 }
        );
        f.fill(
            CHAIN,
            token(),
            payer(),
            10,
            Some((U256::from(1000), Some(U256::from(3)))),
        );
        (f, now)
    }

    fn hit(f: &PayerFacts, nonce: Option<B256>, now: Instant) -> Snapshot {
        match f.lookup(CHAIN, token(), payer(), nonce, now) {
            Lookup::Hit(s) => s,
            other => panic!("expected a hit, got {other:?}"),
        }
    }

    fn open(value: u64, tx: Option<B256>, state: SettlementState) -> OpenPayment {
        OpenPayment {
            scheme: Scheme::Exact,
            state,
            value: U256::from(value),
            nonce: B256::ZERO,
            pay_to: shop(),
            transfer_tx: tx,
        }
    }

    #[test]
    fn logs_move_the_balance_and_mark_nonces_and_permits() {
        let (f, now) = filled();
        let logs = [
            FactLog::Transfer {
                token: token(),
                from: payer(),
                to: shop(),
                value: U256::from(300),
                tx: h(1),
            },
            FactLog::Transfer {
                token: token(),
                from: shop(),
                to: payer(),
                value: U256::from(50),
                tx: h(2),
            },
            FactLog::Authorization {
                token: token(),
                authorizer: payer(),
                nonce: h(77),
            },
        ];
        assert!(f.apply(CHAIN, 11, (&[token()], &logs), (12, h(12)), now));
        let s = hit(&f, Some(h(77)), now);
        assert_eq!((s.block, s.balance), (12, U256::from(750)));
        assert!(s.nonce_used);
        assert!(!hit(&f, Some(h(78)), now).nonce_used);
        assert_eq!(s.permit_nonce, Some(U256::from(3)));
        // An approval of the owner (a permit mined, or approve): the nonce is unknown now.
        let approval = [FactLog::Approval {
            token: token(),
            owner: payer(),
        }];
        assert!(f.apply(CHAIN, 13, (&[token()], &approval), (13, h(13)), now));
        assert_eq!(hit(&f, None, now).permit_nonce, None);
        // Another token's logs leave the entry alone.
        let other = [FactLog::Transfer {
            token: Address::repeat_byte(0x01),
            from: payer(),
            to: shop(),
            value: U256::from(1),
            tx: h(3),
        }];
        assert!(f.apply(CHAIN, 14, (&[token()], &other), (14, h(14)), now));
        assert_eq!(hit(&f, None, now).balance, U256::from(750));
    }

    #[test]
    fn a_gap_in_blocks_is_refused_and_a_fill_behind_the_head_is_not_kept() {
        let (f, now) = filled();
        assert!(
            !f.apply(CHAIN, 12, (&[token()], &[]), (12, h(12)), now),
            "block 11 skipped"
        );
        assert!(f.apply(CHAIN, 11, (&[token()], &[]), (11, h(11)), now));
        // A fill read at block 10, finished after block 11 was applied: not kept.
        let other = Address::repeat_byte(0x33);
        assert_eq!(
            f.lookup(CHAIN, token(), other, None, now),
            Lookup::Miss { block: 11 }
        );
        // Another acceptance of the same payer meanwhile reads the node.
        assert_eq!(f.lookup(CHAIN, token(), other, None, now), Lookup::Bypass);
        f.fill(
            CHAIN,
            token(),
            other,
            10,
            Some((U256::from(5), Some(U256::ZERO))),
        );
        assert_eq!(
            f.lookup(CHAIN, token(), other, None, now),
            Lookup::Miss { block: 11 }
        );
    }

    #[test]
    fn an_entry_filled_while_logs_were_asked_for_without_its_token_is_dropped() {
        let (f, now) = filled();
        // The watcher asked for no token's logs (the entry came after), then applies.
        assert!(f.apply(CHAIN, 11, (&[], &[]), (11, h(11)), now));
        assert_eq!(
            f.lookup(CHAIN, token(), payer(), None, now),
            Lookup::Miss { block: 11 },
            "read again: the block's logs of its token were not applied"
        );
    }

    #[test]
    fn stale_facts_are_not_used_and_a_reset_drops_entries() {
        let (f, now) = filled();
        let later = now + Duration::from_secs(3);
        assert_eq!(
            f.lookup(CHAIN, token(), payer(), None, later),
            Lookup::Bypass
        );
        f.live(CHAIN, later);
        assert!(matches!(
            f.lookup(CHAIN, token(), payer(), None, later),
            Lookup::Hit(_)
        ));
        f.reset(CHAIN, (20, h(20)), later);
        assert_eq!(
            f.lookup(CHAIN, token(), payer(), None, later),
            Lookup::Miss { block: 20 }
        );
        assert_eq!(
            PayerFacts::new(Duration::from_secs(1), 1).lookup(CHAIN, token(), payer(), None, now),
            Lookup::Bypass,
            "no watcher poll yet"
        );
    }

    #[test]
    fn mined_counts_each_transfer_once_and_only_submitted_payments() {
        let (f, now) = filled();
        let logs = [FactLog::Transfer {
            token: token(),
            from: payer(),
            to: shop(),
            value: U256::from(100),
            tx: h(9),
        }];
        assert!(f.apply(CHAIN, 11, (&[token()], &logs), (11, h(11)), now));
        let s = hit(&f, None, now);
        // Two equal payments in the same batch, one transfer log: one of them is mined.
        let both = [
            open(100, Some(h(9)), SettlementState::Submitted),
            open(100, Some(h(9)), SettlementState::Submitted),
        ];
        assert_eq!(s.mined(&both), U256::from(100));
        assert_eq!(
            s.mined(&[open(100, Some(h(8)), SettlementState::Submitted)]),
            U256::ZERO,
            "another transaction"
        );
        assert_eq!(
            s.mined(&[open(100, None, SettlementState::Pending)]),
            U256::ZERO
        );
    }

    #[test]
    fn capacity_evicts_the_least_recently_used() {
        let f = PayerFacts::new(Duration::from_secs(2), 8);
        let now = Instant::now();
        f.reset(CHAIN, (1, h(1)), now);
        for i in 0..8u8 {
            let p = Address::repeat_byte(i + 1);
            assert!(matches!(
                f.lookup(CHAIN, token(), p, None, now),
                Lookup::Miss { .. }
            ));
            f.fill(
                CHAIN,
                token(),
                p,
                1,
                Some((U256::from(i), Some(U256::ZERO))),
            );
        }
        assert_eq!(f.len(CHAIN), 8);
        // Payer 1 used again: the oldest is payer 2 now.
        assert!(matches!(
            f.lookup(CHAIN, token(), Address::repeat_byte(1), None, now),
            Lookup::Hit(_)
        ));
        let p = Address::repeat_byte(0x99);
        assert!(matches!(
            f.lookup(CHAIN, token(), p, None, now),
            Lookup::Miss { .. }
        ));
        f.fill(CHAIN, token(), p, 1, Some((U256::ONE, Some(U256::ZERO))));
        assert!(f.len(CHAIN) <= 8);
        assert!(matches!(
            f.lookup(CHAIN, token(), Address::repeat_byte(1), None, now),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            f.lookup(CHAIN, token(), Address::repeat_byte(2), None, now),
            Lookup::Miss { .. }
        ));
    }
}
