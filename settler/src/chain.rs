//! The chains: one RPC provider per network, the token's interface, the settler's wallet and
//! transaction signing. Every RPC call has a timeout so requests fail closed instead of hanging.
#![allow(clippy::too_many_arguments)] // sol!-generated ERC-3009 bindings

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use alloy::consensus::TxEnvelope;
use alloy::eips::eip2718::Encodable2718;
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::SolCall;
use x402_protocol::payment::{Authorization, Permit};
use x402_protocol::Network;

use crate::error::ChainError;

sol! {
    #[sol(rpc)]
    interface IToken {
        event Transfer(address indexed from, address indexed to, uint256 value);
        event Approval(address indexed owner, address indexed spender, uint256 value);
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
        event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);
        function balanceOf(address account) external view returns (uint256);
        function nonces(address owner) external view returns (uint256);
        function allowance(address owner, address spender) external view returns (uint256);
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function permit(address owner, address spender, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external;
        function transferFrom(address from, address to, uint256 value) external returns (bool);
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
    }
}

sol! {
    /// The batch settlement contract (contracts/X402Settlement.sol).
    #[sol(rpc)]
    interface IX402Settlement {
        struct Item {
            uint8 kind;
            address from;
            address to;
            uint256 value;
            uint256 validAfter;
            uint256 deadline;
            bytes32 nonce;
            uint8 v;
            bytes32 r;
            bytes32 s;
        }
        event ItemResult(uint256 index, bool permitOk, bool ok, bytes reason);
        function settle(address token, Item[] items) external;
        function operators(address operator) external view returns (bool);
    }
}

/// An RPC endpoint as given, as the HTTP client prints it (normalised), and how it is shown
/// instead when it carries more than scheme, host and port (see [`Chain::scrub`]).
#[derive(Clone)]
struct Endpoint {
    url: String,
    parsed_url: String,
    shown_url: Option<String>,
}

/// A request answered "rate limited" (HTTP 429, the providers' JSON-RPC codes) is tried again
/// this many times, backing off from [`RATE_LIMIT_BACKOFF_MS`] (or the provider's hint).
const RATE_LIMIT_RETRIES: u32 = 5;
const RATE_LIMIT_BACKOFF_MS: u64 = 200;
/// The compute-unit budget alloy's retry layer paces retries with (a public provider's free
/// tier is ~330 CU/s).
const RATE_LIMIT_CU_PER_S: u64 = 330;
/// With fallback URLs, each request goes to this many of the best-ranked endpoints at once
/// (alloy ranks them by recent success and latency) and the first good answer wins: one
/// failing endpoint costs no failed request.
const FALLBACK_ACTIVE: usize = 2;

/// One network: its RPC endpoints and the settler's wallet there.
pub struct Chain {
    pub network: Network,
    endpoints: Vec<Endpoint>,
    provider: RootProvider,
    wallet: EthereumWallet,
    signer: Address,
    timeout: Duration,
    gas_limit: u64,
    /// `--settlement-contract` of this network: batches go through it, and it is a permit
    /// spender the settler accepts.
    settlement_contract: Option<Address>,
}

/// What `eth_sendRawTransaction` said.
#[derive(Debug)]
pub(crate) enum SendOutcome {
    Accepted,
    /// The node has it already or its nonce is used: nothing to do but wait for the receipt.
    AlreadyKnown(String),
    Error(String),
}

impl Chain {
    pub fn new(
        network: Network,
        url: &str,
        key: PrivateKeySigner,
        timeout: Duration,
        poll: Duration,
        gas_limit: u64,
    ) -> anyhow::Result<Chain> {
        Self::with_fallbacks(network, &[url], key, timeout, poll, gas_limit)
    }

