//! The spend policy: what the client may sign, whatever the server claims.
//!
//! # The decimals rule
//! The cap (`--max 0.5`) is in human units of the asset. To compare it with the base units the
//! client would sign, it needs the asset's decimals, and it **never takes them from the server**
//! (a server stating 18 decimals, or 2, must not move the cap). Trusted decimals come from, in
//! order:
//! 1. the user's configuration (`--asset-decimals ADDRESS=N`), for that address on any network;
//! 2. the built-in table of known assets ([`KNOWN_ASSETS`]: USDC on main networks and testnets),
//!    keyed by (chain id, address).
//!
//! An asset with neither is refused. A component whose stated decimals differ from the trusted
//! ones is refused as well (the server is wrong or lying about the asset, and its human amount
//! cannot be trusted). The value signed is always `amount_base_units`, and it must be
//! `<= parse_decimal(max, trusted_decimals)`.
//!
//! Networks: by default the networks of the built-in table; `--network` replaces that list.
//! Assets: by default the built-in table's assets on their network; `--asset` replaces that list
//! (then every allowed asset needs trusted decimals, from the table or from `--asset-decimals`).

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{Address, U256};
use x402_protocol::amount::{parse_decimal, AmountError};
use x402_protocol::{Network, Scheme};

/// Default cap per request, in the asset's human units.
pub const DEFAULT_MAX: &str = "0.1";

/// A known asset: chain id, address, symbol, decimals.
pub(crate) struct KnownAsset {
    pub(crate) chain_id: u64,
    pub(crate) address: &'static str,
    pub(crate) symbol: &'static str,
    pub(crate) decimals: u8,
}

/// Circle USDC deployments (all 6 decimals).
pub(crate) const KNOWN_ASSETS: &[KnownAsset] = &[
    KnownAsset {
        chain_id: 1,
        address: "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",
        symbol: "USDC",
        decimals: 6,
    },
    KnownAsset {
        chain_id: 10,
        address: "0x0b2C639c533813f4Aa9D7837CAf62653d097Ff85",
        symbol: "USDC",
        decimals: 6,
    },
    KnownAsset {
        chain_id: 137,
        address: "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359",
        symbol: "USDC",
        decimals: 6,
    },
    KnownAsset {
        chain_id: 8453,
        address: "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        symbol: "USDC",
        decimals: 6,
    },
    KnownAsset {
        chain_id: 42161,
        address: "0xaf88d065e77c8cC2239327C5EDb3A432268e5831",
        symbol: "USDC",
        decimals: 6,
    },
    KnownAsset {
        chain_id: 43114,
        address: "0xB97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E",
        symbol: "USDC",
        decimals: 6,
    },
    KnownAsset {
        chain_id: 84532,
        address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        symbol: "USDC",
        decimals: 6,
    },
    KnownAsset {
        chain_id: 11155111,
        address: "0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238",
        symbol: "USDC",
        decimals: 6,
    },
];

fn known(chain_id: u64, address: Address) -> Option<&'static KnownAsset> {
    KNOWN_ASSETS
        .iter()
        .find(|k| k.chain_id == chain_id && k.address.parse::<Address>().ok() == Some(address))
}

fn known_anywhere(address: Address) -> bool {
    KNOWN_ASSETS
        .iter()
        .any(|k| k.address.parse::<Address>().ok() == Some(address))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    #[error("--max {text:?}: {source}")]
    Max { text: String, source: AmountError },
    #[error("asset {0} has no known decimals: pass --asset-decimals {0}=N")]
    UnknownDecimals(Address),
    #[error("--asset-decimals {0:?}: expected ADDRESS=N (N at most 36)")]
    DecimalsSyntax(String),
    #[error("--asset {0:?} is not an address")]
    AssetSyntax(String),
    #[error("--network {0:?} is not a CAIP-2 EVM network like eip155:8453")]
    NetworkSyntax(String),
    #[error("--scheme {0:?}: expected {names}", names = crate::scheme::names())]
    SchemeSyntax(String),
}

