//! The settler's own terms (`--terms-file`, [`crate::terms`]) applied to every requirement,
//! from the token API and the facilitator alike: the asset must be listed, its `pay_to` one of
//! the listed wallets, the price at least the minimum, the token lifetime at most the maximum,
//! and the EIP-712 name/version the terms' own. And the asset's configured EIP-712 domain must
//! match the contract's `DOMAIN_SEPARATOR()` - checked at start, or on first use when the RPC
//! was down then; until it is verified, payments on the asset are refused (503).

use std::collections::HashMap;

use alloy::primitives::Address;
use tokio::sync::Mutex;
use x402_protocol::settler_api::{PricedMethod, Requirement};
use x402_protocol::{Network, PaymentMethod};

use super::Service;
use crate::chain::Chain;
use crate::error::{ChainError, Refusal};
use crate::terms::{AssetTerms, Terms};

/// Where the check of an asset's EIP-712 domain against its contract stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DomainState {
    /// `DOMAIN_SEPARATOR()` equals the configured domain's hash.
    Verified,
    /// Not checked yet (RPC unreachable at start, or no RPC for the network).
    Unverified,
    /// The contract's domain differs (found on first use): refused until the terms are fixed.
    Mismatch(String),
}

/// Per asset of the terms, its domain check.
#[derive(Debug, Default)]
pub(crate) struct Domains {
    by_asset: HashMap<(Network, Address), Mutex<DomainState>>,
}

impl Domains {
    /// Every asset of `terms` in `state`.
    pub(crate) fn new(terms: &Terms, state: impl Fn(&AssetTerms) -> DomainState) -> Domains {
        Domains {
            by_asset: terms
                .assets
                .iter()
                .map(|a| ((a.network, a.address), Mutex::new(state(a))))
                .collect(),
        }
    }
}

/// What comparing an asset's configured domain with its contract gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DomainCheck {
    Verified,
    /// The message names the configured and the contract's values.
    Mismatch(String),
    /// The RPC did not answer; try again later.
    Unreachable(String),
}

/// Whether a failed call means the contract cannot answer it (reverted, no code, bad ABI)
/// rather than an RPC outage.
fn is_contract_fault(e: &ChainError) -> bool {
    match e {
        ChainError::Rpc { message, .. } => {
            let m = message.to_ascii_lowercase();
            m.contains("revert") || m.contains("no data") || m.contains("abi")
        }
        _ => false,
    }
}

/// Reads the token's `DOMAIN_SEPARATOR()` and compares it with the hash of the configured
/// `{name, version, chainId, verifyingContract}`; on a mismatch reads what the contract says
/// its name and version are.
pub(crate) async fn check_domain(chain: &Chain, asset: &AssetTerms) -> DomainCheck {
    let expected = asset.domain().separator();
    let on_chain = match chain.domain_separator(asset.address).await {
        Ok(s) => s,
        Err(e) if is_contract_fault(&e) => {
            return DomainCheck::Mismatch(format!(
                "{}: EIP-712 domain of {} cannot be checked: the contract answers no DOMAIN_SEPARATOR() ({e}); is it the token's address?",
                asset.label(),
                asset.address
            ))
        }
        Err(e) => return DomainCheck::Unreachable(e.to_string()),
    };
    if on_chain == expected {
        return DomainCheck::Verified;
    }
    let said = chain.declared_domain(asset.address).await;
    let show = |v: &Option<String>| match v {
        Some(s) => format!("{s:?}"),
        None => "(unreadable)".to_string(),
    };
    let hint = if said.name.as_deref() == Some(asset.name.as_str())
        && said.version.as_deref() == Some(asset.version.as_str())
    {
        format!(
            "; name and version agree, so the chain id ({}) or the address differ from the contract's domain",
            asset.network.chain_id
        )
    } else {
        String::new()
    };
    DomainCheck::Mismatch(format!(
        "{}: EIP-712 domain mismatch for {}: configured name {:?} version {:?}, the contract says name {} version {} (DOMAIN_SEPARATOR {on_chain}, configured {expected}){hint}",
        asset.label(),
        asset.address,
        asset.name,
        asset.version,
        show(&said.name),
        show(&said.version),
    ))
}