    /// A chain served by `urls`: the first alone, or with fallbacks, each request sent to
    /// the best [`FALLBACK_ACTIVE`] of them. Rate-limited answers are retried with backoff.
    pub fn with_fallbacks(
        network: Network,
        urls: &[&str],
        key: PrivateKeySigner,
        timeout: Duration,
        poll: Duration,
        gas_limit: u64,
    ) -> anyhow::Result<Chain> {
        use alloy::rpc::client::ClientBuilder;
        use alloy::transports::http::{reqwest::Url, Http};
        use alloy::transports::layers::{FallbackLayer, RetryBackoffLayer};
        use tower::Layer;

        anyhow::ensure!(!urls.is_empty(), "network {network}: no RPC url");
        let mut endpoints = Vec::with_capacity(urls.len());
        let mut parsed_urls = Vec::with_capacity(urls.len());
        for url in urls {
            let parsed: Url = url
                .parse()
                .map_err(|e| anyhow::anyhow!("rpc url {:?}: {e}", redact_url(url)))?;
            endpoints.push(Endpoint {
                url: url.to_string(),
                parsed_url: parsed.to_string(),
                shown_url: Some(redact_url(url)).filter(|r| r.ends_with(REDACTED)),
            });
            parsed_urls.push(parsed);
        }
        let retry = RetryBackoffLayer::new(
            RATE_LIMIT_RETRIES,
            RATE_LIMIT_BACKOFF_MS,
            RATE_LIMIT_CU_PER_S,
        );
        let client = match parsed_urls.as_slice() {
            [one] => ClientBuilder::default().layer(retry).http(one.clone()),
            many => {
                let active = std::num::NonZeroUsize::new(FALLBACK_ACTIVE.min(many.len()))
                    .unwrap_or(std::num::NonZeroUsize::MIN);
                let fallback = FallbackLayer::default()
                    .with_active_transport_count(active)
                    .layer(many.iter().cloned().map(Http::new).collect::<Vec<_>>());
                let local = many
                    .iter()
                    .all(|u| matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")));
                ClientBuilder::default()
                    .layer(retry)
                    .transport(fallback, local)
            }
        };
        // A remote URL is not "local" to alloy, which would then poll every 7 s: set it.
        client.set_poll_interval(poll);
        let provider = RootProvider::new(client);
        let signer = key.address();
        Ok(Chain {
            network,
            endpoints,
            provider,
            wallet: EthereumWallet::from(key),
            signer,
            timeout,
            gas_limit,
            settlement_contract: None,
        })
    }

    /// Settles through the batch contract `contract` (`--settlement-contract`).
    pub fn with_settlement_contract(mut self, contract: Option<Address>) -> Chain {
        self.settlement_contract = contract;
        self
    }

    pub fn signer(&self) -> Address {
        self.signer
    }

    /// The same network, endpoints and RPC client (one connection pool) with another wallet
    /// of the signer pool: its own lane, its own nonces.
    pub fn with_signer(&self, key: PrivateKeySigner) -> Chain {
        Chain {
            network: self.network,
            endpoints: self.endpoints.clone(),
            provider: self.provider.clone(),
            signer: key.address(),
            wallet: EthereumWallet::from(key),
            timeout: self.timeout,
            gas_limit: self.gas_limit,
            settlement_contract: self.settlement_contract,
        }
    }

    /// The batch settlement contract of this network, if configured.
    pub fn settlement_contract(&self) -> Option<Address> {
        self.settlement_contract
    }

    /// The contract's `operators(signer)`: the settler's wallet may call `settle`.
    pub(crate) async fn is_operator(&self, contract: Address) -> Result<bool, ChainError> {
        let c = IX402Settlement::new(contract, &self.provider);
        self.rpc("operators", c.operators(self.signer).call()).await
    }

    /// `msg` without the endpoint URL: HTTP client errors print it, and a provider's URL
    /// often carries its API key. These messages reach logs, `/readyz` and 503 answers.
    fn scrub(&self, mut msg: String) -> String {
        for e in &self.endpoints {
            if let Some(shown) = &e.shown_url {
                msg = msg.replace(&e.parsed_url, shown).replace(&e.url, shown);
            }
        }
        msg
    }

    async fn rpc<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl IntoFuture<Output = Result<T, E>>,
    ) -> Result<T, ChainError> {
        match tokio::time::timeout(self.timeout, f.into_future()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ChainError::Rpc {
                network: self.network.to_string(),
                message: self.scrub(format!("{what}: {e}")),
            }),
            Err(_) => Err(ChainError::Timeout {
                network: self.network.to_string(),
            }),
        }
    }

    fn token(&self, token: Address) -> IToken::ITokenInstance<&RootProvider> {
        IToken::new(token, &self.provider)
    }

    pub async fn chain_id(&self) -> Result<u64, ChainError> {
        self.rpc("eth_chainId", self.provider.get_chain_id()).await
    }

    pub(crate) async fn block_number(&self) -> Result<u64, ChainError> {
        self.rpc("eth_blockNumber", self.provider.get_block_number())
            .await
    }

    pub async fn balance_of(&self, token: Address, owner: Address) -> Result<U256, ChainError> {
        let t = self.token(token);
        self.rpc("balanceOf", t.balanceOf(owner).call()).await
    }

    /// `balanceOf` and `nonces` of `owner` at block `block`, read together (the payer facts'
    /// fill); the nonce is `None` when the token has no `nonces` (no EIP-2612).
    pub(crate) async fn balance_and_nonce_at(
        &self,
        token: Address,
        owner: Address,
        block: u64,
    ) -> Result<(U256, Option<U256>), ChainError> {
        let t = self.token(token);
        let balance_call = t.balanceOf(owner).block(block.into());
        let nonce_call = t.nonces(owner).block(block.into());
        let (balance, nonce) = tokio::join!(
            self.rpc("balanceOf", balance_call.call()),
            self.rpc("nonces", nonce_call.call())
        );
        Ok((balance?, nonce.ok()))
    }

    /// The latest block: (number, hash, parent hash).
    pub(crate) async fn head_block(&self) -> Result<(u64, B256, B256), ChainError> {
        let b = self
            .rpc(
                "eth_getBlockByNumber",
                self.provider
                    .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest),
            )
            .await?
            .ok_or_else(|| ChainError::Rpc {
                network: self.network.to_string(),
                message: "the node has no latest block".into(),
            })?;
        Ok((b.header.number, b.header.hash, b.header.parent_hash))
    }

    /// The hash of block `number`, `None` if the node has none.
    pub(crate) async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let b = self
            .rpc(
                "eth_getBlockByNumber",
                self.provider.get_block_by_number(number.into()),
            )
            .await?;
        Ok(b.map(|b| b.header.hash))
    }

    /// The `Transfer`, `Approval`, `AuthorizationUsed` and `AuthorizationCanceled` logs of
    /// `tokens` in blocks `from..=to`, in chain order.
    pub(crate) async fn asset_logs(
        &self,
        tokens: &[Address],
        from: u64,
        to: u64,
    ) -> Result<Vec<alloy::rpc::types::Log>, ChainError> {
        use alloy::sol_types::SolEvent;
        let filter = alloy::rpc::types::Filter::new()
            .address(tokens.to_vec())
            .event_signature(vec![
                IToken::Transfer::SIGNATURE_HASH,
                IToken::Approval::SIGNATURE_HASH,
                IToken::AuthorizationUsed::SIGNATURE_HASH,
                IToken::AuthorizationCanceled::SIGNATURE_HASH,
            ])
            .from_block(from)
            .to_block(to);
        self.rpc("eth_getLogs", self.provider.get_logs(&filter))
            .await
    }

    pub async fn permit_nonce(&self, token: Address, owner: Address) -> Result<U256, ChainError> {
        let t = self.token(token);
        self.rpc("nonces", t.nonces(owner).call()).await
    }

    pub(crate) async fn allowance(
        &self,
        token: Address,
        owner: Address,
        spender: Address,
    ) -> Result<U256, ChainError> {
        let t = self.token(token);
        self.rpc("allowance", t.allowance(owner, spender).call())
            .await
    }

    pub async fn authorization_used(
        &self,
        token: Address,
        from: Address,
        nonce: B256,
    ) -> Result<bool, ChainError> {
        let t = self.token(token);
        self.rpc(
            "authorizationState",
            t.authorizationState(from, nonce).call(),
        )
        .await
    }

    /// The signer's next nonce counting the node's pending pool.
    pub(crate) async fn pending_nonce(&self) -> Result<u64, ChainError> {
        self.rpc(
            "eth_getTransactionCount",
            self.provider.get_transaction_count(self.signer).pending(),
        )
        .await
    }

    /// The signer's confirmed transaction count: every nonce below it is used by a mined transaction.
    pub(crate) async fn latest_nonce(&self) -> Result<u64, ChainError> {
        self.rpc(
            "eth_getTransactionCount",
            self.provider.get_transaction_count(self.signer).latest(),
        )
        .await
    }

    /// (max fee per gas, max priority fee per gas).
    pub(crate) async fn fees(&self) -> Result<(u128, u128), ChainError> {
        let est = self
            .rpc("fee estimate", self.provider.estimate_eip1559_fees())
            .await?;
        // Headroom so a stored raw transaction stays includable if the base fee rises a bit.
        Ok((
            est.max_fee_per_gas.saturating_mul(2),
            est.max_priority_fee_per_gas,
        ))
    }

    /// Signs a call to `to` with an explicit nonce and fees: (hash, raw EIP-2718 bytes).
    pub(crate) async fn sign(
        &self,
        to: Address,
        input: Bytes,
        nonce: u64,
        fees: (u128, u128),
    ) -> Result<(B256, Vec<u8>), ChainError> {
        self.sign_with_gas(to, input, nonce, fees, self.gas_limit)
            .await
    }

    /// [`Chain::sign`] with an explicit gas limit (a batch's scales with its items).
    pub(crate) async fn sign_with_gas(
        &self,
        to: Address,
        input: Bytes,
        nonce: u64,
        fees: (u128, u128),
        gas_limit: u64,
    ) -> Result<(B256, Vec<u8>), ChainError> {
        let req = TransactionRequest::default()
            .with_from(self.signer)
            .with_to(to)
            .with_input(input)
            .with_nonce(nonce)
            .with_chain_id(self.network.chain_id)
            .with_gas_limit(gas_limit)
            .with_max_fee_per_gas(fees.0)
            .with_max_priority_fee_per_gas(fees.1)
            .with_value(U256::ZERO);
        let env: TxEnvelope = req.build(&self.wallet).await.map_err(|e| ChainError::Rpc {
            network: self.network.to_string(),
            message: self.scrub(format!("signing: {e}")),
        })?;
        Ok((*env.tx_hash(), env.encoded_2718()))
    }

    /// The base fee of the latest block (0 before London / when the node shows none).
    pub(crate) async fn base_fee(&self) -> Result<u128, ChainError> {
        let block = self
            .rpc(
                "eth_getBlockByNumber",
                self.provider
                    .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest),
            )
            .await?;
        Ok(block
            .and_then(|b| b.header.base_fee_per_gas)
            .map(u128::from)
            .unwrap_or(0))
    }

    /// The settler wallet's ETH balance (wei).
    pub(crate) async fn signer_balance(&self) -> Result<U256, ChainError> {
        self.rpc("eth_getBalance", self.provider.get_balance(self.signer))
            .await
    }

    /// Signs the call of the stored transaction `raw` again, at its nonce, with `fees`
    /// (replace-by-fee: the same call, never another one, at one nonce).
    pub(crate) async fn resign(
        &self,
        raw: &[u8],
        fees: (u128, u128),
    ) -> Result<(B256, Vec<u8>), ChainError> {
        use alloy::consensus::Transaction;
        use alloy::eips::eip2718::Decodable2718;
        let bad = |m: String| ChainError::Rpc {
            network: self.network.to_string(),
            message: format!("stored transaction: {m}"),
        };
        let env = TxEnvelope::decode_2718(&mut &raw[..]).map_err(|e| bad(e.to_string()))?;
        let to = env.to().ok_or_else(|| bad("no recipient".into()))?;
        // The stored transaction's own gas limit (a batch's is its items').
        self.sign_with_gas(to, env.input().clone(), env.nonce(), fees, env.gas_limit())
            .await
    }

    /// Whether `input` to `to` would execute now, from the settler's wallet (`eth_call`).
    /// `Ok(false)`: it reverts.
    pub(crate) async fn simulate(&self, to: Address, input: Bytes) -> Result<bool, ChainError> {
        let req = TransactionRequest::default()
            .with_from(self.signer)
            .with_to(to)
            .with_input(input);
        match tokio::time::timeout(self.timeout, self.provider.call(req).into_future()).await {
            Ok(Ok(_)) => Ok(true),
            // A revert is an error with revert data; a transport failure is not an answer.
            Ok(Err(e)) if e.as_error_resp().is_some() => Ok(false),
            Ok(Err(e)) => Err(ChainError::Rpc {
                network: self.network.to_string(),
                message: self.scrub(format!("eth_call: {e}")),
            }),
            Err(_) => Err(ChainError::Timeout {
                network: self.network.to_string(),
            }),
        }
    }

    /// The ERC-3009 `AuthorizationUsed` / `AuthorizationCanceled` event of (`authorizer`,
    /// `nonce`) on `token` within the last `lookback` blocks: (canceled, tx hash, block).
    pub(crate) async fn authorization_event(
        &self,
        token: Address,
        authorizer: Address,
        nonce: B256,
        lookback: u64,
    ) -> Result<Option<(bool, B256, u64)>, ChainError> {
        use alloy::sol_types::SolEvent;
        let latest = self.block_number().await?;
        let filter = alloy::rpc::types::Filter::new()
            .address(token)
            .event_signature(vec![
                IToken::AuthorizationUsed::SIGNATURE_HASH,
                IToken::AuthorizationCanceled::SIGNATURE_HASH,
            ])
            .topic1(authorizer.into_word())
            .topic2(nonce)
            .from_block(latest.saturating_sub(lookback))
            .to_block(latest);
        let logs = self
            .rpc("eth_getLogs", self.provider.get_logs(&filter))
            .await?;
        Ok(logs.iter().find_map(|l| {
            let canceled = l.topic0()? == &IToken::AuthorizationCanceled::SIGNATURE_HASH;
            Some((canceled, l.transaction_hash?, l.block_number?))
        }))
    }

    pub(crate) async fn broadcast(&self, raw: &[u8]) -> SendOutcome {
        match tokio::time::timeout(self.timeout, self.provider.send_raw_transaction(raw)).await {
            Ok(Ok(_)) => SendOutcome::Accepted,
            Ok(Err(e)) => {
                let msg = self.scrub(e.to_string());
                let lower = msg.to_ascii_lowercase();
                if lower.contains("already known")
                    || lower.contains("nonce too low")
                    || lower.contains("already imported")
                    || lower.contains("known transaction")
                {
                    SendOutcome::AlreadyKnown(msg)
                } else {
                    SendOutcome::Error(msg)
                }
            }
            Err(_) => SendOutcome::Error("timed out".into()),
        }
    }

    pub async fn receipt(&self, hash: B256) -> Result<Option<TransactionReceipt>, ChainError> {
        self.rpc(
            "eth_getTransactionReceipt",
            self.provider.get_transaction_receipt(hash),
        )
        .await
    }

    /// `eth_getTransactionByHash`: `None` when the node does not know the hash, else the
    /// block it is in (`None` inside: still in the pool).
    pub(crate) async fn transaction_block(
        &self,
        hash: B256,
    ) -> Result<Option<Option<u64>>, ChainError> {
        let t = self
            .rpc(
                "eth_getTransactionByHash",
                self.provider.get_transaction_by_hash(hash),
            )
            .await?;
        Ok(t.map(|t| t.block_number))
    }
}

