//! In-process fakes of the lane's chain and store, for its unit tests.
//!
//! [`FakeChain`] is a one-token chain: a mempool by wallet nonce, blocks mined on demand
//! ([`FakeChain::mine`]), and a token executing `permit`, `transferFrom` and
//! `transferWithAuthorization` with real balances, allowances and nonces. It checks no
//! signature: a permit's `r` carries the permit nonce it was "signed" for (see [`payment`]).
//! [`FakeStore`] keeps rows in memory with the conditional state changes of the real store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use alloy::primitives::{keccak256, Address, Bytes, B256, U256};
use alloy::sol_types::SolCall;
use x402_protocol::payment::Sig;
use x402_protocol::settler_api::SettlementState;
use x402_protocol::{Network, Scheme};

use crate::chain::{IToken, IX402Settlement, SendOutcome};
use crate::error::{ChainError, StoreError};
use crate::lane::io::{
    AuthorizationEvent, BoxFuture, ItemLog, LaneChain, LaneStore, Receipt, TransferLog, TxSeen,
};
use crate::store::{lane_slot, LaneShare, NewPayment, PaymentRow, TxRow};

pub(crate) const CHAIN_ID: u64 = 31337;
pub(crate) const TOKEN: Address = Address::repeat_byte(0xaa);
pub(crate) const PAYER: Address = Address::repeat_byte(0x11);
pub(crate) const PAY_TO: Address = Address::repeat_byte(0x22);
/// The lane's wallet (and the permits' spender).
pub(crate) const SIGNER: Address = Address::repeat_byte(0x33);
/// The batch settlement contract (when [`ChainState::contract`] is set) and the spender of
/// permits made for it ([`batch_permit`]).
pub(crate) const CONTRACT: Address = Address::repeat_byte(0xcc);
pub(crate) const VALUE: u64 = 500_000;

