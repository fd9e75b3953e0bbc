//! What the lane needs from the chain and from the store, as object-safe traits, and their
//! implementations for the real [`Chain`] (alloy RPC) and [`Store`] (sqlx). The lane holds
//! `Arc<dyn LaneChain>` / `Arc<dyn LaneStore>`, so its unit tests run it on in-process fakes.

use std::future::Future;
use std::pin::Pin;

use alloy::primitives::{Address, Bytes, B256, U256};
use x402_protocol::Network;

use crate::chain::{self, Chain, SendOutcome};
pub(crate) use crate::chain::{ItemLog, TransferLog};
use crate::error::{ChainError, StoreError};
use crate::store::{Backend, LaneShare, PaymentRow, Store, TxRow};

/// A boxed `Send` future: what the traits' async methods return (object safe, no macro crate).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the lane reads from a transaction receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Receipt {
    /// Execution succeeded (status 1).
    pub success: bool,
    pub block_number: Option<u64>,
    /// The `Transfer` logs it carries (logs that do not decode as one are left out).
    pub transfers: Vec<TransferLog>,
    pub gas_used: u64,
    /// The batch contract's `ItemResult` logs (a batch transaction's per-item outcomes).
    pub items: Vec<ItemLog>,
}

/// An ERC-3009 authorization's fate on chain, from its event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthorizationEvent {
    /// `AuthorizationUsed` in transaction `tx` (block `block`).
    Used { tx: B256, block: u64 },
    /// `AuthorizationCanceled`: the payer cancelled it.
    Canceled { tx: B256 },
}

/// How far back (blocks) the lane looks for an authorization's event.
pub(crate) const AUTH_EVENT_LOOKBACK: u64 = 10_000;

/// The chain side of one lane: one network, one signer wallet.
pub(crate) trait LaneChain: Send + Sync {
    fn network(&self) -> Network;
    fn signer(&self) -> Address;
    /// The batch settlement contract (`--settlement-contract`): `None` settles one
    /// transaction per payment.
    fn settlement_contract(&self) -> Option<Address> {
        None
    }
    /// Whether the signer may call the batch contract's `settle` (`operators(signer)`).
    fn is_operator(&self, _contract: Address) -> BoxFuture<'_, Result<bool, ChainError>> {
        Box::pin(std::future::ready(Ok(true)))
    }
    fn chain_id(&self) -> BoxFuture<'_, Result<u64, ChainError>>;
    fn block_number(&self) -> BoxFuture<'_, Result<u64, ChainError>>;
    fn balance_of(&self, token: Address, owner: Address)
        -> BoxFuture<'_, Result<U256, ChainError>>;
    /// EIP-2612 `nonces(owner)`.
    fn permit_nonce(
        &self,
        token: Address,
        owner: Address,
    ) -> BoxFuture<'_, Result<U256, ChainError>>;
    fn allowance(
        &self,
        token: Address,
        owner: Address,
        spender: Address,
    ) -> BoxFuture<'_, Result<U256, ChainError>>;
    /// ERC-3009 `authorizationState(from, nonce)`.
    fn authorization_used(
        &self,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> BoxFuture<'_, Result<bool, ChainError>>;
    /// The signer's next nonce counting the node's pending pool.
    fn pending_nonce(&self) -> BoxFuture<'_, Result<u64, ChainError>>;
    /// The signer's confirmed transaction count.
    fn latest_nonce(&self) -> BoxFuture<'_, Result<u64, ChainError>>;
    /// (max fee per gas, max priority fee per gas).
    fn fees(&self) -> BoxFuture<'_, Result<(u128, u128), ChainError>>;
    /// Signs a call to `to` with an explicit wallet nonce: (hash, raw bytes). No I/O to the node
    /// is required, but it stays async (a remote signer would need it).
    fn sign(
        &self,
        to: Address,
        input: Bytes,
        nonce: u64,
        fees: (u128, u128),
    ) -> BoxFuture<'_, Result<(B256, Vec<u8>), ChainError>>;
    /// [`LaneChain::sign`] with an explicit gas limit (a batch's scales with its items).
    fn sign_with_gas(
        &self,
        to: Address,
        input: Bytes,
        nonce: u64,
        fees: (u128, u128),
        _gas_limit: u64,
    ) -> BoxFuture<'_, Result<(B256, Vec<u8>), ChainError>> {
        self.sign(to, input, nonce, fees)
    }
    fn broadcast<'a>(&'a self, raw: &'a [u8]) -> BoxFuture<'a, SendOutcome>;
    fn receipt(&self, hash: B256) -> BoxFuture<'_, Result<Option<Receipt>, ChainError>>;
    /// What the node knows of a transaction (`eth_getTransactionByHash`): `None` when it does
    /// not know the hash; its block when mined (a node may answer this before it serves the
    /// receipt).
    fn tx_seen(&self, hash: B256) -> BoxFuture<'_, Result<Option<TxSeen>, ChainError>>;
    /// The latest block's base fee per gas.
    fn base_fee(&self) -> BoxFuture<'_, Result<u128, ChainError>>;
    /// The signer wallet's ETH balance.
    fn signer_balance(&self) -> BoxFuture<'_, Result<U256, ChainError>>;
    /// The same call as the signed `raw`, at its nonce, signed with `fees` (replace-by-fee).
    fn resign<'a>(
        &'a self,
        raw: &'a [u8],
        fees: (u128, u128),
    ) -> BoxFuture<'a, Result<(B256, Vec<u8>), ChainError>>;
    /// Whether the call would execute now from the signer (`eth_call`); false: it reverts.
    fn simulate(&self, to: Address, input: Bytes) -> BoxFuture<'_, Result<bool, ChainError>>;
    /// The `AuthorizationUsed`/`AuthorizationCanceled` event of an ERC-3009 authorization in
    /// the last [`AUTH_EVENT_LOOKBACK`] blocks.
    fn authorization_event(
        &self,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> BoxFuture<'_, Result<Option<AuthorizationEvent>, ChainError>>;
}

