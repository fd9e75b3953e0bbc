//! The lane's decisions, as pure functions: no I/O and no clock (callers pass `now`), so each
//! rule is unit-tested on its own. The lane's loops (`submit.rs`, `broadcast.rs`,
//! `confirm.rs`) do the reads and writes around them.

use std::time::Duration;

use alloy::primitives::{Address, Bytes, B256, U256};
use x402_protocol::Scheme;

use super::io::{Receipt, TxSeen};
pub(crate) use crate::scheme::PERMIT;
use crate::scheme::{self, FailCause};
use crate::store::{NewPayment, PaymentRow, TxRow};

/// Out-of-order permit reverts retried at most this many times per payment.
pub(crate) const MAX_REQUEUES: i64 = 8;

/// The lease row of a lane: one per (chain, wallet), whichever replica drives it.
pub(crate) fn lease_name(chain_id: u64, signer: Address) -> String {
    format!("lane:{chain_id}:{signer:#x}")
}

/// The first wallet nonce a (re)started lane signs with: past the node's pending pool and past
/// every transaction already stored (those are re-broadcast, never signed again).
pub(crate) fn start_nonce(node_pending: u64, max_stored: Option<u64>) -> u64 {
    node_pending.max(max_stored.map(|n| n + 1).unwrap_or(0))
}

/// Before a batch: `Some(node_next)` when the node counts more transactions than the lane
/// signed (someone else used the wallet), so the lane jumps ahead instead of colliding.
pub(crate) fn resync_nonce(lane_next: u64, node_next: u64) -> Option<u64> {
    (node_next > lane_next).then_some(node_next)
}

/// How long a deferred payment waits: 1 s doubling per attempt, at most 32 s.
pub(crate) fn defer_wait_ms(attempts: i64) -> i64 {
    1000i64.saturating_mul(1 << attempts.clamp(0, 5))
}

/// The calls settling `p`, in execution order (they get consecutive wallet nonces): the
/// scheme's ([`crate::scheme::SchemeSettlement::settlement_calls`]).
pub(crate) fn settlement_calls(
    p: &PaymentRow,
    signer: Address,
    with_permit: bool,
) -> Vec<(&'static str, Bytes)> {
    scheme::settlement(p.p.scheme).settlement_calls(p, signer, with_permit)
}

/// A payment's transactions take consecutive wallet nonces from the lane's next one.
pub(crate) fn tx_nonce(next_nonce: u64, index: usize) -> u64 {
    next_nonce + index as u64
}

/// What the payment row records of its transactions: (permit tx, transfer tx). The transfer
/// is the last one, the one that moves the funds. `None` for an empty list.
pub(crate) fn submission_hashes(txs: &[TxRow]) -> Option<(Option<B256>, B256)> {
    let last = txs.last()?;
    Some((
        txs.iter().find(|t| t.kind == PERMIT).map(|t| t.hash),
        last.hash,
    ))
}

/// A broadcast answered "nonce too low": mined already, or its nonce went to another
/// transaction. The confirm loop should look at once instead of at the next block.
pub(crate) fn broadcast_wants_recheck(node_message: &str) -> bool {
    node_message.to_ascii_lowercase().contains("nonce too low")
}

/// A stored transaction without receipt is sent again once it was last sent `interval` ago.
pub(crate) fn due_for_rebroadcast(last_broadcast_ms: i64, now_ms: i64, interval: Duration) -> bool {
    last_broadcast_ms < now_ms - interval.as_millis() as i64
}

/// Unconfirmed transactions (in nonce order) grouped by payment, in the order of each
/// payment's first transaction. A payment's transactions have consecutive nonces.
pub(crate) fn group_by_payment(txs: Vec<TxRow>) -> Vec<Vec<TxRow>> {
    let mut groups: Vec<Vec<TxRow>> = Vec::new();
    for t in txs {
        match groups
            .iter_mut()
            .find(|g| g.first().is_some_and(|f| f.payment_id == t.payment_id))
        {
            Some(g) => g.push(t),
            None => groups.push(vec![t]),
        }
    }
    groups
}

/// What the node knows of the attempts at one wallet nonce: the most telling answer of any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptsSeen {
    /// One has a receipt.
    Receipt,
    /// One is in a block, its receipt is not served yet.
    MinedNoReceipt,
    /// One is known, in the pool.
    Pending,
    /// The node knows none of them.
    Unknown,
}

