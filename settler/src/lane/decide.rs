//! The lane's decisions, as pure functions: no I/O and no clock (callers pass `now`), so each
//! rule is unit-tested on its own. The lane's loops (`submit.rs`, `broadcast.rs`,
//! `confirm.rs`) do the reads and writes around them.

use std::time::Duration;

use alloy::primitives::{Address, Bytes, B256, U256};
use x402_protocol::Scheme;

use super::io::Receipt;
use crate::scheme;
pub(crate) use crate::scheme::PERMIT;
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

/// What a missing receipt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissingReceipt {
    /// Its nonce is not used yet: wait (and re-broadcast after the interval).
    NotMinedYet,
    /// The wallet's confirmed nonce (read before the receipt) is above it: a transaction this
    /// settler did not send took its nonce, it can never be mined.
    NonceTaken,
}

pub(crate) fn missing_receipt(tx_nonce: u64, confirmed_nonce: u64) -> MissingReceipt {
    if tx_nonce >= confirmed_nonce {
        MissingReceipt::NotMinedYet
    } else {
        MissingReceipt::NonceTaken
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

/// The payment's note when its transactions lost their wallet nonces.
pub(crate) fn nonce_lost_note(nonces: &[u64], signer: Address) -> String {
    format!("wallet nonce(s) {nonces:?} of {signer:#x} were used by another transaction; settlement is signed again")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain;
    use crate::lane::fixtures::{payment, TOKEN};
    use crate::lane::io::TransferLog;
    use crate::scheme::{TRANSFER_FROM, TRANSFER_WITH_AUTHORIZATION};
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
    fn missing_receipts_and_rebroadcast() {
        assert_eq!(missing_receipt(5, 5), MissingReceipt::NotMinedYet);
        assert_eq!(missing_receipt(6, 5), MissingReceipt::NotMinedYet);
        assert_eq!(missing_receipt(4, 5), MissingReceipt::NonceTaken);
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
}