sol! {
    /// What a token says about its EIP-712 domain (EIP-2612 / EIP-5267 / FiatToken getters).
    #[sol(rpc)]
    interface IEip712Token {
        function DOMAIN_SEPARATOR() external view returns (bytes32);
        function name() external view returns (string);
        function version() external view returns (string);
        function eip712Domain() external view returns (bytes1 fields, string name, string version, uint256 chainId, address verifyingContract, bytes32 salt, uint256[] extensions);
    }
}

/// A token's own account of its EIP-712 domain; `None` where the contract has no getter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeclaredDomain {
    pub(crate) name: Option<String>,
    pub(crate) version: Option<String>,
}

impl Chain {
    /// The token's `DOMAIN_SEPARATOR()`.
    pub(crate) async fn domain_separator(&self, token: Address) -> Result<B256, ChainError> {
        let t = IEip712Token::new(token, &self.provider);
        self.rpc("DOMAIN_SEPARATOR", t.DOMAIN_SEPARATOR().call())
            .await
    }

    /// The token's name and version as it declares them: EIP-5267 `eip712Domain()` when it
    /// has it, else `name()` and `version()` (FiatToken). For messages only.
    pub(crate) async fn declared_domain(&self, token: Address) -> DeclaredDomain {
        let t = IEip712Token::new(token, &self.provider);
        if let Ok(d) = self.rpc("eip712Domain", t.eip712Domain().call()).await {
            return DeclaredDomain {
                name: Some(d.name),
                version: Some(d.version),
            };
        }
        DeclaredDomain {
            name: self.rpc("name", t.name().call()).await.ok(),
            version: self.rpc("version", t.version().call()).await.ok(),
        }
    }
}

