//! Durable asynchronous settlement: one lane per network (= per signer wallet there).
//!
//! A lane owns its wallet's transaction nonces. It takes pending payments in acceptance order
//! (so one payer's permits go in permit-nonce order), signs the settlement transactions with
//! consecutive wallet nonces, stores them and moves the payment to `submitted` in one DB
//! transaction, THEN broadcasts them, without waiting for the previous receipt. Receipts are
//! confirmed as blocks arrive. After a crash the lane re-broadcasts every stored transaction
//! without receipt byte for byte and continues after the highest stored nonce: a payment's
//! transfer is signed once and can execute at most once. Replicas on a shared Postgres take a
//! lease on the lane, so exactly one process drives a wallet at a time.
//!
//! The one exception to "signed once": a stored transaction whose wallet nonce was used by a
//! transaction this settler did not send (the key is used elsewhere too). Once the wallet's
//! confirmed nonce is above it and it has no receipt, it can never be mined; its payment goes
//! back to `pending`, is re-checked on chain (permit nonce and allowance, authorization state)
//! and signed again with fresh nonces. The lane also re-syncs its next nonce from the node
//! before every batch, so a foreign transaction sent before signing costs nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use tokio::sync::{watch, Notify};
use x402_protocol::payment::{Authorization, Permit};
use x402_protocol::settler_api::SettlementState;
use x402_protocol::Scheme;

use crate::chain::{self, Chain, SendOutcome};
use crate::error::{ChainError, StoreError};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::store::{Backend, PaymentRow, Store, TxRow};

/// Out-of-order permit reverts retried at most this many times per payment.
const MAX_REQUEUES: i64 = 8;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub poll: Duration,
    pub rebroadcast: Duration,
    pub lease: Duration,
    pub instance: String,
    pub batch: i64,
}

#[derive(Debug, thiserror::Error)]
enum LaneError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lease lost")]
    LeaseLost,
    #[error("RPC serves chain id {got}, configured as {want}")]
    WrongChain { got: u64, want: u64 },
}

pub struct Lane {
    store: Store,
    chain: Arc<Chain>,
    wake: Arc<Notify>,
    /// Poked by the broadcaster on "nonce too low": the confirm loop checks at once.
    recheck: Notify,
    cfg: WorkerConfig,
}

enum ChainFacts {
    PermitNonce(U256),
    AuthorizationUsed(bool),
}

enum Preflight {
    Ready,
    /// The permit's nonce is used on chain but the allowance covers the value (someone
    /// submitted this permit, or another one to the settler): `transferFrom` alone settles it.
    TransferOnly,
    Defer(String),
    Fail { reason: String, release_key: bool },
}

impl Lane {
    pub fn new(store: Store, chain: Arc<Chain>, wake: Arc<Notify>, cfg: WorkerConfig) -> Lane {
        Lane { store, chain, wake, recheck: Notify::new(), cfg }
    }

    fn lease_name(&self) -> String {
        format!("lane:{}:{:#x}", self.chain.network.chain_id, self.chain.signer())
    }

    async fn hold_lease(&self) -> Result<bool, StoreError> {
        if self.store.backend() == Backend::Sqlite {
            return Ok(true);
        }
        self.store.lease(&self.lease_name(), &self.cfg.instance, self.cfg.lease.as_millis() as i64, now_ms()).await
    }

