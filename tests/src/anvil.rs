//! A local anvil chain for tests, with the USDC-like test token (`contracts/TestUSDC.sol`).
//!
//! `Anvil::start()` runs `paths::anvil_bin()` on a free 127.0.0.1 port (chain id 31337, instant
//! mining unless a block time is asked for) and kills it when the handle is dropped.
//!
//! The dev keys below are anvil's well-known, public test keys (mnemonic "test test ... junk"):
//! tests only, never for anything that holds value.

// The generated contract bindings mirror the ABI (permit and ERC-3009 take many arguments).
#![allow(clippy::too_many_arguments)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{anyhow, bail, Context, Result};

use crate::child::{wait_started, Started};
use crate::envoy::{request, HttpRequest};
use crate::paths;

/// Anvil's default chain id.
pub const CHAIN_ID: u64 = 31337;

/// Private keys of anvil's default accounts 0..9 (public test keys: tests only).
pub const DEV_KEYS: [&str; 10] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

/// Addresses of anvil's default accounts 0..9 (EIP-55).
pub const DEV_ADDRESSES: [&str; 10] = [
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
    "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
    "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
    "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
    "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
    "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
];

/// Signer for dev account `i` (0..9). Panics on an index out of range (a test bug).
pub fn dev_signer(i: usize) -> PrivateKeySigner {
    DEV_KEYS[i].parse().expect("anvil dev key parses")
}

/// Address of dev account `i` (0..9).
pub fn dev_address(i: usize) -> Address {
    DEV_ADDRESSES[i].parse().expect("anvil dev address parses")
}

