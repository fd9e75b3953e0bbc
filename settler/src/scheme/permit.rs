//! EIP-2612 `permit` to the settler's wallet, settled by `permit()` + `transferFrom`.

use std::collections::HashSet;

use alloy::primitives::{Address, U256};
use x402_protocol::payment::{Permit, Sig};
use x402_protocol::settler_api::PricedMethod;
use x402_protocol::Scheme;

use super::{check_deadline, check_value, BoxFuture, SchemePayment, SettlementTerms};
use crate::chain::Chain;
use crate::error::Refusal;
use crate::store::OpenPayment;

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
            let p = self.0;
            let onchain = chain.permit_nonce(token, p.owner).await?;
            let pending: HashSet<U256> = open
                .iter()
                .filter(|o| o.scheme == Scheme::Permit)
                .map(|o| U256::from_be_bytes(o.nonce.0))
                .collect();
            let mut expected = onchain;
            while pending.contains(&expected) {
                expected += U256::from(1u8);
            }
            if p.nonce != expected {
                return Err(Refusal::NonceMismatch {
                    expected_nonce: expected,
                    message: format!(
                        "permit nonce {} is not the next one: expected {expected} (on chain {onchain}, {} unsettled)",
                        p.nonce,
                        expected - onchain
                    ),
                });
            }
            Ok(())
        })
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
