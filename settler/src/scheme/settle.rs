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
    Fail { reason: String, release_key: bool },
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