const REDACTED: &str = "/***";

/// An RPC URL fit for logs: scheme, host and port only (providers put API keys in the path,
/// the query or the user info).
pub fn redact_url(url: &str) -> String {
    match url.parse::<alloy::transports::http::reqwest::Url>() {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let hidden = !u.username().is_empty()
                || u.password().is_some()
                || u.path() != "/"
                || u.query().is_some()
                || u.fragment().is_some();
            format!(
                "{}://{host}{port}{}",
                u.scheme(),
                if hidden { REDACTED } else { "" }
            )
        }
        Err(_) => "<unparsable url>".into(),
    }
}

pub(crate) fn permit_call(p: &Permit) -> Bytes {
    IToken::permitCall {
        owner: p.owner,
        spender: p.spender,
        value: p.value,
        deadline: p.deadline,
        v: p.sig.v,
        r: p.sig.r,
        s: p.sig.s,
    }
    .abi_encode()
    .into()
}

pub(crate) fn transfer_from_call(from: Address, to: Address, value: U256) -> Bytes {
    IToken::transferFromCall { from, to, value }
        .abi_encode()
        .into()
}

pub(crate) fn transfer_with_authorization_call(a: &Authorization) -> Bytes {
    IToken::transferWithAuthorizationCall {
        from: a.from,
        to: a.to,
        value: a.value,
        validAfter: a.valid_after,
        validBefore: a.valid_before,
        nonce: a.nonce,
        v: a.sig.v,
        r: a.sig.r,
        s: a.sig.s,
    }
    .abi_encode()
    .into()
}

