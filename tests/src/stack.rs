//! The whole product on 127.0.0.1, as a user runs it: anvil with the test USDC, the settler
//! binary (SQLite), Envoy with the filter in front of an upstream, wired by the filter config.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use x402_protocol::settler_api::{SettlementState, SettlementStatus};
use x402_protocol::token::{key_id, signing_key_from_hex, verifying_key_to_hex};

use crate::anvil::{dev_address, Anvil, AnvilOptions, DEV_KEYS};
use crate::envoy::{Envoy, EnvoyOpts};
use crate::settler::{usdc_terms, SettlerOptions, SettlerProcess};
use crate::upstream::Upstream;

/// Route names and prices of [`Stack::filter_config`].
pub const WEATHER: &str = "weather"; // 0.01 USDC, exact or permit, GET /api/weather
pub const REPORT: &str = "report"; // 0.25 USDC, exact only, /api/report
pub const WEATHER_PRICE: u64 = 10_000;
pub const REPORT_PRICE: u64 = 250_000;

pub struct Stack {
    pub anvil: Anvil,
    pub token: Address,
    /// The settler's wallet (anvil dev account 8; account 0 deploys and mints in tests, and a
    /// wallet must be used by the settler alone): spender of permits, sends settlements.
    pub spender: Address,
    /// The API owner's wallet (anvil dev account 9).
    pub pay_to: Address,
    pub settler: SettlerProcess,
    pub upstream: Upstream,
    pub envoy: Envoy,
    /// The settler's token key file (`--token-key-file`).
    pub key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Gives the filter the settler's gateway secret: Envoy gets it in its environment
/// (`EnvoyOpts::settler_secret`, `X402_SETTLER_SECRET`, passed to the VM by
/// `host_env_keys`, as the shipped manifests do), and the filter reads it from there at
/// configure time (`settler.api_secret_env`).
pub fn attach_settler_secret(config: &mut Value, opts: &mut EnvoyOpts, secret: Option<&str>) {
    let Some(secret) = secret else {
        return;
    };
    opts.settler_secret = Some(secret.to_string());
    config["settler"]["api_secret_env"] = json!(crate::envoy::SETTLER_SECRET_ENV);
}

/// The chain of [`Stack::start_on_chain`]: anvil's chain id (default 31337) and where the
/// test token lives (default: where it is deployed).
#[derive(Debug, Clone, Default)]
pub struct ChainSetup {
    pub chain_id: Option<u64>,
    /// The token's runtime code and name/symbol placed at this address
    /// ([`Anvil::deploy_token_at`]).
    pub token_at: Option<Address>,
}

/// Options of [`Stack::start_with`].
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Extra settler arguments (e.g. `--no-worker`).
    pub settler_args: Vec<String>,
    /// Envoy worker threads (0: 1).
    pub envoy_concurrency: u32,
    /// The settler's `--token-alg` (`None`: its default, ES256K). With one set, the filter
    /// trusts the key entry the settler prints (`x402-settler token-key`), as an operator
    /// copies it into the config.
    pub token_alg: Option<String>,
    /// The virtual host's routes ([`EnvoyOpts::routes_yaml`]).
    pub routes_yaml: Option<String>,
    /// Envoy's `jwt_authn` ahead of the filter ([`EnvoyOpts::native_jwt`]).
    pub native_jwt: Option<crate::envoy::NativeJwt>,
}