/// `seen`: the node's answer for each attempt hash (`None`: hash unknown to it).
pub(crate) fn attempts_seen(has_receipt: bool, seen: &[Option<TxSeen>]) -> AttemptsSeen {
    if has_receipt {
        AttemptsSeen::Receipt
    } else if seen.iter().flatten().any(|s| s.block.is_some()) {
        AttemptsSeen::MinedNoReceipt
    } else if seen.iter().any(Option::is_some) {
        AttemptsSeen::Pending
    } else {
        AttemptsSeen::Unknown
    }
}

/// How long the lane waits for the receipt of a transaction whose nonce is counted as used
/// before it says so: one known as mined is waited for beyond it (a warning, then on); one
/// only in a node's pool is then taken as replaced (a node drops a transaction whose nonce
/// another took; a lagging node behind a load balancer has caught up by then).
pub(crate) const RECEIPT_LAG: Duration = Duration::from_secs(30);

/// What a transaction of the lane is, from its attempts' receipts and what the node knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceFate {
    /// An attempt's receipt is there: judge it.
    Mined,
    /// Its nonce is not used yet: wait (and re-broadcast after the interval).
    NotMinedYet,
    /// Its nonce is used and the node still knows an attempt: ours may be the one that used
    /// it (nodes count the nonce a moment before they serve the receipt; anvil does). Wait and
    /// look again; `overdue`: waited past [`RECEIPT_LAG`] for a mined one (worth a warning,
    /// never a re-queue: its items may have moved funds).
    AwaitReceipt { overdue: bool },
    /// The wallet's confirmed nonce (read before the receipts) is above it and the node knows
    /// none of its attempts (or only in its pool, past [`RECEIPT_LAG`]): a transaction this
    /// settler did not send took its nonce, it can never be mined.
    NonceTaken,
}

/// Whether a receipt in block `block` is `confirmations` blocks deep at `head` (its own
/// block counts: 1 means as soon as it is mined).
pub(crate) fn deep_enough(block: u64, head: u64, confirmations: u64) -> bool {
    head >= block && head - block + 1 >= confirmations
}

/// Whether the wallet's confirmed nonce counts `tx_nonce` as used.
pub(crate) fn nonce_used(tx_nonce: u64, confirmed_nonce: u64) -> bool {
    tx_nonce < confirmed_nonce
}

/// `waited`: since the lane first saw this nonce used without a receipt.
pub(crate) fn nonce_fate(
    seen: AttemptsSeen,
    tx_nonce: u64,
    confirmed_nonce: u64,
    waited: Duration,
) -> NonceFate {
    match seen {
        AttemptsSeen::Receipt => NonceFate::Mined,
        _ if !nonce_used(tx_nonce, confirmed_nonce) => NonceFate::NotMinedYet,
        AttemptsSeen::MinedNoReceipt => NonceFate::AwaitReceipt {
            overdue: waited >= RECEIPT_LAG,
        },
        AttemptsSeen::Pending if waited < RECEIPT_LAG => NonceFate::AwaitReceipt { overdue: false },
        AttemptsSeen::Pending | AttemptsSeen::Unknown => NonceFate::NonceTaken,
    }
}

/// The receipt shows the payment's funds moving: success and `Transfer(payer, pay_to, value)`
/// emitted by the payment's token.
pub(crate) fn moved_funds(receipt: &Receipt, p: &NewPayment) -> bool {
    receipt.success
        && receipt.transfers.iter().any(|t| {
            t.token == p.asset && t.from == p.payer && t.to == p.pay_to && t.value == p.value
        })
}

/// What a final group of transactions (each mined or dead) means for its payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The transfer is mined and moved the funds.
    Settled,
    /// Every transaction is mined and the funds did not move: failed, unless an out-of-order
    /// permit is worth another attempt ([`permit_retry_possible`]).
    NotMoved { transfer_ok: bool },
    /// The funds did not move and a transaction can never be mined: back to `pending`, to be
    /// re-checked on chain and signed again.
    NonceLost,
}

/// `transfer_receipt`: the receipt of the group's last (funds-moving) transaction;
/// `any_dropped`: some transaction of the group lost its nonce.
pub(crate) fn verdict(
    transfer_receipt: Option<&Receipt>,
    p: &NewPayment,
    any_dropped: bool,
) -> Verdict {
    match transfer_receipt {
        Some(r) if moved_funds(r, p) => Verdict::Settled,
        Some(r) if !any_dropped => Verdict::NotMoved {
            transfer_ok: r.success,
        },
        _ => Verdict::NonceLost,
    }
}