/// A `Transfer(from, to, value)` log and the token contract that emitted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransferLog {
    pub token: Address,
    pub from: Address,
    pub to: Address,
    pub value: U256,
}

/// The `Transfer` logs of `receipt` (logs that do not decode as one are left out).
pub(crate) fn transfer_logs(receipt: &TransactionReceipt) -> Vec<TransferLog> {
    receipt
        .inner
        .logs()
        .iter()
        .filter_map(|log| {
            let t = log.log_decode::<IToken::Transfer>().ok()?;
            Some(TransferLog {
                token: log.address(),
                from: t.inner.data.from,
                to: t.inner.data.to,
                value: t.inner.data.value,
            })
        })
        .collect()
}

/// One `ItemResult` of the batch contract: item `index` of the batch, whether its
/// `permit()` (if any) and its transfer succeeded, and the transfer's revert data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ItemLog {
    pub index: u64,
    pub permit_ok: bool,
    pub ok: bool,
    pub reason: Bytes,
}

/// The `ItemResult` logs `contract` emitted in `receipt`, in log order.
pub(crate) fn item_logs(receipt: &TransactionReceipt, contract: Address) -> Vec<ItemLog> {
    receipt
        .inner
        .logs()
        .iter()
        .filter(|log| log.address() == contract)
        .filter_map(|log| {
            let e = log.log_decode::<IX402Settlement::ItemResult>().ok()?;
            let d = &e.inner.data;
            Some(ItemLog {
                index: u64::try_from(d.index).ok()?,
                permit_ok: d.permitOk,
                ok: d.ok,
                reason: d.reason.clone(),
            })
        })
        .collect()
}