impl Stack {
    pub async fn start() -> Result<Stack> {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(stack_opts: StackOptions) -> Result<Stack> {
        Self::start_with_filter(stack_opts, |_| {}).await
    }

    /// [`Stack::start_with`], with the filter config ([`Stack::filter_config`]) changed by
    /// `edit` before Envoy starts (e.g. a route option).
    pub async fn start_with_filter(
        stack_opts: StackOptions,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Stack> {
        Self::start_on_chain(ChainSetup::default(), stack_opts, edit).await
    }

    /// [`Stack::start_with_filter`] on the chain `chain` describes (e.g. anvil as Sepolia with
    /// the test token at Sepolia's USDC address, for clients with a built-in token table).
    pub async fn start_on_chain(
        chain: ChainSetup,
        stack_opts: StackOptions,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Stack> {
        let dir = tempfile::Builder::new().prefix("x402-stack-").tempdir()?;
        let anvil = Anvil::start_with(AnvilOptions {
            chain_id: chain.chain_id.unwrap_or(crate::anvil::CHAIN_ID),
            ..AnvilOptions::default()
        })?;
        let token = match chain.token_at {
            Some(at) => anvil.deploy_token_at(at).await?,
            None => anvil.deploy_token().await?,
        };
        let key_file = dir.path().join("token.key");
        let db = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("settler.db").display()
        );
        let spender = dev_address(8);
        let pay_to = dev_address(9);
        let network = anvil.network().to_string();
        let mut opts = SettlerOptions::new(db, &network, anvil.rpc_url(), DEV_KEYS[8], &key_file)
            .with_terms(usdc_terms(&network, token, &[pay_to]));
        opts.env.push(("RUST_LOG".into(), "info".into()));
        opts.extra_args
            .extend(stack_opts.settler_args.iter().cloned());
        opts.token_alg = stack_opts.token_alg.clone();
        let settler = SettlerProcess::start(opts).await?;
        let upstream = Upstream::start()?;
        let mut config = match stack_opts.token_alg {
            None => {
                let key_hex =
                    std::fs::read_to_string(&key_file).context("settler token key file")?;
                let key = signing_key_from_hex(&key_hex).context("token key parses")?;
                Self::filter_config(&key, token, network, spender, pay_to)
            }
            Some(_) => {
                let placeholder = k256::ecdsa::SigningKey::from_slice(&[1; 32])?;
                let mut c = Self::filter_config(&placeholder, token, network, spender, pay_to);
                c["token_keys"] = json!([settler.token_key_entry()?]);
                c
            }
        };
        edit(&mut config);
        let mut envoy_opts = EnvoyOpts {
            upstream_port: Some(upstream.port()),
            settler_port: Some(settler.port()),
            concurrency: stack_opts.envoy_concurrency.max(1),
            routes_yaml: stack_opts.routes_yaml,
            native_jwt: stack_opts.native_jwt,
            ..EnvoyOpts::default()
        };
        attach_settler_secret(&mut config, &mut envoy_opts, settler.api_secret());
        let envoy = Envoy::start(&config.to_string(), envoy_opts)?;
        Ok(Stack {
            anvil,
            token,
            spender,
            pay_to,
            settler,
            upstream,
            envoy,
            key_file,
            _dir: dir,
        })
    }

    /// A client of the `x402_client` library with a fresh key holding `usdc` USDC (whole
    /// units, as [`Stack::funded_payer`]), paying up to 0.5 USDC a call on this chain and
    /// token with `schemes`; and its address.
    pub async fn payer(
        &self,
        usdc: u64,
        schemes: Vec<x402_protocol::Scheme>,
    ) -> Result<(x402_client::pay::Payer, Address)> {
        let signer = self.funded_payer(usdc).await?;
        let address = signer.address();
        let network = x402_protocol::Network::eip155(self.anvil.chain_id());
        let caps = x402_client::caps::Caps::default()
            .with_max("0.5")?
            .allow_network(network)
            .allow_asset(self.token)
            .asset_decimals(self.token, 6)
            .schemes(schemes);
        let config =
            x402_client::pay::Config::new(signer, caps).with_rpc(network, self.anvil.rpc_url());
        Ok((x402_client::pay::Payer::new(config)?, address))
    }

    /// The filter config of the stack: two priced routes, one free.
    pub fn filter_config(
        key: &k256::ecdsa::SigningKey,
        token: Address,
        network: String,
        spender: Address,
        pay_to: Address,
    ) -> Value {
        let vk = *key.verifying_key();
        let asset = json!({"address": token.to_checksum(None), "decimals": 6, "name": "USDC", "version": "2", "symbol": "USDC"});
        json!({
            "token_endpoint_prefix": "/x402/token/",
            "settler": {"cluster": "x402_settler", "authority": "x402-settler", "timeout_ms": 5000, "failure_mode": "deny"},
            "token_keys": [{"kid": key_id(&vk), "public_key": verifying_key_to_hex(&vk)}],
            "token_ttl_secs": 300,
            "payment_methods": {
                "usdc-exact": {"scheme": "exact", "network": network, "asset": asset, "pay_to": pay_to.to_checksum(None)},
                "usdc-permit": {"scheme": "permit", "network": network, "asset": asset, "pay_to": pay_to.to_checksum(None), "spender": spender.to_checksum(None)}
            },
            "routes": [
                {"name": WEATHER, "match": {"prefix": "/api/weather"}, "methods": ["GET"], "price": "0.01",
                 "description": "Weather report", "payment_methods": ["usdc-exact", "usdc-permit"]},
                {"name": REPORT, "match": {"prefix": "/api/report"}, "price": "0.25",
                 "description": "Report", "payment_methods": ["usdc-exact"]}
            ]
        })
    }

    pub fn base_url(&self) -> String {
        self.envoy.base_url()
    }

    /// A new payer with `usdc` whole USDC minted to it (it needs no ETH: it only signs).
    pub async fn funded_payer(&self, usdc: u64) -> Result<PrivateKeySigner> {
        let signer = PrivateKeySigner::random();
        self.anvil
            .mint(
                self.token,
                signer.address(),
                U256::from(usdc) * U256::from(1_000_000u64),
            )
            .await?;
        Ok(signer)
    }

    pub async fn balance(&self, who: Address) -> Result<U256> {
        self.anvil.balance_of(self.token, who).await
    }

    pub async fn settlement(&self, id: &str) -> Result<SettlementStatus> {
        let r = reqwest::get(format!("{}/v1/settlements/{id}", self.settler.url())).await?;
        if !r.status().is_success() {
            bail!("GET settlement {id}: {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// Waits until the settlement is `settled` (error if it fails or times out).
    pub async fn wait_settled(&self, id: &str, timeout: Duration) -> Result<SettlementStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.settlement(id).await?;
            match s.state {
                SettlementState::Settled => return Ok(s),
                SettlementState::Failed => bail!("settlement {id} failed: {:?}", s.error),
                _ if Instant::now() > deadline => {
                    bail!("settlement {id} still {:?} after {timeout:?}", s.state)
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