alloy::sol! {
    /// The test token's interface (see contracts/TestUSDC.sol). Overloads get `_0`/`_1` suffixes:
    /// `transferWithAuthorization_0` is (v, r, s), `transferWithAuthorization_1` is `bytes`.
    #[sol(rpc)]
    interface TestUsdc {
        function name() external view returns (string);
        function symbol() external view returns (string);
        function decimals() external view returns (uint8);
        function totalSupply() external view returns (uint256);
        function balanceOf(address account) external view returns (uint256);
        function allowance(address owner, address spender) external view returns (uint256);
        function transfer(address to, uint256 value) external returns (bool);
        function transferFrom(address from, address to, uint256 value) external returns (bool);
        function mint(address to, uint256 amount) external;
        function nonces(address owner) external view returns (uint256);
        function DOMAIN_SEPARATOR() external view returns (bytes32);
        function permit(address owner, address spender, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external;
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        function cancelAuthorization(address authorizer, bytes32 nonce, bytes signature) external;
        event Transfer(address indexed from, address indexed to, uint256 value);
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    }
}

/// How to start anvil.
#[derive(Debug, Clone)]
pub struct AnvilOptions {
    pub chain_id: u64,
    /// `None`: instant mining (a block per transaction). `Some(s)`: `--block-time s`.
    pub block_time_secs: Option<u64>,
    /// How long to wait for the RPC to answer.
    pub start_timeout: Duration,
}

impl Default for AnvilOptions {
    fn default() -> Self {
        AnvilOptions {
            chain_id: CHAIN_ID,
            block_time_secs: None,
            start_timeout: Duration::from_secs(20),
        }
    }
}

/// A running anvil; killed on drop.
pub struct Anvil {
    child: Child,
    port: u16,
    chain_id: u64,
    log: tempfile::NamedTempFile,
}

impl Anvil {
    /// Starts anvil with the defaults (chain 31337, instant mining).
    pub fn start() -> Result<Anvil> {
        Self::start_with(AnvilOptions::default())
    }

    /// Starts anvil with a block time in seconds (transactions wait for the next block).
    pub fn start_with_block_time(secs: u64) -> Result<Anvil> {
        Self::start_with(AnvilOptions {
            block_time_secs: Some(secs),
            ..Default::default()
        })
    }

    /// Starts anvil; retries on another port if the chosen one was taken meanwhile.
    pub fn start_with(opts: AnvilOptions) -> Result<Anvil> {
        let bin = paths::anvil_bin();
        if !bin.exists() {
            bail!(
                "anvil not found at {} (run `make setup`, or set X402_ANVIL_BIN)",
                bin.display()
            );
        }
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start(&bin, &opts) {
                Ok(a) => return Ok(a),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("anvil did not start")))
    }

    fn try_start(bin: &Path, opts: &AnvilOptions) -> Result<Anvil> {
        let port = crate::ports::free_port();
        if port == 0 {
            bail!("no free TCP port on 127.0.0.1");
        }
        let log = tempfile::Builder::new()
            .prefix("anvil-")
            .suffix(".log")
            .tempfile()?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--chain-id",
            &opts.chain_id.to_string(),
        ])
        .arg("--quiet")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.reopen()?))
        .stderr(Stdio::from(log.reopen()?));
        if let Some(b) = opts.block_time_secs {
            cmd.args(["--block-time", &b.to_string()]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut anvil = Anvil {
            child,
            port,
            chain_id: opts.chain_id,
            log,
        };
        match wait_started(&mut anvil.child, opts.start_timeout, || rpc_answers(port))? {
            Started::Ready => Ok(anvil),
            Started::Exited(status) => bail!(
                "anvil exited during start-up ({status}) on port {port}:\n{}",
                anvil.output()
            ),
            Started::TimedOut => {
                bail!(
                    "anvil did not answer on port {port} within {:?}:\n{}",
                    opts.start_timeout,
                    anvil.output()
                )
            }
        }
    }

    /// What anvil printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// CAIP-2 id, `eip155:31337`.
    pub fn network(&self) -> x402_protocol::Network {
        x402_protocol::Network::eip155(self.chain_id)
    }

    /// A provider without a wallet (reads, raw RPC).
    pub fn provider(&self) -> DynProvider {
        ProviderBuilder::new().connect_http(self.url()).erased()
    }

    /// A provider that signs and sends transactions with `signer`. Nonces are read from the
    /// node (`pending`) for every transaction rather than cached, so a send that failed (e.g. a
    /// revert caught by gas estimation) never leaves a nonce gap that would stall the next one.
    pub fn provider_with(&self, signer: PrivateKeySigner) -> DynProvider {
        ProviderBuilder::new()
            .disable_recommended_fillers()
            .with_gas_estimation()
            .with_simple_nonce_management()
            .fetch_chain_id()
            .wallet(EthereumWallet::from(signer))
            .connect_http(self.url())
            .erased()
    }

    /// A provider sending from dev account `i`.
    pub fn dev_provider(&self, i: usize) -> DynProvider {
        self.provider_with(dev_signer(i))
    }

    fn url(&self) -> alloy::transports::http::reqwest::Url {
        self.rpc_url().parse().expect("static URL parses")
    }

    /// The token at `token`, bound to a provider sending from dev account 0.
    pub fn token(&self, token: Address) -> TestUsdc::TestUsdcInstance<DynProvider> {
        TestUsdc::new(token, self.dev_provider(0))
    }

    /// Deploys contracts/build/TestUSDC.json from dev account 0; returns its address.
    pub async fn deploy_token(&self) -> Result<Address> {
        deploy_token_with(&self.dev_provider(0)).await
    }

    /// Deploys the batch settlement contract (contracts/X402Settlement.sol) from dev account
    /// 0, `operators` (the settler's wallets) allowed to settle through it.
    pub async fn deploy_settlement(&self, operators: &[Address]) -> Result<Address> {
        deploy_settlement_with(&self.dev_provider(0), operators).await
    }

    /// Deploys the token, then copies its runtime code and name/symbol storage to a fixed
    /// address (e.g. a real USDC address a client insists on). The EIP-712 domain then uses
    /// `at` as verifyingContract (OZ EIP712 rebuilds the separator for a different address).
    pub async fn deploy_token_at(&self, at: Address) -> Result<Address> {
        let deployed = self.deploy_token().await?;
        let provider = self.provider();
        let code = provider.get_code_at(deployed).await?;
        self.set_code(at, code).await?;
        // ERC20 storage layout (OZ 5): slot 3 = name, slot 4 = symbol (short strings inline).
        for slot in [3u64, 4] {
            let value = provider.get_storage_at(deployed, U256::from(slot)).await?;
            let _: serde_json::Value = provider
                .raw_request(
                    "anvil_setStorageAt".into(),
                    (at, B256::from(U256::from(slot)), B256::from(value)),
                )
                .await
                .context("anvil_setStorageAt")?;
        }
        Ok(at)
    }

    /// `anvil_setCode`: places runtime bytecode at an address.
    pub async fn set_code(&self, at: Address, code: Bytes) -> Result<()> {
        let _: serde_json::Value = self
            .provider()
            .raw_request("anvil_setCode".into(), (at, code))
            .await
            .context("anvil_setCode")?;
        Ok(())
    }

    /// Mints `amount` base units of `token` to `to` (the token's mint is open to anyone).
    pub async fn mint(&self, token: Address, to: Address, amount: U256) -> Result<()> {
        let receipt = self
            .token(token)
            .mint(to, amount)
            .send()
            .await
            .context("mint")?
            .get_receipt()
            .await?;
        if !receipt.status() {
            bail!("mint reverted (tx {})", receipt.transaction_hash);
        }
        Ok(())
    }

    pub async fn balance_of(&self, token: Address, who: Address) -> Result<U256> {
        TestUsdc::new(token, self.provider())
            .balanceOf(who)
            .call()
            .await
            .context("balanceOf")
    }

    pub async fn allowance(
        &self,
        token: Address,
        owner: Address,
        spender: Address,
    ) -> Result<U256> {
        TestUsdc::new(token, self.provider())
            .allowance(owner, spender)
            .call()
            .await
            .context("allowance")
    }

    /// EIP-2612 `nonces(owner)`.
    pub async fn nonces(&self, token: Address, owner: Address) -> Result<U256> {
        TestUsdc::new(token, self.provider())
            .nonces(owner)
            .call()
            .await
            .context("nonces")
    }

    /// ERC-3009 `authorizationState(authorizer, nonce)`: true once used or cancelled.
    pub async fn authorization_state(
        &self,
        token: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool> {
        TestUsdc::new(token, self.provider())
            .authorizationState(authorizer, nonce)
            .call()
            .await
            .context("authorizationState")
    }

    /// Latest block's timestamp (anvil's clock, which is what deadlines are checked against).
    pub async fn timestamp(&self) -> Result<u64> {
        let block = self
            .provider()
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await?
            .ok_or_else(|| anyhow!("no latest block"))?;
        Ok(block.header.timestamp)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deploys contracts/build/TestUSDC.json with `provider` (which must send from a funded
/// account); returns its address. Also used by `x402-devchain` on a running chain.
pub async fn deploy_token_with<P: Provider>(provider: &P) -> Result<Address> {
    let tx = TransactionRequest::default().with_deploy_code(token_bytecode()?);
    let receipt = provider
        .send_transaction(tx)
        .await
        .context("deploying TestUSDC")?
        .get_receipt()
        .await?;
    if !receipt.status() {
        bail!(
            "TestUSDC deployment reverted (tx {})",
            receipt.transaction_hash
        );
    }
    receipt
        .contract_address
        .ok_or_else(|| anyhow!("deployment receipt has no contract address"))
}

/// Creation bytecode of the test token from the committed artefact.
pub fn token_bytecode() -> Result<Bytes> {
    artefact_field("bytecode")
}

/// Deploys contracts/build/X402Settlement.json with `provider`, `operators` (the settler
/// wallets) allowed to call `settle`; returns its address.
pub async fn deploy_settlement_with<P: Provider>(
    provider: &P,
    operators: &[Address],
) -> Result<Address> {
    use alloy::sol_types::SolValue;
    let mut code = artefact_field_of(&paths::settlement_artifact(), "bytecode")?.to_vec();
    code.extend_from_slice(&(operators.to_vec(),).abi_encode_params());
    let tx = TransactionRequest::default().with_deploy_code(Bytes::from(code));
    let receipt = provider
        .send_transaction(tx)
        .await
        .context("deploying X402Settlement")?
        .get_receipt()
        .await?;
    if !receipt.status() {
        bail!(
            "X402Settlement deployment reverted (tx {})",
            receipt.transaction_hash
        );
    }
    receipt
        .contract_address
        .ok_or_else(|| anyhow!("deployment receipt has no contract address"))
}

fn artefact_field(field: &str) -> Result<Bytes> {
    artefact_field_of(&paths::token_artifact(), field)
}

fn artefact_field_of(path: &std::path::Path, field: &str) -> Result<Bytes> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (rebuild with `make contracts`)", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let hex = json[field]
        .as_str()
        .ok_or_else(|| anyhow!("{} has no `{field}`", path.display()))?;
    hex.parse::<Bytes>()
        .with_context(|| format!("{} `{field}` is not hex", path.display()))
}

/// One blocking JSON-RPC `eth_chainId` (the harness's plain HTTP client): true when anvil answers.
fn rpc_answers(port: u16) -> bool {
    let req = HttpRequest::new("POST", "/")
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#)
        .timeout(Duration::from_millis(500));
    request(SocketAddr::from(([127, 0, 0, 1], port)), &req)
        .is_ok_and(|r| r.status == 200 && r.text().contains("\"result\""))
}
