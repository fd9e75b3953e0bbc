//! ERC-3009 `transferWithAuthorization` straight to `pay_to` (x402's `exact` EVM scheme).

use alloy::primitives::{Address, U256};
use x402_protocol::payment::{Authorization, Sig};
use x402_protocol::settler_api::PricedMethod;

use super::{check_deadline, check_value, BoxFuture, SchemePayment, SettlementTerms};
use crate::chain::Chain;
use crate::error::Refusal;
use crate::store::OpenPayment;

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
        if a.valid_after > U256::from(now) {
            return Err(Refusal::NotYetValid(format!(
                "validAfter {} is in the future (now {now})",
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
                return Err(Refusal::NonceAlreadyUsed(format!(
                    "authorization nonce {} of {} is already used on chain",
                    a.nonce, a.from
                )));
            }
            Ok(())
        })
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
