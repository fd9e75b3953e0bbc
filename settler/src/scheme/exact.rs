//! ERC-3009 `transferWithAuthorization` straight to `pay_to` (x402's `exact` EVM scheme).

use alloy::primitives::{Address, Bytes, U256};
use x402_protocol::payment::{Authorization, Sig};
use x402_protocol::settler_api::PricedMethod;

use super::{
    check_deadline, check_value, BoxFuture, ChainFacts, Check, FactsRead, FailCause, Preflight,
    SchemePayment, SchemeSettlement, SettlementTerms, DEADLINE_MARGIN_SECS,
    TRANSFER_WITH_AUTHORIZATION,
};
use crate::chain::{self, Chain};
use crate::error::Refusal;
use crate::store::{NewPayment, OpenPayment, PaymentRow};

pub(super) struct ExactPayment<'a>(pub(super) &'a Authorization);

impl SchemePayment for ExactPayment<'_> {
    fn describe(&self) -> &'static str {
        "ERC3009 authorization"
    }

    fn pays_to(&self) -> Option<Address> {
        Some(self.0.to)
    }

    fn signed_by(&self) -> (&Sig, Address, &'static str) {
        (&self.0.sig, self.0.from, "authorizer")
    }

    fn check_terms(
        &self,
        priced: &PricedMethod,
        _signer: Address,
        now: u64,
        margin: u64,
    ) -> Result<(), Refusal> {
        let a = self.0;
        let method = &priced.method;
        if a.to != method.pay_to {
            return Err(Refusal::RecipientMismatch(format!(
                "authorization pays {}, the route's pay_to is {}",
                a.to, method.pay_to
            )));
        }
        check_value(a.value, priced.amount)?;
        // Strictly before now: the contract requires block.timestamp > validAfter, and the
        // block that settles it is not earlier than now.
        if a.valid_after >= U256::from(now) {
            return Err(Refusal::NotYetValid(format!(
                "validAfter {} is not before now ({now}): the authorization is not valid yet",
                a.valid_after
            )));
        }
        check_deadline("validBefore", a.valid_before, now, margin)
    }

    /// The authorization's nonce must be unused on chain (unsettled ones here are caught by
    /// the store's single-use key before this).
    fn check_chain<'a>(
        &'a self,
        chain: &'a Chain,
        token: Address,
        _open: &'a [OpenPayment],
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let a = self.0;
            if chain.authorization_used(token, a.from, a.nonce).await? {
                return Err(self.nonce_used());
            }
            Ok(())
        })
    }

    fn check_cached(
        &self,
        facts: &crate::facts::Snapshot,
        _open: &[OpenPayment],
    ) -> Option<Result<(), Refusal>> {
        // The nonce is new with each payment: the facts know it used only when a log of it
        // was applied (acceptance asks the node as well where its caller wants that).
        Some(if facts.nonce_used {
            Err(self.nonce_used())
        } else {
            Ok(())
        })
    }

    fn authorization_nonce(&self) -> Option<alloy::primitives::B256> {
        Some(self.0.nonce)
    }

    fn settlement_terms(&self) -> SettlementTerms {
        SettlementTerms {
            spender: None,
            valid_after: self.0.valid_after,
            deadline: self.0.valid_before,
            sig: self.0.sig,
        }
    }
}

impl ExactPayment<'_> {
    fn nonce_used(&self) -> Refusal {
        Refusal::NonceAlreadyUsed(format!(
            "authorization nonce {} of {} is already used on chain",
            self.0.nonce, self.0.from
        ))
    }
}

/// The lane's side of ERC-3009: one `transferWithAuthorization`.
pub(super) struct ExactSettlement;

impl SchemeSettlement for ExactSettlement {
    fn transfer_call(&self) -> &'static str {
        "transferWithAuthorization"
    }

    fn facts_read(&self, p: &NewPayment) -> FactsRead {
        FactsRead::AuthorizationState {
            token: p.asset,
            from: p.payer,
            nonce: p.nonce,
        }
    }

    fn first_check(&self, p: &PaymentRow, facts: ChainFacts, now_secs: u64) -> Check {
        let now = U256::from(now_secs);
        if p.p.deadline <= now + U256::from(DEADLINE_MARGIN_SECS) {
            return Check::Done(Preflight::Fail {
                reason: format!(
                    "authorization validBefore {} passed before settlement",
                    p.p.deadline
                ),
                release_key: false,
                cause: FailCause::DeadlinePassed,
            });
        }
        if matches!(facts, ChainFacts::AuthorizationUsed(true)) {
            // Used or cancelled by someone else: its event says which.
            return Check::NeedAuthorizationEvent;
        }
        Check::Done(Preflight::Ready)
    }

    fn settlement_calls(
        &self,
        p: &PaymentRow,
        _signer: Address,
        _with_permit: bool,
    ) -> Vec<(&'static str, Bytes)> {
        let auth = Authorization {
            network: p.p.network,
            token: p.p.asset,
            from: p.p.payer,
            to: p.p.pay_to,
            value: p.p.value,
            valid_after: p.p.valid_after,
            valid_before: p.p.deadline,
            nonce: p.p.nonce,
            sig: p.p.sig,
        };
        vec![(
            TRANSFER_WITH_AUTHORIZATION,
            chain::transfer_with_authorization_call(&auth),
        )]
    }

    fn retry_possible(&self, _permit_ok: bool) -> bool {
        false
    }
}