/// A pending payment of [`VALUE`] from [`PAYER`] to [`PAY_TO`], accepted as number `seq`.
/// Permit: EIP-2612 nonce `nonce`, signature `r` = that nonce (what [`FakeChain`] checks).
/// Exact: a random-looking ERC-3009 nonce derived from `seq`.
pub(crate) fn payment(id: &str, seq: i64, scheme: Scheme, nonce: u64) -> PaymentRow {
    let n = match scheme {
        Scheme::Permit => B256::from(U256::from(nonce)),
        Scheme::Exact => keccak256(seq.to_be_bytes()),
    };
    PaymentRow {
        seq,
        p: NewPayment {
            id: id.into(),
            scheme,
            network: Network::eip155(CHAIN_ID),
            asset: TOKEN,
            payer: PAYER,
            pay_to: PAY_TO,
            spender: (scheme == Scheme::Permit).then_some(SIGNER),
            value: U256::from(VALUE),
            price: U256::from(VALUE),
            nonce: n,
            valid_after: U256::ZERO,
            deadline: U256::from(4_000_000_000u64),
            sig: Sig {
                r: n,
                s: B256::repeat_byte(2),
                v: 27,
            },
            route: "weather".into(),
            resource: None,
            format: "seed".into(),
            created_ms: 1_000,
        },
        state: SettlementState::Pending,
        error: None,
        permit_tx: None,
        transfer_tx: None,
        block_number: None,
        attempts: 0,
        updated_ms: 1_000,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
pub(crate) struct ChainState {
    /// What `eth_chainId` answers (the configured one unless a test changes it).
    pub chain_id: u64,
    pub block: u64,
    /// The wallet's confirmed nonce: every nonce below is used by a mined transaction.
    pub confirmed: u64,
    pub mempool: BTreeMap<u64, Vec<u8>>,
    pub receipts: HashMap<B256, Receipt>,
    pub balances: HashMap<Address, U256>,
    pub permit_nonces: HashMap<Address, U256>,
    pub allowances: HashMap<(Address, Address), U256>,
    pub auth_used: HashSet<(Address, B256)>,
    /// Every raw transaction the lane broadcast, in order.
    pub broadcasts: Vec<Vec<u8>>,
    /// Every (wallet nonce, hash) the lane had signed.
    pub signed: Vec<(u64, B256)>,
    /// The node refuses broadcasts (an RPC error).
    pub refuse_broadcasts: bool,
    /// Transfers succeed without emitting their `Transfer` log (a non-standard token).
    pub no_transfer_logs: bool,
    /// Transactions whose max fee is below this stay in the mempool.
    pub base_fee: u128,
    /// The settler wallet's ETH.
    pub signer_eth: U256,
    /// ERC-3009 events by (authorizer, nonce).
    pub auth_events: HashMap<(Address, B256), AuthorizationEvent>,
    /// Permits whose signature the token refuses (`r` of the permit).
    pub bad_permit_sigs: HashSet<B256>,
    /// What `fees()` estimates.
    pub estimate: (u128, u128),
    /// The lane settles through the batch contract [`CONTRACT`].
    pub contract: bool,
    /// Batch transactions revert as a whole (out of gas).
    pub batch_reverts: bool,
    /// The block of every mined transaction, by hash (what `eth_getTransactionByHash` sees).
    pub mined: HashMap<B256, u64>,
    /// A node that counts the nonce before it serves the receipt (anvil, for a moment): a
    /// transaction mined from now on answers this many receipt reads with none first.
    pub receipt_lag: u32,
    /// Receipt reads still answered with none, by hash.
    pub lagging: HashMap<B256, u32>,
    /// `eth_getTransactionByHash` does not know mined transactions (a node behind a load
    /// balancer that has not seen the block yet).
    pub hide_mined: bool,
}

/// Gas every fake transaction uses.
pub(crate) const GAS_USED: u64 = 50_000;

#[derive(Clone)]
pub(crate) struct FakeChain(pub Arc<Mutex<ChainState>>);

impl FakeChain {
    /// A chain where [`PAYER`] holds `balance`.
    pub(crate) fn new(balance: u64) -> FakeChain {
        let mut s = ChainState {
            chain_id: CHAIN_ID,
            signer_eth: U256::from(10u128.pow(18)),
            estimate: (2_000_000_000, 1_000_000),
            ..Default::default()
        };
        s.balances.insert(PAYER, U256::from(balance));
        FakeChain(Arc::new(Mutex::new(s)))
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, ChainState> {
        lock(&self.0)
    }

    pub(crate) fn balance(&self, a: Address) -> U256 {
        self.state().balances.get(&a).copied().unwrap_or_default()
    }

    /// Mines one block: the mempool's transactions from the confirmed nonce on, in order.
    pub(crate) fn mine(&self) {
        let mut s = self.state();
        s.block += 1;
        loop {
            let n = s.confirmed;
            let base_fee = s.base_fee;
            if s.mempool.get(&n).is_none_or(|r| raw_max_fee(r) < base_fee) {
                break;
            }
            let Some(raw) = s.mempool.remove(&n) else {
                break;
            };
            let receipt = s.execute(&raw);
            let hash = keccak256(&raw);
            s.receipts.insert(hash, receipt);
            let block = s.block;
            s.mined.insert(hash, block);
            if s.receipt_lag > 0 {
                let lag = s.receipt_lag;
                s.lagging.insert(hash, lag);
            }
            s.confirmed += 1;
        }
    }

    /// A transaction this settler did not send takes the wallet's next nonce (and is mined),
    /// replacing whatever the mempool had at that nonce.
    pub(crate) fn foreign_transaction(&self) {
        let mut s = self.state();
        s.block += 1;
        let n = s.confirmed;
        s.mempool.remove(&n);
        s.confirmed += 1;
    }
}

/// The fake's raw transaction: wallet nonce (8 bytes) ‖ max fee (16) ‖ priority fee (16) ‖
/// to (20 bytes) ‖ call data.
fn encode_raw(nonce: u64, fees: (u128, u128), to: Address, input: &[u8]) -> Vec<u8> {
    let mut raw = nonce.to_be_bytes().to_vec();
    raw.extend_from_slice(&fees.0.to_be_bytes());
    raw.extend_from_slice(&fees.1.to_be_bytes());
    raw.extend_from_slice(to.as_slice());
    raw.extend_from_slice(input);
    raw
}

pub(crate) fn raw_max_fee(raw: &[u8]) -> u128 {
    raw.get(8..24)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(u128::from_be_bytes)
        .unwrap_or(0)
}

const HEAD: usize = 8 + 32;

fn raw_nonce(raw: &[u8]) -> u64 {
    raw.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(u64::MAX)
}

impl ChainState {
    fn execute(&mut self, raw: &[u8]) -> Receipt {
        let block_number = Some(self.block);
        let reverted = Receipt {
            success: false,
            block_number,
            transfers: vec![],
            gas_used: GAS_USED,
            items: vec![],
        };
        if raw.len() >= HEAD + 20 && Address::from_slice(&raw[HEAD..HEAD + 20]) == CONTRACT {
            return self.execute_batch(&raw[HEAD + 20..], reverted);
        }
        if raw.len() < HEAD + 20 || Address::from_slice(&raw[HEAD..HEAD + 20]) != TOKEN {
            return reverted;
        }
        let input = &raw[HEAD + 20..];
        let moved = if let Ok(c) = IToken::permitCall::abi_decode(input) {
            let nonce = self
                .permit_nonces
                .get(&c.owner)
                .copied()
                .unwrap_or_default();
            if c.r != B256::from(nonce) || self.bad_permit_sigs.contains(&c.r) {
                return reverted;
            }
            self.permit_nonces.insert(c.owner, nonce + U256::from(1));
            self.allowances.insert((c.owner, c.spender), c.value);
            None
        } else if let Ok(c) = IToken::transferFromCall::abi_decode(input) {
            let allowance = self
                .allowances
                .get(&(c.from, SIGNER))
                .copied()
                .unwrap_or_default();
            if allowance < c.value || !self.take(c.from, c.value) {
                return reverted;
            }
            self.allowances
                .insert((c.from, SIGNER), allowance - c.value);
            Some((c.from, c.to, c.value))
        } else if let Ok(c) = IToken::transferWithAuthorizationCall::abi_decode(input) {
            if self.auth_used.contains(&(c.from, c.nonce)) || !self.take(c.from, c.value) {
                return reverted;
            }
            self.auth_used.insert((c.from, c.nonce));
            self.auth_events.insert(
                (c.from, c.nonce),
                AuthorizationEvent::Used {
                    tx: B256::ZERO,
                    block: self.block,
                },
            );
            Some((c.from, c.to, c.value))
        } else {
            return reverted;
        };
        let mut transfers = vec![];
        if let Some((from, to, value)) = moved {
            *self.balances.entry(to).or_default() += value;
            if !self.no_transfer_logs {
                transfers.push(TransferLog {
                    token: TOKEN,
                    from,
                    to,
                    value,
                });
            }
        }
        Receipt {
            success: true,
            block_number,
            transfers,
            gas_used: GAS_USED,
            items: vec![],
        }
    }

    /// The batch contract's `settle(token, items)`: each item on its own, one `ItemResult`
    /// each; permits name [`CONTRACT`] as spender, `transferFrom` spends its allowance.
    fn execute_batch(&mut self, input: &[u8], reverted: Receipt) -> Receipt {
        let Ok(call) = IX402Settlement::settleCall::abi_decode(input) else {
            return reverted;
        };
        if self.batch_reverts || call.token != TOKEN {
            return reverted;
        }
        let mut transfers = vec![];
        let mut items = vec![];
        for (i, it) in call.items.iter().enumerate() {
            let mut permit_ok = true;
            if it.kind == 1 {
                let nonce = self
                    .permit_nonces
                    .get(&it.from)
                    .copied()
                    .unwrap_or_default();
                if it.r == B256::from(nonce) && !self.bad_permit_sigs.contains(&it.r) {
                    self.permit_nonces.insert(it.from, nonce + U256::from(1));
                    self.allowances.insert((it.from, CONTRACT), it.value);
                } else {
                    permit_ok = false;
                }
            }
            let ok = if it.kind == 0 {
                if self.auth_used.contains(&(it.from, it.nonce)) || !self.take(it.from, it.value) {
                    false
                } else {
                    self.auth_used.insert((it.from, it.nonce));
                    self.auth_events.insert(
                        (it.from, it.nonce),
                        AuthorizationEvent::Used {
                            tx: B256::ZERO,
                            block: self.block,
                        },
                    );
                    true
                }
            } else {
                let allowance = self
                    .allowances
                    .get(&(it.from, CONTRACT))
                    .copied()
                    .unwrap_or_default();
                if allowance < it.value || !self.take(it.from, it.value) {
                    false
                } else {
                    self.allowances
                        .insert((it.from, CONTRACT), allowance - it.value);
                    true
                }
            };
            if ok {
                *self.balances.entry(it.to).or_default() += it.value;
                transfers.push(TransferLog {
                    token: TOKEN,
                    from: it.from,
                    to: it.to,
                    value: it.value,
                });
            }
            items.push(ItemLog {
                index: i as u64,
                permit_ok,
                ok,
                reason: Bytes::new(),
            });
        }
        Receipt {
            success: true,
            block_number: Some(self.block),
            transfers,
            gas_used: GAS_USED,
            items,
        }
    }

    fn take(&mut self, from: Address, value: U256) -> bool {
        let b = self.balances.entry(from).or_default();
        if *b < value {
            return false;
        }
        *b -= value;
        true
    }

    fn pending_nonce(&self) -> u64 {
        let mut n = self.confirmed;
        while self.mempool.contains_key(&n) {
            n += 1;
        }
        n
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl LaneChain for FakeChain {
    fn network(&self) -> Network {
        Network::eip155(CHAIN_ID)
    }
    fn signer(&self) -> Address {
        SIGNER
    }
    fn settlement_contract(&self) -> Option<Address> {
        self.state().contract.then_some(CONTRACT)
    }
    fn chain_id(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        ready(Ok(self.state().chain_id))
    }
    fn block_number(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        ready(Ok(self.state().block))
    }
    fn balance_of(
        &self,
        _token: Address,
        owner: Address,
    ) -> BoxFuture<'_, Result<U256, ChainError>> {
        ready(Ok(self.balance(owner)))
    }
    fn permit_nonce(
        &self,
        _token: Address,
        owner: Address,
    ) -> BoxFuture<'_, Result<U256, ChainError>> {
        ready(Ok(self
            .state()
            .permit_nonces
            .get(&owner)
            .copied()
            .unwrap_or_default()))
    }
    fn allowance(
        &self,
        _token: Address,
        owner: Address,
        spender: Address,
    ) -> BoxFuture<'_, Result<U256, ChainError>> {
        ready(Ok(self
            .state()
            .allowances
            .get(&(owner, spender))
            .copied()
            .unwrap_or_default()))
    }
    fn authorization_used(
        &self,
        _token: Address,
        from: Address,
        nonce: B256,
    ) -> BoxFuture<'_, Result<bool, ChainError>> {
        ready(Ok(self.state().auth_used.contains(&(from, nonce))))
    }
    fn pending_nonce(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        ready(Ok(self.state().pending_nonce()))
    }
    fn latest_nonce(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        ready(Ok(self.state().confirmed))
    }
    fn fees(&self) -> BoxFuture<'_, Result<(u128, u128), ChainError>> {
        ready(Ok(self.state().estimate))
    }
    fn sign(
        &self,
        to: Address,
        input: Bytes,
        nonce: u64,
        fees: (u128, u128),
    ) -> BoxFuture<'_, Result<(B256, Vec<u8>), ChainError>> {
        let raw = encode_raw(nonce, fees, to, &input);
        let hash = keccak256(&raw);
        self.state().signed.push((nonce, hash));
        ready(Ok((hash, raw)))
    }
    fn broadcast<'a>(&'a self, raw: &'a [u8]) -> BoxFuture<'a, SendOutcome> {
        let mut s = self.state();
        s.broadcasts.push(raw.to_vec());
        let nonce = raw_nonce(raw);
        let outcome = if s.refuse_broadcasts {
            SendOutcome::Error("connection refused".into())
        } else if nonce < s.confirmed {
            SendOutcome::AlreadyKnown("nonce too low".into())
        } else if s.mempool.get(&nonce).is_some_and(|r| r == raw) {
            SendOutcome::AlreadyKnown("already known".into())
        } else if s
            .mempool
            .get(&nonce)
            .is_some_and(|r| raw_max_fee(r) >= raw_max_fee(raw))
        {
            SendOutcome::Error("replacement transaction underpriced".into())
        } else {
            s.mempool.insert(nonce, raw.to_vec());
            SendOutcome::Accepted
        };
        ready(outcome)
    }
    fn receipt(&self, hash: B256) -> BoxFuture<'_, Result<Option<Receipt>, ChainError>> {
        let mut s = self.state();
        if let Some(left) = s.lagging.get_mut(&hash) {
            *left -= 1;
            if *left == 0 {
                s.lagging.remove(&hash);
            }
            return ready(Ok(None));
        }
        ready(Ok(s.receipts.get(&hash).cloned()))
    }
    fn tx_seen(&self, hash: B256) -> BoxFuture<'_, Result<Option<TxSeen>, ChainError>> {
        let s = self.state();
        let seen = match s.mined.get(&hash) {
            Some(_) if s.hide_mined => None,
            Some(b) => Some(TxSeen { block: Some(*b) }),
            None => s
                .mempool
                .values()
                .any(|raw| keccak256(raw) == hash)
                .then_some(TxSeen { block: None }),
        };
        ready(Ok(seen))
    }
    fn base_fee(&self) -> BoxFuture<'_, Result<u128, ChainError>> {
        ready(Ok(self.state().base_fee))
    }
    fn signer_balance(&self) -> BoxFuture<'_, Result<U256, ChainError>> {
        ready(Ok(self.state().signer_eth))
    }
    fn resign<'a>(
        &'a self,
        raw: &'a [u8],
        fees: (u128, u128),
    ) -> BoxFuture<'a, Result<(B256, Vec<u8>), ChainError>> {
        let raw = encode_raw(
            raw_nonce(raw),
            fees,
            Address::from_slice(&raw[HEAD..HEAD + 20]),
            &raw[HEAD + 20..],
        );
        let hash = keccak256(&raw);
        self.state().signed.push((raw_nonce(&raw), hash));
        ready(Ok((hash, raw)))
    }
    fn simulate(&self, to: Address, input: Bytes) -> BoxFuture<'_, Result<bool, ChainError>> {
        let mut probe = self.state().clone_token();
        let raw = encode_raw(0, (0, 0), to, &input);
        ready(Ok(probe.execute(&raw).success))
    }
    fn authorization_event(
        &self,
        _token: Address,
        from: Address,
        nonce: B256,
    ) -> BoxFuture<'_, Result<Option<AuthorizationEvent>, ChainError>> {
        ready(Ok(self.state().auth_events.get(&(from, nonce)).copied()))
    }
}

