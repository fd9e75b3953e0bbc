//! The submit step: takes due payments, preflights them, signs their transactions with the
//! lane's next wallet nonces and stores them (payment -> `submitted`) BEFORE handing them to
//! the broadcaster. That order is what makes every payment move at most once: whatever is
//! broadcast is stored, and what is stored is only ever re-broadcast, never re-signed.

use std::sync::atomic::Ordering;

use alloy::primitives::{Address, B256, U256};
use tokio::sync::mpsc::UnboundedSender;
use x402_protocol::Scheme;

use super::batch::{self, BatchEntry};

use super::decide;
use super::preflight::{ChainFacts, Preflight};
use super::{Lane, LaneError};
use crate::clock::now_ms;
use crate::error::ChainError;
use crate::metrics as m;
use crate::scheme::{self, FactsRead, FailCause};
use crate::store::{LaneShare, PaymentRow, TxRow};

impl Lane {
    /// Signs, stores and broadcasts the settlement of every due pending payment.
    pub(super) async fn submit_due(
        &self,
        next_nonce: &mut u64,
        out: &UnboundedSender<TxRow>,
    ) -> Result<usize, LaneError> {
        let network = self.chain.network();
        let chain_id = network.chain_id;
        let signer = self.chain.signer();
        let contract = self.chain.settlement_contract();
        self.held.store(false, Ordering::Relaxed);
        // Signer pool: a stalled wallet (fees above the cap, no gas money, transactions not
        // mined) signs nothing new while another wallet of the pool is healthy; its share
        // ages past `--pool-steal-secs` and goes to them. Alone, it keeps trying.
        if self.cfg.share.of > 1
            && self.cfg.health.wallet_stalled(network, signer).is_some()
            && self.cfg.health.stalled(network).is_none()
        {
            return Ok(0);
        }
        // Batching: at most `--max-in-flight` batch transactions unmined; the room left
        // decides how many batches this round may sign (the confirm step wakes us as batches
        // are mined).
        let room = match contract {
            Some(_) => {
                let open = self.store.in_flight(chain_id, signer).await?;
                let room = self.cfg.max_in_flight.saturating_sub(open);
                if room == 0 {
                    self.held.store(true, Ordering::Relaxed);
                    return Ok(0);
                }
                room as usize
            }
            None => usize::MAX,
        };
        // Batching: enough for several full batches per round (no more than may be signed).
        let limit = match contract {
            Some(_) => self
                .cfg
                .batch
                .max((self.cfg.batch_max.saturating_mul(room.min(4))) as i64),
            None => self.cfg.batch,
        };
        let now = now_ms();
        let share = LaneShare {
            of: self.cfg.share.of,
            index: self.cfg.share.index,
            steal_before_ms: now.saturating_sub(self.cfg.steal_after.as_millis() as i64),
        };
        let due = self
            .store
            .due_pending(chain_id, signer, contract, now, limit, share)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let (estimate, node_next) =
            tokio::try_join!(self.chain.fees(), self.chain.pending_nonce())?;
        let fees = decide::capped_fees(estimate, self.cfg.max_fee);
        if let Some(jump) = decide::resync_nonce(*next_nonce, node_next) {
            tracing::warn!(wallet = %signer, network = %network, lane_next = *next_nonce, node_next,
                "the settler wallet's nonce was used by transactions this settler did not send (is its key used elsewhere?); re-syncing the lane's nonce from the chain");
            *next_nonce = jump;
        }
        // Chain reads for the whole batch at once, each distinct read once (one owner's
        // permits share `nonces(owner)`: fewer calls for the node to run); decisions and
        // signing stay in order.
        let wanted: Vec<FactsRead> = due
            .iter()
            .map(|p| scheme::settlement(p.p.scheme).facts_read(&p.p))
            .collect();
        let mut distinct: Vec<FactsRead> = Vec::new();
        for w in &wanted {
            if !distinct.contains(w) {
                distinct.push(*w);
            }
        }
        let mut reads = tokio::task::JoinSet::new();
        for (i, read) in distinct.iter().copied().enumerate() {
            let chain = self.chain.clone();
            reads.spawn(async move { (i, Self::chain_facts(&*chain, read).await) });
        }
        let mut answers: Vec<Option<ChainFacts>> = distinct.iter().map(|_| None).collect();
        while let Some(r) = reads.join_next().await {
            let (i, f) = r.map_err(|e| ChainError::Rpc {
                network: network.to_string(),
                message: format!("read task: {e}"),
            })?;
            if let Some(slot) = answers.get_mut(i) {
                *slot = Some(f?);
            }
        }
        let facts: Vec<Option<ChainFacts>> = wanted
            .iter()
            .map(|w| {
                distinct
                    .iter()
                    .position(|d| d == w)
                    .and_then(|i| answers.get(i).copied().flatten())
            })
            .collect();
        let mut count = 0;
        let mut batch: Vec<BatchEntry> = Vec::new();
        let mut placed: Vec<(Address, Address, U256)> = Vec::new();
        for (p, f) in due.into_iter().zip(facts) {
            let Some(f) = f else { continue };
            let mut with_permit = true;
            match self
                .preflight(&p, f, (now_ms() / 1000) as u64, &placed)
                .await?
            {
                Preflight::Ready => {}
                Preflight::TransferOnly => {
                    tracing::info!(settlement_id = %p.p.id, "permit nonce already used on chain; the allowance covers the value: transferFrom only");
                    with_permit = false;
                }
                Preflight::Defer(note) => {
                    let wait = decide::defer_wait_ms(p.attempts);
                    tracing::info!(settlement_id = %p.p.id, note, "settlement deferred");
                    let now = now_ms();
                    self.store.defer(&p.p.id, now + wait, &note, now).await?;
                    continue;
                }
                Preflight::Fail {
                    reason,
                    release_key,
                    cause,
                } => {
                    // Spent by our own batch, mined after all? Then the payer paid.
                    if cause == FailCause::PermitNonceSpent && p.attempts > 0 {
                        if let Some((tx, block)) = self.paid_by_our_batch(&p).await? {
                            self.settle_by_our_batch(&p, tx, block).await?;
                            continue;
                        }
                    }
                    self.fail_before_submission(&p.p.id, &reason, release_key, cause)
                        .await?;
                    continue;
                }
                Preflight::SettledBy { tx, block } => {
                    let note = format!("executed on chain by transaction {tx}, not sent by this settler (front-run or submitted by the payer)");
                    if self
                        .store
                        .settle_by(&p.p.id, tx, block, &note, &[], &[], now_ms())
                        .await?
                    {
                        metrics::counter!(m::SETTLEMENTS, "state" => "settled").increment(1);
                        tracing::info!(settlement_id = %p.p.id, tx = %tx, block, "settled by another transaction");
                    }
                    continue;
                }
            }
            if batch::batchable(&p.p, contract) {
                // Signed with the others after this loop, in this order.
                if p.p.scheme == Scheme::Permit {
                    placed.push((p.p.asset, p.p.payer, p.permit_nonce()));
                }
                // Only a permit item runs a permit(): an ERC-3009 item must not record
                // its batch as a `permit_tx`.
                let with_permit = with_permit && p.p.scheme == Scheme::Permit;
                batch.push(BatchEntry {
                    row: p,
                    with_permit,
                });
                continue;
            }
            let token = p.p.asset;
            let calls = decide::settlement_calls(&p, signer, with_permit);
            if p.attempts > 0 {
                // Signed before: the per-payment caps bound what a payment can cost the wallet.
                let (txs, gas) = self.store.payment_spend(&p.p.id).await?;
                if let Some(reason) = decide::over_caps(
                    txs,
                    gas,
                    calls.len() as u64,
                    self.cfg.max_txs_per_payment,
                    self.cfg.max_gas_per_payment,
                ) {
                    self.fail_before_submission(&p.p.id, &reason, false, FailCause::RetryCap)
                        .await?;
                    continue;
                }
            }
            let mut txs = Vec::with_capacity(calls.len());
            for (i, (kind, input)) in calls.into_iter().enumerate() {
                let nonce = decide::tx_nonce(*next_nonce, i);
                let (hash, raw) = self.chain.sign(token, input, nonce, fees).await?;
                txs.push(TxRow {
                    chain_id,
                    signer,
                    nonce,
                    payment_id: p.p.id.clone(),
                    kind: kind.into(),
                    hash,
                    raw,
                    state: "sent".into(),
                    last_broadcast_ms: now_ms(),
                    max_fee: fees.0,
                    priority_fee: fees.1,
                    signed_ms: now_ms(),
                    created_ms: now_ms(),
                });
            }
            let Some((permit_tx, transfer_tx)) = decide::submission_hashes(&txs) else {
                continue;
            };
            // Durability first: stored (and the payment `submitted`) before anything is sent.
            if !self
                .store
                .record_submission(&p.p.id, &txs, permit_tx, transfer_tx, now_ms())
                .await?
            {
                continue;
            }
            let wallet_nonce = *next_nonce;
            *next_nonce += txs.len() as u64;
            metrics::counter!(m::SETTLEMENTS, "state" => "submitted").increment(1);
            tracing::info!(settlement_id = %p.p.id, transfer_tx = %transfer_tx, wallet_nonce, "settlement submitted");
            for t in txs {
                // The broadcaster is gone only when the lane is stopping; the stored
                // transaction is re-broadcast on the next start.
                let _ = out.send(t);
            }
            count += 1;
        }
        if let (Some(c), false) = (contract, batch.is_empty()) {
            count += self
                .submit_batches(c, batch, fees, next_nonce, out, room)
                .await?;
        }
        Ok(count)
    }