/// A payment whose settlement may have failed out of order (a permit whose `permit()`
/// reverted while an earlier permit of the owner was not executed yet; the scheme says,
/// [`crate::scheme::SchemeSettlement::retry_possible`]): worth reading the owner's nonce,
/// within [`MAX_REQUEUES`].
pub(crate) fn permit_retry_possible(p: &PaymentRow, permit_ok: bool) -> bool {
    scheme::settlement(p.p.scheme).retry_possible(permit_ok) && p.attempts < MAX_REQUEUES
}

/// With the owner's on-chain permit nonce read: the note of a re-queue when it is still at or
/// below this permit's nonce (an earlier one goes first), `None` when this permit's nonce is
/// spent (it will never succeed: the payment fails).
pub(crate) fn permit_retry_note(p: &PaymentRow, onchain: U256) -> Option<String> {
    if onchain > p.permit_nonce() {
        return None;
    }
    Some(format!("permit() reverted while the owner's on-chain nonce is {onchain} (this permit's is {}): earlier permits go first; signed again", p.permit_nonce()))
}

/// Why a mined settlement did not move the funds, for the payment's `error`.
/// `payer_balance`: read after the fact, `None` if the read failed.
pub(crate) fn failure_reason(
    scheme: Scheme,
    permit_ok: bool,
    transfer_ok: bool,
    payer_balance: Option<U256>,
    value: U256,
) -> String {
    let what = scheme::settlement(scheme).transfer_call();
    let mut reason = if !transfer_ok {
        format!("{what} reverted")
    } else {
        format!("{what} succeeded without the expected Transfer event")
    };
    if !permit_ok {
        reason.push_str("; permit() reverted (nonce used or signature refused)");
    }
    if let Some(b) = payer_balance {
        if b < value {
            reason.push_str(&format!("; payer balance {b} is below the value {value}"));
        }
    }
    reason
}

/// Fees for a first signature: the node's estimate, capped by `--max-fee-gwei` (the
/// priority fee never above the max fee).
pub(crate) fn capped_fees(estimate: (u128, u128), cap: u128) -> (u128, u128) {
    let max = estimate.0.min(cap);
    (max, estimate.1.min(max))
}

/// `x` raised by at least 12.5 % (rounded up), what nodes ask of a replacement.
fn bump(x: u128) -> u128 {
    x.saturating_add(x.div_ceil(8)).max(x.saturating_add(1))
}

/// Replace-by-fee: fees for re-signing a transaction signed with `prev` (max fee, priority
/// fee) while the latest base fee is `base_fee` and the node suggests priority fee `tip`.
/// Each is at least 12.5 % above the previous one, the max fee at least `2 x base fee +
/// priority fee`; capped at `cap` (`--max-fee-gwei`). `None`: the cap leaves no room for a
/// valid replacement (the transaction stays as it is, the lane reports the stall).
pub(crate) fn bumped_fees(
    prev: (u128, u128),
    base_fee: u128,
    tip: u128,
    cap: u128,
) -> Option<(u128, u128)> {
    let min_max = bump(prev.0);
    let prio = bump(prev.1).max(tip);
    let max = min_max.max(base_fee.saturating_mul(2).saturating_add(prio));
    let max = max.min(cap);
    // A replacement must raise both by the bump; the priority fee cannot exceed the max fee.
    let prio = prio.min(max);
    (max >= min_max && prio >= bump(prev.1)).then_some((max, prio))
}

/// A transaction signed with `fees` can be included in the next block: its max fee covers the
/// base fee plus the suggested priority fee `tip`, and its priority fee is at least `tip`.
pub(crate) fn includable(fees: (u128, u128), base_fee: u128, tip: u128) -> bool {
    fees.0 >= base_fee.saturating_add(tip) && fees.1 >= tip
}

/// A transaction priced out at the previous base fee `prev_base` that `base_fee` no longer
/// prices out: the fee fell back under what it was signed with. Nodes may have refused it
/// meanwhile ("max fee per gas less than block base fee") or dropped it from their pool
/// (anvil drops a pooled transaction a block's base fee leaves out), so it is sent again at
/// once instead of at the next `--rebroadcast-secs`.
pub(crate) fn back_under_fees(
    fees: (u128, u128),
    prev_base: u128,
    base_fee: u128,
    tip: u128,
) -> bool {
    includable(fees, base_fee, tip) && !includable(fees, prev_base, tip)
}

/// A transaction's current attempt, signed at `signed_ms` and still without receipt, is
/// re-signed with higher fees once it is `after` old.
pub(crate) fn due_for_replacement(signed_ms: i64, now_ms: i64, after: Duration) -> bool {
    signed_ms <= now_ms - after.as_millis() as i64
}