impl ChainState {
    /// A copy of the token's state, to simulate a call on.
    fn clone_token(&self) -> ChainState {
        ChainState {
            block: self.block,
            balances: self.balances.clone(),
            permit_nonces: self.permit_nonces.clone(),
            allowances: self.allowances.clone(),
            auth_used: self.auth_used.clone(),
            bad_permit_sigs: self.bad_permit_sigs.clone(),
            ..Default::default()
        }
    }
}

pub(crate) struct StoredPayment {
    pub row: PaymentRow,
    pub next_attempt_ms: i64,
    /// The single-use key was released (`fail_pending(release_key = true)`).
    pub key_released: bool,
}

#[derive(Default)]
pub(crate) struct StoreState {
    pub payments: Vec<StoredPayment>,
    pub txs: Vec<TxRow>,
    /// Every attempt ever stored: (nonce, hash, raw).
    pub attempts: Vec<(u64, B256, Vec<u8>)>,
    /// Gas charged per payment.
    pub gas: HashMap<String, u64>,
    /// Failure causes: payment id -> (code, payer caused).
    pub causes: HashMap<String, (String, bool)>,
    /// (owner, until ms) of the lane's lease.
    pub lease: Option<(String, i64)>,
    /// Batch id -> its items (payment id, with permit).
    pub batches: HashMap<String, Vec<(String, bool)>>,
}