/// The store side of one lane. Every state change is conditional on the payment's current
/// state (returns false when it no longer was), so a stale decision changes nothing.
pub(crate) trait LaneStore: Send + Sync {
    /// Takes or renews the lane's lease; true if `owner` holds it now.
    fn hold_lease<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn release_lease<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PaymentRow>, StoreError>>;
    /// Pending payments due for `signer`'s lane (permits naming `signer` or the lane's batch
    /// `contract` as spender), in acceptance order.
    fn due_pending(
        &self,
        chain_id: u64,
        signer: Address,
        contract: Option<Address>,
        now_ms: i64,
        limit: i64,
        share: LaneShare,
    ) -> BoxFuture<'_, Result<Vec<PaymentRow>, StoreError>>;
    /// Stores a signed batch transaction and moves its items' payments (id, with permit) to
    /// `submitted`, atomically; false (nothing stored) if one was no longer pending.
    fn record_batch<'a>(
        &'a self,
        tx: &'a TxRow,
        items: &'a [(String, bool)],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// A batch's items in item order: (payment id, with permit).
    fn batch_items<'a>(
        &'a self,
        batch_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, bool)>, StoreError>>;
    /// Every attempt hash of every batch transaction that carried `payment_id`, with its item
    /// index in that batch.
    fn batch_attempts_of<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(B256, u64)>, StoreError>>;
    /// The payments of `ids` that exist (any order): a batch's items in one read.
    fn get_many<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<PaymentRow>, StoreError>>;
    /// In one DB transaction: the still `submitted` payments of `settled` -> `settled`
    /// (`gas_each` charged), and the batch transaction `hash` mined (closed). Returns the ids
    /// moved.
    fn settle_batch<'a>(
        &'a self,
        hash: B256,
        success: bool,
        block: Option<u64>,
        settled: &'a [String],
        gas_each: u64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// How many of the signer's transactions wait for a receipt.
    fn in_flight(&self, chain_id: u64, signer: Address) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Marks a batch transaction mined (success, block) or dropped (`None`).
    fn close_tx(
        &self,
        hash: B256,
        receipt: Option<(bool, u64)>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Permit nonces >= `from` of the payer settled, or in flight in `signer`'s transactions.
    fn submitted_permit_nonces(
        &self,
        chain_id: u64,
        asset: Address,
        payer: Address,
        from: U256,
        signer: Address,
    ) -> BoxFuture<'_, Result<Vec<U256>, StoreError>>;
    fn defer<'a>(
        &'a self,
        id: &'a str,
        next_attempt_ms: i64,
        note: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// `cause`: (cause code, payer caused it).
    fn fail_pending<'a>(
        &'a self,
        id: &'a str,
        reason: &'a str,
        release_key: bool,
        cause: Option<(&'a str, bool)>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Stores signed transactions and moves the payment to `submitted`, atomically.
    fn record_submission<'a>(
        &'a self,
        payment_id: &'a str,
        txs: &'a [TxRow],
        permit_tx: Option<B256>,
        transfer_tx: B256,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Transactions of a signer still waiting for a receipt, in nonce order.
    fn unconfirmed_txs(
        &self,
        chain_id: u64,
        signer: Address,
    ) -> BoxFuture<'_, Result<Vec<TxRow>, StoreError>>;
    fn max_tx_nonce(
        &self,
        chain_id: u64,
        signer: Address,
    ) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    fn mark_broadcast(&self, hash: B256, now_ms: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    #[allow(clippy::too_many_arguments)]
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
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// `settled` by a transaction this settler did not send (from pending or submitted).
    #[allow(clippy::too_many_arguments)]
    fn settle_by<'a>(
        &'a self,
        payment_id: &'a str,
        transfer_tx: B256,
        block: u64,
        note: &'a str,
        receipts: &'a [(B256, bool, u64)],
        dropped: &'a [B256],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Stores a replacement (same nonce, same call, higher fees) as the current attempt.
    fn replace_tx<'a>(
        &'a self,
        old: B256,
        new: &'a TxRow,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn attempt_hashes(
        &self,
        chain_id: u64,
        signer: Address,
        nonce: u64,
    ) -> BoxFuture<'_, Result<Vec<B256>, StoreError>>;
    fn adopt_attempt<'a>(
        &'a self,
        payment_id: &'a str,
        current: B256,
        mined: B256,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// (transactions signed, gas spent) for a payment.
    fn payment_spend<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<(u64, u64), StoreError>>;
    fn charge_gas<'a>(
        &'a self,
        payment_id: &'a str,
        gas: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn requeue<'a>(
        &'a self,
        payment_id: &'a str,
        receipts: &'a [(B256, bool, u64)],
        dropped: &'a [B256],
        note: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

impl LaneChain for Chain {
    fn network(&self) -> Network {
        self.network
    }
    fn signer(&self) -> Address {
        Chain::signer(self)
    }
    fn settlement_contract(&self) -> Option<Address> {
        Chain::settlement_contract(self)
    }
    fn is_operator(&self, contract: Address) -> BoxFuture<'_, Result<bool, ChainError>> {
        Box::pin(Chain::is_operator(self, contract))
    }
    fn sign_with_gas(
        &self,
        to: Address,
        input: Bytes,
        nonce: u64,
        fees: (u128, u128),
        gas_limit: u64,
    ) -> BoxFuture<'_, Result<(B256, Vec<u8>), ChainError>> {
        Box::pin(Chain::sign_with_gas(
            self, to, input, nonce, fees, gas_limit,
        ))
    }
    fn chain_id(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        Box::pin(Chain::chain_id(self))
    }
    fn block_number(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        Box::pin(Chain::block_number(self))
    }
    fn balance_of(
        &self,
        token: Address,
        owner: Address,
    ) -> BoxFuture<'_, Result<U256, ChainError>> {
        Box::pin(Chain::balance_of(self, token, owner))
    }
    fn permit_nonce(
        &self,
        token: Address,
        owner: Address,
    ) -> BoxFuture<'_, Result<U256, ChainError>> {
        Box::pin(Chain::permit_nonce(self, token, owner))
    }
    fn allowance(
        &self,
        token: Address,
        owner: Address,
        spender: Address,
    ) -> BoxFuture<'_, Result<U256, ChainError>> {
        Box::pin(Chain::allowance(self, token, owner, spender))
    }
    fn authorization_used(
        &self,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> BoxFuture<'_, Result<bool, ChainError>> {
        Box::pin(Chain::authorization_used(self, token, from, nonce))
    }
    fn pending_nonce(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        Box::pin(Chain::pending_nonce(self))
    }
    fn latest_nonce(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        Box::pin(Chain::latest_nonce(self))
    }
    fn fees(&self) -> BoxFuture<'_, Result<(u128, u128), ChainError>> {
        Box::pin(Chain::fees(self))
    }
    fn sign(
        &self,
        to: Address,
        input: Bytes,
        nonce: u64,
        fees: (u128, u128),
    ) -> BoxFuture<'_, Result<(B256, Vec<u8>), ChainError>> {
        Box::pin(Chain::sign(self, to, input, nonce, fees))
    }
    fn broadcast<'a>(&'a self, raw: &'a [u8]) -> BoxFuture<'a, SendOutcome> {
        Box::pin(Chain::broadcast(self, raw))
    }
    fn receipt(&self, hash: B256) -> BoxFuture<'_, Result<Option<Receipt>, ChainError>> {
        Box::pin(async move {
            let r = Chain::receipt(self, hash).await?;
            Ok(r.map(|r| Receipt {
                success: r.status(),
                block_number: r.block_number,
                transfers: chain::transfer_logs(&r),
                gas_used: r.gas_used,
                items: Chain::settlement_contract(self)
                    .map(|c| chain::item_logs(&r, c))
                    .unwrap_or_default(),
            }))
        })
    }
    fn tx_seen(&self, hash: B256) -> BoxFuture<'_, Result<Option<TxSeen>, ChainError>> {
        Box::pin(async move {
            let block = Chain::transaction_block(self, hash).await?;
            Ok(block.map(|block| TxSeen { block }))
        })
    }
    fn base_fee(&self) -> BoxFuture<'_, Result<u128, ChainError>> {
        Box::pin(Chain::base_fee(self))
    }
    fn signer_balance(&self) -> BoxFuture<'_, Result<U256, ChainError>> {
        Box::pin(Chain::signer_balance(self))
    }
    fn resign<'a>(
        &'a self,
        raw: &'a [u8],
        fees: (u128, u128),
    ) -> BoxFuture<'a, Result<(B256, Vec<u8>), ChainError>> {
        Box::pin(Chain::resign(self, raw, fees))
    }
    fn simulate(&self, to: Address, input: Bytes) -> BoxFuture<'_, Result<bool, ChainError>> {
        Box::pin(Chain::simulate(self, to, input))
    }
    fn authorization_event(
        &self,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> BoxFuture<'_, Result<Option<AuthorizationEvent>, ChainError>> {
        Box::pin(async move {
            let e =
                Chain::authorization_event(self, token, from, nonce, AUTH_EVENT_LOOKBACK).await?;
            Ok(e.map(|(canceled, tx, block)| {
                if canceled {
                    AuthorizationEvent::Canceled { tx }
                } else {
                    AuthorizationEvent::Used { tx, block }
                }
            }))
        })
    }
}

