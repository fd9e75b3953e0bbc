//! The broadcast step: sends stored transactions, in the order they were signed, and re-sends
//! those still without receipt after the rebroadcast interval. A broadcast never changes what
//! is stored except the time it was last sent: the bytes are the stored ones.

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

use super::decide;
use super::{Lane, LaneError};
use crate::chain::SendOutcome;
use crate::clock::now_ms;
use crate::metrics as m;
use crate::store::TxRow;

impl Lane {
    /// Sends stored transactions one after the other, in the order they were signed.
    pub(super) async fn broadcast_loop(
        &self,
        mut rx: UnboundedReceiver<TxRow>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), LaneError> {
        loop {
            tokio::select! {
                t = rx.recv() => match t {
                    Some(t) => {
                        self.broadcast(&t).await?;
                        metrics::counter!(m::TXS_SENT, "kind" => t.kind.clone()).increment(1);
                    }
                    None => return Ok(()),
                },
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    pub(super) async fn broadcast(&self, t: &TxRow) -> Result<(), LaneError> {
        match self.chain.broadcast(&t.raw).await {
            SendOutcome::Accepted => {}
            SendOutcome::AlreadyKnown(msg) => {
                tracing::debug!(hash = %t.hash, nonce = t.nonce, msg, "transaction already known");
                if decide::broadcast_wants_recheck(&msg) {
                    // Mined already, or its nonce went to another transaction: look now.
                    self.recheck.notify_one();
                }
            }
            SendOutcome::Error(msg) => {
                tracing::warn!(hash = %t.hash, nonce = t.nonce, msg, "broadcast failed; will retry")
            }
        }
        self.store.mark_broadcast(t.hash, now_ms()).await?;
        Ok(())
    }

    pub(super) async fn rebroadcast_stale(&self) -> Result<(), LaneError> {
        let now = now_ms();
        for t in self
            .store
            .unconfirmed_txs(self.chain.network().chain_id, self.chain.signer())
            .await?
        {
            if decide::due_for_rebroadcast(t.last_broadcast_ms, now, self.cfg.rebroadcast) {
                tracing::info!(hash = %t.hash, nonce = t.nonce, "re-broadcasting unconfirmed transaction");
                self.broadcast(&t).await?;
            }
        }
        Ok(())
    }
}
