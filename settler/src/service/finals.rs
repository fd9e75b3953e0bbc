//! Waiting for settlements to end (`settled` or `failed`): the facilitator's `/settle` and
//! `GET /v1/settlements/{id}?wait_ms=`.
//!
//! Every waiter of this process shares one poll loop that reads all watched payments in one
//! query per [`POLL`], so a thousand waiters cost the database what one does. The loop runs
//! only while someone waits. Waiters that are not the gateway or a facilitator (the status
//! read is public) are capped at [`MAX_PUBLIC_WAITERS`]: past it, [`Finals::try_public_slot`]
//! says no and the status is answered at once, so nobody can hold the settler's memory or
//! the shared pool with long polls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use x402_protocol::settler_api::SettlementState;

use crate::store::{PaymentRow, Store};

/// How often the watched payments are read.
const POLL: Duration = Duration::from_millis(50);
/// Unauthenticated long polls waiting at once, per settler process.
pub(crate) const MAX_PUBLIC_WAITERS: usize = 256;

#[derive(Default)]
struct Waiting {
    by_id: HashMap<String, Vec<oneshot::Sender<PaymentRow>>>,
    /// Whether the poll loop runs (it stops when nobody waits).
    polling: bool,
}

pub(crate) struct Finals {
    waiting: Arc<Mutex<Waiting>>,
    public: Arc<Semaphore>,
}

impl Default for Finals {
    fn default() -> Self {
        Finals {
            waiting: Arc::default(),
            public: Arc::new(Semaphore::new(MAX_PUBLIC_WAITERS)),
        }
    }
}

fn is_final(row: &PaymentRow) -> bool {
    matches!(
        row.state,
        SettlementState::Settled | SettlementState::Failed
    )
}

impl Finals {
    /// A place among the public waiters, held for as long as the permit lives; `None` when
    /// [`MAX_PUBLIC_WAITERS`] are waiting already.
    pub(crate) fn try_public_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.public.clone().try_acquire_owned().ok()
    }

    /// Waits up to `timeout` for payment `id` to end; the row then, or the last one read
    /// when it did not end in time (`None` if it cannot be read).
    pub(crate) async fn wait(
        &self,
        store: &Store,
        id: &str,
        timeout: Duration,
    ) -> Option<PaymentRow> {
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            w.by_id.entry(id.to_string()).or_default().push(tx);
            if !w.polling {
                w.polling = true;
                tokio::spawn(poll_loop(self.waiting.clone(), store.clone()));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(row)) => Some(row),
            // Timed out (our sender is dropped from the map on the next poll), or the loop
            // is gone: whatever the row is now.
            _ => store.get(id).await.ok().flatten(),
        }
    }
}

/// Reads every watched payment each [`POLL`] and answers the waiters of those that ended;
/// ends when nobody waits.
async fn poll_loop(waiting: Arc<Mutex<Waiting>>, store: Store) {
    loop {
        tokio::time::sleep(POLL).await;
        let ids: Vec<String> = {
            let mut w = waiting.lock().unwrap_or_else(PoisonError::into_inner);
            // Waiters that gave up (timeout, client gone) drop their receiver.
            w.by_id.retain(|_, txs| {
                txs.retain(|t| !t.is_closed());
                !txs.is_empty()
            });
            if w.by_id.is_empty() {
                w.polling = false;
                return;
            }
            w.by_id.keys().cloned().collect()
        };
        let rows = match store.get_many(&ids).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, waiting = ids.len(), "reading the settlements waited for failed; retrying");
                continue;
            }
        };
        let mut w = waiting.lock().unwrap_or_else(PoisonError::into_inner);
        for row in rows.into_iter().filter(is_final) {
            if let Some(txs) = w.by_id.remove(&row.p.id) {
                for tx in txs {
                    // A waiter that is gone meanwhile does not mind.
                    let _ = tx.send(row.clone());
                }
            }
        }
    }
}