impl StoreState {
    fn payment(&mut self, id: &str) -> Option<&mut StoredPayment> {
        self.payments.iter_mut().find(|p| p.row.p.id == id)
    }

    /// Moves `id` from state `from` (false if it was not there), the rest like the SQL.
    fn transition(
        &mut self,
        id: &str,
        from: SettlementState,
        f: impl FnOnce(&mut StoredPayment),
    ) -> bool {
        match self.payment(id) {
            Some(p) if p.row.state == from => {
                f(p);
                true
            }
            _ => false,
        }
    }

    fn record_receipts(&mut self, receipts: &[(B256, bool, u64)], dropped: &[B256]) {
        for t in &mut self.txs {
            if receipts.iter().any(|r| r.0 == t.hash) {
                t.state = "mined".into();
            }
            if dropped.contains(&t.hash) {
                t.state = "dropped".into();
            }
        }
    }
}

#[derive(Clone, Default)]
pub(crate) struct FakeStore(pub Arc<Mutex<StoreState>>);

impl FakeStore {
    pub(crate) fn with(payments: impl IntoIterator<Item = PaymentRow>) -> FakeStore {
        let s = FakeStore::default();
        for p in payments {
            s.add(p);
        }
        s
    }

    pub(crate) fn add(&self, row: PaymentRow) {
        self.state().payments.push(StoredPayment {
            row,
            next_attempt_ms: 0,
            key_released: false,
        });
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, StoreState> {
        lock(&self.0)
    }

    pub(crate) fn row(&self, id: &str) -> PaymentRow {
        self.state()
            .payment(id)
            .map(|p| p.row.clone())
            .unwrap_or_else(|| panic!("no payment {id}"))
    }

    pub(crate) fn txs_of(&self, id: &str) -> Vec<TxRow> {
        self.state()
            .txs
            .iter()
            .filter(|t| t.payment_id == id)
            .cloned()
            .collect()
    }
}

impl LaneStore for FakeStore {
    fn hold_lease<'a>(
        &'a self,
        _name: &'a str,
        owner: &'a str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut s = self.state();
        let free = match &s.lease {
            None => true,
            Some((o, until)) => o == owner || *until < now_ms,
        };
        if free {
            s.lease = Some((owner.to_string(), now_ms + ttl_ms));
        }
        ready(Ok(free))
    }
    fn release_lease<'a>(
        &'a self,
        _name: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut s = self.state();
        if let Some((o, until)) = &mut s.lease {
            if o == owner {
                *until = 0;
            }
        }
        ready(Ok(()))
    }
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PaymentRow>, StoreError>> {
        ready(Ok(self.state().payment(id).map(|p| p.row.clone())))
    }
    fn due_pending(
        &self,
        chain_id: u64,
        signer: Address,
        contract: Option<Address>,
        now_ms: i64,
        limit: i64,
        share: LaneShare,
    ) -> BoxFuture<'_, Result<Vec<PaymentRow>, StoreError>> {
        let s = self.state();
        let mut due: Vec<PaymentRow> = s
            .payments
            .iter()
            .filter(|p| {
                p.row.p.network.chain_id == chain_id
                    && p.row.state == SettlementState::Pending
                    && p.next_attempt_ms <= now_ms
            })
            .filter(|p| {
                p.row.p.scheme != Scheme::Permit
                    || p.row
                        .p
                        .spender
                        .is_none_or(|s| s == signer || Some(s) == contract)
            })
            .filter(|p| {
                let of = share.of.max(1) as i64;
                of == 1
                    || lane_slot(&p.row.p) % of == share.index as i64
                    || (p.row.p.scheme == Scheme::Permit && p.row.p.spender == Some(signer))
                    || (p.row.p.created_ms <= share.steal_before_ms
                        && p.next_attempt_ms <= share.steal_before_ms)
            })
            .map(|p| p.row.clone())
            .collect();
        due.sort_by_key(|p| p.seq);
        due.truncate(limit.max(0) as usize);
        ready(Ok(due))
    }
    fn submitted_permit_nonces(
        &self,
        chain_id: u64,
        asset: Address,
        payer: Address,
        from: U256,
        signer: Address,
    ) -> BoxFuture<'_, Result<Vec<U256>, StoreError>> {
        let s = self.state();
        let in_flight_here = |r: &PaymentRow| {
            s.txs
                .iter()
                .any(|t| Some(t.hash.to_string()) == r.transfer_tx && t.signer == signer)
        };
        let nonces = s
            .payments
            .iter()
            .map(|p| &p.row)
            .filter(|r| {
                r.p.network.chain_id == chain_id
                    && r.p.asset == asset
                    && r.p.payer == payer
                    && r.p.scheme == Scheme::Permit
            })
            .filter(|r| {
                (r.state == SettlementState::Settled
                    || (r.state == SettlementState::Submitted && in_flight_here(r)))
                    && r.permit_nonce() >= from
            })
            .map(|r| r.permit_nonce())
            .collect();
        ready(Ok(nonces))
    }
    fn defer<'a>(
        &'a self,
        id: &'a str,
        next_attempt_ms: i64,
        note: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.state().transition(id, SettlementState::Pending, |p| {
            p.row.attempts += 1;
            p.next_attempt_ms = next_attempt_ms;
            p.row.error = Some(note.into());
            p.row.updated_ms = now_ms;
        });
        ready(Ok(()))
    }
    fn fail_pending<'a>(
        &'a self,
        id: &'a str,
        reason: &'a str,
        release_key: bool,
        cause: Option<(&'a str, bool)>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut s = self.state();
        let moved = s.transition(id, SettlementState::Pending, |p| {
            p.row.state = SettlementState::Failed;
            p.row.error = Some(reason.into());
            p.row.updated_ms = now_ms;
            p.key_released = release_key;
        });
        if let (true, Some((c, payer))) = (moved, cause) {
            s.causes.insert(id.to_string(), (c.to_string(), payer));
        }
        ready(Ok(moved))
    }
    fn record_submission<'a>(
        &'a self,
        payment_id: &'a str,
        txs: &'a [TxRow],
        permit_tx: Option<B256>,
        transfer_tx: B256,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut s = self.state();
        let taken = |t: &TxRow| {
            s.txs.iter().any(|o| {
                (o.chain_id, o.signer, o.nonce) == (t.chain_id, t.signer, t.nonce)
                    || o.hash == t.hash
            })
        };
        // The real store's primary key (chain, signer, nonce) and UNIQUE hash.
        if txs.iter().any(taken) {
            return ready(Err(StoreError::Corrupt("duplicate transaction".into())));
        }
        let moved = s.transition(payment_id, SettlementState::Pending, |p| {
            p.row.state = SettlementState::Submitted;
            p.row.permit_tx = permit_tx.map(|h| h.to_string());
            p.row.transfer_tx = Some(transfer_tx.to_string());
            p.row.error = None;
            p.row.updated_ms = now_ms;
        });
        if moved {
            s.attempts
                .extend(txs.iter().map(|t| (t.nonce, t.hash, t.raw.clone())));
            s.txs.extend(txs.iter().cloned().map(|t| TxRow {
                state: "sent".into(),
                last_broadcast_ms: now_ms,
                ..t
            }));
        }
        ready(Ok(moved))
    }
    fn record_batch<'a>(
        &'a self,
        tx: &'a TxRow,
        items: &'a [(String, bool)],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut s = self.state();
        if s.txs
            .iter()
            .any(|o| o.nonce == tx.nonce || o.hash == tx.hash)
        {
            return ready(Err(StoreError::Corrupt("duplicate transaction".into())));
        }
        let all_pending = items.iter().all(|(id, _)| {
            s.payment(id)
                .is_some_and(|p| p.row.state == SettlementState::Pending)
        });
        if !all_pending {
            return ready(Ok(false));
        }
        for (id, with_permit) in items {
            s.transition(id, SettlementState::Pending, |p| {
                p.row.state = SettlementState::Submitted;
                p.row.permit_tx = with_permit.then(|| tx.hash.to_string());
                p.row.transfer_tx = Some(tx.hash.to_string());
                p.row.error = None;
                p.row.updated_ms = now_ms;
            });
        }
        s.batches.insert(tx.payment_id.clone(), items.to_vec());
        s.attempts.push((tx.nonce, tx.hash, tx.raw.clone()));
        s.txs.push(TxRow {
            state: "sent".into(),
            last_broadcast_ms: now_ms,
            ..tx.clone()
        });
        ready(Ok(true))
    }
    fn batch_items<'a>(
        &'a self,
        batch_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, bool)>, StoreError>> {
        ready(Ok(self
            .state()
            .batches
            .get(batch_id)
            .cloned()
            .unwrap_or_default()))
    }
    fn batch_attempts_of<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(B256, u64)>, StoreError>> {
        let s = self.state();
        let mut out = vec![];
        for (batch, items) in &s.batches {
            let Some(idx) = items.iter().position(|(id, _)| id == payment_id) else {
                continue;
            };
            for t in s.txs.iter().filter(|t| &t.payment_id == batch) {
                for (nonce, hash, _) in &s.attempts {
                    if *nonce == t.nonce {
                        out.push((*hash, idx as u64));
                    }
                }
            }
        }
        ready(Ok(out))
    }
    fn get_many<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<PaymentRow>, StoreError>> {
        let mut s = self.state();
        ready(Ok(ids
            .iter()
            .filter_map(|id| s.payment(id).map(|p| p.row.clone()))
            .collect()))
    }
    fn settle_batch<'a>(
        &'a self,
        hash: B256,
        success: bool,
        block: Option<u64>,
        settled: &'a [String],
        gas_each: u64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let mut s = self.state();
        let mut moved = Vec::new();
        for id in settled {
            if s.transition(id, SettlementState::Submitted, |p| {
                p.row.state = SettlementState::Settled;
                p.row.block_number = block.map(|b| b as i64);
                p.row.error = None;
                p.row.updated_ms = now_ms;
            }) {
                *s.gas.entry(id.clone()).or_default() += gas_each;
                moved.push(id.clone());
            }
        }
        s.record_receipts(&[(hash, success, block.unwrap_or(0))], &[]);
        ready(Ok(moved))
    }
    fn in_flight(&self, chain_id: u64, signer: Address) -> BoxFuture<'_, Result<u64, StoreError>> {
        ready(Ok(self
            .state()
            .txs
            .iter()
            .filter(|t| t.chain_id == chain_id && t.signer == signer && t.state == "sent")
            .count() as u64))
    }
    fn close_tx(
        &self,
        hash: B256,
        receipt: Option<(bool, u64)>,
        _now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut s = self.state();
        match receipt {
            Some((ok, b)) => s.record_receipts(&[(hash, ok, b)], &[]),
            None => s.record_receipts(&[], &[hash]),
        }
        ready(Ok(()))
    }
    fn unconfirmed_txs(
        &self,
        chain_id: u64,
        signer: Address,
    ) -> BoxFuture<'_, Result<Vec<TxRow>, StoreError>> {
        let mut txs: Vec<TxRow> = self
            .state()
            .txs
            .iter()
            .filter(|t| t.chain_id == chain_id && t.signer == signer && t.state == "sent")
            .cloned()
            .collect();
        txs.sort_by_key(|t| t.nonce);
        ready(Ok(txs))
    }
    fn max_tx_nonce(
        &self,
        chain_id: u64,
        signer: Address,
    ) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        ready(Ok(self
            .state()
            .txs
            .iter()
            .filter(|t| t.chain_id == chain_id && t.signer == signer)
            .map(|t| t.nonce)
            .max()))
    }
    fn mark_broadcast(&self, hash: B256, now_ms: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        for t in self.state().txs.iter_mut().filter(|t| t.hash == hash) {
            t.last_broadcast_ms = now_ms;
        }
        ready(Ok(()))
    }
    fn finish<'a>(
        &'a self,
        payment_id: &'a str,
        receipts: &'a [(B256, bool, u64)],
        dropped: &'a [B256],
        settled: bool,
        block: Option<u64>,
        error: Option<&'a str>,
        cause: Option<(&'a str, bool)>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut s = self.state();
        if let Some((c, payer)) = cause {
            if s.payment(payment_id)
                .is_some_and(|p| p.row.state == SettlementState::Submitted)
            {
                s.causes
                    .insert(payment_id.to_string(), (c.to_string(), payer));
            }
        }
        let moved = s.transition(payment_id, SettlementState::Submitted, |p| {
            p.row.state = if settled {
                SettlementState::Settled
            } else {
                SettlementState::Failed
            };
            p.row.block_number = block.map(|b| b as i64);
            p.row.error = error.map(str::to_string);
            p.row.updated_ms = now_ms;
        });
        if moved {
            s.record_receipts(receipts, dropped);
        }
        ready(Ok(moved))
    }
    fn settle_by<'a>(
        &'a self,
        payment_id: &'a str,
        transfer_tx: B256,
        block: u64,
        note: &'a str,
        receipts: &'a [(B256, bool, u64)],
        dropped: &'a [B256],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut s = self.state();
        let settle = |p: &mut StoredPayment| {
            p.row.state = SettlementState::Settled;
            p.row.transfer_tx = Some(transfer_tx.to_string());
            p.row.block_number = Some(block as i64);
            p.row.error = Some(note.into());
            p.row.updated_ms = now_ms;
        };
        let moved = s.transition(payment_id, SettlementState::Pending, settle)
            || s.transition(payment_id, SettlementState::Submitted, settle);
        if moved {
            s.record_receipts(receipts, dropped);
        }
        ready(Ok(moved))
    }
    fn replace_tx<'a>(
        &'a self,
        old: B256,
        new: &'a TxRow,
        _now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut s = self.state();
        let Some(t) = s
            .txs
            .iter_mut()
            .find(|t| t.hash == old && t.state == "sent")
        else {
            return ready(Ok(false));
        };
        *t = TxRow {
            state: "sent".into(),
            ..new.clone()
        };
        s.attempts.push((new.nonce, new.hash, new.raw.clone()));
        let old_s = old.to_string();
        let batch = s.batches.get(&new.payment_id).cloned().unwrap_or_default();
        for p in s.payments.iter_mut().filter(|p| {
            p.row.p.id == new.payment_id || batch.iter().any(|(id, _)| *id == p.row.p.id)
        }) {
            if p.row.transfer_tx.as_deref() == Some(old_s.as_str()) {
                p.row.transfer_tx = Some(new.hash.to_string());
            }
            if p.row.permit_tx.as_deref() == Some(old_s.as_str()) {
                p.row.permit_tx = Some(new.hash.to_string());
            }
        }
        ready(Ok(true))
    }
    fn attempt_hashes(
        &self,
        _chain_id: u64,
        _signer: Address,
        nonce: u64,
    ) -> BoxFuture<'_, Result<Vec<B256>, StoreError>> {
        ready(Ok(self
            .state()
            .attempts
            .iter()
            .filter(|a| a.0 == nonce)
            .map(|a| a.1)
            .collect()))
    }
    fn adopt_attempt<'a>(
        &'a self,
        payment_id: &'a str,
        current: B256,
        mined: B256,
        _now_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut s = self.state();
        let raw = s
            .attempts
            .iter()
            .find(|a| a.1 == mined)
            .map(|a| a.2.clone())
            .unwrap_or_default();
        for t in s.txs.iter_mut().filter(|t| t.hash == current) {
            t.hash = mined;
            t.raw = raw.clone();
        }
        let cur = current.to_string();
        if let Some(p) = s.payment(payment_id) {
            if p.row.transfer_tx.as_deref() == Some(cur.as_str()) {
                p.row.transfer_tx = Some(mined.to_string());
            }
        }
        ready(Ok(()))
    }
    fn payment_spend<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<(u64, u64), StoreError>> {
        let s = self.state();
        let n = s.txs.iter().filter(|t| t.payment_id == payment_id).count() as u64
            + s.batches
                .values()
                .flatten()
                .filter(|(id, _)| id == payment_id)
                .count() as u64;
        ready(Ok((n, s.gas.get(payment_id).copied().unwrap_or(0))))
    }
    fn charge_gas<'a>(
        &'a self,
        payment_id: &'a str,
        gas: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        *self.state().gas.entry(payment_id.to_string()).or_default() += gas;
        ready(Ok(()))
    }
    fn requeue<'a>(
        &'a self,
        payment_id: &'a str,
        receipts: &'a [(B256, bool, u64)],
        dropped: &'a [B256],
        note: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut s = self.state();
        let moved = s.transition(payment_id, SettlementState::Submitted, |p| {
            p.row.state = SettlementState::Pending;
            p.row.permit_tx = None;
            p.row.transfer_tx = None;
            p.row.error = Some(note.into());
            p.row.attempts += 1;
            p.next_attempt_ms = now_ms;
            p.row.updated_ms = now_ms;
        });
        if moved {
            s.record_receipts(receipts, dropped);
        }
        ready(Ok(moved))
    }
}
