//! The asset's unsettled total kept in memory for a single-process store (SQLite), so the
//! total cap (`max_unsettled_total`) costs no database read and no lock held across the
//! commit on most acceptances.
//!
//! Why it is safe: with SQLite one settler process writes the database, and only acceptance
//! (here, under the asset's entry lock) adds to the open total; settlement and failure only
//! take from it. So the estimate `base + inflight` never falls below the real total:
//! - `base` is the open total last read from the database, plus every reservation committed
//!   since (one committed while the read ran may be counted twice: too high, never too low);
//! - `inflight` holds the values of acceptances checked and not yet committed or dropped.
//!
//! An estimate that would refuse, or one older than [`MAX_AGE`], is read again first (settled
//! payments come off then). On Postgres several replicas insert, so acceptance keeps the exact
//! path: the asset's advisory lock held from the database read to the commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};

use super::exposure::Caps;
use crate::error::Refusal;

/// How long the estimate may go without a database read.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Estimate {
    base: U256,
    inflight: U256,
    /// `None`: never read.
    read_at: Option<Instant>,
}

impl Estimate {
    fn total(&self) -> U256 {
        self.base.saturating_add(self.inflight)
    }
}

type Entry = Arc<tokio::sync::Mutex<Estimate>>;

/// Per (chain id, asset): the estimate, behind an async lock (held across a refresh read).
#[derive(Default)]
pub(crate) struct OpenTotals {
    map: Mutex<HashMap<(u64, Address), Entry>>,
}

/// A value counted in `inflight` until [`Reservation::committed`] moves it to `base`; dropped
/// (the payment not stored), it is taken off again.
pub(crate) struct Reservation {
    entry: Entry,
    value: U256,
    settled: bool,
}

impl Reservation {
    /// The payment is durable: its value stays in the estimate, as part of the base.
    pub(crate) async fn committed(mut self) {
        let mut e = self.entry.lock().await;
        e.inflight = e.inflight.saturating_sub(self.value);
        e.base = e.base.saturating_add(self.value);
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let value = self.value;
        // Drop cannot await: take it off now if the entry is free, else in a task.
        if let Ok(mut e) = self.entry.try_lock() {
            e.inflight = e.inflight.saturating_sub(value);
            return;
        }
        let entry = self.entry.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut e = entry.lock().await;
                e.inflight = e.inflight.saturating_sub(value);
            });
        }
    }
}

impl OpenTotals {
    fn entry(&self, chain_id: u64, asset: Address) -> Entry {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((chain_id, asset)).or_default().clone()
    }

    /// Checks `value` against the asset's total cap; `reserve`: counts it as in flight until
    /// the returned reservation is committed or dropped. `read` gives the open total from the
    /// database (called when the estimate is stale or would refuse).
    pub(crate) async fn check<F, Fut, E>(
        &self,
        chain_id: u64,
        asset: Address,
        caps: &Caps,
        value: U256,
        reserve: bool,
        read: F,
    ) -> Result<Option<Reservation>, Refusal>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<U256, E>>,
        Refusal: From<E>,
    {
        let entry = self.entry(chain_id, asset);
        let mut e = entry.lock().await;
        let stale = e.read_at.is_none_or(|t| t.elapsed() >= MAX_AGE);
        if stale || caps.check_total(e.total(), value).is_err() {
            e.base = read().await?;
            e.read_at = Some(Instant::now());
        }
        caps.check_total(e.total(), value)?;
        if !reserve {
            return Ok(None);
        }
        e.inflight = e.inflight.saturating_add(value);
        drop(e);
        Ok(Some(Reservation {
            entry,
            value,
            settled: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const CAPS: Caps = Caps {
        per_payer: U256::MAX,
        total: U256::from_limbs([100, 0, 0, 0]),
    };
    const A: Address = Address::repeat_byte(1);

    /// A database read answering `total`, counting the reads.
    fn db(
        total: u64,
        reads: &AtomicU32,
    ) -> impl FnOnce() -> std::future::Ready<Result<U256, Refusal>> + '_ {
        move || {
            reads.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(U256::from(total)))
        }
    }

    #[tokio::test]
    async fn reservations_count_until_dropped_and_the_database_is_read_only_when_needed() {
        let t = OpenTotals::default();
        let reads = AtomicU32::new(0);
        let v = U256::from(30u64);
        // First use: read (40 open), 40 + 30 fits.
        let r1 = t.check(1, A, &CAPS, v, true, db(40, &reads)).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // 40 + 30 in flight + 30 = 100 fits without a read.
        let r2 = t.check(1, A, &CAPS, v, true, db(40, &reads)).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // A third would make 130: read again first (still 40 committed), refused.
        let e = t
            .check(1, A, &CAPS, v, true, db(40, &reads))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), "total_exposure_limit");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        // One committed, one never stored: 70 + 30 fits once the read shows the first.
        r1.unwrap().committed().await;
        drop(r2);
        let ok = t
            .check(1, A, &CAPS, v, false, db(70, &reads))
            .await
            .unwrap();
        assert!(ok.is_none(), "a check without reserving holds nothing");
        // Settled payments come off at the next read: 0 open, 100 fits.
        let big = U256::from(100u64);
        assert!(t
            .check(1, A, &CAPS, big, false, db(0, &reads))
            .await
            .is_ok());
        // Another asset has its own estimate.
        assert!(t
            .check(1, Address::repeat_byte(2), &CAPS, big, false, db(0, &reads))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn the_estimate_is_never_below_the_committed_total_under_concurrency() {
        let t = Arc::new(OpenTotals::default());
        let committed = Arc::new(AtomicU32::new(0));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..64u32 {
            let (t, committed) = (t.clone(), committed.clone());
            set.spawn(async move {
                let c = committed.clone();
                let read = move || {
                    let n = c.load(Ordering::SeqCst);
                    std::future::ready(Ok::<_, Refusal>(U256::from(n)))
                };
                match t.check(1, A, &CAPS, U256::from(3u64), true, read).await {
                    Ok(Some(r)) => {
                        tokio::task::yield_now().await;
                        if i % 3 == 0 {
                            drop(r);
                        } else {
                            committed.fetch_add(3, Ordering::SeqCst);
                            r.committed().await;
                        }
                        true
                    }
                    _ => false,
                }
            });
        }
        while set.join_next().await.is_some() {}
        let total = committed.load(Ordering::SeqCst);
        assert!(total <= 100, "the cap holds: {total}");
        assert!(total > 0);
    }
}
