//! Batched settlement through the batch contract (contracts/X402Settlement.sol,
//! `--settlement-contract`): many payments in one transaction, each item isolated on chain.
//!
//! Exactly-once rules, per item: a payment is in at most one signed batch at a time (its move
//! `pending` -> `submitted` is stored atomically with the signed batch and its item list,
//! BEFORE broadcast); a batch is only re-broadcast byte for byte or re-signed at its nonce with
//! higher fees (the same call: the same items); per-item outcomes come from the receipt's
//! `ItemResult` events. A failed item is judged on its own, like a single settlement
//! (`Lane::not_moved`: front-run, out-of-order permit, payer-caused cause). A batch whose
//! whole transaction reverted (or whose nonce was taken) sends its items back to `pending`
//! (re-checked on chain before they are signed again), at most [`MAX_BATCH_REQUEUES`] times.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use alloy::primitives::{Address, B256};
use tokio::sync::mpsc::UnboundedSender;

use super::decide;
use super::io::{ItemLog, Receipt, TxFate};
use super::{Lane, LaneError};
use crate::chain::{self, IX402Settlement};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::scheme::FailCause;
use crate::store::{NewPayment, PaymentRow, TxRow};
use x402_protocol::settler_api::SettlementState;
use x402_protocol::Scheme;

/// `x402_txs.kind` of a batch transaction (its `payment_id` is the batch id).
pub(crate) const BATCH: &str = "batch";

/// Items of a whole-batch revert (or a batch whose nonce was taken) are re-queued at most this
/// many times (the payment's attempts), then fail.
pub(crate) const MAX_BATCH_REQUEUES: i64 = 3;

/// Gas of a batch transaction besides its items (intrinsic cost, the loop, calldata head).
pub(crate) const BATCH_BASE_GAS: u64 = 60_000;
/// Gas reserved per item: the contract gives each call 100k and needs 15k more per item
/// (contracts/X402Settlement.sol `CALL_GAS`, `ITEM_RESERVE`), plus calldata.
pub(crate) const ITEM_GAS_ONE_CALL: u64 = 125_000;
pub(crate) const ITEM_GAS_TWO_CALLS: u64 = 225_000;
/// A re-tried batch's doubled gas limit stays under this (below Ethereum's 30M block gas limit).
pub(crate) const MAX_BATCH_GAS: u64 = 25_000_000;

/// One payment as a batch item, with whether it runs its permit().
#[derive(Debug, Clone)]
pub(crate) struct BatchEntry {
    pub row: PaymentRow,
    pub with_permit: bool,
}

/// Whether the lane settles `p` through the batch contract: ERC-3009 always (anyone may
/// submit it), a permit only when it names the contract as spender (a permit to the wallet
/// must be spent by the wallet itself).
pub(crate) fn batchable(p: &NewPayment, contract: Option<Address>) -> bool {
    match contract {
        None => false,
        Some(c) => match p.scheme {
            Scheme::Exact => true,
            Scheme::Permit => p.spender == Some(c),
        },
    }
}

/// The contract's item kind: 0 ERC-3009, 1 permit + transferFrom, 2 transferFrom only.
pub(crate) fn item_kind(scheme: Scheme, with_permit: bool) -> u8 {
    match (scheme, with_permit) {
        (Scheme::Exact, _) => 0,
        (Scheme::Permit, true) => 1,
        (Scheme::Permit, false) => 2,
    }
}

pub(crate) fn item(e: &BatchEntry) -> IX402Settlement::Item {
    let p = &e.row.p;
    IX402Settlement::Item {
        kind: item_kind(p.scheme, e.with_permit),
        from: p.payer,
        to: p.pay_to,
        value: p.value,
        validAfter: p.valid_after,
        deadline: p.deadline,
        nonce: p.nonce,
        v: p.sig.v,
        r: p.sig.r,
        s: p.sig.s,
    }
}

