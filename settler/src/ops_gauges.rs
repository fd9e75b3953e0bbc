//! The operational gauges and the revenue counters, refreshed by one periodic task from
//! store queries and one balance read per network, away from the acceptance path and the
//! settlement lanes (which only count their own transitions).
//!
//! - `x402_settlements{state}`: stored payments per state (all networks);
//! - `x402_unsettled_payments{network}`: the settlement queue (`pending` + `submitted`);
//! - `x402_oldest_unsettled_age_seconds{network}`: how long its oldest payment has waited
//!   (0 when the queue is empty), the first sign of a stuck lane;
//! - `x402_signer_balance_wei{network, signer}`: the wallet paying the gas;
//! - `x402_revenue_base_units_total{network, asset, route}`: value settled to the
//!   recipients, in the asset's base units.
//!
//! The revenue counter is the total of every settled payment in the database (the first
//! refresh counts the history), so it survives restarts; replicas sharing a database each
//! report the same total: aggregate them with `max`, not `sum`. Totals are kept exact as
//! U256 here; the exported counter is a u64 that stops at `u64::MAX` base units (1.8e13
//! USDC at 6 decimals, but only 18.4 tokens at 18 decimals: a saturated series is logged
//! once, and the database stays the accounting record). Prometheus stores samples as f64,
//! exact up to 2^53 base units, so the counter is for dashboards and alerts, never for
//! accounting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use tokio::sync::watch;
use x402_protocol::Network;

use crate::chain::Chain;
use crate::metrics as m;
use crate::service::Service;
use crate::store::{SettledItem, Store};

/// How often the store gauges and the revenue counters are refreshed.
const REFRESH: Duration = Duration::from_secs(5);
/// The balance read goes to the RPC provider (often rate limited): every this many refreshes.
const BALANCE_EVERY: u32 = 6;
/// Settlements are walked again from this far behind the newest one seen: one committed
/// late, or stamped by a replica whose clock is behind, is still counted (once).
const LAG_MS: i64 = 60_000;
/// Rows per page of the settlement walk.
const PAGE: i64 = 500;