/// The spend policy.
#[derive(Debug, Clone)]
pub struct Caps {
    /// Max per request in human units, kept as text and parsed exactly per asset.
    max: String,
    networks: Option<BTreeSet<Network>>,
    assets: Option<BTreeSet<Address>>,
    decimals: BTreeMap<Address, u8>,
    /// Allowed schemes in order of preference.
    schemes: Vec<Scheme>,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            max: DEFAULT_MAX.to_string(),
            networks: None,
            assets: None,
            decimals: BTreeMap::new(),
            // Every scheme the client implements, in the registry's order (exact, then permit).
            schemes: crate::scheme::SCHEMES.iter().map(|m| m.scheme()).collect(),
        }
    }
}

impl Caps {
    /// Sets the per-request maximum (human units, e.g. "0.5"). Checked for syntax now.
    pub fn with_max(mut self, max: &str) -> Result<Self, CapsError> {
        // Any decimals up to 77 digits would do for syntax; 36 covers every real token.
        parse_decimal(max, 36).map_err(|source| CapsError::Max {
            text: max.to_string(),
            source,
        })?;
        self.max = max.to_string();
        Ok(self)
    }

    /// Replaces the default networks (the built-in table's) with this list.
    pub fn allow_network(mut self, n: Network) -> Self {
        self.networks.get_or_insert_with(BTreeSet::new).insert(n);
        self
    }

    /// Replaces the default assets (the built-in table's) with this list.
    pub fn allow_asset(mut self, a: Address) -> Self {
        self.assets.get_or_insert_with(BTreeSet::new).insert(a);
        self
    }

    /// Trusted decimals for an asset (any network).
    pub fn asset_decimals(mut self, a: Address, decimals: u8) -> Self {
        self.decimals.insert(a, decimals);
        self
    }

    /// Allowed schemes in order of preference (default: exact, then permit).
    pub fn schemes(mut self, schemes: Vec<Scheme>) -> Self {
        if !schemes.is_empty() {
            self.schemes = schemes;
        }
        self
    }

    pub fn max_text(&self) -> &str {
        &self.max
    }

    pub(crate) fn allowed_schemes(&self) -> &[Scheme] {
        &self.schemes
    }

