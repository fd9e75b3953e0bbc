//! Settler-side terms (`--terms-file`): what the settler itself will honour, per network and
//! asset, whatever a caller states in a requirement. The gateway decides prices; the terms
//! bound what any caller may ask for: which tokens, which recipients, a minimum price, the
//! longest token lifetime, the EIP-712 domain name/version, and the unsettled exposure limits.
//!
//! JSON, unknown fields refused, every error naming its field (`terms assets[0].min_price: ...`):
//! ```json
//! {"assets": [{"network": "eip155:8453", "address": "0x8335…2913", "name": "USD Coin",
//!              "version": "2", "decimals": 6, "pay_to": ["0xYourWallet"], "min_price": "0.001",
//!              "max_token_ttl_secs": 3600, "max_unsettled_per_payer": "1",
//!              "max_unsettled_total": "1000"}]}
//! ```
//! Amounts are exact decimals in the asset's units, held as U256 base units.

use std::path::Path;

use alloy::primitives::{Address, U256};
use serde::Deserialize;
use x402_protocol::{parse_decimal, Network};

/// Default `max_token_ttl_secs` when an asset names none.
pub const DEFAULT_MAX_TOKEN_TTL_SECS: u64 = 3600;
/// Default `max_unsettled_per_payer`, in asset units.
pub const DEFAULT_MAX_UNSETTLED_PER_PAYER: &str = "1";
/// Default `max_unsettled_total`, in asset units.
pub const DEFAULT_MAX_UNSETTLED_TOTAL: &str = "1000";

/// Everything the settler honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub assets: Vec<AssetTerms>,
}

/// The terms of one asset on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetTerms {
    /// Position in the file (`assets[i]`), for messages.
    pub index: usize,
    pub network: Network,
    /// The token contract.
    pub address: Address,
    /// EIP-712 domain name the token signs under (real USDC on Base: "USD Coin").
    pub name: String,
    /// EIP-712 domain version.
    pub version: String,
    pub decimals: u8,
    /// Recipients a requirement may name (non-empty).
    pub pay_to: Vec<Address>,
    /// Lowest price accepted, base units.
    pub min_price: U256,
    /// Longest access token lifetime a requirement may ask for, seconds.
    pub max_token_ttl_secs: u64,
    /// Most a single payer may have accepted but not yet settled, base units.
    pub max_unsettled_per_payer: U256,
    /// Most all payers together may have accepted but not yet settled, base units.
    pub max_unsettled_total: U256,
}

impl AssetTerms {
    /// `terms assets[i]`, the prefix of every message about this asset.
    pub fn label(&self) -> String {
        format!("terms assets[{}]", self.index)
    }

    /// The EIP-712 domain configured for this asset.
    pub fn domain(&self) -> alloy::sol_types::Eip712Domain {
        x402_protocol::eip712::domain(
            &self.name,
            &self.version,
            self.network.chain_id,
            self.address,
        )
    }

    pub fn accepts_pay_to(&self, pay_to: Address) -> bool {
        self.pay_to.contains(&pay_to)
    }
}

/// A terms file that cannot be used; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("terms {field}: {problem}")]
pub struct TermsError {
    /// e.g. `assets[0].min_price`, or `file` / `json`.
    pub field: String,
    pub problem: String,
}

