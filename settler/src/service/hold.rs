//! Held payments: accepted durably before the request goes upstream, settled only once the
//! gateway says the upstream answered below 400 (release), voided - never broadcast, the
//! payer not charged - when it failed (void) or when nobody said anything before the hold
//! expired (the gateway crashed, the client went away). See `store::holds` for the states.

use std::time::Duration;

use tokio::sync::watch;
use x402_protocol::settler_api::{HoldOutcome, SettlementState, SettlementStatus};

use super::Service;
use crate::clock::now_ms;
use crate::error::Refusal;
use crate::metrics as m;
use crate::store::{HoldChange, Store};

/// How often expired holds are looked for.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

fn upstream(outcome: &HoldOutcome) -> String {
    match outcome.upstream_status {
        Some(s) => format!("the upstream answered {s}"),
        None => "the gateway said so".into(),
    }
}

impl Service {
    /// Releases held payment `id` to its lane. Releasing a payment released before is
    /// answered with its status; one voided before is 409 `settlement_not_held`.
    pub(crate) async fn release(
        &self,
        id: &str,
        outcome: &HoldOutcome,
    ) -> Result<SettlementStatus, Refusal> {
        match self.store.release(id, now_ms()).await? {
            HoldChange::Changed => {
                let status = self.settlement(id).await?;
                tracing::info!(settlement_id = %id, why = %upstream(outcome), "held payment released for settlement");
                self.wake_lanes(status.network);
                Ok(status)
            }
            HoldChange::NotHeld(s) if s.state == SettlementState::Failed => Err(Refusal::NotHeld {
                settlement_id: id.to_string(),
                state: s.state,
                message: format!(
                    "settlement {id} is not held: it was voided or failed ({}); it will not be charged",
                    s.error.as_deref().unwrap_or("no reason recorded")
                ),
            }),
            HoldChange::NotHeld(s) | HoldChange::OthersHold(s) => Ok(*s),
            HoldChange::Unknown => Err(Refusal::NotFound(format!("no settlement {id}"))),
        }
    }

    /// Voids held payment `id`: never broadcast, the payer not charged. Voiding a payment
    /// voided (or failed) before is answered with its status; one already released is 409
    /// `settlement_not_held` (it is being charged), and so is one that another request holds
    /// too (state `pending`: charged if that one is released).
    pub(crate) async fn void(
        &self,
        id: &str,
        outcome: &HoldOutcome,
    ) -> Result<SettlementStatus, Refusal> {
        let why = format!("voided: {}; not charged", upstream(outcome));
        match self.store.void(id, &why, now_ms()).await? {
            HoldChange::Changed => {
                metrics::counter!(m::SETTLEMENTS, "state" => "voided").increment(1);
                tracing::info!(settlement_id = %id, %why, "held payment voided");
                self.settlement(id).await
            }
            HoldChange::OthersHold(s) => {
                tracing::info!(settlement_id = %id, %why, "held payment: one holder voided, another still holds it");
                Err(Refusal::NotHeld {
                    settlement_id: id.to_string(),
                    state: s.state,
                    message: format!(
                        "settlement {id} is held for another request with the same payment as well: it is charged if that request's upstream answers below 400, voided otherwise"
                    ),
                })
            }
            HoldChange::NotHeld(s) if s.state == SettlementState::Failed => Ok(*s),
            HoldChange::NotHeld(s) => Err(Refusal::NotHeld {
                settlement_id: id.to_string(),
                state: s.state,
                message: format!(
                    "settlement {id} is not held: it was released for settlement before, so it is charged"
                ),
            }),
            HoldChange::Unknown => Err(Refusal::NotFound(format!("no settlement {id}"))),
        }
    }
}

/// Voids expired holds every [`EXPIRY_SWEEP`] until `stop`. Every replica may run it: a
/// void is one conditional UPDATE, so a hold is voided once.
pub(crate) async fn expire_holds(store: Store, mut stop: watch::Receiver<bool>) {
    loop {
        match store.expire_holds(now_ms()).await {
            Ok(ids) => {
                for id in ids {
                    metrics::counter!(m::SETTLEMENTS, "state" => "voided").increment(1);
                    tracing::warn!(settlement_id = %id, "held payment voided: its hold expired without release");
                }
            }
            Err(e) => tracing::warn!(error = %e, "voiding expired holds failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_SWEEP) => {}
            _ = stop.changed() => return,
        }
    }
}