/// Runs until `stop` changes.
pub(crate) async fn run(service: Arc<Service>, mut stop: watch::Receiver<bool>) {
    let mut revenue = Revenue::default();
    let mut tick: u32 = 0;
    loop {
        refresh_states(&service.store).await;
        for (network, pool) in &service.chains.pools {
            refresh_queue(&service.store, *network).await;
            if tick.is_multiple_of(BALANCE_EVERY) {
                for chain in pool {
                    refresh_balance(*network, chain).await;
                }
            }
        }
        revenue
            .refresh(&service.store, crate::clock::now_ms())
            .await;
        tick = tick.wrapping_add(1);
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn refresh_states(store: &Store) {
    match store.count_by_state().await {
        Ok(counts) => {
            for state in ["pending", "submitted", "settled", "failed"] {
                let n = counts
                    .iter()
                    .find(|(s, _)| s == state)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                metrics::gauge!(m::SETTLEMENTS_BY_STATE, "state" => state).set(n as f64);
            }
        }
        Err(e) => tracing::debug!(error = %e, "metrics: payment counts not read"),
    }
}

async fn refresh_queue(store: &Store, network: Network) {
    match store.unsettled(network.chain_id).await {
        Ok((n, oldest)) => {
            let label = network.to_string();
            metrics::gauge!(m::UNSETTLED, "network" => label.clone()).set(n as f64);
            let age = oldest
                .map(|created| (crate::clock::now_ms() - created).max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            metrics::gauge!(m::OLDEST_UNSETTLED_AGE, "network" => label).set(age);
        }
        Err(e) => tracing::debug!(%network, error = %e, "metrics: settlement queue not read"),
    }
}

async fn refresh_balance(network: Network, chain: &Chain) {
    match chain.signer_balance().await {
        // A display-only gauge: f64 (about 15 significant digits) is plenty to see a
        // wallet running low; nothing reads it back as money.
        Ok(wei) => metrics::gauge!(m::SIGNER_BALANCE, "network" => network.to_string(), "signer" => format!("{:#x}", chain.signer()))
            .set(f64::from(wei)),
        Err(e) => tracing::debug!(%network, error = %e, "metrics: signer balance not read"),
    }
}

/// (network, asset, route) of a revenue series.
type Series = (u64, Address, String);

/// The walk over settled payments and the exact totals behind the revenue counter.
#[derive(Default)]
struct Revenue {
    totals: HashMap<Series, U256>,
    /// Series already reported as saturated (logged once).
    saturated: std::collections::HashSet<Series>,
    /// Payments counted whose `settled_ms` is at or after `horizon_ms` (so the next walk,
    /// which starts there, does not count them twice).
    recent: HashMap<i64, i64>,
    /// Everything settled before this was counted.
    horizon_ms: i64,
}

impl Revenue {
    async fn refresh(&mut self, store: &Store, now_ms: i64) {
        let mut after = (self.horizon_ms, i64::MIN);
        let mut newest = self.horizon_ms;
        let mut changed = Vec::new();
        loop {
            let page = match store.settled_after(after, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: settled payments not read");
                    return;
                }
            };
            for item in &page {
                newest = newest.max(item.settled_ms);
                if let Some(series) = self.count(item) {
                    changed.push(series);
                }
            }
            match page.last() {
                Some(last) if page.len() as i64 == PAGE => after = (last.settled_ms, last.seq),
                _ => break,
            }
        }
        for series in changed {
            self.export(series);
        }
        // Never ahead of our own clock: a replica stamping the future would otherwise move
        // the horizon past settlements still to come.
        self.horizon_ms = (newest.min(now_ms) - LAG_MS).max(self.horizon_ms);
        let horizon = self.horizon_ms;
        self.recent.retain(|_, settled| *settled >= horizon);
    }

    /// Adds `item` to its total unless counted already; the series it changed.
    fn count(&mut self, item: &SettledItem) -> Option<Series> {
        if self.recent.insert(item.seq, item.settled_ms).is_some() {
            return None;
        }
        let series = (item.chain_id, item.asset, item.route.clone());
        let total = self.totals.entry(series.clone()).or_default();
        *total = total.saturating_add(item.value);
        Some(series)
    }

    fn export(&mut self, series: Series) {
        let Some(total) = self.totals.get(&series) else {
            return;
        };
        let value = u64::try_from(*total).unwrap_or_else(|_| {
            if self.saturated.insert(series.clone()) {
                tracing::warn!(network = %Network::eip155(series.0), asset = %series.1, route = %series.2, total = %total, "{} exceeds u64 base units: the counter stays at u64::MAX (the database has the exact total)", m::REVENUE);
            }
            u64::MAX
        });
        metrics::counter!(
            m::REVENUE,
            "network" => Network::eip155(series.0).to_string(),
            "asset" => format!("{:#x}", series.1),
            "route" => series.2.clone()
        )
        .absolute(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: i64, route: &str, value: u64, settled_ms: i64) -> SettledItem {
        SettledItem {
            seq,
            chain_id: 31337,
            asset: Address::repeat_byte(7),
            route: route.into(),
            value: U256::from(value),
            settled_ms,
        }
    }

    #[test]
    fn a_payment_walked_twice_counts_once() {
        let mut r = Revenue::default();
        assert!(r.count(&item(1, "weather", 10_000, 5)).is_some());
        assert!(r.count(&item(2, "weather", 5_000, 5)).is_some());
        assert!(r.count(&item(1, "weather", 10_000, 5)).is_none());
        assert!(r.count(&item(3, "news", 1, 6)).is_some());
        let weather = (31337, Address::repeat_byte(7), "weather".to_string());
        assert_eq!(r.totals[&weather], U256::from(15_000u64));
        assert_eq!(r.totals.len(), 2);
    }

    #[test]
    fn totals_beyond_u64_stay_exact_in_u256() {
        let mut r = Revenue::default();
        let big = U256::from(u64::MAX);
        let mut a = item(1, "weather", 0, 5);
        a.value = big;
        let mut b = item(2, "weather", 0, 5);
        b.value = big;
        r.count(&a);
        r.count(&b);
        let weather = (31337, Address::repeat_byte(7), "weather".to_string());
        assert_eq!(r.totals[&weather], big * U256::from(2u8));
        // Exported saturated, and said so once.
        r.export(weather.clone());
        r.export(weather.clone());
        assert!(r.saturated.contains(&weather));
    }
}
