//! Payment schemes, one module each behind [`PaymentScheme`], listed once in [`SCHEMES`].
//!
//! A scheme module owns everything that differs between schemes: the checks of a seed 402
//! component that only make sense for it (a permit's spender, an RPC to read its nonce), how it
//! signs (EIP-712 typed data, any chain read), the body it POSTs to the token endpoint, and, if
//! it has one, its x402 v2 `PAYMENT-SIGNATURE` payload. The rest of the client (caps, selection
//! of the cheapest acceptable offer, the HTTP flow, the token cache) is the same for all.
//!
//! Adding a scheme: a new file implementing [`PaymentScheme`] and one line in [`SCHEMES`] (its
//! wire name must exist in `x402_protocol::Scheme`, which the filter and settler share).
//!
//! This module imports nothing else of the crate (so caps, selection and the payer may all use
//! the registry): the payer hands a scheme what it needs to sign ([`Choice`], [`SeedContext`])
//! and turns its [`SeedError`] into a `PayError`. The signing pieces the schemes share are in
//! [`signing`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::Value;
use x402_protocol::challenge::{PaymentRequirements, Resource, SeedComponent};
use x402_protocol::{format_base_units, Network, Scheme};

pub(crate) mod exact;
pub(crate) mod permit;
pub(crate) mod signing;

use signing::{SignError, TokenDomain, V2Error};

/// Every scheme this client can pay, in the default order of preference (`Caps::default`).
pub(crate) static SCHEMES: &[&dyn PaymentScheme] = &[&exact::Exact, &permit::Permit];

/// A boxed future, so that [`PaymentScheme`] stays usable as `dyn` (signing may read a chain).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The component chosen, with everything needed to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    /// Index in the server's component list.
    pub(crate) index: usize,
    pub(crate) scheme: Scheme,
    pub(crate) network: Network,
    pub(crate) domain: TokenDomain,
    pub(crate) pay_to: Address,
    /// Permit spender (the settler's wallet). `None` for `exact`.
    pub(crate) spender: Option<Address>,
    /// What will be signed, in base units.
    pub(crate) amount: U256,
    /// Trusted decimals of the asset.
    pub(crate) decimals: u8,
    pub(crate) currency: String,
}

impl Choice {
    pub(crate) fn token(&self) -> Address {
        self.domain.verifying_contract
    }
    /// Amount in human units, e.g. "0.5".
    pub(crate) fn human_amount(&self) -> String {
        format_base_units(self.amount, self.decimals)
    }
}

/// What a scheme needs from the payer's configuration to sign a seed component.
pub(crate) struct SeedContext<'a> {
    pub(crate) signer: &'a PrivateKeySigner,
    /// JSON-RPC URL per network, to read EIP-2612 nonces (permit needs one; exact does not).
    pub(crate) rpc: &'a BTreeMap<Network, String>,
    /// EIP-2612 deadline = now + this.
    pub(crate) permit_ttl_secs: u64,
    /// ERC-3009 validBefore = now + this.
    pub(crate) authorization_ttl_secs: u64,
    /// Told the permit nonce as soon as it is read (the payer's `NonceRead` step).
    pub(crate) on_nonce: &'a (dyn Fn(Network, U256) + Sync),
}

/// Why a seed component could not be signed (the payer reports it as the `PayError` of the
/// same name).
#[derive(Debug)]
pub(crate) enum SeedError {
    Sign(SignError),
    Rpc {
        network: Network,
        url: String,
        detail: String,
    },
    RpcChain {
        network: Network,
        url: String,
        got: u64,
    },
}

impl From<SignError> for SeedError {
    fn from(e: SignError) -> Self {
        SeedError::Sign(e)
    }
}

/// A signed payment and until when it is valid (unix seconds), for the `Signed` step.
pub(crate) struct Signed {
    pub(crate) body: Value,
    pub(crate) valid_until: u64,
}

/// One payment scheme: what selection must check for it and how it signs.
pub(crate) trait PaymentScheme: Sync {
    /// The scheme as 402 bodies, the filter config and `Receipt` name it.
    fn scheme(&self) -> Scheme;

    /// Other names `--scheme` accepts for it (besides [`Scheme::as_str`]), lowercase.
    fn aliases(&self) -> &'static [&'static str];

    /// What is signed, for the `Signed` step, e.g. "EIP-2612 permit".
    fn signed_what(&self) -> &'static str;

    /// The scheme's own checks of a seed component that already passed the common ones
    /// (chain, asset, trusted decimals, amount, cap). Returns the spender to sign for, if the
    /// scheme has one. `has_rpc` tells whether the client can read `network`'s chain.
    fn check_seed(
        &self,
        component: &SeedComponent,
        network: Network,
        has_rpc: &dyn Fn(Network) -> bool,
    ) -> Result<Option<Address>, String>;

    /// Signs the chosen seed component at `now` (unix seconds) and returns the token-endpoint
    /// request body.
    fn sign_seed<'a>(
        &'a self,
        ctx: &'a SeedContext<'a>,
        choice: &'a Choice,
        now: u64,
    ) -> BoxFuture<'a, Result<Signed, SeedError>>;

    /// The x402 v2 `scheme` name this module answers, if it speaks x402 v2.
    fn x402_v2_name(&self) -> Option<&'static str> {
        None
    }

    /// The EIP-712 domain to sign an x402 v2 requirement under, from its `extra` (checked
    /// after the common checks of the requirement).
    fn x402_v2_domain(
        &self,
        requirement: &PaymentRequirements,
        _network: Network,
        _asset: Address,
    ) -> Result<TokenDomain, String> {
        Err(format!(
            "x402 v2 scheme {:?} is not supported",
            requirement.scheme
        ))
    }

    /// Signs the `PAYMENT-SIGNATURE` payload for `accepted`, valid until `valid_before`.
    fn sign_x402_v2(
        &self,
        _signer: &PrivateKeySigner,
        accepted: &PaymentRequirements,
        _resource: Option<&Resource>,
        _valid_before: u64,
    ) -> Result<x402_protocol::x402v2::PaymentPayload, V2Error> {
        Err(V2Error::Scheme(accepted.scheme.clone()))
    }
}

/// The module for a wire scheme, if this client implements it.
pub(crate) fn for_scheme(s: Scheme) -> Option<&'static dyn PaymentScheme> {
    SCHEMES.iter().copied().find(|m| m.scheme() == s)
}

/// The module answering an x402 v2 `scheme` name.
pub(crate) fn for_x402_v2(name: &str) -> Option<&'static dyn PaymentScheme> {
    SCHEMES
        .iter()
        .copied()
        .find(|m| m.x402_v2_name() == Some(name))
}

/// The scheme a `--scheme` value names (its wire name or an alias, any case).
pub(crate) fn parse_name(s: &str) -> Option<Scheme> {
    let s = s.trim().to_ascii_lowercase();
    SCHEMES
        .iter()
        .find(|m| m.scheme().as_str() == s || m.aliases().contains(&s.as_str()))
        .map(|m| m.scheme())
}

/// The wire names, for messages: "exact or permit".
pub(crate) fn names() -> String {
    let names: Vec<&str> = SCHEMES.iter().map(|m| m.scheme().as_str()).collect();
    match names.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The x402 v2 names, for messages: "exact".
pub(crate) fn x402_v2_names() -> String {
    SCHEMES
        .iter()
        .filter_map(|m| m.x402_v2_name())
        .collect::<Vec<_>>()
        .join(", ")
}
