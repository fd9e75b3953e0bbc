//! The confirm step: reads receipts of submitted payments in wallet-nonce order (every
//! attempt at a nonce: a replaced transaction may be the one mined) and ends each payment
//! `settled` or `failed` (with its cause), or sends it back to `pending` (an out-of-order
//! permit, or a transaction whose nonce a foreign transaction took). A reverted ERC-3009
//! settlement is checked for a front-run: executed by someone else, it is `settled` with that
//! transaction. What each receipt means is decided in [`super::decide`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use tokio::sync::watch;

use super::decide::{self, AfterRevert, NonceFate, PermitRevert, PermitVerdict, Verdict};
use super::io::{Receipt, TxFate};
use super::{Lane, LaneError};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::scheme::{self, FactsRead, Preflight, PERMIT};
use crate::store::{PaymentRow, TxRow};
use x402_protocol::settler_api::SettlementState;

impl Lane {
    /// Confirms receipts as blocks arrive; re-broadcasts transactions without receipt,
    /// replaces underpriced ones and reports the lane's health.
    pub(super) async fn confirm_loop(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), LaneError> {
        let mut last_block = 0u64;
        let mut last_rebroadcast = Instant::now();
        let mut last_health: Option<Instant> = None;
        let mut force = false;
        let health_every = self.cfg.poll.max(Duration::from_millis(1000));
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let block = self.chain.block_number().await?;
            let mut confirmed = false;
            // A nonce counted as used without its receipt yet: look again after this poll.
            force |= self.look_again.swap(false, Ordering::Relaxed);
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
            if last_health.is_none_or(|t| t.elapsed() >= health_every) {
                self.replace_and_report().await?;
                last_health = Some(Instant::now());
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll) => {}
                _ = self.recheck.notified() => force = true,
                _ = shutdown.changed() => {}
            }
        }
    }

    /// `t` with a receipt: mined once it is deep enough, else waited for; `None` without one.
    async fn receipt_fate(&self, t: &TxRow) -> Result<Option<TxFate>, LaneError> {
        let Some(m) = self.mined_receipt(t).await? else {
            return Ok(None);
        };
        if self.too_shallow(&m.1).await? {
            return Ok(Some(TxFate::Wait));
        }
        self.stop_awaiting(t.nonce);
        Ok(Some(TxFate::Mined(m)))
    }

    /// Whether receipt `r` is not yet `--confirmations` blocks deep (then the round waits and
    /// looks again at the next block). One RPC read, only when more than one is asked.
    async fn too_shallow(&self, r: &Receipt) -> Result<bool, LaneError> {
        if self.cfg.confirmations <= 1 {
            return Ok(false);
        }
        let head = self.chain.block_number().await?;
        let block = r.block_number.unwrap_or(u64::MAX);
        Ok(!decide::deep_enough(block, head, self.cfg.confirmations))
    }

    /// Every stored attempt hash at `t`'s nonce, the current one first.
    async fn attempts(&self, t: &TxRow) -> Result<Vec<B256>, LaneError> {
        let mut hashes = self
            .store
            .attempt_hashes(t.chain_id, t.signer, t.nonce)
            .await?;
        hashes.retain(|h| *h != t.hash);
        hashes.insert(0, t.hash);
        Ok(hashes)
    }

    /// The receipt of whichever attempt at `t`'s nonce was mined (the current one first). An
    /// earlier attempt mined becomes the transaction's current one in the store.
    pub(super) async fn mined_receipt(
        &self,
        t: &TxRow,
    ) -> Result<Option<(B256, Receipt)>, LaneError> {
        let hashes = self.attempts(t).await?;
        let mut found = Vec::with_capacity(hashes.len());
        for h in hashes {
            let r = self.chain.receipt(h).await?;
            let hit = r.is_some();
            found.push((h, r));
            if hit {
                break;
            }
        }
        let mined = decide::mined_attempt(found);
        if let Some((h, _)) = &mined {
            if *h != t.hash {
                tracing::info!(settlement_id = %t.payment_id, nonce = t.nonce, mined = %h, current = %t.hash, "an earlier attempt at this nonce was mined");
                self.store
                    .adopt_attempt(&t.payment_id, t.hash, *h, now_ms())
                    .await?;
            }
        }
        Ok(mined)
    }

    /// What became of `t`: mined (the receipt of whichever attempt), to wait for, or dead
    /// (its nonce taken by a transaction this settler did not send). `confirmed_nonce`: the
    /// wallet's, read before the receipts. A used nonce without receipt is only called dead
    /// when the node knows none of `t`'s attempts ([`decide::nonce_fate`]): nodes count a
    /// nonce a moment before they serve the receipt, and a batch called dead while it was
    /// mined would have its paid items re-checked and failed as spent.
    pub(super) async fn tx_fate(
        &self,
        t: &TxRow,
        confirmed_nonce: u64,
    ) -> Result<TxFate, LaneError> {
        if let Some(fate) = self.receipt_fate(t).await? {
            return Ok(fate);
        }
        if !decide::nonce_used(t.nonce, confirmed_nonce) {
            return Ok(TxFate::Wait);
        }
        let mut fate = self.fate_without_receipt(t, confirmed_nonce).await?;
        if fate == NonceFate::NonceTaken {
            // The node may not know the hash for a moment either (a load balancer's other
            // node): look once more after a poll before calling it dead.
            tokio::time::sleep(self.cfg.poll).await;
            if let Some(fate) = self.receipt_fate(t).await? {
                return Ok(fate);
            }
            fate = self.fate_without_receipt(t, confirmed_nonce).await?;
        }
        Ok(match fate {
            NonceFate::Mined | NonceFate::NotMinedYet => TxFate::Wait,
            NonceFate::AwaitReceipt { .. } => {
                self.look_again.store(true, Ordering::Relaxed);
                TxFate::Wait
            }
            NonceFate::NonceTaken => {
                self.stop_awaiting(t.nonce);
                TxFate::Dead
            }
        })
    }

    /// [`decide::nonce_fate`] of `t` without receipt at a used nonce, from what the node
    /// knows of each stored attempt; logs a mined one overdue once.
    async fn fate_without_receipt(
        &self,
        t: &TxRow,
        confirmed_nonce: u64,
    ) -> Result<NonceFate, LaneError> {
        let hashes = self.attempts(t).await?;
        let mut seen = Vec::with_capacity(hashes.len());
        for h in &hashes {
            seen.push(self.chain.tx_seen(*h).await?);
        }
        let now = now_ms();
        let since = self.awaiting_since(t.nonce, now);
        let waited = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
        let known = decide::attempts_seen(false, &seen);
        let fate = decide::nonce_fate(known, t.nonce, confirmed_nonce, waited);
        match fate {
            NonceFate::AwaitReceipt { overdue: true } if self.warn_once(t.nonce) => {
                tracing::warn!(settlement_id = %t.payment_id, nonce = t.nonce, tx = %t.hash, waited_s = waited.as_secs(),
                    "the node has this settlement transaction in a block but serves no receipt for it; waiting (it is never signed again)");
            }
            NonceFate::AwaitReceipt { overdue: false } => {
                tracing::debug!(settlement_id = %t.payment_id, nonce = t.nonce, tx = %t.hash, ?known,
                    "wallet nonce counted as used, receipt not served yet; looking again");
            }
            _ => {}
        }
        Ok(fate)
    }

    /// When the lane first saw `nonce` used without a receipt (recorded now if not yet).
    fn awaiting_since(&self, nonce: u64, now: i64) -> i64 {
        let mut m = self
            .awaiting_receipt
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.entry(nonce).or_insert((now, false)).0
    }

    /// True the first time it is asked for `nonce`.
    fn warn_once(&self, nonce: u64) -> bool {
        let mut m = self
            .awaiting_receipt
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match m.get_mut(&nonce) {
            Some((_, warned)) => !std::mem::replace(warned, true),
            None => true,
        }
    }

    fn stop_awaiting(&self, nonce: u64) {
        self.awaiting_receipt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&nonce);
    }

    /// Checks receipts of submitted payments in wallet-nonce order; stops at the first
    /// transaction not mined yet (later nonces cannot be mined before it), or whose nonce is
    /// used while the node still knows it (its receipt is on its way). A transaction without
    /// receipt below the wallet's confirmed nonce that the node does not know lost its nonce
    /// to a transaction this settler did not send: it can never be mined, and its payment is
    /// signed again.
    pub(super) async fn confirm(&self) -> Result<(), LaneError> {
        let network = self.chain.network();
        let chain_id = network.chain_id;
        let signer = self.chain.signer();
        let unconfirmed = self.store.unconfirmed_txs(chain_id, signer).await?;
        if unconfirmed.is_empty() {
            return Ok(());
        }
        // Read BEFORE the receipts: a nonce below this is taken by a mined transaction, so if
        // ours had been that one its receipt would show below.
        let confirmed_nonce = self.chain.latest_nonce().await?;
        for group in decide::group_by_payment(unconfirmed) {
            let Some(last) = group.last() else { continue };
            if last.kind == super::batch::BATCH {
                if self.confirm_batch(last, confirmed_nonce).await? {
                    continue;
                }
                break; // not mined yet
            }
            let pid = last.payment_id.clone();
            let last_mined = match self.tx_fate(last, confirmed_nonce).await? {
                TxFate::Wait => break, // not mined yet, or its receipt not served yet
                TxFate::Mined(m) => Some(m),
                TxFate::Dead => None,
            };
            let Some(p) = self.store.get(&pid).await? else {
                continue;
            };
            if p.state != SettlementState::Submitted {
                continue;
            }
            // The earlier transactions' nonces are used too: each is mined, dead, or mined
            // with its receipt on the way (then the round waits for it).
            let mut fates = Vec::with_capacity(group.len());
            for t in &group {
                let r = if t.nonce == last.nonce {
                    last_mined.clone()
                } else {
                    match self.tx_fate(t, confirmed_nonce).await? {
                        TxFate::Wait => break,
                        TxFate::Mined(m) => Some(m),
                        TxFate::Dead => None,
                    }
                };
                fates.push((t, r));
            }
            if fates.len() < group.len() {
                break;
            }
            let mut receipts = Vec::new();
            let mut dropped = Vec::new();
            let mut permit_ok = true;
            let mut gas = 0u64;
            for (t, r) in fates {
                match r {
                    Some((h, r)) => {
                        if t.kind == PERMIT {
                            permit_ok = r.success;
                        }
                        gas = gas.saturating_add(r.gas_used);
                        receipts.push((h, r.success, r.block_number.unwrap_or(0)));
                    }
                    None => dropped.push(t),
                }
            }
            if gas > 0 {
                self.store.charge_gas(&pid, gas).await?;
            }
            let dropped_hashes: Vec<_> = dropped.iter().map(|t| t.hash).collect();
            let now = now_ms();
            let last_receipt = last_mined.as_ref().map(|(_, r)| r);
            let last_hash = last_mined.as_ref().map(|(h, _)| *h).unwrap_or(last.hash);
            let block = last_receipt.and_then(|r| r.block_number);
            match decide::verdict(last_receipt, &p.p, !dropped.is_empty()) {
                Verdict::Settled => {
                    if self
                        .store
                        .finish(
                            &pid,
                            &receipts,
                            &dropped_hashes,
                            true,
                            block,
                            None,
                            None,
                            now,
                        )
                        .await?
                    {
                        metrics::counter!(m::SETTLEMENTS, "state" => "settled").increment(1);
                        metrics::histogram!(m::SETTLE_LATENCY)
                            .record((now - p.p.created_ms).max(0) as f64 / 1000.0);
                        tracing::info!(settlement_id = %pid, block = block.unwrap_or(0), tx = %last_hash, "settled");
                    }
                }
                Verdict::NotMoved { transfer_ok } => {
                    self.not_moved(&p, &receipts, permit_ok, transfer_ok, block)
                        .await?;
                }
                Verdict::NonceLost => {
                    // The funds did not move and a transaction of this payment can never be mined.
                    let nonces: Vec<u64> = dropped.iter().map(|t| t.nonce).collect();
                    let note = decide::nonce_lost_note(&nonces, signer);
                    tracing::warn!(wallet = %signer, network = %network, settlement_id = %pid, ?nonces, confirmed_nonce,
                        "settlement transaction(s) can never be mined: the wallet's nonce was used by a transaction this settler did not send (is its key used elsewhere?); re-checking the payment on chain and signing it again");
                    if self
                        .store
                        .requeue(&pid, &receipts, &dropped_hashes, &note, now)
                        .await?
                    {
                        self.wake.notify_one();
                    }
                }
            }
        }
        Ok(())
    }

    /// Every transaction of a payment is mined and the funds did not move: executed by
    /// someone else (settled with that transaction), out of order (signed again), or failed
    /// with its cause.
    pub(super) async fn not_moved(
        &self,
        p: &PaymentRow,
        receipts: &[(B256, bool, u64)],
        permit_ok: bool,
        transfer_ok: bool,
        block: Option<u64>,
    ) -> Result<(), LaneError> {
        let pid = &p.p.id;
        let now = now_ms();
        let mut after = AfterRevert::default();
        // An authorization anyone may submit: ours reverted - used by someone else first?
        if let (false, FactsRead::AuthorizationState { token, from, nonce }) =
            (transfer_ok, scheme::settlement(p.p.scheme).facts_read(&p.p))
        {
            if self.chain.authorization_used(token, from, nonce).await? {
                match self.authorization_fate(p).await? {
                    Preflight::SettledBy { tx, block } => {
                        let note = format!("executed on chain by transaction {tx}, not sent by this settler (front-run or submitted by the payer); this settler's transaction reverted");
                        if self
                            .store
                            .settle_by(pid, tx, block, &note, receipts, &[], now)
                            .await?
                        {
                            metrics::counter!(m::SETTLEMENTS, "state" => "settled").increment(1);
                            tracing::info!(settlement_id = %pid, tx = %tx, block, "settled by another transaction");
                        }
                        return Ok(());
                    }
                    Preflight::Fail { cause, .. } => {
                        after.canceled = cause == scheme::FailCause::AuthorizationCanceled;
                        after.used_elsewhere =
                            cause == scheme::FailCause::AuthorizationUsedElsewhere;
                    }
                    _ => {}
                }
            }
        }
        if decide::permit_retry_possible(p, permit_ok) {
            let onchain = self.chain.permit_nonce(p.p.asset, p.p.payer).await?;
            let executes_now = if onchain == p.permit_nonce() {
                match decide::settlement_calls(p, self.chain.signer(), true)
                    .into_iter()
                    .find(|(k, _)| *k == PERMIT)
                {
                    Some((_, input)) => Some(self.chain.simulate(p.p.asset, input).await?),
                    None => None,
                }
            } else {
                None
            };
            match decide::permit_revert(p, onchain, executes_now) {
                PermitRevert::Retry(note) => {
                    if self.store.requeue(pid, receipts, &[], &note, now).await? {
                        tracing::warn!(settlement_id = %pid, note, "settlement will be signed again");
                        self.wake.notify_one();
                    }
                    return Ok(());
                }
                PermitRevert::NonceSpent => after.permit = Some(PermitVerdict::NonceSpent),
                PermitRevert::SignatureRejected => {
                    after.permit = Some(PermitVerdict::SignatureRejected)
                }
            }
        }
        after.payer_balance = self.chain.balance_of(p.p.asset, p.p.payer).await.ok();
        if permit_ok && !transfer_ok && p.p.spender.is_some() {
            // The permit's spender: the settler's wallet, or the batch contract.
            after.allowance = self
                .chain
                .allowance(
                    p.p.asset,
                    p.p.payer,
                    p.p.spender.unwrap_or(self.chain.signer()),
                )
                .await
                .ok();
        }
        let cause = decide::failure_cause(transfer_ok, permit_ok, &after, p.p.value);
        let reason = decide::failure_reason(
            p.p.scheme,
            permit_ok,
            transfer_ok,
            after.payer_balance,
            p.p.value,
        );
        if self
            .store
            .finish(
                pid,
                receipts,
                &[],
                false,
                block,
                Some(&reason),
                Some(cause.stored()),
                now,
            )
            .await?
        {
            metrics::counter!(m::SETTLEMENTS, "state" => "failed").increment(1);
            tracing::warn!(settlement_id = %pid, reason, cause = cause.code(), payer_caused = cause.payer_caused(), "settlement failed on chain");
        }
        Ok(())
    }

    /// Replace-by-fee for underpriced transactions past `replace_after`, then the lane's
    /// health: the signer balance gauge, and whether the lane is stalled.
    pub(super) async fn replace_and_report(&self) -> Result<(), LaneError> {
        let network = self.chain.network();
        let signer = self.chain.signer();
        let unconfirmed = self.store.unconfirmed_txs(network.chain_id, signer).await?;
        let (estimate, base_fee) = tokio::try_join!(self.chain.fees(), self.chain.base_fee())?;
        let fees = decide::capped_fees(estimate, self.cfg.max_fee);
        let prev_base = u128::from(self.last_base_fee.swap(
            u64::try_from(base_fee).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        ));
        let now = now_ms();
        for t in &unconfirmed {
            let signed = (t.max_fee, t.priority_fee);
            if decide::includable(signed, base_fee, estimate.1) {
                if decide::back_under_fees(signed, prev_base, base_fee, estimate.1) {
                    tracing::info!(hash = %t.hash, nonce = t.nonce, max_fee = t.max_fee, base_fee, prev_base,
                        "the base fee fell back under this transaction's max fee: sending it again");
                    self.broadcast(t).await?;
                }
                continue;
            }
            if !decide::due_for_replacement(t.signed_ms, now, self.cfg.replace_after) {
                continue;
            }
            let Some(new_fees) = decide::bumped_fees(
                (t.max_fee, t.priority_fee),
                base_fee,
                estimate.1,
                self.cfg.max_fee,
            ) else {
                tracing::warn!(hash = %t.hash, nonce = t.nonce, max_fee = t.max_fee, base_fee, cap = self.cfg.max_fee,
                    "settlement transaction is underpriced and --max-fee-gwei leaves no room to replace it");
                continue;
            };
            let (hash, raw) = self.chain.resign(&t.raw, new_fees).await?;
            let new = TxRow {
                hash,
                raw,
                max_fee: new_fees.0,
                priority_fee: new_fees.1,
                signed_ms: now,
                last_broadcast_ms: now,
                ..t.clone()
            };
            // Stored before it is broadcast, like every attempt.
            if self.store.replace_tx(t.hash, &new, now).await? {
                metrics::counter!(m::TXS_SENT, "kind" => format!("{}_replacement", t.kind))
                    .increment(1);
                tracing::info!(settlement_id = %t.payment_id, nonce = t.nonce, old = %t.hash, new = %hash,
                    max_fee = new_fees.0, priority_fee = new_fees.1, base_fee, "replaced an underpriced transaction (same nonce, same call, higher fees)");
                self.broadcast(&new).await?;
            }
        }
        let wallet = self.chain.signer_balance().await.ok();
        if let Some(w) = wallet {
            metrics::gauge!(m::SIGNER_BALANCE, "network" => network.to_string(), "signer" => format!("{signer:#x}"))
                .set(f64::from(w));
        }
        let oldest = unconfirmed.iter().map(|t| t.created_ms).min();
        let stall = decide::stall_reason(
            oldest,
            now,
            self.cfg.stall_after,
            wallet,
            unconfirmed.len() as u64,
            self.cfg.gas_limit,
            fees.0,
        );
        let before = self.cfg.health.wallet_stalled(network, signer);
        // Logged when the lane enters or leaves the stall; the reason (it names the age of
        // the oldest transaction) is kept current for `/readyz` without a warning per round.
        if stall.is_some() != before.is_some() {
            match &stall {
                Some(reason) => {
                    tracing::warn!(%network, wallet = %signer, reason, "settlement lane stalled: its share of the payments goes to the pool's other wallets; with none left, new payments on this network are refused until one recovers")
                }
                None => tracing::info!(%network, wallet = %signer, "settlement lane recovered"),
            }
        }
        if stall != before {
            self.cfg.health.set(network, signer, stall);
        }
        Ok(())
    }
}
