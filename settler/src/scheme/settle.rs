//! The lane's side of a scheme: how a STORED payment of that scheme settles on chain - the
//! chain read its preflight starts from, the first preflight decision, its settlement calls,
//! and whether a revert is worth another attempt. [`SchemeSettlement`] is implemented next to
//! each scheme's acceptance checks (`permit.rs`, `exact.rs`); the lane reaches it through
//! [`super::settlement`] and has no `match` on the scheme.

use alloy::primitives::{Address, Bytes, B256, U256};

use crate::store::{NewPayment, PaymentRow};

/// `x402_txs.kind` of each settlement transaction.
pub(crate) const PERMIT: &str = "permit";
pub(crate) const TRANSFER_FROM: &str = "transfer_from";
pub(crate) const TRANSFER_WITH_AUTHORIZATION: &str = "transfer_with_authorization";

/// Signatures closer than this (seconds) to their deadline are not sent any more: they would
/// likely expire in the mempool.
pub(crate) const DEADLINE_MARGIN_SECS: u8 = 5;

/// The chain read a payment's preflight starts from (the lane runs it, for a whole batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FactsRead {
    /// EIP-2612 `nonces(owner)` of `token`.
    PermitNonce { token: Address, owner: Address },
    /// ERC-3009 `authorizationState(from, nonce)` of `token`.
    AuthorizationState {
        token: Address,
        from: Address,
        nonce: B256,
    },
}

/// The answer to a [`FactsRead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainFacts {
    /// EIP-2612 `nonces(owner)`.
    PermitNonce(U256),
    /// ERC-3009 `authorizationState(from, nonce)`.
    AuthorizationUsed(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Preflight {
    /// Sign all its calls.
    Ready,
    /// The permit's nonce is used on chain but the allowance covers the value (someone
    /// submitted this permit, or another one to the settler): `transferFrom` alone settles it.
    TransferOnly,
    /// Not now: try again later (its note is stored on the payment).
    Defer(String),
    /// It can never settle. `release_key`: the signature is dead for good (permit deadline
    /// passed), so its single-use key is freed for the payer to sign that nonce anew.
    Fail {
        reason: String,
        release_key: bool,
        cause: FailCause,
    },
    /// Executed on chain by a transaction this settler did not send (front-run, or submitted
    /// by the payer): the funds reached `pay_to` in `tx`.
    SettledBy { tx: B256, block: u64 },
}

/// Why the lane failed a payment, stored as `fail_cause`. The payer-caused ones block the
/// payer ([`FailCause::payer_caused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailCause {
    /// The payer cancelled the ERC-3009 authorization (`AuthorizationCanceled`).
    AuthorizationCanceled,
    /// The payer's token balance no longer covers the value (funds moved away).
    InsufficientBalance,
    /// The permit's nonce was spent by another permit and the allowance does not cover it.
    PermitNonceSpent,
    /// The allowance the permit gave was revoked / spent before `transferFrom`.
    AllowanceRevoked,
    /// The deadline / `validBefore` passed before the lane got to it (we were slow).
    DeadlinePassed,
    /// `permit()` reverts at the owner's current nonce: the chain refuses the signature (e.g.
    /// a domain the token does not have).
    SignatureRejected,
    /// The per-payment cap on transactions or gas is reached.
    RetryCap,
    /// The authorization was used on chain by a transaction not found to pay `pay_to`.
    AuthorizationUsedElsewhere,
    /// Succeeded without the expected `Transfer` event (a non-standard token).
    NoTransferEvent,
    /// Reverted for another reason.
    Reverted,
}

impl FailCause {
    pub(crate) fn code(self) -> &'static str {
        match self {
            FailCause::AuthorizationCanceled => "authorization_canceled",
            FailCause::InsufficientBalance => "insufficient_balance",
            FailCause::PermitNonceSpent => "permit_nonce_spent",
            FailCause::AllowanceRevoked => "allowance_revoked",
            FailCause::DeadlinePassed => "deadline_passed",
            FailCause::SignatureRejected => "signature_rejected",
            FailCause::RetryCap => "retry_cap",
            FailCause::AuthorizationUsedElsewhere => "authorization_used_elsewhere",
            FailCause::NoTransferEvent => "no_transfer_event",
            FailCause::Reverted => "reverted",
        }
    }

    /// The payer made it fail (and could repeat it with a new payment): blocks the payer.
    pub(crate) fn payer_caused(self) -> bool {
        matches!(
            self,
            FailCause::AuthorizationCanceled
                | FailCause::InsufficientBalance
                | FailCause::PermitNonceSpent
                | FailCause::AllowanceRevoked
        )
    }

    /// What the store records: (code, payer caused).
    pub(crate) fn stored(self) -> (&'static str, bool) {
        (self.code(), self.payer_caused())
    }
}

/// The first preflight step: a decision, or what to read next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    Done(Preflight),
    /// The permit nonce is below the chain's: does the allowance still cover the value?
    NeedAllowance {
        onchain: U256,
    },
    /// The permit nonce is above the chain's: are the earlier ones in flight ahead of it?
    NeedInflight {
        onchain: U256,
    },
    /// The ERC-3009 authorization is used on chain: by a transfer to `pay_to` (settled by
    /// someone else) or by a cancellation? Read its event.
    NeedAuthorizationEvent,
}

/// A stored payment's scheme, as the lane sees it.
pub(crate) trait SchemeSettlement: Send + Sync {
    /// The funds-moving call, for messages ("transferFrom").
    fn transfer_call(&self) -> &'static str;
    /// The chain read [`SchemeSettlement::first_check`] needs.
    fn facts_read(&self, p: &NewPayment) -> FactsRead;
    /// The first preflight decision, from the facts read and the time.
    fn first_check(&self, p: &PaymentRow, facts: ChainFacts, now_secs: u64) -> Check;
    /// The calls settling `p`, in execution order (they get consecutive wallet nonces), each
    /// a call to the token `p.asset`, with its `x402_txs.kind`. `with_permit`: false after
    /// [`Preflight::TransferOnly`].
    fn settlement_calls(
        &self,
        p: &PaymentRow,
        signer: Address,
        with_permit: bool,
    ) -> Vec<(&'static str, Bytes)>;
    /// A mined settlement that did not move the funds may have failed out of order (a permit
    /// reverted because an earlier one of the owner was not executed yet): worth reading the
    /// chain again. `permit_ok`: the group's `permit()` (if any) succeeded.
    fn retry_possible(&self, permit_ok: bool) -> bool;
}
