//! Lane health shared with the service: one cheap handle ([`LaneHealth`], an `Arc` made in
//! `lib.rs`) that each lane writes after every confirm round and that `/readyz` and
//! acceptance read. A network whose lanes are all stalled (every wallet of its signer pool)
//! refuses new payments (`settlement_stalled`) until one recovers; while another wallet's
//! lane runs, it takes the stalled wallet's share of the payments (`--pool-steal-secs`).

use std::collections::BTreeMap;
use std::sync::RwLock;

use alloy::primitives::Address;
use x402_protocol::Network;

#[derive(Debug, Default)]
pub(crate) struct LaneHealth {
    /// Per network and wallet: why its lane is stalled, `None` when healthy.
    by_lane: BTreeMap<(Network, Address), RwLock<Option<String>>>,
}

impl LaneHealth {
    pub(crate) fn new(lanes: impl IntoIterator<Item = (Network, Address)>) -> LaneHealth {
        LaneHealth {
            by_lane: lanes.into_iter().map(|l| (l, RwLock::new(None))).collect(),
        }
    }

    /// Why `wallet`'s lane on `network` is stalled, if it is.
    pub(crate) fn wallet_stalled(&self, network: Network, wallet: Address) -> Option<String> {
        let slot = self.by_lane.get(&(network, wallet))?;
        match slot.read() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    /// Why `network` cannot settle, if every lane it has is stalled (a pool of several
    /// wallets names how many, and the first one's reason).
    pub(crate) fn stalled(&self, network: Network) -> Option<String> {
        let mut reasons = Vec::new();
        for (n, w) in self.by_lane.keys().filter(|(n, _)| *n == network) {
            reasons.push(self.wallet_stalled(*n, *w)?);
        }
        match reasons.len() {
            0 => None,
            1 => reasons.pop(),
            n => Some(format!(
                "all {n} wallets of the signer pool are stalled; the first: {}",
                reasons[0]
            )),
        }
    }

    pub(crate) fn set(&self, network: Network, wallet: Address, stall: Option<String>) {
        if let Some(slot) = self.by_lane.get(&(network, wallet)) {
            match slot.write() {
                Ok(mut g) => *g = stall,
                Err(e) => *e.into_inner() = stall,
            }
        }
    }

    /// Every stalled network with its reason, sorted by network.
    pub(crate) fn all_stalled(&self) -> Vec<(Network, String)> {
        let mut networks: Vec<Network> = self.by_lane.keys().map(|(n, _)| *n).collect();
        networks.dedup();
        networks
            .into_iter()
            .filter_map(|n| self.stalled(n).map(|r| (n, r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W1: Address = Address::repeat_byte(1);
    const W2: Address = Address::repeat_byte(2);

    #[test]
    fn a_stall_is_reported_until_cleared() {
        let a = Network::eip155(1);
        let h = LaneHealth::new([(a, W1), (Network::eip155(2), W1)]);
        assert_eq!(h.stalled(a), None);
        h.set(a, W1, Some("wallet empty".into()));
        assert_eq!(h.stalled(a).as_deref(), Some("wallet empty"));
        assert_eq!(h.all_stalled(), vec![(a, "wallet empty".to_string())]);
        h.set(a, W1, None);
        assert!(h.all_stalled().is_empty());
        h.set(Network::eip155(9), W1, Some("x".into()));
        assert_eq!(
            h.stalled(Network::eip155(9)),
            None,
            "unknown network: ignored"
        );
    }

    #[test]
    fn a_pool_network_is_stalled_only_when_every_wallet_is() {
        let a = Network::eip155(1);
        let h = LaneHealth::new([(a, W1), (a, W2)]);
        h.set(a, W2, Some("wallet empty".into()));
        assert_eq!(h.stalled(a), None, "the other wallet settles");
        assert_eq!(h.wallet_stalled(a, W2).as_deref(), Some("wallet empty"));
        assert!(h.all_stalled().is_empty());
        h.set(a, W1, Some("fees".into()));
        assert_eq!(
            h.stalled(a).as_deref(),
            Some("all 2 wallets of the signer pool are stalled; the first: fees")
        );
        assert_eq!(h.all_stalled().len(), 1);
    }
}