impl LaneStore for Store {
    fn hold_lease<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            // SQLite is one process's file: there is no other replica to exclude.
            if self.backend() == Backend::Sqlite {
                return Ok(true);
            }
            self.lease(name, owner, ttl_ms, now_ms).await
        })
    }
    fn release_lease<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if self.backend() != Backend::Postgres {
                return Ok(());
            }
            Store::release_lease(self, name, owner).await
        })
    }
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PaymentRow>, StoreError>> {
        Box::pin(Store::get(self, id))
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
        Box::pin(Store::due_pending(
            self, chain_id, signer, contract, now_ms, limit, share,
        ))
    }
    fn record_batch<'a>(
        &'a self,
        tx: &'a TxRow,
        items: &'a [(String, bool)],
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(Store::record_batch(self, tx, items, now_ms))
    }
    fn batch_items<'a>(
        &'a self,
        batch_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, bool)>, StoreError>> {
        Box::pin(Store::batch_items(self, batch_id))
    }
    fn close_tx(
        &self,
        hash: B256,
        receipt: Option<(bool, u64)>,
        now_ms: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(Store::close_tx(self, hash, receipt, now_ms))
    }
    fn batch_attempts_of<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(B256, u64)>, StoreError>> {
        Box::pin(Store::batch_attempts_of(self, payment_id))
    }
    fn get_many<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<PaymentRow>, StoreError>> {
        Box::pin(Store::get_many(self, ids))
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
        Box::pin(Store::settle_batch(
            self, hash, success, block, settled, gas_each, now_ms,
        ))
    }
    fn in_flight(&self, chain_id: u64, signer: Address) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(Store::in_flight(self, chain_id, signer))
    }
    fn submitted_permit_nonces(
        &self,
        chain_id: u64,
        asset: Address,
        payer: Address,
        from: U256,
        signer: Address,
    ) -> BoxFuture<'_, Result<Vec<U256>, StoreError>> {
        Box::pin(Store::submitted_permit_nonces(
            self, chain_id, asset, payer, from, signer,
        ))
    }
    fn defer<'a>(
        &'a self,
        id: &'a str,
        next_attempt_ms: i64,
        note: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::defer(self, id, next_attempt_ms, note, now_ms))
    }
    fn fail_pending<'a>(
        &'a self,
        id: &'a str,
        reason: &'a str,
        release_key: bool,
        cause: Option<(&'a str, bool)>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(Store::fail_pending_with_cause(
            self,
            id,
            reason,
            release_key,
            cause,
            now_ms,
        ))
    }
    fn record_submission<'a>(
        &'a self,
        payment_id: &'a str,
        txs: &'a [TxRow],
        permit_tx: Option<B256>,
        transfer_tx: B256,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(Store::record_submission(
            self,
            payment_id,
            txs,
            permit_tx,
            transfer_tx,
            now_ms,
        ))
    }
    fn unconfirmed_txs(
        &self,
        chain_id: u64,
        signer: Address,
    ) -> BoxFuture<'_, Result<Vec<TxRow>, StoreError>> {
        Box::pin(Store::unconfirmed_txs(self, chain_id, signer))
    }
    fn max_tx_nonce(
        &self,
        chain_id: u64,
        signer: Address,
    ) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        Box::pin(Store::max_tx_nonce(self, chain_id, signer))
    }
    fn mark_broadcast(&self, hash: B256, now_ms: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(Store::mark_broadcast(self, hash, now_ms))
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
        Box::pin(Store::finish(
            self, payment_id, receipts, dropped, settled, block, error, cause, now_ms,
        ))
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
        Box::pin(Store::settle_by(
            self,
            payment_id,
            transfer_tx,
            block,
            note,
            receipts,
            dropped,
            now_ms,
        ))
    }
    fn replace_tx<'a>(
        &'a self,
        old: B256,
        new: &'a TxRow,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(Store::replace_tx(self, old, new, now_ms))
    }
    fn attempt_hashes(
        &self,
        chain_id: u64,
        signer: Address,
        nonce: u64,
    ) -> BoxFuture<'_, Result<Vec<B256>, StoreError>> {
        Box::pin(Store::attempt_hashes(self, chain_id, signer, nonce))
    }
    fn adopt_attempt<'a>(
        &'a self,
        payment_id: &'a str,
        current: B256,
        mined: B256,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::adopt_attempt(
            self, payment_id, current, mined, now_ms,
        ))
    }
    fn payment_spend<'a>(
        &'a self,
        payment_id: &'a str,
    ) -> BoxFuture<'a, Result<(u64, u64), StoreError>> {
        Box::pin(Store::payment_spend(self, payment_id))
    }
    fn charge_gas<'a>(
        &'a self,
        payment_id: &'a str,
        gas: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::charge_gas(self, payment_id, gas))
    }
    fn requeue<'a>(
        &'a self,
        payment_id: &'a str,
        receipts: &'a [(B256, bool, u64)],
        dropped: &'a [B256],
        note: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(Store::requeue(
            self, payment_id, receipts, dropped, note, now_ms,
        ))
    }
}

/// What became of one stored transaction (`Lane::tx_fate`, in `confirm`).
#[derive(Debug)]
pub(super) enum TxFate {
    /// Mined: the attempt's hash and receipt.
    Mined((B256, Receipt)),
    /// Not mined yet, or its receipt not served yet: the confirm round stops here.
    Wait,
    /// Its nonce was taken by a transaction this settler did not send: never mined.
    Dead,
}

/// What the node says of one stored attempt (`eth_getTransactionByHash`); the lane reads it
/// only for a transaction without receipt whose wallet nonce the node counts as used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxSeen {
    /// The block it is in; `None` while it waits in the node's pool.
    pub block: Option<u64>,
}
