//! Preflight: whether a pending payment can be signed now, from the chain's state. The rules
//! are pure ([`first_check`], [`with_allowance`], [`with_inflight`]); [`Lane::preflight`] reads
//! what each step asks for, only when it asks (the allowance only for a consumed permit nonce,
//! the in-flight permits only for a nonce ahead of the chain's).

use alloy::primitives::{Address, B256, U256};

use super::decide;
use super::io::{AuthorizationEvent, Receipt};
use super::{Lane, LaneChain, LaneError};
use crate::error::ChainError;
use crate::scheme::{self, FactsRead, FailCause};
use crate::store::PaymentRow;

pub(crate) use crate::scheme::{ChainFacts, Check, Preflight};

/// The first step, the scheme's ([`crate::scheme::SchemeSettlement::first_check`]).
pub(crate) fn first_check(p: &PaymentRow, facts: ChainFacts, now_secs: u64) -> Check {
    scheme::settlement(p.p.scheme).first_check(p, facts, now_secs)
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
        cause: FailCause::PermitNonceSpent,
    }
}

/// After [`Check::NeedAuthorizationEvent`]: the authorization's event and, for
/// `AuthorizationUsed`, the receipt of the transaction that used it.
pub(crate) fn with_authorization_event(
    p: &PaymentRow,
    event: Option<AuthorizationEvent>,
    used_by: Option<&Receipt>,
) -> Preflight {
    match event {
        Some(AuthorizationEvent::Canceled { tx }) => Preflight::Fail {
            reason: format!("the payer cancelled the authorization on chain (transaction {tx})"),
            release_key: false,
            cause: FailCause::AuthorizationCanceled,
        },
        Some(AuthorizationEvent::Used { tx, block }) => match used_by {
            Some(r) if decide::moved_funds(r, &p.p) => Preflight::SettledBy { tx, block },
            _ => Preflight::Fail {
                reason: format!("the authorization was used on chain by transaction {tx}, which did not transfer the value to pay_to"),
                release_key: false,
                cause: FailCause::AuthorizationUsedElsewhere,
            },
        },
        None => Preflight::Fail {
            reason: "authorization nonce was used on chain by another transaction (its event is not within the blocks searched)".into(),
            release_key: false,
            cause: FailCause::AuthorizationUsedElsewhere,
        },
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
    /// The answer to one [`FactsRead`] (run concurrently for a batch, once per distinct read:
    /// one owner's permits share their `nonces(owner)`).
    pub(super) async fn chain_facts(
        chain: &dyn LaneChain,
        read: FactsRead,
    ) -> Result<ChainFacts, ChainError> {
        Ok(match read {
            FactsRead::PermitNonce { token, owner } => {
                ChainFacts::PermitNonce(chain.permit_nonce(token, owner).await?)
            }
            FactsRead::AuthorizationState { token, from, nonce } => {
                ChainFacts::AuthorizationUsed(chain.authorization_used(token, from, nonce).await?)
            }
        })
    }

    /// `placed`: (token, owner, permit nonce) of the permits placed in the batch being built
    /// (not stored yet, executed ahead of this payment).
    pub(super) async fn preflight(
        &self,
        p: &PaymentRow,
        facts: ChainFacts,
        now_secs: u64,
        placed: &[(Address, Address, U256)],
    ) -> Result<Preflight, LaneError> {
        Ok(match first_check(p, facts, now_secs) {
            Check::Done(d) => d,
            Check::NeedAllowance { onchain } => {
                // The permit's spender: the settler's wallet, or the batch contract.
                let spender = p.p.spender.unwrap_or(self.chain.signer());
                let allowance = self.chain.allowance(p.p.asset, p.p.payer, spender).await?;
                with_allowance(p, onchain, allowance)
            }
            Check::NeedInflight { onchain } => {
                // Permits of this payer placed earlier in the batch being built go first too.
                let mut inflight: Vec<U256> = placed
                    .iter()
                    .filter(|(a, o, _)| *a == p.p.asset && *o == p.p.payer)
                    .map(|(_, _, n)| *n)
                    .collect();
                // Those alone may cover the gap (one payer's permits in one round): then the
                // stored ones, a superset's worth, need no read.
                if !nonces_in_flight(onchain, p.permit_nonce(), &inflight) {
                    inflight.extend(
                        self.store
                            .submitted_permit_nonces(
                                p.p.network.chain_id,
                                p.p.asset,
                                p.p.payer,
                                onchain,
                                self.chain.signer(),
                            )
                            .await?,
                    );
                }
                with_inflight(p, onchain, &inflight)
            }
            Check::NeedAuthorizationEvent => self.authorization_fate(p).await?,
        })
    }

    /// A re-queued payment whose permit nonce is spent: one of this settler's own batch
    /// transactions may have executed it after all (taken as lost while its receipt was on
    /// the way). That transaction and its block, if its item moved the funds.
    pub(super) async fn paid_by_our_batch(
        &self,
        p: &PaymentRow,
    ) -> Result<Option<(B256, u64)>, LaneError> {
        let mut mined = Vec::new();
        for (hash, idx) in self.store.batch_attempts_of(&p.p.id).await? {
            if let Some(r) = self.chain.receipt(hash).await? {
                mined.push((hash, r, idx));
            }
        }
        Ok(super::batch::paid_in_batch(&mined, &p.p))
    }

    /// An ERC-3009 authorization used on chain: settled by someone else's transaction (its
    /// receipt shows the transfer to pay_to), or cancelled, or used elsewhere.
    pub(super) async fn authorization_fate(&self, p: &PaymentRow) -> Result<Preflight, LaneError> {
        let event = self
            .chain
            .authorization_event(p.p.asset, p.p.payer, p.p.nonce)
            .await?;
        let receipt = match event {
            Some(AuthorizationEvent::Used { tx, .. }) => self.chain.receipt(tx).await?,
            _ => None,
        };
        Ok(with_authorization_event(p, event, receipt.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::lane::payment;
    use x402_protocol::Scheme;

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
            ..
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
        // Used: by a front-run transfer to pay_to, or cancelled? Its event says.
        assert_eq!(
            first_check(&e, ChainFacts::AuthorizationUsed(true), NOW),
            Check::NeedAuthorizationEvent
        );
        let tx = alloy::primitives::B256::repeat_byte(7);
        let paid = Receipt {
            success: true,
            block_number: Some(9),
            transfers: vec![crate::chain::TransferLog {
                token: e.p.asset,
                from: e.p.payer,
                to: e.p.pay_to,
                value: e.p.value,
            }],
            gas_used: 1,
            items: vec![],
        };
        assert_eq!(
            with_authorization_event(
                &e,
                Some(AuthorizationEvent::Used { tx, block: 9 }),
                Some(&paid)
            ),
            Preflight::SettledBy { tx, block: 9 }
        );
        let elsewhere = Receipt {
            transfers: vec![],
            ..paid.clone()
        };
        assert!(matches!(
            with_authorization_event(
                &e,
                Some(AuthorizationEvent::Used { tx, block: 9 }),
                Some(&elsewhere)
            ),
            Preflight::Fail {
                cause: FailCause::AuthorizationUsedElsewhere,
                ..
            }
        ));
        let Preflight::Fail { cause, .. } =
            with_authorization_event(&e, Some(AuthorizationEvent::Canceled { tx }), None)
        else {
            panic!("a cancelled authorization fails")
        };
        assert_eq!(cause, FailCause::AuthorizationCanceled);
        assert!(cause.payer_caused());
        assert!(matches!(
            with_authorization_event(&e, None, None),
            Preflight::Fail {
                cause: FailCause::AuthorizationUsedElsewhere,
                ..
            }
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
            cause: FailCause::PermitNonceSpent,
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
