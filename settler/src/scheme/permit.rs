//! EIP-2612 `permit` to the settler's wallet, settled by `permit()` + `transferFrom`.

use std::collections::HashSet;

use alloy::primitives::{Address, Bytes, U256};
use x402_protocol::payment::{Permit, Sig};
use x402_protocol::settler_api::PricedMethod;
use x402_protocol::Scheme;

use super::{
    check_deadline, check_value, BoxFuture, ChainFacts, Check, FactsRead, FailCause, Preflight,
    SchemePayment, SchemeSettlement, SettlementTerms, DEADLINE_MARGIN_SECS, PERMIT, TRANSFER_FROM,
};
use crate::chain::{self, Chain};
use crate::error::Refusal;
use crate::store::{NewPayment, OpenPayment, PaymentRow};

pub(super) struct PermitPayment<'a>(pub(super) &'a Permit);

impl SchemePayment for PermitPayment<'_> {
    fn describe(&self) -> &'static str {
        "EIP2612 permit"
    }

    fn pays_to(&self) -> Option<Address> {
        // A permit names its spender, not the recipient.
        None
    }

    fn signed_by(&self) -> (&Sig, Address, &'static str) {
        (&self.0.sig, self.0.owner, "owner")
    }

    fn check_terms(
        &self,
        priced: &PricedMethod,
        signer: Address,
        now: u64,
        margin: u64,
    ) -> Result<(), Refusal> {
        let p = self.0;
        if p.spender != signer {
            return Err(Refusal::SpenderMismatch(format!(
                "permit spender {} is not the settler's wallet {signer}",
                p.spender
            )));
        }
        if let Some(expected) = priced.method.spender {
            if p.spender != expected {
                return Err(Refusal::SpenderMismatch(format!(
                    "permit spender {} is not the route's spender {expected}",
                    p.spender
                )));
            }
        }
        check_value(p.value, priced.amount)?;
        check_deadline("deadline", p.deadline, now, margin)
    }

    /// The permit's nonce must be the next one: the owner's on-chain nonce, moved past the
    /// nonces of this owner's permits still unsettled here (they will use them first).
    fn check_chain<'a>(
        &'a self,
        chain: &'a Chain,
        token: Address,
        open: &'a [OpenPayment],
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let onchain = chain.permit_nonce(token, self.0.owner).await?;
            self.judge_nonce(onchain, open)
        })
    }

    fn check_cached(
        &self,
        facts: &crate::facts::Snapshot,
        open: &[OpenPayment],
    ) -> Option<Result<(), Refusal>> {
        facts.permit_nonce.map(|n| self.judge_nonce(n, open))
    }

    fn settlement_terms(&self) -> SettlementTerms {
        // The permit's own spender (checked to be this settler's wallet): the lane of that
        // wallet, and no other, can settle it.
        SettlementTerms {
            spender: Some(self.0.spender),
            valid_after: U256::ZERO,
            deadline: self.0.deadline,
            sig: self.0.sig,
        }
    }
}

impl PermitPayment<'_> {
    /// The permit's nonce against the owner's on-chain nonce `onchain` moved past the
    /// nonces of the owner's permits still to settle (`open`).
    fn judge_nonce(&self, onchain: U256, open: &[OpenPayment]) -> Result<(), Refusal> {
        let p = self.0;
        let pending: HashSet<U256> = open
            .iter()
            .filter(|o| o.scheme == Scheme::Permit)
            .map(|o| U256::from_be_bytes(o.nonce.0))
            .collect();
        let mut expected = onchain;
        while pending.contains(&expected) {
            // At the top of uint256 no nonce follows (the contract's would overflow too).
            let Some(next) = expected.checked_add(U256::from(1u8)) else {
                break;
            };
            expected = next;
        }
        if p.nonce != expected {
            return Err(Refusal::NonceMismatch {
                expected_nonce: expected,
                message: format!(
                    "permit nonce {} is not the next one: expected {expected} (on chain {onchain}, {} unsettled)",
                    p.nonce,
                    expected.saturating_sub(onchain)
                ),
            });
        }
        Ok(())
    }
}

/// The lane's side of EIP-2612: `permit()` + `transferFrom`, in the owner's nonce order.
pub(super) struct PermitSettlement;

impl SchemeSettlement for PermitSettlement {
    fn transfer_call(&self) -> &'static str {
        "transferFrom"
    }

    fn facts_read(&self, p: &NewPayment) -> FactsRead {
        FactsRead::PermitNonce {
            token: p.asset,
            owner: p.payer,
        }
    }

    fn first_check(&self, p: &PaymentRow, facts: ChainFacts, now_secs: u64) -> Check {
        let now = U256::from(now_secs);
        if p.p.deadline <= now + U256::from(DEADLINE_MARGIN_SECS) {
            return Check::Done(Preflight::Fail {
                reason: format!("permit deadline {} passed before settlement", p.p.deadline),
                release_key: true,
                cause: FailCause::DeadlinePassed,
            });
        }
        let ChainFacts::PermitNonce(onchain) = facts else {
            return Check::Done(Preflight::Defer("internal: wrong facts".into()));
        };
        let nonce = p.permit_nonce();
        if nonce < onchain {
            // Used by someone else's permit() call (maybe this very signature): the
            // allowance may still cover the transfer.
            Check::NeedAllowance { onchain }
        } else if nonce > onchain {
            // Earlier permits of this payer must be in flight ahead of this one.
            Check::NeedInflight { onchain }
        } else {
            Check::Done(Preflight::Ready)
        }
    }

    fn settlement_calls(
        &self,
        p: &PaymentRow,
        signer: Address,
        with_permit: bool,
    ) -> Vec<(&'static str, Bytes)> {
        let permit = Permit {
            network: p.p.network,
            token: p.p.asset,
            owner: p.p.payer,
            spender: p.p.spender.unwrap_or(signer),
            value: p.p.value,
            nonce: p.permit_nonce(),
            deadline: p.p.deadline,
            sig: p.p.sig,
        };
        let transfer = (
            TRANSFER_FROM,
            chain::transfer_from_call(p.p.payer, p.p.pay_to, p.p.value),
        );
        if with_permit {
            vec![(PERMIT, chain::permit_call(&permit)), transfer]
        } else {
            vec![transfer]
        }
    }

    fn retry_possible(&self, permit_ok: bool) -> bool {
        !permit_ok
    }
}
