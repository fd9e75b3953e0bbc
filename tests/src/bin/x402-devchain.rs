//! Local-chain chores for `make demo`, `make run` and `make bench`: deploy the test USDC to a
//! running anvil, fund payers, print balances. Sends from anvil's public dev account 0: only
//! for local chains.

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::ProviderBuilder;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use x402_protocol::amount::{format_base_units, parse_decimal};
use x402_testkit::anvil::{deploy_settlement_with, deploy_token_with, dev_signer, TestUsdc};

const DECIMALS: u8 = 6;

#[derive(Parser)]
#[command(
    name = "x402-devchain",
    about = "Deploy and fund the test USDC on a local anvil chain"
)]
struct Cli {
    /// JSON-RPC URL of the local chain.
    #[arg(long, default_value = "http://127.0.0.1:8545")]
    rpc: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deploys the token and prints its address; `--mint ADDR=AMOUNT` funds payers (human units).
    Deploy {
        #[arg(long, value_name = "ADDR=AMOUNT")]
        mint: Vec<String>,
    },
    /// Deploys the batch settlement contract (contracts/X402Settlement.sol), `--operator`
    /// (the settler's wallet) allowed to settle through it; prints its address.
    DeploySettlement {
        #[arg(long, required = true)]
        operator: Vec<Address>,
    },
    /// Prints the token balance of each address, in USDC.
    Balances {
        #[arg(long)]
        token: Address,
        addresses: Vec<Address>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let url = cli.rpc.parse().context("--rpc is not a URL")?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(dev_signer(0)))
        .connect_http(url);
    match cli.cmd {
        Cmd::Deploy { mint } => {
            let token = deploy_token_with(&provider).await?;
            let usdc = TestUsdc::new(token, &provider);
            for spec in mint {
                let (addr, amount) = spec.split_once('=').context("--mint wants ADDR=AMOUNT")?;
                let addr: Address = addr.parse().context("--mint address")?;
                let amount = parse_decimal(amount, DECIMALS).context("--mint amount")?;
                let r = usdc.mint(addr, amount).send().await?.get_receipt().await?;
                if !r.status() {
                    bail!("mint to {addr} reverted");
                }
            }
            println!("{token}");
        }
        Cmd::DeploySettlement { operator } => {
            println!("{}", deploy_settlement_with(&provider, &operator).await?);
        }
        Cmd::Balances { token, addresses } => {
            let usdc = TestUsdc::new(token, &provider);
            for a in addresses {
                let b: U256 = usdc.balanceOf(a).call().await.context("balanceOf")?;
                println!("{a} {} USDC", format_base_units(b, DECIMALS));
            }
        }
    }
    Ok(())
}
