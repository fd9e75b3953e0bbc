//! One module per payment scheme: what differs between EIP-2612 `permit` and ERC-3009 `exact`
//! when a payment is verified and accepted (who signs, terms, chain reads, the fields the lane
//! needs to settle it). The rest of verification and acceptance is scheme-blind and goes
//! through [`of`].
//!
//! The same modules hold the lane's side of each scheme ([`SchemeSettlement`], in `settle.rs`):
//! the chain read and first decision of its preflight, its settlement calls, when a revert is
//! worth another attempt. The lane reaches it through [`settlement`].
//!
//! A new scheme (e.g. Permit2) is a new module implementing [`SchemePayment`] and
//! [`SchemeSettlement`] plus one arm in [`of`] and one in [`settlement`]; its `ClientPayment`
//! variant and `Scheme` value come from `x402_protocol`.

mod exact;
mod permit;
mod settle;

pub(crate) use settle::{
    ChainFacts, Check, FactsRead, FailCause, Preflight, SchemeSettlement, DEADLINE_MARGIN_SECS,
    PERMIT, TRANSFER_FROM, TRANSFER_WITH_AUTHORIZATION,
};

use std::future::Future;
use std::pin::Pin;

use alloy::primitives::{Address, U256};
use x402_protocol::payment::{ClientPayment, Sig};
use x402_protocol::settler_api::PricedMethod;
use x402_protocol::Scheme;

use crate::chain::Chain;
use crate::error::Refusal;
use crate::store::OpenPayment;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The scheme-specific fields of a stored payment (`store::NewPayment`).
pub(crate) struct SettlementTerms {
    /// The wallet that must settle it (a permit's spender), if any.
    pub spender: Option<Address>,
    pub valid_after: U256,
    /// Permit deadline or ERC-3009 `validBefore`.
    pub deadline: U256,
    pub sig: Sig,
}

/// A client payment seen through its scheme.
pub(crate) trait SchemePayment: Send + Sync {
    /// How refusals name payments of this scheme ("EIP2612 permit").
    fn describe(&self) -> &'static str;
    /// The recipient the payment itself names, if it names one (to pick among methods).
    fn pays_to(&self) -> Option<Address>;
    /// The signature, the address that must have made it, and its role for messages.
    fn signed_by(&self) -> (&Sig, Address, &'static str);
    /// Static terms: parties, value, time window. `signer`: the settler's wallet.
    fn check_terms(
        &self,
        priced: &PricedMethod,
        signer: Address,
        now: u64,
        margin: u64,
    ) -> Result<(), Refusal>;
    /// Chain state at acceptance (single use on chain), given the payer's unsettled
    /// payments in that token. Runs under the payer's lock.
    fn check_chain<'a>(
        &'a self,
        chain: &'a Chain,
        token: Address,
        open: &'a [OpenPayment],
    ) -> BoxFuture<'a, Result<(), Refusal>>;
    /// The same check on the payer facts of a block (`facts`) instead of the node, given
    /// the payer's payments open or settled after that block; `None` when the facts cannot
    /// tell (then [`SchemePayment::check_chain`] reads the node).
    fn check_cached(
        &self,
        facts: &crate::facts::Snapshot,
        open: &[OpenPayment],
    ) -> Option<Result<(), Refusal>>;
    /// The ERC-3009 nonce the payer facts are asked about, if the scheme has one.
    fn authorization_nonce(&self) -> Option<alloy::primitives::B256> {
        None
    }
    fn settlement_terms(&self) -> SettlementTerms;
}

/// The registry: the scheme module of each kind of payment.
pub(crate) fn of(payment: &ClientPayment) -> Box<dyn SchemePayment + '_> {
    match payment {
        ClientPayment::Permit(p) => Box::new(permit::PermitPayment(p)),
        ClientPayment::Authorization(a) => Box::new(exact::ExactPayment(a)),
    }
}

/// The registry of the lane's side: the settlement of each scheme's stored payments.
pub(crate) fn settlement(scheme: Scheme) -> &'static dyn SchemeSettlement {
    match scheme {
        Scheme::Permit => &permit::PermitSettlement,
        Scheme::Exact => &exact::ExactSettlement,
    }
}

fn check_value(value: U256, price: U256) -> Result<(), Refusal> {
    if value < price {
        return Err(Refusal::InsufficientValue(format!(
            "payment value {value} is below the price {price}"
        )));
    }
    Ok(())
}

fn check_deadline(field: &str, deadline: U256, now: u64, margin: u64) -> Result<(), Refusal> {
    if deadline <= U256::from(now) {
        return Err(Refusal::Expired(format!(
            "{field} {deadline} has passed (now {now})"
        )));
    }
    if deadline < U256::from(now.saturating_add(margin)) {
        return Err(Refusal::DeadlineTooSoon(format!(
            "{field} {deadline} is less than {margin} s away (now {now}); the settler needs time to settle"
        )));
    }
    Ok(())
}
