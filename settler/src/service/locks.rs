//! Per-payer serialisation of acceptance: one payer's checks and insert run one at a time
//! (balance minus open payments, next permit nonce), in this process and - through the
//! advisory lock id - across Postgres replicas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use alloy::primitives::keccak256;
use tokio::sync::OwnedMutexGuard;

type LockMap = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// One async mutex per payer and token. Entries are removed when unused.
#[derive(Default)]
pub(crate) struct PayerLocks {
    map: LockMap,
}

pub(crate) struct PayerGuard {
    key: String,
    map: LockMap,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for PayerGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            // The map's Arc and the one inside our guard: nobody else waits.
            if map
                .get(&self.key)
                .map(|a| Arc::strong_count(a) <= 2)
                .unwrap_or(false)
            {
                map.remove(&self.key);
            }
        }
    }
}

impl PayerLocks {
    pub(crate) async fn lock(&self, key: &str) -> PayerGuard {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        PayerGuard {
            key: key.to_string(),
            map: self.map.clone(),
            _guard: guard,
        }
    }
}

/// The database advisory lock id of a payer key (first 8 bytes of its keccak).
pub(crate) fn lock_id(key: &str) -> i64 {
    i64::from_be_bytes(
        keccak256(key.as_bytes()).0[..8]
            .try_into()
            .unwrap_or([0u8; 8]),
    )
}