fn err(field: impl Into<String>, problem: impl Into<String>) -> TermsError {
    TermsError {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTerms {
    assets: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsset {
    network: String,
    address: String,
    name: String,
    version: String,
    decimals: u8,
    pay_to: Vec<String>,
    min_price: String,
    #[serde(default)]
    max_token_ttl_secs: Option<u64>,
    #[serde(default)]
    max_unsettled_per_payer: Option<String>,
    #[serde(default)]
    max_unsettled_total: Option<String>,
}

fn parse_address(field: &str, text: &str) -> Result<Address, TermsError> {
    let t = text.trim();
    if t.len() != 42 || !t.starts_with("0x") {
        return Err(err(
            field,
            format!("{text:?} is not a 0x-prefixed 20-byte address"),
        ));
    }
    let addr: Address = t
        .parse()
        .map_err(|_| err(field, format!("{text:?} is not a hex address")))?;
    // Mixed case means an EIP-55 checksum: it must be right.
    let hex = &t[2..];
    let mixed =
        hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
    if mixed && addr.to_checksum(None) != t {
        return Err(err(field, format!("{text:?} has a wrong EIP-55 checksum")));
    }
    if addr == Address::ZERO {
        return Err(err(field, "the zero address"));
    }
    Ok(addr)
}

fn parse_amount(field: &str, text: &str, decimals: u8) -> Result<U256, TermsError> {
    parse_decimal(text, decimals).map_err(|e| err(field, e.to_string()))
}

impl Terms {
    /// Reads and parses a terms file; errors name the file and the field.
    pub fn load(path: &Path) -> anyhow::Result<Terms> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--terms-file {}: {e}", path.display()))?;
        Terms::parse(&text).map_err(|e| anyhow::anyhow!("--terms-file {}: {e}", path.display()))
    }

    /// Parses the JSON text of a terms file.
    pub fn parse(text: &str) -> Result<Terms, TermsError> {
        let raw: RawTerms = serde_json::from_str(text).map_err(|e| err("(file)", e.to_string()))?;
        if raw.assets.is_empty() {
            return Err(err("assets", "no asset: the settler would accept nothing"));
        }
        let mut assets: Vec<AssetTerms> = Vec::with_capacity(raw.assets.len());
        for (i, value) in raw.assets.into_iter().enumerate() {
            let at = |f: &str| format!("assets[{i}].{f}");
            let a: RawAsset = serde_json::from_value(value)
                .map_err(|e| err(format!("assets[{i}]"), e.to_string()))?;
            let network: Network =
                a.network
                    .parse()
                    .map_err(|e: x402_protocol::chain::NetworkError| {
                        err(at("network"), e.to_string())
                    })?;
            let address = parse_address(&at("address"), &a.address)?;
            if a.name.trim().is_empty() {
                return Err(err(at("name"), "empty EIP-712 domain name"));
            }
            if a.version.trim().is_empty() {
                return Err(err(at("version"), "empty EIP-712 domain version"));
            }
            if a.decimals > 36 {
                return Err(err(
                    at("decimals"),
                    format!("{} decimals is not a token", a.decimals),
                ));
            }
            if a.pay_to.is_empty() {
                return Err(err(
                    at("pay_to"),
                    "no recipient: list the wallets payments may go to",
                ));
            }
            let pay_to = a
                .pay_to
                .iter()
                .enumerate()
                .map(|(j, p)| parse_address(&format!("assets[{i}].pay_to[{j}]"), p))
                .collect::<Result<Vec<_>, _>>()?;
            let min_price = parse_amount(&at("min_price"), &a.min_price, a.decimals)?;
            let max_token_ttl_secs = a.max_token_ttl_secs.unwrap_or(DEFAULT_MAX_TOKEN_TTL_SECS);
            if max_token_ttl_secs == 0 {
                return Err(err(at("max_token_ttl_secs"), "must be at least 1 second"));
            }
            let max_unsettled_per_payer = parse_amount(
                &at("max_unsettled_per_payer"),
                a.max_unsettled_per_payer
                    .as_deref()
                    .unwrap_or(DEFAULT_MAX_UNSETTLED_PER_PAYER),
                a.decimals,
            )?;
            let max_unsettled_total = parse_amount(
                &at("max_unsettled_total"),
                a.max_unsettled_total
                    .as_deref()
                    .unwrap_or(DEFAULT_MAX_UNSETTLED_TOTAL),
                a.decimals,
            )?;
            if let Some(other) = assets
                .iter()
                .find(|o| o.network == network && o.address == address)
            {
                return Err(err(
                    at("address"),
                    format!(
                        "{address} on {network} is already listed as assets[{}]",
                        other.index
                    ),
                ));
            }
            assets.push(AssetTerms {
                index: i,
                network,
                address,
                name: a.name,
                version: a.version,
                decimals: a.decimals,
                pay_to,
                min_price,
                max_token_ttl_secs,
                max_unsettled_per_payer,
                max_unsettled_total,
            });
        }
        Ok(Terms { assets })
    }

    /// The terms of `address` on `network`, if the settler honours that asset at all.
    pub fn asset(&self, network: Network, address: Address) -> Option<&AssetTerms> {
        self.assets
            .iter()
            .find(|a| a.network == network && a.address == address)
    }

    /// Networks named by some asset.
    pub fn networks(&self) -> impl Iterator<Item = Network> + '_ {
        self.assets.iter().map(|a| a.network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USDC: &str = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913";
    const WALLET: &str = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720";

    fn one(extra: &str) -> String {
        format!(
            r#"{{"assets": [{{"network": "eip155:8453", "address": "{USDC}", "name": "USD Coin",
                "version": "2", "decimals": 6, "pay_to": ["{WALLET}"], "min_price": "0.001"{extra}}}]}}"#
        )
    }

    #[test]
    fn parses_amounts_exactly_with_defaults() {
        let t = Terms::parse(&one("")).unwrap();
        let a = t
            .asset(Network::eip155(8453), USDC.parse().unwrap())
            .unwrap();
        assert_eq!(a.min_price, U256::from(1_000u64));
        assert_eq!(a.max_token_ttl_secs, DEFAULT_MAX_TOKEN_TTL_SECS);
        assert_eq!(a.max_unsettled_per_payer, U256::from(1_000_000u64));
        assert_eq!(a.max_unsettled_total, U256::from(1_000_000_000u64));
        assert!(a.accepts_pay_to(WALLET.parse().unwrap()));
        assert!(!a.accepts_pay_to(Address::repeat_byte(7)));
        assert_eq!(a.label(), "terms assets[0]");
        assert!(t.asset(Network::eip155(1), a.address).is_none());

        let t = Terms::parse(&one(
            r#", "max_token_ttl_secs": 60, "max_unsettled_per_payer": "2.5", "max_unsettled_total": "10""#,
        ))
        .unwrap();
        assert_eq!(t.assets[0].max_token_ttl_secs, 60);
        assert_eq!(
            t.assets[0].max_unsettled_per_payer,
            U256::from(2_500_000u64)
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = |text: &str| Terms::parse(text).unwrap_err().to_string();
        assert!(e(&one(r#", "colour": "red""#)).contains("assets[0]: unknown field `colour`"));
        assert!(e(r#"{"assets": [], "x": 1}"#).contains("unknown field `x`"));
        assert!(e(r#"{"assets": []}"#).starts_with("terms assets: "));
        let inexact = one("").replace(r#""0.001""#, r#""0.0000001""#);
        assert!(
            e(&inexact).starts_with("terms assets[0].min_price: "),
            "{}",
            e(&inexact)
        );
        let per_payer = one(r#", "max_unsettled_per_payer": "1e3""#);
        assert!(e(&per_payer).starts_with("terms assets[0].max_unsettled_per_payer: "));
        let bad_pay_to = one("").replace(WALLET, "0xa0ee7A142d267C1f36714E4a8F75612F20a79720");
        assert!(
            e(&bad_pay_to).starts_with("terms assets[0].pay_to[0]: "),
            "{}",
            e(&bad_pay_to)
        );
        let no_pay_to = one("").replace(&format!(r#"["{WALLET}"]"#), "[]");
        assert!(e(&no_pay_to).starts_with("terms assets[0].pay_to: "));
        let bad_net = one("").replace("eip155:8453", "base");
        assert!(e(&bad_net).starts_with("terms assets[0].network: "));
        let empty_name = one("").replace("USD Coin", " ");
        assert!(e(&empty_name).starts_with("terms assets[0].name: "));
        let zero_ttl = one(r#", "max_token_ttl_secs": 0"#);
        assert!(e(&zero_ttl).starts_with("terms assets[0].max_token_ttl_secs: "));
        let body = one("");
        let inner = body
            .trim_start_matches(r#"{"assets": ["#)
            .trim_end_matches("]}");
        let twice = format!(r#"{{"assets": [{inner}, {inner}]}}"#);
        assert!(
            e(&twice).starts_with("terms assets[1].address: "),
            "{}",
            e(&twice)
        );
    }
}