    /// Runs until `shutdown` turns true. Errors restart the lane after a backoff.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let network = self.chain.network;
        let mut backoff = Duration::from_millis(200);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let result = match self.hold_lease().await {
                Ok(true) => self.drive(&mut shutdown).await,
                Ok(false) => {
                    tracing::debug!(%network, "lane lease held by another replica");
                    Err(LaneError::LeaseLost)
                }
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(()) => break,
                Err(LaneError::LeaseLost) => {
                    backoff = self.cfg.lease / 3;
                }
                Err(e) => {
                    metrics::counter!(m::RPC_ERRORS, "network" => network.to_string()).increment(1);
                    tracing::warn!(%network, error = %e, retry_in_ms = backoff.as_millis() as u64, "settlement lane error; restarting the lane");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        if self.store.backend() == Backend::Postgres {
            let _ = self.store.release_lease(&self.lease_name(), &self.cfg.instance).await;
        }
        tracing::info!(%network, "settlement lane stopped");
    }

    /// Recovery, then the submit / confirm loop.
    async fn drive(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), LaneError> {
        let want = self.chain.network.chain_id;
        let got = self.chain.chain_id().await?;
        if got != want {
            return Err(LaneError::WrongChain { got, want });
        }
        let signer = self.chain.signer();
        // Re-broadcast everything stored but unconfirmed (it may never have left this process).
        let unconfirmed = self.store.unconfirmed_txs(want, signer).await?;
        for t in &unconfirmed {
            self.broadcast(t).await?;
        }
        let chain_next = self.chain.pending_nonce().await?;
        let db_next = self.store.max_tx_nonce(want, signer).await?.map(|n| n + 1).unwrap_or(0);
        let mut next_nonce = chain_next.max(db_next);
        tracing::info!(network = %self.chain.network, signer = %signer, next_nonce, rebroadcast = unconfirmed.len(), "settlement lane started");

        let (tx_out, tx_in) = tokio::sync::mpsc::unbounded_channel::<TxRow>();
        let submit = self.submit_loop(&mut next_nonce, tx_out, shutdown.clone());
        let confirm = self.confirm_loop(shutdown.clone());
        let send = self.broadcast_loop(tx_in, shutdown.clone());
        tokio::try_join!(submit, confirm, send)?;
        Ok(())
    }

    /// Takes due payments, signs and stores their transactions, hands them to the broadcaster
    /// in nonce order. Never waits for a receipt.
    async fn submit_loop(&self, next_nonce: &mut u64, out: tokio::sync::mpsc::UnboundedSender<TxRow>, mut shutdown: watch::Receiver<bool>) -> Result<(), LaneError> {
        let mut last_lease = Instant::now();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if last_lease.elapsed() >= self.cfg.lease / 3 {
                if !self.hold_lease().await? {
                    return Err(LaneError::LeaseLost);
                }
                last_lease = Instant::now();
            }
            let submitted = self.submit_due(next_nonce, &out).await?;
            if submitted >= self.cfg.batch as usize {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Sends stored transactions one after the other, in the order they were signed.
    async fn broadcast_loop(&self, mut rx: tokio::sync::mpsc::UnboundedReceiver<TxRow>, mut shutdown: watch::Receiver<bool>) -> Result<(), LaneError> {
        loop {
            tokio::select! {
                t = rx.recv() => match t {
                    Some(t) => {
                        self.broadcast(&t).await?;
                        metrics::counter!(m::TXS_SENT, "kind" => t.kind.clone()).increment(1);
                    }
                    None => return Ok(()),
                },
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Confirms receipts as blocks arrive; re-broadcasts transactions without receipt.
    async fn confirm_loop(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), LaneError> {
        let mut last_block = 0u64;
        let mut last_rebroadcast = Instant::now();
        let mut force = false;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let block = self.chain.block_number().await?;
            let mut confirmed = false;
            if block != last_block || force {
                self.confirm().await?;
                confirmed = true;
                last_block = block;
                force = false;
            }
            if last_rebroadcast.elapsed() >= self.cfg.rebroadcast / 2 {
                // Without a new block nothing above ran: catch transactions whose nonce was
                // taken by a foreign transaction before re-sending them.
                if !confirmed {
                    self.confirm().await?;
                }
                self.rebroadcast_stale().await?;
                last_rebroadcast = Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll) => {}
                _ = self.recheck.notified() => force = true,
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn broadcast(&self, t: &TxRow) -> Result<(), LaneError> {
        match self.chain.broadcast(&t.raw).await {
            SendOutcome::Accepted => {}
            SendOutcome::AlreadyKnown(msg) => {
                tracing::debug!(hash = %t.hash, nonce = t.nonce, msg, "transaction already known");
                if msg.to_ascii_lowercase().contains("nonce too low") {
                    // Mined already, or its nonce went to another transaction: look now.
                    self.recheck.notify_one();
                }
            }
            SendOutcome::Error(msg) => tracing::warn!(hash = %t.hash, nonce = t.nonce, msg, "broadcast failed; will retry"),
        }
        self.store.mark_broadcast(t.hash, now_ms()).await?;
        Ok(())
    }

    async fn rebroadcast_stale(&self) -> Result<(), LaneError> {
        let cutoff = now_ms() - self.cfg.rebroadcast.as_millis() as i64;
        for t in self.store.unconfirmed_txs(self.chain.network.chain_id, self.chain.signer()).await? {
            if t.last_broadcast_ms < cutoff {
                tracing::info!(hash = %t.hash, nonce = t.nonce, "re-broadcasting unconfirmed transaction");
                self.broadcast(&t).await?;
            }
        }
        Ok(())
    }

    /// The chain state a payment's preflight needs: permit nonce or authorization state.
    async fn chain_facts(chain: Arc<Chain>, p: &PaymentRow) -> Result<ChainFacts, ChainError> {
        Ok(match p.p.scheme {
            Scheme::Permit => ChainFacts::PermitNonce(chain.permit_nonce(p.p.asset, p.p.payer).await?),
            Scheme::Exact => ChainFacts::AuthorizationUsed(chain.authorization_used(p.p.asset, p.p.payer, p.p.nonce).await?),
        })
    }

    async fn preflight(&self, p: &PaymentRow, facts: ChainFacts) -> Result<Preflight, LaneError> {
        let now = U256::from((now_ms() / 1000) as u64);
        match p.p.scheme {
            Scheme::Permit => {
                if p.p.deadline <= now + U256::from(5u8) {
                    return Ok(Preflight::Fail { reason: format!("permit deadline {} passed before settlement", p.p.deadline), release_key: true });
                }
                let ChainFacts::PermitNonce(onchain) = facts else { return Ok(Preflight::Defer("internal: wrong facts".into())) };
                let nonce = p.permit_nonce();
                if nonce < onchain {
                    // Used by someone else's permit() call (maybe this very signature): the
                    // allowance may still cover the transfer.
                    let allowance = self.chain.allowance(p.p.asset, p.p.payer, self.chain.signer()).await?;
                    if allowance >= p.p.value {
                        return Ok(Preflight::TransferOnly);
                    }
                    return Ok(Preflight::Fail {
                        reason: format!("permit nonce {nonce} was consumed on chain by another transaction (on-chain nonce {onchain}) and the allowance {allowance} does not cover {}", p.p.value),
                        release_key: false,
                    });
                }
                if nonce > onchain {
                    // Earlier permits of this payer must be in flight ahead of this one.
                    let inflight = self.store.submitted_permit_nonces(p.p.network.chain_id, p.p.asset, p.p.payer, onchain).await?;
                    let gap = nonce - onchain;
                    let covered = gap <= U256::from(inflight.len()) && {
                        let mut n = onchain;
                        let mut ok = true;
                        while n < nonce {
                            if !inflight.contains(&n) {
                                ok = false;
                                break;
                            }
                            n += U256::from(1u8);
                        }
                        ok
                    };
                    if !covered {
                        return Ok(Preflight::Defer(format!("waiting for permit nonce {onchain} of {} to be used first", p.p.payer)));
                    }
                }
                Ok(Preflight::Ready)
            }
            Scheme::Exact => {
                if p.p.deadline <= now + U256::from(5u8) {
                    return Ok(Preflight::Fail { reason: format!("authorization validBefore {} passed before settlement", p.p.deadline), release_key: false });
                }
                if matches!(facts, ChainFacts::AuthorizationUsed(true)) {
                    return Ok(Preflight::Fail { reason: "authorization nonce was used on chain by another transaction".into(), release_key: false });
                }
                Ok(Preflight::Ready)
            }
        }
    }

    /// Signs, stores and broadcasts the settlement of every due pending payment.
    async fn submit_due(&self, next_nonce: &mut u64, out: &tokio::sync::mpsc::UnboundedSender<TxRow>) -> Result<usize, LaneError> {
        let chain_id = self.chain.network.chain_id;
        let signer = self.chain.signer();
        let due = self.store.due_pending(chain_id, signer, now_ms(), self.cfg.batch).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let (fees, node_next) = tokio::try_join!(self.chain.fees(), self.chain.pending_nonce())?;
        if node_next > *next_nonce {
            tracing::warn!(wallet = %signer, network = %self.chain.network, lane_next = *next_nonce, node_next,
                "the settler wallet's nonce was used by transactions this settler did not send (is its key used elsewhere?); re-syncing the lane's nonce from the chain");
            *next_nonce = node_next;
        }
        // Chain reads for the whole batch at once; decisions and signing stay in order.
        let mut reads = tokio::task::JoinSet::new();
        for (i, p) in due.iter().enumerate() {
            let chain = self.chain.clone();
            let p = p.clone();
            reads.spawn(async move { (i, Self::chain_facts(chain, &p).await) });
        }
        let mut facts: Vec<Option<ChainFacts>> = due.iter().map(|_| None).collect();
        while let Some(r) = reads.join_next().await {
            let (i, f) = r.map_err(|e| ChainError::Rpc { network: self.chain.network.to_string(), message: format!("read task: {e}") })?;
            facts[i] = Some(f?);
        }
        let mut count = 0;
        for (p, f) in due.into_iter().zip(facts) {
            let Some(f) = f else { continue };
            let mut with_permit = true;
            match self.preflight(&p, f).await? {
                Preflight::Ready => {}
                Preflight::TransferOnly => {
                    tracing::info!(settlement_id = %p.p.id, "permit nonce already used on chain; the allowance covers the value: transferFrom only");
                    with_permit = false;
                }
                Preflight::Defer(note) => {
                    let wait = 1000i64.saturating_mul(1 << p.attempts.clamp(0, 5));
                    tracing::info!(settlement_id = %p.p.id, note, "settlement deferred");
                    self.store.defer(&p.p.id, now_ms() + wait, &note, now_ms()).await?;
                    continue;
                }
                Preflight::Fail { reason, release_key } => {
                    if self.store.fail_pending(&p.p.id, &reason, release_key, now_ms()).await? {
                        metrics::counter!(m::SETTLEMENTS, "state" => "failed").increment(1);
                        tracing::warn!(settlement_id = %p.p.id, reason, "settlement failed before submission");
                    }
                    continue;
                }
            }
            let token = p.p.asset;
            let calls = match p.p.scheme {
                Scheme::Permit => {
                    let permit = Permit {
                        network: p.p.network,
                        token,
                        owner: p.p.payer,
                        spender: p.p.spender.unwrap_or(signer),
                        value: p.p.value,
                        nonce: p.permit_nonce(),
                        deadline: p.p.deadline,
                        sig: p.p.sig,
                    };
                    let transfer = ("transfer_from", chain::transfer_from_call(p.p.payer, p.p.pay_to, p.p.value));
                    if with_permit {
                        vec![("permit", chain::permit_call(&permit)), transfer]
                    } else {
                        vec![transfer]
                    }
                }
                Scheme::Exact => {
                    let auth = Authorization {
                        network: p.p.network,
                        token,
                        from: p.p.payer,
                        to: p.p.pay_to,
                        value: p.p.value,
                        valid_after: p.p.valid_after,
                        valid_before: p.p.deadline,
                        nonce: p.p.nonce,
                        sig: p.p.sig,
                    };
                    vec![("transfer_with_authorization", chain::transfer_with_authorization_call(&auth))]
                }
            };
            let mut txs = Vec::with_capacity(calls.len());
            for (i, (kind, input)) in calls.into_iter().enumerate() {
                let nonce = *next_nonce + i as u64;
                let (hash, raw) = self.chain.sign(token, input, nonce, fees).await?;
                txs.push(TxRow { chain_id, signer, nonce, payment_id: p.p.id.clone(), kind: kind.into(), hash, raw, state: "sent".into(), last_broadcast_ms: now_ms() });
            }
            let permit_tx = txs.iter().find(|t| t.kind == "permit").map(|t| t.hash);
            let transfer_tx = txs[txs.len() - 1].hash;
            if !self.store.record_submission(&p.p.id, &txs, permit_tx, transfer_tx, now_ms()).await? {
                continue;
            }
            *next_nonce += txs.len() as u64;
            metrics::counter!(m::SETTLEMENTS, "state" => "submitted").increment(1);
            tracing::info!(settlement_id = %p.p.id, transfer_tx = %transfer_tx, wallet_nonce = txs[0].nonce, "settlement submitted");
            for t in txs {
                // The broadcaster is gone only when the lane is stopping; the stored
                // transaction is re-broadcast on the next start.
                let _ = out.send(t);
            }
            count += 1;
        }
        Ok(count)
    }

    /// Checks receipts of submitted payments in wallet-nonce order; stops at the first
    /// transaction not mined yet (later nonces cannot be mined before it). A transaction
    /// without receipt below the wallet's confirmed nonce lost its nonce to a transaction this
    /// settler did not send: it can never be mined, and its payment is signed again.
    async fn confirm(&self) -> Result<(), LaneError> {
        let chain_id = self.chain.network.chain_id;
        let signer = self.chain.signer();
        let unconfirmed = self.store.unconfirmed_txs(chain_id, signer).await?;
        if unconfirmed.is_empty() {
            return Ok(());
        }
        // Read BEFORE the receipts: a nonce below this is taken by a mined transaction, so if
        // ours had been that one its receipt would show below.
        let confirmed_nonce = self.chain.latest_nonce().await?;
        // Group by payment (a payment's transactions have consecutive nonces).
        let mut groups: Vec<Vec<TxRow>> = Vec::new();
        for t in unconfirmed {
            match groups.iter_mut().find(|g| g[0].payment_id == t.payment_id) {
                Some(g) => g.push(t),
                None => groups.push(vec![t]),
            }
        }
        for group in groups {
            let pid = group[0].payment_id.clone();
            let last = &group[group.len() - 1];
            let last_receipt = self.chain.receipt(last.hash).await?;
            if last_receipt.is_none() && last.nonce >= confirmed_nonce {
                break; // not mined yet
            }
            let Some(p) = self.store.get(&pid).await? else { continue };
            if p.state != SettlementState::Submitted {
                continue;
            }
            // Every transaction of the group is now mined or dead (its nonce is below the
            // confirmed nonce too).
            let mut receipts = Vec::new();
            let mut dropped = Vec::new();
            let mut permit_ok = true;
            for t in &group {
                let r = if t.hash == last.hash { last_receipt.clone() } else { self.chain.receipt(t.hash).await? };
                match r {
                    Some(r) => {
                        let ok = r.status();
                        if t.kind == "permit" {
                            permit_ok = ok;
                        }
                        receipts.push((t.hash, ok, r.block_number.unwrap_or(0)));
                    }
                    None => dropped.push(t),
                }
            }
            let dropped_hashes: Vec<_> = dropped.iter().map(|t| t.hash).collect();
            let now = now_ms();
            if let Some(receipt) = &last_receipt {
                let block = receipt.block_number;
                let moved = receipt.status() && chain::has_transfer(receipt, p.p.asset, p.p.payer, p.p.pay_to, p.p.value);
                if moved {
                    if self.store.finish(&pid, &receipts, &dropped_hashes, true, block, None, now).await? {
                        metrics::counter!(m::SETTLEMENTS, "state" => "settled").increment(1);
                        metrics::histogram!(m::SETTLE_LATENCY).record((now - p.p.created_ms).max(0) as f64 / 1000.0);
                        tracing::info!(settlement_id = %pid, block = block.unwrap_or(0), tx = %last.hash, "settled");
                    }
                    continue;
                }
                if dropped.is_empty() {
                    if let Some(note) = self.permit_retry(&p, permit_ok).await? {
                        if self.store.requeue(&pid, &receipts, &[], &note, now).await? {
                            tracing::warn!(settlement_id = %pid, note, "settlement will be signed again");
                            self.wake.notify_one();
                        }
                        continue;
                    }
                    let reason = self.diagnose(&p, permit_ok, receipt.status()).await;
                    if self.store.finish(&pid, &receipts, &[], false, block, Some(&reason), now).await? {
                        metrics::counter!(m::SETTLEMENTS, "state" => "failed").increment(1);
                        tracing::warn!(settlement_id = %pid, reason, "settlement failed on chain");
                    }
                    continue;
                }
            }
            // The funds did not move and a transaction of this payment can never be mined.
            let nonces: Vec<u64> = dropped.iter().map(|t| t.nonce).collect();
            let note = format!("wallet nonce(s) {nonces:?} of {signer:#x} were used by another transaction; settlement is signed again");
            tracing::warn!(wallet = %signer, network = %self.chain.network, settlement_id = %pid, ?nonces, confirmed_nonce,
                "settlement transaction(s) can never be mined: the wallet's nonce was used by a transaction this settler did not send (is its key used elsewhere?); re-checking the payment on chain and signing it again");
            if self.store.requeue(&pid, &receipts, &dropped_hashes, &note, now).await? {
                self.wake.notify_one();
            }
        }
        Ok(())
    }

    /// A permit payment whose `permit()` reverted while the owner's on-chain nonce is still at
    /// or below its nonce: an earlier permit of this owner was not executed yet (e.g. it lost
    /// its wallet nonce), so this one reverted out of order. Worth another attempt (bounded).
    async fn permit_retry(&self, p: &PaymentRow, permit_ok: bool) -> Result<Option<String>, LaneError> {
        if p.p.scheme != Scheme::Permit || permit_ok || p.attempts >= MAX_REQUEUES {
            return Ok(None);
        }
        let onchain = self.chain.permit_nonce(p.p.asset, p.p.payer).await?;
        if onchain > p.permit_nonce() {
            return Ok(None);
        }
        Ok(Some(format!("permit() reverted while the owner's on-chain nonce is {onchain} (this permit's is {}): earlier permits go first; signed again", p.permit_nonce())))
    }

    async fn diagnose(&self, p: &PaymentRow, permit_ok: bool, transfer_ok: bool) -> String {
        let what = match p.p.scheme {
            Scheme::Permit => "transferFrom",
            Scheme::Exact => "transferWithAuthorization",
        };
        let mut reason = if !transfer_ok { format!("{what} reverted") } else { format!("{what} succeeded without the expected Transfer event") };
        if !permit_ok {
            reason.push_str("; permit() reverted (nonce used or signature refused)");
        }
        if let Ok(b) = self.chain.balance_of(p.p.asset, p.p.payer).await {
            if b < p.p.value {
                reason.push_str(&format!("; payer balance {b} is below the value {}", p.p.value));
            }
        }
        reason
    }
}