/// The gas limit of a batch: base + per item, doubled per earlier whole-batch failure of its
/// most-tried item (at most x4), so a batch that ran out of gas is not signed short again.
pub(crate) fn batch_gas(entries: &[BatchEntry]) -> u64 {
    let items: u64 = entries
        .iter()
        .map(|e| {
            if item_kind(e.row.p.scheme, e.with_permit) == 1 {
                ITEM_GAS_TWO_CALLS
            } else {
                ITEM_GAS_ONE_CALL
            }
        })
        .sum();
    let tries = entries
        .iter()
        .map(|e| e.row.attempts)
        .max()
        .unwrap_or(0)
        .clamp(0, 2);
    let first = BATCH_BASE_GAS.saturating_add(items);
    // The doubling never takes a batch over what a block holds: a transaction above the
    // block gas limit is refused by the node and its nonce would block the lane. (An item's
    // attempts also count deferrals, not only whole-batch failures.)
    BATCH_BASE_GAS
        .saturating_add(items.saturating_mul(1 << tries))
        .min(first.max(MAX_BATCH_GAS))
}

/// Splits entries into batches: one token per batch, at most `max` items, acceptance order
/// kept within a token (one owner's permits stay in nonce order).
pub(crate) fn split(entries: Vec<BatchEntry>, max: usize) -> Vec<(Address, Vec<BatchEntry>)> {
    let mut out: Vec<(Address, Vec<BatchEntry>)> = Vec::new();
    for e in entries {
        let token = e.row.p.asset;
        match out
            .iter_mut()
            .rev()
            .find(|(t, b)| *t == token && b.len() < max.max(1))
        {
            Some((_, b)) => b.push(e),
            None => out.push((token, vec![e])),
        }
    }
    out
}

/// What one item of a mined batch means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemVerdict {
    /// Its transfer succeeded and the receipt shows the funds moving.
    Settled,
    /// Executed and did not move the funds: judged like a single settlement.
    Failed { permit_ok: bool, transfer_ok: bool },
    /// The whole batch reverted (or its event is missing): nothing of it executed.
    NotExecuted,
}

pub(crate) fn item_verdict(
    receipt: &Receipt,
    log: Option<&ItemLog>,
    p: &NewPayment,
) -> ItemVerdict {
    if !receipt.success {
        return ItemVerdict::NotExecuted;
    }
    match log {
        None => ItemVerdict::NotExecuted,
        Some(l) if l.ok && decide::moved_funds(receipt, p) => ItemVerdict::Settled,
        Some(l) => ItemVerdict::Failed {
            permit_ok: l.permit_ok,
            transfer_ok: l.ok,
        },
    }
}

/// Whether one of this settler's batch transactions paid `p` after all (a batch taken as lost
/// while it was mined): `mined` holds the receipts found for the attempts of the batches that
/// carried `p`, each with `p`'s item index there. The transaction and block, if so.
pub(crate) fn paid_in_batch(mined: &[(B256, Receipt, u64)], p: &NewPayment) -> Option<(B256, u64)> {
    mined.iter().find_map(|(hash, r, idx)| {
        let log = r.items.iter().find(|l| l.index == *idx);
        (item_verdict(r, log, p) == ItemVerdict::Settled)
            .then(|| (*hash, r.block_number.unwrap_or(0)))
    })
}

/// The revert data of a failed item, for its stored error (hex, cut short).
pub(crate) fn revert_note(log: Option<&ItemLog>) -> String {
    match log {
        Some(l) if !l.reason.is_empty() => {
            let hex = alloy::primitives::hex::encode(&l.reason);
            let cut: String = hex.chars().take(200).collect();
            format!("; batch item revert data 0x{cut}")
        }
        _ => String::new(),
    }
}

