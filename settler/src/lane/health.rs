//! Lane health shared with the service: one cheap handle ([`LaneHealth`], an `Arc` made in
//! `lib.rs`) that each lane writes after every confirm round and that `/readyz` and
//! acceptance read. A stalled network refuses new payments (`settlement_stalled`) until its
//! lane recovers.

use std::collections::HashMap;
use std::sync::RwLock;

use x402_protocol::Network;

#[derive(Debug, Default)]
pub(crate) struct LaneHealth {
    /// Per network: why its lane is stalled, `None` when healthy.
    by_network: HashMap<Network, RwLock<Option<String>>>,
}

impl LaneHealth {
    pub(crate) fn new(networks: impl IntoIterator<Item = Network>) -> LaneHealth {
        LaneHealth {
            by_network: networks
                .into_iter()
                .map(|n| (n, RwLock::new(None)))
                .collect(),
        }
    }

    /// Why `network`'s lane is stalled, if it is.
    pub(crate) fn stalled(&self, network: Network) -> Option<String> {
        let slot = self.by_network.get(&network)?;
        match slot.read() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    pub(crate) fn set(&self, network: Network, stall: Option<String>) {
        if let Some(slot) = self.by_network.get(&network) {
            match slot.write() {
                Ok(mut g) => *g = stall,
                Err(e) => *e.into_inner() = stall,
            }
        }
    }

    /// Every stalled network with its reason, sorted by network.
    pub(crate) fn all_stalled(&self) -> Vec<(Network, String)> {
        let mut v: Vec<(Network, String)> = self
            .by_network
            .keys()
            .filter_map(|n| self.stalled(*n).map(|r| (*n, r)))
            .collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_reported_until_cleared() {
        let a = Network::eip155(1);
        let h = LaneHealth::new([a, Network::eip155(2)]);
        assert_eq!(h.stalled(a), None);
        h.set(a, Some("wallet empty".into()));
        assert_eq!(h.stalled(a).as_deref(), Some("wallet empty"));
        assert_eq!(h.all_stalled(), vec![(a, "wallet empty".to_string())]);
        h.set(a, None);
        assert!(h.all_stalled().is_empty());
        h.set(Network::eip155(9), Some("x".into()));
        assert_eq!(
            h.stalled(Network::eip155(9)),
            None,
            "unknown network: ignored"
        );
    }
}
