//! Bounded exposure: the value accepted but not yet settled (payments `pending` or
//! `submitted`) is capped per payer and in total, per network and asset, by the terms'
//! `max_unsettled_per_payer` and `max_unsettled_total` (base units).
//!
//! Both are checked in [`Service::accept`](super::Service):
//! - per payer: under the payer's lock held until the commit (in process; on Postgres also
//!   its advisory lock), with the payer's open payments read in the same session as the
//!   balance check;
//! - in total, on Postgres: under the asset's lock - in process, and
//!   `pg_advisory_xact_lock` on the asset's key taken after the chain reads and held to the
//!   commit - so acceptances of one asset serialise only their last step (sum of open
//!   payments, insert, commit), across replicas too: exact, at the price of one asset's
//!   commits going one at a time;
//! - in total, on SQLite (one process writes the database): against the in-memory estimate
//!   of `totals`, which is never below the real total (each acceptance's value reserved
//!   until its commit, settled payments taken off at the next database read): the cap is
//!   never exceeded, no database read or lock held across the commit is needed, and a
//!   payment near the cap may be refused up to a second before a settlement frees room.

use alloy::primitives::{Address, U256};
use x402_protocol::Network;

use super::Service;
use crate::error::Refusal;
use crate::store::OpenPayment;

/// The caps of one asset, base units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    pub(crate) per_payer: U256,
    pub(crate) total: U256,
}

/// The value of a payer's open payments (pending and submitted).
pub(crate) fn unsettled(open: &[OpenPayment]) -> U256 {
    open.iter()
        .fold(U256::ZERO, |acc, o| acc.saturating_add(o.value))
}

impl Caps {
    /// Refuses a payment taking `payer`'s unsettled value over the per-payer cap.
    pub(crate) fn check_payer(
        &self,
        payer: Address,
        unsettled: U256,
        value: U256,
    ) -> Result<(), Refusal> {
        if unsettled.saturating_add(value) > self.per_payer {
            return Err(Refusal::PayerExposureLimit(format!(
                "payer {payer} has {unsettled} accepted but not yet settled; this payment of {value} would exceed the limit of {} per payer (base units); pay again once earlier payments settle",
                self.per_payer
            )));
        }
        Ok(())
    }

    /// Refuses a payment taking the asset's unsettled total over the total cap.
    pub(crate) fn check_total(&self, total: U256, value: U256) -> Result<(), Refusal> {
        if total.saturating_add(value) > self.total {
            return Err(Refusal::TotalExposureLimit(format!(
                "the settler has {total} accepted but not yet settled in this asset; this payment of {value} would exceed its limit of {} (base units); retry once settlements catch up",
                self.total
            )));
        }
        Ok(())
    }
}

impl Service {
    /// The exposure caps of `asset` on `network` from the terms (`None`: not in the terms,
    /// which the static checks refuse before acceptance).
    pub(crate) fn exposure_caps(&self, network: Network, asset: Address) -> Option<Caps> {
        self.terms.asset(network, asset).map(|a| Caps {
            per_payer: a.max_unsettled_per_payer,
            total: a.max_unsettled_total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::B256;
    use x402_protocol::settler_api::SettlementState;
    use x402_protocol::Scheme;

    fn open(value: u64, state: SettlementState) -> OpenPayment {
        OpenPayment {
            scheme: Scheme::Exact,
            state,
            value: U256::from(value),
            nonce: B256::ZERO,
            pay_to: Address::ZERO,
            transfer_tx: None,
        }
    }

    #[test]
    fn caps_are_inclusive_and_messages_carry_the_amounts() {
        let caps = Caps {
            per_payer: U256::from(30u64),
            total: U256::from(100u64),
        };
        let payer = Address::repeat_byte(1);
        let u = unsettled(&[
            open(10, SettlementState::Pending),
            open(10, SettlementState::Submitted),
        ]);
        assert_eq!(u, U256::from(20u64));
        assert!(caps.check_payer(payer, u, U256::from(10u64)).is_ok());
        let e = caps.check_payer(payer, u, U256::from(11u64)).unwrap_err();
        assert_eq!(e.code(), "payer_exposure_limit");
        assert!(
            e.message().contains(" 20 ") && e.message().contains("30"),
            "{e}"
        );
        assert!(caps
            .check_total(U256::from(90u64), U256::from(10u64))
            .is_ok());
        let e = caps
            .check_total(U256::from(91u64), U256::from(10u64))
            .unwrap_err();
        assert_eq!(e.code(), "total_exposure_limit");
        assert!(
            e.message().contains("91") && e.message().contains("100"),
            "{e}"
        );
        // No overflow at the edges.
        assert!(caps.check_total(U256::MAX, U256::MAX).is_err());
    }
}