/// `settle(token, items)` of the batch contract.
pub(crate) fn batch_call(token: Address, items: Vec<IX402Settlement::Item>) -> Bytes {
    IX402Settlement::settleCall { token, items }
        .abi_encode()
        .into()
}

/// All configured networks.
#[derive(Clone, Default)]
pub struct Chains {
    /// Per network, one chain per wallet of the signer pool, never empty (built by
    /// [`Chains::insert`]). The first is the primary wallet's: reads, and the wallet shown as
    /// permit spender. Each drives its own settlement lane.
    pub pools: HashMap<Network, Vec<Arc<Chain>>>,
}

impl Chains {
    /// The primary wallet's chain of `n`.
    pub fn get(&self, n: Network) -> Result<&Arc<Chain>, ChainError> {
        self.primary(n)
            .ok_or_else(|| ChainError::UnknownNetwork(n.to_string()))
    }

    /// The primary wallet's chain of `n`, if `n` is configured.
    pub fn primary(&self, n: Network) -> Option<&Arc<Chain>> {
        self.pools.get(&n).and_then(|pool| pool.first())
    }

    /// Every configured network with its primary wallet's chain.
    pub fn primaries(&self) -> impl Iterator<Item = (Network, &Arc<Chain>)> {
        self.pools
            .iter()
            .filter_map(|(n, pool)| pool.first().map(|c| (*n, c)))
    }