impl Lane {
    /// Signs, stores and hands to the broadcaster one batch per token (at most `--batch-max`
    /// items each), `room` batches at most (`--max-in-flight`): the rest stay pending, a
    /// prefix of every token's order, so an owner's later permits never go ahead. Returns how
    /// many payments were submitted.
    pub(super) async fn submit_batches(
        &self,
        contract: Address,
        entries: Vec<BatchEntry>,
        fees: (u128, u128),
        next_nonce: &mut u64,
        out: &UnboundedSender<TxRow>,
        room: usize,
    ) -> Result<usize, LaneError> {
        let network = self.chain.network();
        let signer = self.chain.signer();
        let mut count = 0;
        let batches = split(entries, self.cfg.batch_max);
        if batches.len() > room {
            self.held.store(true, Ordering::Relaxed);
        }
        for (token, batch) in batches.into_iter().take(room) {
            let gas = batch_gas(&batch);
            let input = chain::batch_call(token, batch.iter().map(item).collect());
            let nonce = *next_nonce;
            let (hash, raw) = self
                .chain
                .sign_with_gas(contract, input, nonce, fees, gas)
                .await?;
            let now = now_ms();
            let row = TxRow {
                chain_id: network.chain_id,
                signer,
                nonce,
                payment_id: format!("batch:{}", uuid::Uuid::new_v4()),
                kind: BATCH.into(),
                hash,
                raw,
                state: "sent".into(),
                last_broadcast_ms: now,
                max_fee: fees.0,
                priority_fee: fees.1,
                signed_ms: now,
                created_ms: now,
            };
            let items: Vec<(String, bool)> = batch
                .iter()
                .map(|e| (e.row.p.id.clone(), e.with_permit))
                .collect();
            // Durability first: the batch and its items stored (payments `submitted`)
            // before anything is sent.
            if !self.store.record_batch(&row, &items, now).await? {
                tracing::info!(batch = %row.payment_id, "a batch item was no longer pending; batch not sent, its items are decided again");
                continue;
            }
            *next_nonce += 1;
            metrics::counter!(m::SETTLEMENTS, "state" => "submitted").increment(items.len() as u64);
            tracing::info!(batch = %row.payment_id, tx = %hash, wallet_nonce = nonce, items = items.len(), gas, "settlement batch submitted");
            count += items.len();
            // The broadcaster is gone only when the lane is stopping; the stored batch is
            // re-broadcast on the next start.
            let _ = out.send(row);
        }
        Ok(count)
    }

    /// Judges a batch transaction once it is mined or dead. Returns false when it is not mined
    /// yet or its receipt is not served yet (the confirm round stops there, later nonces
    /// cannot be mined before it).
    pub(super) async fn confirm_batch(
        &self,
        t: &TxRow,
        confirmed_nonce: u64,
    ) -> Result<bool, LaneError> {
        // Dead only when the node knows none of its attempts: a batch mined but whose receipt
        // is not served yet is waited for (its items' funds may have moved).
        let mined = match self.tx_fate(t, confirmed_nonce).await? {
            TxFate::Wait => return Ok(false),
            TxFate::Mined(m) => Some(m),
            TxFate::Dead => None,
        };
        let items = self.store.batch_items(&t.payment_id).await?;
        let n = items.len().max(1) as u64;
        match &mined {
            None => {
                let signer = self.chain.signer();
                tracing::warn!(wallet = %signer, batch = %t.payment_id, nonce = t.nonce, confirmed_nonce,
                    "settlement batch can never be mined: the wallet's nonce was used by a transaction this settler did not send (is its key used elsewhere?); its items are re-checked on chain and signed again");
                let note = decide::nonce_lost_note(&[t.nonce], signer);
                for (pid, _) in &items {
                    self.requeue_item(pid, &note, None).await?;
                }
                self.store.close_tx(t.hash, None, now_ms()).await?;
            }
            Some((hash, r)) => {
                let block = r.block_number;
                let gas_each = r.gas_used / n;
                let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
                let rows: HashMap<String, PaymentRow> = self
                    .store
                    .get_many(&ids)
                    .await?
                    .into_iter()
                    .map(|p| (p.p.id.clone(), p))
                    .collect();
                // Settled items are stored together with the batch's receipt at the end (one
                // DB commit per batch, not one per item); the others are judged one by one.
                let mut settled: Vec<&PaymentRow> = Vec::new();
                for (i, (pid, with_permit)) in items.iter().enumerate() {
                    let Some(p) = rows.get(pid) else {
                        continue;
                    };
                    if p.state != SettlementState::Submitted {
                        continue; // judged before a restart
                    }
                    let log = r.items.iter().find(|l| l.index == i as u64);
                    match item_verdict(r, log, &p.p) {
                        ItemVerdict::Settled => settled.push(p),
                        ItemVerdict::Failed {
                            permit_ok,
                            transfer_ok,
                        } => {
                            self.store.charge_gas(pid, gas_each).await?;
                            tracing::info!(settlement_id = %pid, tx = %hash, item = i, permit_ok, transfer_ok, note = %revert_note(log), "batch item did not move the funds");
                            self.not_moved(p, &[], permit_ok || !with_permit, transfer_ok, block)
                                .await?;
                        }
                        ItemVerdict::NotExecuted => {
                            self.store.charge_gas(pid, gas_each).await?;
                            let note = format!(
                                "settlement batch transaction {hash} reverted as a whole; signed again"
                            );
                            self.requeue_item(pid, &note, Some(p)).await?;
                        }
                    }
                }
                let settled_ids: Vec<String> = settled.iter().map(|p| p.p.id.clone()).collect();
                let now = now_ms();
                let moved = self
                    .store
                    .settle_batch(*hash, r.success, block, &settled_ids, gas_each, now)
                    .await?;
                metrics::counter!(m::SETTLEMENTS, "state" => "settled")
                    .increment(moved.len() as u64);
                let moved_set: HashSet<&str> = moved.iter().map(String::as_str).collect();
                for p in settled
                    .iter()
                    .filter(|p| moved_set.contains(p.p.id.as_str()))
                {
                    metrics::histogram!(m::SETTLE_LATENCY)
                        .record((now - p.p.created_ms).max(0) as f64 / 1000.0);
                    tracing::info!(settlement_id = %p.p.id, block = block.unwrap_or(0), tx = %hash, "settled (batch)");
                }
                tracing::info!(batch = %t.payment_id, tx = %hash, block = block.unwrap_or(0), items = items.len(), settled = moved.len(), "settlement batch confirmed");
                // Room under `--max-in-flight` again: the submit step need not wait its poll.
                self.wake.notify_one();
            }
        }
        Ok(true)
    }

