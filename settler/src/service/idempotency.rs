//! Same payment, same token: a signed payment posted again (the gateway gave up on the first
//! answer, the settler was killed after its commit, the client retried) is answered from the
//! row that holds its single-use key, as long as that answer gives nothing away.
//!
//! "The same payment" is the single-use key (scheme, chain, token, payer, nonce) AND the same
//! signed terms and signature (value, parties, time window, v/r/s; high-s is refused, so a
//! signature has one form) AND the same route. Before the settlement is broadcast its
//! signature is known only to the payer and to us, so whoever posts it again is the payer (or
//! its gateway): it gets the same settlement - and for the token API the same token,
//! byte-identical, re-minted from the stored `iat`/`exp` (ES256K signing is RFC 6979
//! deterministic). Once a settlement transaction is stored (and so possibly broadcast) the
//! signature may be public: the answer is 409 `payment_already_used` naming the settlement
//! and its state, without a token. A different payment holding the key is 409: for a permit
//! `nonce_mismatch` with the nonce to sign (checked in `accept` before [`judge`]: its nonce
//! is stale), else `payment_already_used`.
//!
//! An idempotency key (x402 `payment-identifier`, the token endpoint's `Idempotency-Key`)
//! stored with the payment extends this past broadcast: the key is never on chain, so who
//! sends the same payment with the same key is the original client, while the signature
//! alone, once in a mempool, is anyone's. The same payment and route with the key: the same
//! answer as long as the settlement did not fail (a settled payment's token is given again
//! until it expires). Another payment, or another route, with a used key: 409
//! `payment_identifier_mismatch`, naming nothing of the first.

use x402_protocol::settler_api::{SettlementState, TokenResponse};

use super::{Minter, Mode};
use crate::error::{Refusal, UsedPayment};
use crate::store::{NewPayment, StoredPayment};

/// Whether `a` and `b` are the same signed payment (ids, times and formats aside).
pub(crate) fn same_signed_payment(a: &NewPayment, b: &NewPayment) -> bool {
    a.scheme == b.scheme
        && a.network == b.network
        && a.asset == b.asset
        && a.payer == b.payer
        && a.pay_to == b.pay_to
        && a.spender == b.spender
        && a.value == b.value
        && a.nonce == b.nonce
        && a.valid_after == b.valid_after
        && a.deadline == b.deadline
        && a.sig == b.sig
}

fn used(stored: &StoredPayment, message: String) -> Refusal {
    Refusal::PaymentAlreadyUsed(UsedPayment {
        message,
        settlement_id: Some(stored.row.p.id.clone()),
        state: Some(stored.row.state),
    })
}

/// Decides on `new`, whose single-use key or idempotency key (`payment_id`, the one sent
/// with `new`) `stored` already holds: the stored payment if it may be answered again (same
/// payment, same route, storing mode, and either pending and never broadcast or stored
/// under the same key and not failed), else the refusal.
pub(crate) fn judge(
    stored: StoredPayment,
    new: &NewPayment,
    mode: Mode,
    payment_id: Option<&str>,
) -> Result<StoredPayment, Refusal> {
    let p = &stored.row.p;
    let same_key = payment_id.is_some() && stored.payment_id.as_deref() == payment_id;
    if same_key && (!same_signed_payment(p, new) || p.route != new.route) {
        return Err(Refusal::PaymentIdMismatch(
            "this payment identifier was already used with another payment; use a new identifier for a new payment".into(),
        ));
    }
    if !same_signed_payment(p, new) {
        return Err(Refusal::PaymentAlreadyUsed(UsedPayment::new(
            "another payment with this nonce was already accepted",
        )));
    }
    if mode == Mode::Verify {
        return Err(used(
            &stored,
            format!("this payment was already accepted (settlement {})", p.id),
        ));
    }
    if p.route != new.route {
        return Err(used(
            &stored,
            format!(
                "this payment was already accepted for route {} (settlement {})",
                p.route, p.id
            ),
        ));
    }
    if same_key && stored.row.state != SettlementState::Failed {
        return Ok(stored);
    }
    if stored.broadcast || stored.row.state != SettlementState::Pending {
        return Err(used(
            &stored,
            format!(
                "this payment was already accepted (settlement {}, {}); its settlement is under way, so it is not answered again: follow GET /v1/settlements/{}",
                p.id,
                state_name(stored.row.state),
                p.id
            ),
        ));
    }
    Ok(stored)
}

fn state_name(s: SettlementState) -> &'static str {
    match s {
        SettlementState::Pending => "pending",
        SettlementState::Submitted => "submitted",
        SettlementState::Settled => "settled",
        SettlementState::Failed => "failed",
    }
}