    /// `p`, back in `pending` after its batch was taken as lost, was executed by that batch
    /// (transaction `tx`, an attempt of it) after all: settled with it, never signed again.
    async fn settle_by_our_batch(
        &self,
        p: &PaymentRow,
        tx: B256,
        block: u64,
    ) -> Result<(), LaneError> {
        let note = format!("executed by this settler's batch transaction {tx}, whose receipt came after the batch was taken as lost");
        let receipts = [(tx, true, block)];
        if self
            .store
            .settle_by(&p.p.id, tx, block, &note, &receipts, &[], now_ms())
            .await?
        {
            metrics::counter!(m::SETTLEMENTS, "state" => "settled").increment(1);
            tracing::warn!(settlement_id = %p.p.id, tx = %tx, block, "settled by a batch of ours taken as lost before its receipt came");
        }
        Ok(())
    }

    async fn fail_before_submission(
        &self,
        id: &str,
        reason: &str,
        release_key: bool,
        cause: FailCause,
    ) -> Result<(), LaneError> {
        if self
            .store
            .fail_pending(id, reason, release_key, Some(cause.stored()), now_ms())
            .await?
        {
            metrics::counter!(m::SETTLEMENTS, "state" => "failed").increment(1);
            tracing::warn!(settlement_id = %id, reason, cause = cause.code(), payer_caused = cause.payer_caused(), "settlement failed before submission");
        }
        Ok(())
    }
}