/// Which attempt at one nonce the chain executed: the first with a receipt (at most one can
/// have one: they share the nonce).
pub(crate) fn mined_attempt(receipts: Vec<(B256, Option<Receipt>)>) -> Option<(B256, Receipt)> {
    receipts.into_iter().find_map(|(h, r)| r.map(|r| (h, r)))
}

/// A lane is stalled when its oldest unconfirmed transaction was first signed more than
/// `stall_after` ago, or the wallet cannot pay for what is queued (`queued` transactions
/// plus the next one, at `gas_limit` x `max_fee` each). The reason, or `None`.
pub(crate) fn stall_reason(
    oldest_unconfirmed_ms: Option<i64>,
    now_ms: i64,
    stall_after: Duration,
    wallet: Option<U256>,
    queued: u64,
    gas_limit: u64,
    max_fee: u128,
) -> Option<String> {
    let need = wallet_need(queued, gas_limit, max_fee);
    if let Some(w) = wallet {
        if w < need {
            return Some(format!(
                "the settler wallet holds {w} wei, below the {need} wei needed for {queued} queued transaction(s) and the next one ({gas_limit} gas at {max_fee} wei)"
            ));
        }
    }
    let oldest = oldest_unconfirmed_ms?;
    let age = now_ms - oldest;
    (age > stall_after.as_millis() as i64).then(|| {
        format!(
            "the oldest unconfirmed settlement transaction is {} s old (stall after {} s)",
            age / 1000,
            stall_after.as_secs()
        )
    })
}

/// Wei the wallet needs for `queued` transactions and one more at `gas_limit` x `max_fee`.
pub(crate) fn wallet_need(queued: u64, gas_limit: u64, max_fee: u128) -> U256 {
    U256::from(queued.saturating_add(1)) * U256::from(gas_limit) * U256::from(max_fee)
}

/// The per-payment caps: signing `more` transactions after `txs` signed and `gas` spent
/// would pass `max_txs` or `max_gas`. The failure reason, or `None`.
pub(crate) fn over_caps(
    txs: u64,
    gas: u64,
    more: u64,
    max_txs: u64,
    max_gas: u64,
) -> Option<String> {
    if txs + more > max_txs {
        return Some(format!(
            "{txs} transaction(s) already signed for this payment; {more} more would pass the cap of {max_txs}"
        ));
    }
    if gas >= max_gas {
        return Some(format!(
            "{gas} gas already spent on this payment, the cap is {max_gas}"
        ));
    }
    None
}

/// What a permit's revert means, with the owner's on-chain nonce read after it and, when
/// that nonce is this permit's, whether `permit()` would execute now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PermitRevert {
    /// Out of order (an earlier permit of the owner goes first): sign again.
    Retry(String),
    /// Its nonce is spent by another permit: the payer's doing.
    NonceSpent,
    /// It reverts at the right nonce: the chain refuses the signature (e.g. wrong domain).
    SignatureRejected,
}

pub(crate) fn permit_revert(
    p: &PaymentRow,
    onchain: U256,
    executes_now: Option<bool>,
) -> PermitRevert {
    let nonce = p.permit_nonce();
    if onchain > nonce {
        return PermitRevert::NonceSpent;
    }
    if onchain == nonce && executes_now != Some(true) {
        return PermitRevert::SignatureRejected;
    }
    match permit_retry_note(p, onchain) {
        Some(note) => PermitRevert::Retry(note),
        None => PermitRevert::NonceSpent,
    }
}

/// What the lane read after a mined settlement did not move the funds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AfterRevert {
    pub payer_balance: Option<U256>,
    /// The allowance to the settler's wallet (permit), if read.
    pub allowance: Option<U256>,
    pub permit: Option<PermitVerdict>,
    /// ERC-3009: the payer cancelled the authorization.
    pub canceled: bool,
    /// ERC-3009: used by a transaction whose funds did not reach pay_to.
    pub used_elsewhere: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PermitVerdict {
    NonceSpent,
    SignatureRejected,
}

/// The cause of a failed mined settlement (see [`FailCause`]); payer-caused first, as they
/// explain the revert.
pub(crate) fn failure_cause(
    transfer_ok: bool,
    permit_ok: bool,
    a: &AfterRevert,
    value: U256,
) -> FailCause {
    if a.canceled {
        return FailCause::AuthorizationCanceled;
    }
    if a.payer_balance.is_some_and(|b| b < value) {
        return FailCause::InsufficientBalance;
    }
    match a.permit {
        Some(PermitVerdict::NonceSpent) => return FailCause::PermitNonceSpent,
        Some(PermitVerdict::SignatureRejected) => return FailCause::SignatureRejected,
        None => {}
    }
    if !transfer_ok && permit_ok && a.allowance.is_some_and(|x| x < value) {
        return FailCause::AllowanceRevoked;
    }
    if a.used_elsewhere {
        return FailCause::AuthorizationUsedElsewhere;
    }
    if transfer_ok {
        FailCause::NoTransferEvent
    } else {
        FailCause::Reverted
    }
}

