//! Renewal of an access token once its payment has settled (`POST /v1/tokens/renew`).
//!
//! A route may ask for a short token lifetime while its payment is unsettled; once the
//! settlement is `settled` the token is exchanged for one with the same claims (same `jti`,
//! `sub`, `route`, `amount`, `asset`, `network`) and the route's normal lifetime, counted
//! from now. Nothing is paid or stored: the claims come from the stored payment.

use x402_protocol::settler_api::{Requirement, SettlementState, TokenResponse, RENEW_GRACE_SECS};
use x402_protocol::token::VerifiedToken;

use super::Service;
use crate::error::Refusal;
use crate::store::PaymentRow;

impl Service {
    /// Checks `token` (this settler's signature, not expired more than
    /// [`RENEW_GRACE_SECS`] ago, for `requirement.route`) and renews it if its settlement
    /// is `settled`: 409 `settlement_pending` while it is pending or submitted, 403
    /// `payment_failed` once it failed.
    pub(crate) async fn renew_token(
        &self,
        token: &str,
        requirement: &Requirement,
        now: u64,
    ) -> Result<TokenResponse, Refusal> {
        let verified = self.verify_own_token(token, now)?;
        let claims = &verified.claims;
        if claims.route != requirement.route {
            return Err(Refusal::InvalidToken(format!(
                "the token is for route {:?}, the requirement for route {:?}",
                claims.route, requirement.route
            )));
        }
        let Some(row) = self.store.get(&claims.jti).await? else {
            return Err(Refusal::NotFound(format!("no settlement {}", claims.jti)));
        };
        check_claims_match(&verified, &row)?;
        let Some(priced) = requirement
            .accepts
            .iter()
            .find(|p| p.method.network == row.p.network && p.method.asset.address == row.p.asset)
        else {
            return Err(Refusal::InvalidRequest(format!(
                "the requirement has no method on {} with token {} (the token's)",
                row.p.network, row.p.asset
            )));
        };
        if row.p.value < priced.amount {
            return Err(Refusal::InvalidToken(format!(
                "the token paid {} base units, the route's price is now {}",
                row.p.value, priced.amount
            )));
        }
        let ttl = self.token_ttl(requirement, &priced.method);
        // Only a token shorter-lived than the renewal is renewed: a renewed token (its `exp`
        // at least `ttl` after the payment) is not, so one payment buys at most its short
        // token, the grace and one full lifetime.
        let created = u64::try_from(row.p.created_ms / 1000).unwrap_or(0);
        let old_exp = u64::try_from(verified.expires_at).unwrap_or(0);
        if old_exp.saturating_sub(created) >= ttl {
            return Err(Refusal::InvalidToken(format!(
                "the token already lives {} s from its payment, not less than the renewal's {ttl} s: only a short-lived token is renewed",
                old_exp.saturating_sub(created)
            )));
        }
        let id = row.p.id.clone();
        match row.state {
            SettlementState::Settled => {}
            SettlementState::Pending | SettlementState::Submitted => {
                return Err(Refusal::SettlementPending {
                    message: format!(
                        "settlement {id} is {} (not settled yet): renew again later",
                        state_name(row.state)
                    ),
                    settlement_id: id,
                    state: row.state,
                });
            }
            SettlementState::Failed => {
                return Err(Refusal::PaymentFailed {
                    message: format!(
                        "settlement {id} failed ({}): the token is not renewed",
                        row.error.as_deref().unwrap_or("no reason recorded")
                    ),
                    settlement_id: id,
                });
            }
        }
        let renewed = self.minter.mint(&row.p, now, ttl);
        tracing::info!(settlement_id = %id, payer = %row.p.payer, route = %row.p.route, ttl, "token renewed after settlement");
        Ok(renewed)
    }

    /// The token verified with this settler's own key, expired at most the grace ago.
    fn verify_own_token(&self, token: &str, now: u64) -> Result<VerifiedToken, Refusal> {
        let keys = self.minter.key_set();
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let verified = keys
            .verify(token, now, RENEW_GRACE_SECS as i64)
            .map_err(|e| {
                Refusal::InvalidToken(format!(
                    "{e} (renewal takes a token of this settler, valid or expired at most {RENEW_GRACE_SECS} s ago)"
                ))
            })?;
        if verified.claims.iss != self.minter.issuer {
            return Err(Refusal::InvalidToken(format!(
                "the token's issuer {:?} is not this settler's",
                verified.claims.iss
            )));
        }
        Ok(verified)
    }
}

/// The token's claims are the stored payment's (a token of this key always is; checked so
/// a renewal can never widen what was paid).
fn check_claims_match(v: &VerifiedToken, row: &PaymentRow) -> Result<(), Refusal> {
    let c = &v.claims;
    let p = &row.p;
    if c.sub != p.payer
        || c.route != p.route
        || c.amount != p.value
        || c.asset != p.asset
        || c.network != p.network
    {
        return Err(Refusal::InvalidToken(format!(
            "the token's claims do not match settlement {}",
            p.id
        )));
    }
    Ok(())
}

fn state_name(s: SettlementState) -> &'static str {
    match s {
        SettlementState::Pending => "pending",
        SettlementState::Submitted => "submitted",
        SettlementState::Settled => "settled",
        SettlementState::Failed => "failed",
    }
}