/// The token of a payment answered again: the one minted at its acceptance, from the stored
/// `iat`/`exp`. Refused (409) when it has none (a facilitator payment, or stored before
/// tokens' times were kept) or it has expired (a re-post never extends access).
pub(crate) fn token_again(
    minter: &Minter,
    stored: &StoredPayment,
    now: u64,
) -> Result<TokenResponse, Refusal> {
    let id = &stored.row.p.id;
    let Some((iat, exp)) = stored.token else {
        return Err(used(
            stored,
            format!(
                "this payment was already accepted (settlement {id}) without a token to give again"
            ),
        ));
    };
    let (iat, exp) = (iat.max(0) as u64, exp.max(0) as u64);
    if exp <= now {
        return Err(used(
            stored,
            format!("this payment was already accepted (settlement {id}); its access token expired at {exp}"),
        ));
    }
    Ok(minter.mint_at(&stored.row.p, iat, exp, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{B256, U256};

    use crate::store::PaymentRow;

    fn payment(id: &str) -> NewPayment {
        crate::test_fixtures::new_payment(id)
    }

    fn stored(state: SettlementState, broadcast: bool) -> StoredPayment {
        StoredPayment {
            row: PaymentRow {
                seq: 1,
                p: payment("first"),
                state,
                error: None,
                permit_tx: None,
                transfer_tx: None,
                block_number: None,
                attempts: 0,
                updated_ms: 1_000,
            },
            token: Some((1_000, 1_300)),
            broadcast,
            held: false,
            payment_id: Some("pay_0123456789abcdef".into()),
        }
    }

    #[test]
    fn only_the_same_unbroadcast_payment_on_the_same_route_is_answered_again() {
        let again = payment("second");
        let ok = judge(
            stored(SettlementState::Pending, false),
            &again,
            Mode::Store,
            None,
        )
        .unwrap();
        assert_eq!(ok.row.p.id, "first");

        let refused = |s: StoredPayment, p: &NewPayment, mode| judge(s, p, mode, None).unwrap_err();
        // Broadcast (or later): 409 naming the settlement and its state.
        for (state, broadcast) in [
            (SettlementState::Pending, true),
            (SettlementState::Submitted, true),
            (SettlementState::Settled, true),
            (SettlementState::Failed, false),
        ] {
            let r = refused(stored(state, broadcast), &again, Mode::Store);
            assert_eq!(r.code(), "payment_already_used");
            let api = r.to_api();
            assert_eq!(api.settlement_id.as_deref(), Some("first"));
            assert_eq!(api.state, Some(state));
        }
        // Another signature (or any other signed field) under the same key: no facts given.
        let mut other = payment("x");
        other.sig.r = B256::repeat_byte(9);
        let r = refused(stored(SettlementState::Pending, false), &other, Mode::Store);
        assert_eq!(
            (r.code(), r.to_api().settlement_id),
            ("payment_already_used", None)
        );
        let mut other = payment("x");
        other.value = U256::from(1u8);
        assert!(!same_signed_payment(&payment("a"), &other));
        // Another route, or verify only: refused with the settlement.
        let mut route = payment("x");
        route.route = "other".into();
        let r = refused(stored(SettlementState::Pending, false), &route, Mode::Store);
        assert_eq!(r.to_api().settlement_id.as_deref(), Some("first"));
        let r = refused(
            stored(SettlementState::Pending, false),
            &again,
            Mode::Verify,
        );
        assert_eq!(r.code(), "payment_already_used");
    }

    #[test]
    fn the_same_identifier_answers_again_after_broadcast_and_refuses_another_payment() {
        const ID: Option<&str> = Some("pay_0123456789abcdef");
        let again = payment("second");
        // Broadcast, even settled: the key proves the original client.
        for state in [SettlementState::Submitted, SettlementState::Settled] {
            let ok = judge(stored(state, true), &again, Mode::Store, ID).unwrap();
            assert_eq!(ok.row.p.id, "first");
        }
        // Without the key (or with another one), the signature alone gets nothing.
        let r = judge(
            stored(SettlementState::Settled, true),
            &again,
            Mode::Store,
            None,
        );
        assert_eq!(r.unwrap_err().code(), "payment_already_used");
        let r = judge(
            stored(SettlementState::Settled, true),
            &again,
            Mode::Store,
            Some("pay_another_key_0000"),
        );
        assert_eq!(r.unwrap_err().code(), "payment_already_used");
        // A failed settlement is not answered again, key or not.
        let r = judge(
            stored(SettlementState::Failed, true),
            &again,
            Mode::Store,
            ID,
        );
        assert_eq!(r.unwrap_err().code(), "payment_already_used");
        // Another payment, or the same one on another route, under the key: 409, nothing named.
        let mut other = payment("x");
        other.value = U256::from(1u8);
        let r = judge(
            stored(SettlementState::Pending, false),
            &other,
            Mode::Store,
            ID,
        )
        .unwrap_err();
        assert_eq!(r.code(), "payment_identifier_mismatch");
        assert_eq!(r.to_api().settlement_id, None);
        let mut route = payment("x");
        route.route = "other".into();
        let r = judge(
            stored(SettlementState::Pending, false),
            &route,
            Mode::Store,
            ID,
        );
        assert_eq!(r.unwrap_err().code(), "payment_identifier_mismatch");
    }
}