/// The payment's note when its transactions lost their wallet nonces.
pub(crate) fn nonce_lost_note(nonces: &[u64], signer: Address) -> String {
    format!("wallet nonce(s) {nonces:?} of {signer:#x} were used by another transaction; settlement is signed again")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain;
    use crate::lane::io::TransferLog;
    use crate::scheme::{TRANSFER_FROM, TRANSFER_WITH_AUTHORIZATION};
    use crate::test_fixtures::lane::{payment, TOKEN};
    use alloy::sol_types::SolCall;

    fn tx(nonce: u64, pid: &str, kind: &str) -> TxRow {
        TxRow {
            chain_id: 1,
            signer: Address::ZERO,
            nonce,
            payment_id: pid.into(),
            kind: kind.into(),
            hash: B256::from(U256::from(nonce)),
            raw: vec![],
            state: "sent".into(),
            last_broadcast_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn nonces_start_past_the_node_and_the_store_and_resync_only_forward() {
        assert_eq!(start_nonce(0, None), 0);
        assert_eq!(start_nonce(5, None), 5);
        assert_eq!(
            start_nonce(3, Some(7)),
            8,
            "stored but unmined transactions keep their nonces"
        );
        assert_eq!(start_nonce(9, Some(7)), 9);
        assert_eq!(resync_nonce(4, 4), None);
        assert_eq!(
            resync_nonce(4, 3),
            None,
            "our own pending transactions may not be in the pool yet"
        );
        assert_eq!(resync_nonce(4, 6), Some(6));
        assert_eq!((tx_nonce(10, 0), tx_nonce(10, 1)), (10, 11));
        assert_eq!(
            lease_name(8453, Address::repeat_byte(0xab)),
            format!("lane:8453:{:#x}", Address::repeat_byte(0xab))
        );
    }

    #[test]
    fn calls_per_scheme() {
        let signer = Address::repeat_byte(0x33);
        let p = payment("a", 1, Scheme::Permit, 3);
        let calls = settlement_calls(&p, signer, true);
        assert_eq!(
            calls.iter().map(|c| c.0).collect::<Vec<_>>(),
            [PERMIT, TRANSFER_FROM]
        );
        let permit = chain::IToken::permitCall::abi_decode(&calls[0].1).unwrap();
        assert_eq!(
            (permit.owner, permit.spender, permit.value, permit.r),
            (p.p.payer, signer, p.p.value, p.p.sig.r)
        );
        let tf = chain::IToken::transferFromCall::abi_decode(&calls[1].1).unwrap();
        assert_eq!(
            (tf.from, tf.to, tf.value),
            (p.p.payer, p.p.pay_to, p.p.value)
        );
        assert_eq!(
            settlement_calls(&p, signer, false)
                .iter()
                .map(|c| c.0)
                .collect::<Vec<_>>(),
            [TRANSFER_FROM]
        );
        let e = payment("b", 2, Scheme::Exact, 0);
        let calls = settlement_calls(&e, signer, true);
        assert_eq!(calls.len(), 1);
        let twa = chain::IToken::transferWithAuthorizationCall::abi_decode(&calls[0].1).unwrap();
        assert_eq!(
            (twa.from, twa.to, twa.value, twa.nonce, twa.validBefore),
            (e.p.payer, e.p.pay_to, e.p.value, e.p.nonce, e.p.deadline)
        );
    }

    #[test]
    fn submission_hashes_name_the_permit_and_the_last_transaction() {
        assert_eq!(submission_hashes(&[]), None);
        let txs = [tx(4, "a", PERMIT), tx(5, "a", TRANSFER_FROM)];
        assert_eq!(
            submission_hashes(&txs),
            Some((Some(txs[0].hash), txs[1].hash))
        );
        assert_eq!(submission_hashes(&txs[1..]), Some((None, txs[1].hash)));
    }

    #[test]
    fn defer_backoff_doubles_up_to_32_seconds() {
        assert_eq!(
            [-1, 0, 1, 2, 5, 6, 100].map(defer_wait_ms),
            [1000, 1000, 2000, 4000, 32000, 32000, 32000]
        );
    }

    #[test]
    fn a_used_nonce_without_receipt_is_dead_only_when_the_node_knows_none_of_its_attempts() {
        use AttemptsSeen::*;
        use NonceFate::*;
        let (mined, pooled) = (
            Some(TxSeen { block: Some(7) }),
            Some(TxSeen { block: None }),
        );
        assert_eq!(attempts_seen(true, &[None]), Receipt);
        assert_eq!(attempts_seen(false, &[None, mined, pooled]), MinedNoReceipt);
        assert_eq!(attempts_seen(false, &[None, pooled]), Pending);
        assert_eq!(attempts_seen(false, &[None, None]), Unknown);
        assert_eq!(attempts_seen(false, &[]), Unknown);
        let now = Duration::ZERO;
        let late = RECEIPT_LAG;
        // (what the node knows, nonce 4 with the confirmed nonce 4 (unused) or 5 (used), waited)
        let table = [
            (Receipt, 4, now, Mined),
            (Receipt, 5, now, Mined),
            (MinedNoReceipt, 4, now, NotMinedYet),
            (MinedNoReceipt, 5, now, AwaitReceipt { overdue: false }),
            (MinedNoReceipt, 5, late, AwaitReceipt { overdue: true }),
            (Pending, 4, now, NotMinedYet),
            (Pending, 5, now, AwaitReceipt { overdue: false }),
            (Pending, 5, late, NonceTaken),
            (Unknown, 4, now, NotMinedYet),
            (Unknown, 4, late, NotMinedYet),
            (Unknown, 5, now, NonceTaken),
        ];
        for (seen, confirmed, waited, want) in table {
            assert_eq!(
                nonce_fate(seen, 4, confirmed, waited),
                want,
                "{seen:?} confirmed {confirmed} waited {waited:?}"
            );
        }
        assert_eq!(
            nonce_fate(MinedNoReceipt, 4, 5, Duration::from_secs(3600)),
            AwaitReceipt { overdue: true },
            "a mined transaction is never called dead"
        );
        assert!(nonce_used(4, 5) && !nonce_used(5, 5) && !nonce_used(6, 5));
    }

    #[test]
    fn a_receipt_counts_once_it_is_deep_enough() {
        assert!(deep_enough(10, 10, 1));
        assert!(!deep_enough(10, 10, 3));
        assert!(!deep_enough(10, 11, 3));
        assert!(deep_enough(10, 12, 3));
        assert!(deep_enough(10, 50, 3));
        // A head behind the receipt's block (a lagging node): not deep.
        assert!(!deep_enough(10, 9, 1));
    }

    #[test]
    fn rebroadcast_interval_and_nonce_too_low() {
        let i = Duration::from_secs(15);
        assert!(!due_for_rebroadcast(100_000, 110_000, i));
        assert!(!due_for_rebroadcast(100_000, 115_000, i));
        assert!(due_for_rebroadcast(100_000, 115_001, i));
        assert!(broadcast_wants_recheck("Nonce too low: next nonce 7"));
        assert!(!broadcast_wants_recheck("already known"));
    }

    #[test]
    fn groups_keep_nonce_order_per_payment() {
        let g = group_by_payment(vec![
            tx(1, "a", PERMIT),
            tx(2, "a", TRANSFER_FROM),
            tx(3, "b", TRANSFER_WITH_AUTHORIZATION),
        ]);
        assert_eq!(
            g.iter()
                .map(|g| g.iter().map(|t| t.nonce).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            [vec![1, 2], vec![3]]
        );
        assert!(group_by_payment(vec![]).is_empty());
    }

    #[test]
    fn what_a_receipt_means() {
        let p = payment("a", 1, Scheme::Permit, 0).p;
        let transfer = TransferLog {
            token: TOKEN,
            from: p.payer,
            to: p.pay_to,
            value: p.value,
        };
        let ok = Receipt {
            success: true,
            block_number: Some(3),
            transfers: vec![transfer],
            gas_used: 1,
            items: vec![],
        };
        assert_eq!(verdict(Some(&ok), &p, false), Verdict::Settled);
        assert_eq!(
            verdict(Some(&ok), &p, true),
            Verdict::Settled,
            "the funds moved: a dead permit changes nothing"
        );
        let reverted = Receipt {
            success: false,
            block_number: Some(3),
            transfers: vec![],
            gas_used: 1,
            items: vec![],
        };
        assert_eq!(
            verdict(Some(&reverted), &p, false),
            Verdict::NotMoved { transfer_ok: false }
        );
        assert_eq!(verdict(Some(&reverted), &p, true), Verdict::NonceLost);
        for wrong in [
            TransferLog {
                value: p.value - U256::from(1),
                ..transfer
            },
            TransferLog {
                token: Address::repeat_byte(9),
                ..transfer
            },
            TransferLog {
                to: p.payer,
                ..transfer
            },
        ] {
            let r = Receipt {
                success: true,
                block_number: Some(3),
                transfers: vec![wrong],
                gas_used: 1,
                items: vec![],
            };
            assert_eq!(
                verdict(Some(&r), &p, false),
                Verdict::NotMoved { transfer_ok: true },
                "{wrong:?}"
            );
        }
        assert_eq!(verdict(None, &p, true), Verdict::NonceLost);
    }

    #[test]
    fn permit_retries_are_bounded_and_only_for_out_of_order_permits() {
        let mut p = payment("a", 1, Scheme::Permit, 3);
        assert!(permit_retry_possible(&p, false));
        assert!(!permit_retry_possible(&p, true));
        assert!(!permit_retry_possible(
            &payment("e", 1, Scheme::Exact, 0),
            false
        ));
        p.attempts = MAX_REQUEUES;
        assert!(!permit_retry_possible(&p, false));
        let note = permit_retry_note(&p, U256::from(2)).unwrap();
        assert!(
            note.contains("on-chain nonce is 2 (this permit's is 3)"),
            "{note}"
        );
        assert!(permit_retry_note(&p, U256::from(3)).is_some());
        assert_eq!(
            permit_retry_note(&p, U256::from(4)),
            None,
            "its nonce is spent: it can never succeed"
        );
    }

    #[test]
    fn failure_reasons() {
        let v = U256::from(10);
        assert_eq!(
            failure_reason(Scheme::Permit, true, false, Some(v), v),
            "transferFrom reverted"
        );
        assert_eq!(
            failure_reason(Scheme::Exact, true, true, None, v),
            "transferWithAuthorization succeeded without the expected Transfer event"
        );
        assert_eq!(
            failure_reason(Scheme::Permit, false, false, Some(U256::from(3)), v),
            "transferFrom reverted; permit() reverted (nonce used or signature refused); payer balance 3 is below the value 10"
        );
        assert!(
            nonce_lost_note(&[4, 5], Address::ZERO).starts_with("wallet nonce(s) [4, 5] of 0x0000")
        );
    }

    #[test]
    fn replacement_fees_rise_at_least_an_eighth_cover_the_base_fee_and_respect_the_cap() {
        let gwei = 1_000_000_000u128;
        // Base fee low: the 12.5 % bump decides.
        assert_eq!(
            bumped_fees((8 * gwei, gwei), gwei, gwei / 2, 1000 * gwei),
            Some((9 * gwei, gwei + gwei / 8))
        );
        // Base fee spiked: 2 x base + tip.
        let (max, prio) = bumped_fees((8 * gwei, gwei), 50 * gwei, 2 * gwei, 1000 * gwei).unwrap();
        assert_eq!((max, prio), (102 * gwei, 2 * gwei));
        // Capped: as high as the cap allows, still a valid replacement.
        assert_eq!(
            bumped_fees((8 * gwei, gwei), 50 * gwei, 2 * gwei, 20 * gwei),
            Some((20 * gwei, 2 * gwei))
        );
        // No room under the cap for +12.5 %: no replacement.
        assert_eq!(
            bumped_fees((8 * gwei, gwei), 50 * gwei, gwei, 8 * gwei),
            None
        );
        // Tiny fees still rise by at least 1 wei each.
        assert_eq!(bumped_fees((1, 0), 0, 0, 100), Some((2, 1)));
        assert_eq!(
            capped_fees((30 * gwei, 40 * gwei), 20 * gwei),
            (20 * gwei, 20 * gwei)
        );
        assert!(includable((10, 2), 8, 2));
        assert!(!includable((9, 2), 8, 2));
        // The fee fell back under a priced-out transaction's: send it again.
        assert!(back_under_fees((10, 2), 50, 8, 2));
        assert!(!back_under_fees((10, 2), 8, 8, 2), "includable before too");
        assert!(!back_under_fees((10, 2), 50, 9, 2), "still priced out");
        assert!(
            !back_under_fees((10, 2), 0, 8, 2),
            "first round: nothing to compare"
        );
        let a = Duration::from_secs(12);
        assert!(!due_for_replacement(100_000, 111_999, a));
        assert!(due_for_replacement(100_000, 112_000, a));
    }

    #[test]
    fn the_mined_attempt_is_whichever_has_a_receipt() {
        let r = Receipt {
            success: true,
            block_number: Some(4),
            transfers: vec![],
            gas_used: 21_000,
            items: vec![],
        };
        let (a, b, c) = (
            B256::repeat_byte(1),
            B256::repeat_byte(2),
            B256::repeat_byte(3),
        );
        assert_eq!(mined_attempt(vec![(a, None), (b, None)]), None);
        assert_eq!(
            mined_attempt(vec![(c, None), (a, Some(r.clone())), (b, None)]),
            Some((a, r))
        );
    }

    #[test]
    fn failure_causes_tell_the_payers_doing_from_ours() {
        let v = U256::from(10);
        let none = AfterRevert::default();
        let cause = |t, p, a: AfterRevert| failure_cause(t, p, &a, v);
        assert_eq!(cause(false, true, none), FailCause::Reverted);
        assert_eq!(cause(true, true, none), FailCause::NoTransferEvent);
        let c = cause(
            false,
            true,
            AfterRevert {
                canceled: true,
                ..none
            },
        );
        assert_eq!(c, FailCause::AuthorizationCanceled);
        let c = cause(
            false,
            true,
            AfterRevert {
                payer_balance: Some(U256::from(9)),
                ..none
            },
        );
        assert_eq!(c, FailCause::InsufficientBalance);
        let c = cause(
            false,
            false,
            AfterRevert {
                permit: Some(PermitVerdict::NonceSpent),
                ..none
            },
        );
        assert_eq!(c, FailCause::PermitNonceSpent);
        let c = cause(
            false,
            true,
            AfterRevert {
                allowance: Some(U256::ZERO),
                ..none
            },
        );
        assert_eq!(c, FailCause::AllowanceRevoked);
        let rejected = AfterRevert {
            permit: Some(PermitVerdict::SignatureRejected),
            ..none
        };
        assert_eq!(cause(false, false, rejected), FailCause::SignatureRejected);
        for payer in [
            FailCause::AuthorizationCanceled,
            FailCause::InsufficientBalance,
            FailCause::PermitNonceSpent,
            FailCause::AllowanceRevoked,
        ] {
            assert!(payer.payer_caused(), "{payer:?}");
        }
        for ours in [
            FailCause::DeadlinePassed,
            FailCause::SignatureRejected,
            FailCause::RetryCap,
            FailCause::Reverted,
            FailCause::NoTransferEvent,
            FailCause::AuthorizationUsedElsewhere,
        ] {
            assert!(!ours.payer_caused(), "{ours:?}");
        }
        // A permit revert at the owner's nonce: out of order if permit() executes now,
        // otherwise the chain refuses the signature; past it: spent.
        let p = payment("a", 1, Scheme::Permit, 3);
        assert!(matches!(
            permit_revert(&p, U256::from(2), None),
            PermitRevert::Retry(_)
        ));
        assert!(matches!(
            permit_revert(&p, U256::from(3), Some(true)),
            PermitRevert::Retry(_)
        ));
        assert_eq!(
            permit_revert(&p, U256::from(3), Some(false)),
            PermitRevert::SignatureRejected
        );
        assert_eq!(
            permit_revert(&p, U256::from(4), None),
            PermitRevert::NonceSpent
        );
    }

    #[test]
    fn a_lane_is_stalled_by_an_old_transaction_or_a_wallet_short_of_gas() {
        let after = Duration::from_secs(60);
        assert_eq!(
            stall_reason(None, 1_000_000, after, Some(U256::MAX), 0, 300_000, 10),
            None
        );
        assert_eq!(
            stall_reason(
                Some(950_000),
                1_000_000,
                after,
                Some(U256::MAX),
                1,
                300_000,
                10
            ),
            None
        );
        let old = stall_reason(
            Some(900_000),
            1_000_000,
            after,
            Some(U256::MAX),
            1,
            300_000,
            10,
        )
        .unwrap();
        assert!(old.contains("100 s old"), "{old}");
        assert_eq!(wallet_need(2, 300_000, 10), U256::from(9_000_000u64));
        let poor = stall_reason(
            None,
            0,
            after,
            Some(U256::from(8_999_999u64)),
            2,
            300_000,
            10,
        )
        .unwrap();
        assert!(poor.contains("8999999 wei"), "{poor}");
        assert_eq!(
            stall_reason(
                None,
                0,
                after,
                Some(U256::from(9_000_000u64)),
                2,
                300_000,
                10
            ),
            None
        );
        assert_eq!(over_caps(2, 0, 2, 4, 1_000), None);
        assert!(over_caps(3, 0, 2, 4, 1_000).unwrap().contains("cap of 4"));
        assert!(over_caps(0, 1_000, 1, 4, 1_000).unwrap().contains("gas"));
    }
}