    /// Back to `pending` (re-checked on chain, signed again), or `failed` past
    /// [`MAX_BATCH_REQUEUES`].
    async fn requeue_item(
        &self,
        pid: &str,
        note: &str,
        row: Option<&PaymentRow>,
    ) -> Result<(), LaneError> {
        let row = match row {
            Some(r) => Some(r.clone()),
            None => self.store.get(pid).await?,
        };
        let Some(p) = row else { return Ok(()) };
        if p.state != SettlementState::Submitted {
            return Ok(());
        }
        let now = now_ms();
        if p.attempts >= MAX_BATCH_REQUEUES {
            let reason = format!("{note}; given up after {} attempts", p.attempts + 1);
            let cause = FailCause::Reverted;
            if self
                .store
                .finish(
                    pid,
                    &[],
                    &[],
                    false,
                    None,
                    Some(&reason),
                    Some(cause.stored()),
                    now,
                )
                .await?
            {
                metrics::counter!(m::SETTLEMENTS, "state" => "failed").increment(1);
                tracing::warn!(settlement_id = %pid, reason, cause = cause.code(), "settlement failed");
            }
            return Ok(());
        }
        if self.store.requeue(pid, &[], &[], note, now).await? {
            tracing::warn!(settlement_id = %pid, note, "batch item back to pending");
            self.wake.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane::io::TransferLog;
    use crate::test_fixtures::lane::{payment, TOKEN};

    #[test]
    fn a_payment_was_paid_in_a_batch_only_by_its_own_item_moving_the_funds() {
        let p = payment("a", 1, Scheme::Permit, 0).p;
        let log = |index, ok| ItemLog {
            index,
            permit_ok: true,
            ok,
            reason: Default::default(),
        };
        let receipt = |success, items| Receipt {
            success,
            block_number: Some(9),
            transfers: vec![TransferLog {
                token: TOKEN,
                from: p.payer,
                to: p.pay_to,
                value: p.value,
            }],
            gas_used: 1,
            items,
        };
        let (h1, h2) = (B256::repeat_byte(1), B256::repeat_byte(2));
        let ours = receipt(true, vec![log(0, false), log(1, true)]);
        assert_eq!(paid_in_batch(&[(h1, ours.clone(), 1)], &p), Some((h1, 9)));
        assert_eq!(
            paid_in_batch(&[(h1, ours.clone(), 0)], &p),
            None,
            "another item moved the same value"
        );
        assert_eq!(
            paid_in_batch(&[(h1, receipt(false, vec![log(1, true)]), 1)], &p),
            None,
            "reverted as a whole"
        );
        assert_eq!(
            paid_in_batch(&[(h1, receipt(true, vec![]), 1), (h2, ours.clone(), 1)], &p),
            Some((h2, 9)),
            "whichever attempt was mined"
        );
        let no_transfer = Receipt {
            transfers: vec![],
            ..ours
        };
        assert_eq!(paid_in_batch(&[(h2, no_transfer, 1)], &p), None);
        assert_eq!(paid_in_batch(&[], &p), None);
    }
}