impl Service {
    /// The terms of the method a payment matched, checked against the requirement (no I/O).
    pub(crate) fn check_settler_terms(
        &self,
        priced: &PricedMethod,
        requirement: &Requirement,
    ) -> Result<&AssetTerms, Refusal> {
        let method = &priced.method;
        let Some(asset) = self.terms.asset(method.network, method.asset.address) else {
            return Err(Refusal::AssetNotAccepted(format!(
                "the settler's terms do not list token {} on {}",
                method.asset.address, method.network
            )));
        };
        if method.asset.name != asset.name || method.asset.version != asset.version {
            return Err(Refusal::DomainMismatch(format!(
                "the requirement's EIP-712 domain name {:?} version {:?} for {} is not the settler's terms' name {:?} version {:?}",
                method.asset.name, method.asset.version, asset.address, asset.name, asset.version
            )));
        }
        if !asset.accepts_pay_to(method.pay_to) {
            return Err(Refusal::PayToNotAccepted(format!(
                "pay_to {} is not one of the wallets the settler's terms accept for {} on {}",
                method.pay_to, asset.address, asset.network
            )));
        }
        if priced.amount < asset.min_price {
            return Err(Refusal::PriceBelowMinimum(format!(
                "price {} is below the settler's terms' minimum {} (base units of {})",
                priced.amount, asset.min_price, asset.address
            )));
        }
        if requirement.token_ttl_secs > asset.max_token_ttl_secs {
            return Err(Refusal::TokenTtlTooLong(format!(
                "token_ttl_secs {} is over the settler's terms' maximum {} for {}",
                requirement.token_ttl_secs, asset.max_token_ttl_secs, asset.address
            )));
        }
        Ok(asset)
    }

    /// The lifetime of a token for `requirement` paid with `method`: the requirement's (or
    /// the default), never over the asset's `max_token_ttl_secs`.
    pub(crate) fn token_ttl(&self, requirement: &Requirement, method: &PaymentMethod) -> u64 {
        let ttl = self.minter.ttl(requirement.token_ttl_secs);
        match self.terms.asset(method.network, method.asset.address) {
            Some(a) => ttl.min(a.max_token_ttl_secs),
            None => ttl,
        }
    }

    /// Refuses payments on an asset whose EIP-712 domain is not verified against its
    /// contract; verifies it now if it is not yet (RPC down at start).
    pub(crate) async fn ensure_domain(
        &self,
        chain: &Chain,
        method: &PaymentMethod,
    ) -> Result<(), Refusal> {
        let key = (method.network, method.asset.address);
        let (Some(slot), Some(asset)) = (
            self.domains.by_asset.get(&key),
            self.terms.asset(method.network, method.asset.address),
        ) else {
            return Err(Refusal::AssetNotAccepted(format!(
                "the settler's terms do not list token {} on {}",
                method.asset.address, method.network
            )));
        };
        let mut state = slot.lock().await;
        match &*state {
            DomainState::Verified => return Ok(()),
            DomainState::Mismatch(m) => return Err(Refusal::AssetUnverified(m.clone())),
            DomainState::Unverified => {}
        }
        match check_domain(chain, asset).await {
            DomainCheck::Verified => {
                tracing::info!(network = %asset.network, asset = %asset.address, "EIP-712 domain verified against the contract");
                *state = DomainState::Verified;
                Ok(())
            }
            DomainCheck::Mismatch(m) => {
                tracing::error!(network = %asset.network, asset = %asset.address, "{m}; payments on this asset are refused until the terms are fixed");
                *state = DomainState::Mismatch(m.clone());
                Err(Refusal::AssetUnverified(m))
            }
            DomainCheck::Unreachable(e) => {
                // The RPC's text goes to the log, not into the answer.
                tracing::warn!(network = %asset.network, asset = %asset.address, error = %e, "EIP-712 domain check: chain unreachable");
                Err(Refusal::AssetUnverified(format!(
                    "{}: the EIP-712 domain of {} is not verified against the contract yet (chain RPC unavailable); payments on it are refused until it is",
                    asset.label(),
                    asset.address
                )))
            }
        }
    }
}