    /// Every explicitly allowed asset must have trusted decimals. Call after building.
    pub fn validate(&self) -> Result<(), CapsError> {
        if let Some(assets) = &self.assets {
            for a in assets {
                if !self.decimals.contains_key(a) && !known_anywhere(*a) {
                    return Err(CapsError::UnknownDecimals(*a));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn network_allowed(&self, n: Network) -> bool {
        match &self.networks {
            Some(set) => set.contains(&n),
            None => KNOWN_ASSETS.iter().any(|k| k.chain_id == n.chain_id),
        }
    }

    pub(crate) fn asset_allowed(&self, n: Network, a: Address) -> bool {
        match &self.assets {
            Some(set) => set.contains(&a),
            None => known(n.chain_id, a).is_some(),
        }
    }

    /// Decimals the client trusts for this asset: the user's, else the built-in table's.
    /// Never the server's.
    pub(crate) fn trusted_decimals(&self, n: Network, a: Address) -> Option<u8> {
        self.decimals
            .get(&a)
            .copied()
            .or_else(|| known(n.chain_id, a).map(|k| k.decimals))
    }

    /// The symbol of a built-in asset (for display only).
    pub(crate) fn symbol(&self, n: Network, a: Address) -> Option<&'static str> {
        known(n.chain_id, a).map(|k| k.symbol)
    }

    /// The cap in base units for this asset, from trusted decimals only.
    pub(crate) fn cap_base_units(&self, n: Network, a: Address) -> Result<U256, CapsError> {
        let d = self
            .trusted_decimals(n, a)
            .ok_or(CapsError::UnknownDecimals(a))?;
        parse_decimal(&self.max, d).map_err(|source| CapsError::Max {
            text: self.max.clone(),
            source,
        })
    }
}

/// Parses `ADDRESS=N` (for `--asset-decimals`).
pub fn parse_asset_decimals(s: &str) -> Result<(Address, u8), CapsError> {
    let err = || CapsError::DecimalsSyntax(s.to_string());
    let (a, d) = s.split_once('=').ok_or_else(err)?;
    let a: Address = a.trim().parse().map_err(|_| err())?;
    let d: u8 = d.trim().parse().map_err(|_| err())?;
    if d > 36 {
        return Err(err());
    }
    Ok((a, d))
}

/// Parses a `--scheme` value: a scheme's wire name or one of its aliases (`erc3009`,
/// `eip2612`, ...), any case.
pub fn parse_scheme(s: &str) -> Result<Scheme, CapsError> {
    crate::scheme::parse_name(s).ok_or_else(|| CapsError::SchemeSyntax(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_sepolia_usdc() -> Address {
        "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
            .parse()
            .unwrap()
    }

    #[test]
    fn defaults_allow_known_usdc_only() {
        let c = Caps::default();
        let n = Network::eip155(84532);
        assert!(c.network_allowed(n));
        assert!(c.asset_allowed(n, base_sepolia_usdc()));
        assert!(!c.network_allowed(Network::eip155(31337)));
        // A known address on the wrong network is not "known".
        assert!(!c.asset_allowed(Network::eip155(1), base_sepolia_usdc()));
        assert_eq!(
            c.cap_base_units(n, base_sepolia_usdc()).unwrap(),
            U256::from(100_000u64)
        );
    }

    #[test]
    fn cap_uses_trusted_decimals_exactly() {
        let t: Address = Address::repeat_byte(0x42);
        let n = Network::eip155(31337);
        let c = Caps::default()
            .with_max("0.5")
            .unwrap()
            .allow_network(n)
            .allow_asset(t);
        assert_eq!(c.validate(), Err(CapsError::UnknownDecimals(t)));
        assert!(matches!(
            c.cap_base_units(n, t),
            Err(CapsError::UnknownDecimals(_))
        ));
        let c = c.asset_decimals(t, 6);
        c.validate().unwrap();
        assert_eq!(c.cap_base_units(n, t).unwrap(), U256::from(500_000u64));
        let c18 = Caps::default()
            .with_max("0.5")
            .unwrap()
            .asset_decimals(t, 18);
        assert_eq!(
            c18.cap_base_units(n, t).unwrap(),
            U256::from(500_000_000_000_000_000u64)
        );
        // A cap more precise than the asset cannot be honoured exactly: refused, not rounded.
        let c = Caps::default()
            .with_max("0.0000001")
            .unwrap()
            .asset_decimals(t, 6);
        assert!(matches!(c.cap_base_units(n, t), Err(CapsError::Max { .. })));
    }

    #[test]
    fn user_decimals_override_the_table() {
        let n = Network::eip155(84532);
        let c = Caps::default()
            .with_max("1")
            .unwrap()
            .asset_decimals(base_sepolia_usdc(), 2);
        assert_eq!(c.trusted_decimals(n, base_sepolia_usdc()), Some(2));
        assert_eq!(
            c.cap_base_units(n, base_sepolia_usdc()).unwrap(),
            U256::from(100u64)
        );
    }

    #[test]
    fn parses_flags() {
        assert!(Caps::default().with_max("abc").is_err());
        assert!(Caps::default().with_max("-1").is_err());
        assert!(Caps::default().with_max("1e3").is_err());
        let (a, d) = parse_asset_decimals("0x036CbD53842c5426634e7929541eC2318f3dCF7e=6").unwrap();
        assert_eq!((a, d), (base_sepolia_usdc(), 6));
        assert!(parse_asset_decimals("0x036C=6").is_err());
        assert!(parse_asset_decimals("0x036CbD53842c5426634e7929541eC2318f3dCF7e=99").is_err());
        assert_eq!(parse_scheme("EIP2612").unwrap(), Scheme::Permit);
        assert!(parse_scheme("permit2").is_err());
    }
}
