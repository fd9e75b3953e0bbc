//! Preflight: whether a pending payment can be signed now, from the chain's state. The rules
//! are pure ([`first_check`], [`with_allowance`], [`with_inflight`]); [`Lane::preflight`] reads
//! what each step asks for, only when it asks (the allowance only for a consumed permit nonce,
//! the in-flight permits only for a nonce ahead of the chain's).

use alloy::primitives::U256;
use x402_protocol::Scheme;

use super::{Lane, LaneChain, LaneError};
use crate::error::ChainError;
use crate::store::PaymentRow;

/// Signatures closer than this (seconds) to their deadline are not sent any more: they would
/// likely expire in the mempool.
const DEADLINE_MARGIN_SECS: u8 = 5;

/// The chain state a payment's preflight starts from, read for the whole batch at once.
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

/// The first step: a decision, or what to read next.
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

pub(crate) fn first_check(p: &PaymentRow, facts: ChainFacts, now_secs: u64) -> Check {
    let now = U256::from(now_secs);
    let too_late = p.p.deadline <= now + U256::from(DEADLINE_MARGIN_SECS);
    match p.p.scheme {
        Scheme::Permit => {
            if too_late {
                return Check::Done(Preflight::Fail {
                    reason: format!("permit deadline {} passed before settlement", p.p.deadline),
                    release_key: true,
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
        Scheme::Exact => {
            if too_late {
                return Check::Done(Preflight::Fail {
                    reason: format!(
                        "authorization validBefore {} passed before settlement",
                        p.p.deadline
                    ),
                    release_key: false,
                });
            }
            if matches!(facts, ChainFacts::AuthorizationUsed(true)) {
                return Check::Done(Preflight::Fail {
                    reason: "authorization nonce was used on chain by another transaction".into(),
                    release_key: false,
                });
            }
            Check::Done(Preflight::Ready)
        }
    }
}

/// After [`Check::NeedAllowance`]: `allowance` of the payer to the settler's wallet.
pub(crate) fn with_allowance(p: &PaymentRow, onchain: U256, allowance: U256) -> Preflight {
    if allowance >= p.p.value {
        return Preflight::TransferOnly;
    }
    Preflight::Fail {
        reason: format!(
            "permit nonce {} was consumed on chain by another transaction (on-chain nonce {onchain}) and the allowance {allowance} does not cover {}",
            p.permit_nonce(),
            p.p.value
        ),
        release_key: false,
    }
}

/// After [`Check::NeedInflight`]: `inflight`, this payer's permit nonces >= `onchain` the
/// settler has submitted or settled.
pub(crate) fn with_inflight(p: &PaymentRow, onchain: U256, inflight: &[U256]) -> Preflight {
    if nonces_in_flight(onchain, p.permit_nonce(), inflight) {
        Preflight::Ready
    } else {
        Preflight::Defer(format!(
            "waiting for permit nonce {onchain} of {} to be used first",
            p.p.payer
        ))
    }
}

/// Every nonce in `onchain..nonce` is in `inflight`.
pub(crate) fn nonces_in_flight(onchain: U256, nonce: U256, inflight: &[U256]) -> bool {
    // The count bounds the walk: a gap wider than what is in flight cannot be covered.
    if nonce - onchain > U256::from(inflight.len()) {
        return false;
    }
    let mut n = onchain;
    while n < nonce {
        if !inflight.contains(&n) {
            return false;
        }
        n += U256::from(1u8);
    }
    true
}

impl Lane {
    /// The facts of [`ChainFacts`] for `p` (run concurrently for a batch).
    pub(super) async fn chain_facts(
        chain: &dyn LaneChain,
        p: &PaymentRow,
    ) -> Result<ChainFacts, ChainError> {
        Ok(match p.p.scheme {
            Scheme::Permit => {
                ChainFacts::PermitNonce(chain.permit_nonce(p.p.asset, p.p.payer).await?)
            }
            Scheme::Exact => ChainFacts::AuthorizationUsed(
                chain
                    .authorization_used(p.p.asset, p.p.payer, p.p.nonce)
                    .await?,
            ),
        })
    }

    pub(super) async fn preflight(
        &self,
        p: &PaymentRow,
        facts: ChainFacts,
        now_secs: u64,
    ) -> Result<Preflight, LaneError> {
        Ok(match first_check(p, facts, now_secs) {
            Check::Done(d) => d,
            Check::NeedAllowance { onchain } => {
                let allowance = self
                    .chain
                    .allowance(p.p.asset, p.p.payer, self.chain.signer())
                    .await?;
                with_allowance(p, onchain, allowance)
            }
            Check::NeedInflight { onchain } => {
                let inflight = self
                    .store
                    .submitted_permit_nonces(p.p.network.chain_id, p.p.asset, p.p.payer, onchain)
                    .await?;
                with_inflight(p, onchain, &inflight)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane::fixtures::payment;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn permit_at_the_chains_nonce_is_ready_ahead_asks_for_inflight_behind_for_allowance() {
        let p = payment("a", 1, Scheme::Permit, 3);
        assert_eq!(
            first_check(&p, ChainFacts::PermitNonce(U256::from(3)), NOW),
            Check::Done(Preflight::Ready)
        );
        assert_eq!(
            first_check(&p, ChainFacts::PermitNonce(U256::from(1)), NOW),
            Check::NeedInflight {
                onchain: U256::from(1)
            }
        );
        assert_eq!(
            first_check(&p, ChainFacts::PermitNonce(U256::from(4)), NOW),
            Check::NeedAllowance {
                onchain: U256::from(4)
            }
        );
        assert!(matches!(
            first_check(&p, ChainFacts::AuthorizationUsed(false), NOW),
            Check::Done(Preflight::Defer(_))
        ));
    }

    #[test]
    fn expired_signatures_fail_and_only_a_dead_permit_releases_its_key() {
        let mut p = payment("a", 1, Scheme::Permit, 3);
        p.p.deadline = U256::from(NOW + 5);
        let Check::Done(Preflight::Fail {
            reason,
            release_key: true,
        }) = first_check(&p, ChainFacts::PermitNonce(U256::from(3)), NOW)
        else {
            panic!("permit past its deadline")
        };
        assert!(reason.contains("deadline"), "{reason}");
        p.p.deadline = U256::from(NOW + 6);
        assert_eq!(
            first_check(&p, ChainFacts::PermitNonce(U256::from(3)), NOW),
            Check::Done(Preflight::Ready)
        );
        let mut e = payment("e", 1, Scheme::Exact, 0);
        e.p.deadline = U256::from(NOW);
        assert!(matches!(
            first_check(&e, ChainFacts::AuthorizationUsed(false), NOW),
            Check::Done(Preflight::Fail {
                release_key: false,
                ..
            })
        ));
    }

    #[test]
    fn used_authorization_fails() {
        let e = payment("e", 1, Scheme::Exact, 0);
        assert_eq!(
            first_check(&e, ChainFacts::AuthorizationUsed(false), NOW),
            Check::Done(Preflight::Ready)
        );
        assert!(matches!(
            first_check(&e, ChainFacts::AuthorizationUsed(true), NOW),
            Check::Done(Preflight::Fail {
                release_key: false,
                ..
            })
        ));
    }

    #[test]
    fn consumed_permit_nonce_settles_by_allowance_or_fails() {
        let p = payment("a", 1, Scheme::Permit, 3);
        assert_eq!(
            with_allowance(&p, U256::from(4), p.p.value),
            Preflight::TransferOnly
        );
        let Preflight::Fail {
            reason,
            release_key: false,
        } = with_allowance(&p, U256::from(4), p.p.value - U256::from(1))
        else {
            panic!("allowance short")
        };
        assert!(reason.contains("permit nonce 3 was consumed"), "{reason}");
    }

    #[test]
    fn a_permit_ahead_waits_until_every_earlier_nonce_is_in_flight() {
        let p = payment("a", 1, Scheme::Permit, 3);
        let n = |v: &[u64]| v.iter().map(|&x| U256::from(x)).collect::<Vec<_>>();
        assert_eq!(
            with_inflight(&p, U256::from(1), &n(&[1, 2])),
            Preflight::Ready
        );
        assert_eq!(
            with_inflight(&p, U256::from(1), &n(&[2, 1, 7])),
            Preflight::Ready
        );
        assert!(matches!(
            with_inflight(&p, U256::from(1), &n(&[2])),
            Preflight::Defer(_)
        ));
        assert!(
            matches!(
                with_inflight(&p, U256::from(0), &n(&[1, 2, 5])),
                Preflight::Defer(_)
            ),
            "nonce 0 is missing"
        );
        assert!(nonces_in_flight(U256::from(3), U256::from(3), &[]));
    }
}
