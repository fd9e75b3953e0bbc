//! The confirm step: reads receipts of submitted payments in wallet-nonce order and ends each
//! payment `settled` or `failed`, or sends it back to `pending` (an out-of-order permit, or a
//! transaction whose nonce a foreign transaction took). What each receipt means is decided in
//! [`super::decide`].

use std::time::Instant;

use tokio::sync::watch;

use super::decide::{self, MissingReceipt, Verdict};
use super::{Lane, LaneError};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::store::PaymentRow;
use x402_protocol::settler_api::SettlementState;

impl Lane {
    /// Confirms receipts as blocks arrive; re-broadcasts transactions without receipt.
    pub(super) async fn confirm_loop(
        &self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), LaneError> {
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

    /// Checks receipts of submitted payments in wallet-nonce order; stops at the first
    /// transaction not mined yet (later nonces cannot be mined before it). A transaction
    /// without receipt below the wallet's confirmed nonce lost its nonce to a transaction this
    /// settler did not send: it can never be mined, and its payment is signed again.
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
            let pid = last.payment_id.clone();
            let last_receipt = self.chain.receipt(last.hash).await?;
            if last_receipt.is_none()
                && decide::missing_receipt(last.nonce, confirmed_nonce)
                    == MissingReceipt::NotMinedYet
            {
                break; // not mined yet
            }
            let Some(p) = self.store.get(&pid).await? else {
                continue;
            };
            if p.state != SettlementState::Submitted {
                continue;
            }
            // Every transaction of the group is now mined or dead (its nonce is below the
            // confirmed nonce too).
            let mut receipts = Vec::new();
            let mut dropped = Vec::new();
            let mut permit_ok = true;
            for t in &group {
                let r = if t.hash == last.hash {
                    last_receipt.clone()
                } else {
                    self.chain.receipt(t.hash).await?
                };
                match r {
                    Some(r) => {
                        if t.kind == decide::PERMIT {
                            permit_ok = r.success;
                        }
                        receipts.push((t.hash, r.success, r.block_number.unwrap_or(0)));
                    }
                    None => dropped.push(t),
                }
            }
            let dropped_hashes: Vec<_> = dropped.iter().map(|t| t.hash).collect();
            let now = now_ms();
            let block = last_receipt.as_ref().and_then(|r| r.block_number);
            match decide::verdict(last_receipt.as_ref(), &p.p, !dropped.is_empty()) {
                Verdict::Settled => {
                    if self
                        .store
                        .finish(&pid, &receipts, &dropped_hashes, true, block, None, now)
                        .await?
                    {
                        metrics::counter!(m::SETTLEMENTS, "state" => "settled").increment(1);
                        metrics::histogram!(m::SETTLE_LATENCY)
                            .record((now - p.p.created_ms).max(0) as f64 / 1000.0);
                        tracing::info!(settlement_id = %pid, block = block.unwrap_or(0), tx = %last.hash, "settled");
                    }
                }
                Verdict::NotMoved { transfer_ok } => {
                    if let Some(note) = self.permit_retry(&p, permit_ok).await? {
                        if self.store.requeue(&pid, &receipts, &[], &note, now).await? {
                            tracing::warn!(settlement_id = %pid, note, "settlement will be signed again");
                            self.wake.notify_one();
                        }
                        continue;
                    }
                    let balance = self.chain.balance_of(p.p.asset, p.p.payer).await.ok();
                    let reason = decide::failure_reason(
                        p.p.scheme,
                        permit_ok,
                        transfer_ok,
                        balance,
                        p.p.value,
                    );
                    if self
                        .store
                        .finish(&pid, &receipts, &[], false, block, Some(&reason), now)
                        .await?
                    {
                        metrics::counter!(m::SETTLEMENTS, "state" => "failed").increment(1);
                        tracing::warn!(settlement_id = %pid, reason, "settlement failed on chain");
                    }
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

    /// A permit payment whose `permit()` reverted while the owner's on-chain nonce is still at
    /// or below its nonce: an earlier permit of this owner was not executed yet (e.g. it lost
    /// its wallet nonce), so this one reverted out of order. Worth another attempt (bounded).
    async fn permit_retry(
        &self,
        p: &PaymentRow,
        permit_ok: bool,
    ) -> Result<Option<String>, LaneError> {
        if !decide::permit_retry_possible(p, permit_ok) {
            return Ok(None);
        }
        let onchain = self.chain.permit_nonce(p.p.asset, p.p.payer).await?;
        Ok(decide::permit_retry_note(p, onchain))
    }
}