    /// Adds `network` with its primary chain and the other wallets of the pool.
    pub fn insert(&mut self, primary: Chain, others: &[PrivateKeySigner]) {
        let network = primary.network;
        let primary = Arc::new(primary);
        let mut pool = vec![primary.clone()];
        pool.extend(
            others
                .iter()
                .map(|k| Arc::new(primary.with_signer(k.clone()))),
        );
        self.pools.insert(network, pool);
    }

    /// Whether `wallet` is one of the settler's wallets on `network`.
    pub fn is_pool_wallet(&self, network: Network, wallet: Address) -> bool {
        self.pools
            .get(&network)
            .is_some_and(|p| p.iter().any(|c| c.signer() == wallet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_urls_are_redacted() {
        assert_eq!(redact_url("http://127.0.0.1:8545"), "http://127.0.0.1:8545");
        assert_eq!(
            redact_url("https://base-mainnet.g.alchemy.com/v2/SECRETKEY"),
            "https://base-mainnet.g.alchemy.com/***"
        );
        assert_eq!(
            redact_url("https://rpc.example/?apikey=SECRETKEY"),
            "https://rpc.example/***"
        );
        assert_eq!(
            redact_url("https://user:SECRETKEY@rpc.example"),
            "https://rpc.example/***"
        );
        let chain = Chain::new(
            Network::eip155(1),
            "https://rpc.example/v2/SECRETKEY",
            PrivateKeySigner::random(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            1,
        )
        .unwrap();
        let msg =
            chain.scrub("error sending request for url (https://rpc.example/v2/SECRETKEY)".into());
        assert!(!msg.contains("SECRETKEY"), "{msg}");
        let local = Chain::new(
            Network::eip155(1),
            "http://127.0.0.1:8545",
            PrivateKeySigner::random(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            1,
        )
        .unwrap();
        assert_eq!(
            local.scrub("for url (http://127.0.0.1:8545/)".into()),
            "for url (http://127.0.0.1:8545/)"
        );
    }
}
