//! `x402-pay`: GET a URL, paying an HTTP 402 challenge within your caps.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use x402_client::caps::{self, Caps};
use x402_client::status::{self, FollowOptions, Source};
use x402_client::{key, Config, Payer};
use x402_protocol::settler_api::SettlementState;
use x402_protocol::Network;

const AFTER_HELP: &str = "\
Spend rules: never signs more than --max (human units of the asset). The asset's decimals come
from --asset-decimals or the built-in table of known USDC deployments, never from the server; a
payment method whose stated decimals, amounts or chain disagree with those is refused.
Without --network/--asset only known USDC on its own networks is allowed.

Key: --key-file PATH, else env X402_PRIVATE_KEY, else EVM_PRIVATE_KEY (never printed).
Exit codes: 0 ok; 1 HTTP error status (body still printed) or settlement failed;
2 usage/configuration; 3 refused by your limits; 4 network/protocol error.

Examples:
  x402-pay --max 0.5 https://api.example.com/weather
  x402-pay -v --network eip155:31337 --asset 0x5FbD...0aa3 --asset-decimals 0x5FbD...0aa3=6 \\
           --rpc eip155:31337=http://127.0.0.1:8545 --scheme permit http://127.0.0.1:10000/api/weather
  x402-pay status 01J... --origin http://127.0.0.1:10000";

#[derive(Parser, Debug)]
#[command(name = "x402-pay", version, about = "GET a URL, paying an HTTP 402 challenge within your limits", after_help = AFTER_HELP)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    get: GetArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// GET a URL, paying if needed (the default command).
    Get(GetArgs),
    /// Follow a settlement until it is settled or failed, and print its transaction hash.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct GetArgs {
    /// The URL to GET.
    #[arg(required = true)]
    url: Option<String>,
    /// Most to pay per request, in the asset's units (e.g. 0.5 = half a USDC).
    #[arg(long, default_value = caps::DEFAULT_MAX, value_name = "AMOUNT")]
    max: String,
    /// Allowed network (CAIP-2, repeatable). Default: networks of known USDC.
    #[arg(long = "network", value_name = "eip155:ID")]
    networks: Vec<String>,
    /// Allowed asset address (repeatable). Default: known USDC on its network.
    #[arg(long = "asset", value_name = "ADDRESS")]
    assets: Vec<String>,
    /// Decimals you trust for an asset (repeatable), e.g. 0xabc...=6.
    #[arg(long = "asset-decimals", value_name = "ADDRESS=N")]
    asset_decimals: Vec<String>,
    /// Allowed schemes in order of preference: exact (ERC-3009), permit (EIP-2612).
    #[arg(long = "scheme", value_delimiter = ',', value_name = "exact|permit")]
    schemes: Vec<String>,
    /// JSON-RPC endpoint per network, to read permit nonces (repeatable; env X402_RPC,
    /// comma-separated).
    #[arg(
        long = "rpc",
        value_name = "eip155:ID=URL",
        env = "X402_RPC",
        value_delimiter = ','
    )]
    rpc: Vec<String>,
    /// File with the hex private key (else env X402_PRIVATE_KEY / EVM_PRIVATE_KEY).
    #[arg(long = "key-file", value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Token cache file (default ~/.cache/x402-pay/tokens.json).
    #[arg(long = "cache-file", value_name = "PATH")]
    cache_file: Option<PathBuf>,
    /// Keep tokens in memory only (every run pays again).
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Validity of the signed permit / authorization, seconds.
    #[arg(long = "valid-for", default_value_t = 600, value_name = "SECS")]
    valid_for: u64,
    /// Answer an x402 v2 PAYMENT-REQUIRED header even when the seed token-endpoint flow is
    /// also offered (it is used anyway when it is the only challenge).
    #[arg(long = "x402-v2")]
    x402_v2: bool,
    /// Print each step of the exchange on stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Settlement id (printed by `x402-pay -v` after paying).
    id: String,
    /// Gateway origin: asks <origin>/x402/settlements/<id>.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "settler",
        required_unless_present = "settler"
    )]
    origin: Option<String>,
    /// Settler base URL: asks <settler>/v1/settlements/<id>.
    #[arg(long, value_name = "URL")]
    settler: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    timeout: u64,
    /// Poll interval in milliseconds.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    interval_ms: u64,
    /// Print the final status as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No spinner.
    #[arg(short, long)]
    quiet: bool,
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("x402-pay: {msg}");
    ExitCode::from(2)
}

fn build_config(a: &GetArgs) -> Result<Config, String> {
    let mut c = Caps::default()
        .with_max(&a.max)
        .map_err(|e| e.to_string())?;
    for n in &a.networks {
        let n: Network = n
            .parse()
            .map_err(|_| caps::CapsError::NetworkSyntax(n.clone()).to_string())?;
        c = c.allow_network(n);
    }
    for s in &a.assets {
        let addr = s
            .trim()
            .parse()
            .map_err(|_| caps::CapsError::AssetSyntax(s.clone()).to_string())?;
        c = c.allow_asset(addr);
    }
    for s in &a.asset_decimals {
        let (addr, d) = caps::parse_asset_decimals(s).map_err(|e| e.to_string())?;
        c = c.asset_decimals(addr, d);
    }
    let schemes = a
        .schemes
        .iter()
        .map(|s| caps::parse_scheme(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    c = c.schemes(schemes);
    c.validate().map_err(|e| e.to_string())?;
    let mut rpc = BTreeMap::new();
    for r in a.rpc.iter().filter(|r| !r.trim().is_empty()) {
        let (n, u) = r
            .split_once('=')
            .ok_or_else(|| format!("--rpc {r:?}: expected eip155:ID=URL"))?;
        let n: Network = n
            .trim()
            .parse()
            .map_err(|_| format!("--rpc {r:?}: {n:?} is not eip155:ID"))?;
        let u = u.trim();
        reqwest::Url::parse(u).map_err(|_| format!("--rpc {r:?}: {u:?} is not a URL"))?;
        rpc.insert(n, u.to_string());
    }
    let signer = key::load_key(a.key_file.as_deref()).map_err(|e| e.to_string())?;
    let mut config = Config::new(signer, c);
    config.rpc = rpc;
    config.permit_ttl_secs = a.valid_for;
    config.authorization_ttl_secs = a.valid_for;
    config.prefer_x402_v2 = a.x402_v2;
    config.cache_file = if a.no_cache {
        None
    } else {
        a.cache_file
            .clone()
            .or_else(x402_client::cache::default_path)
    };
    if a.verbose {
        config = config.on_step(|s| eprintln!("x402-pay: {s}"));
    }
    Ok(config)
}

async fn run_get(a: GetArgs) -> ExitCode {
    let Some(url) = a.url.clone() else {
        return usage("a URL is required");
    };
    let config = match build_config(&a) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    if a.verbose {
        eprintln!(
            "x402-pay: payer {}, cap {} per request",
            config.signer.address(),
            config.caps.max_text()
        );
    }
    let payer = match Payer::new(config) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    match payer.get(&url).await {
        Ok(r) => {
            if let Some(p) = &r.paid {
                if a.verbose {
                    eprintln!(
                        "x402-pay: paid {} {} ({}) on {}; follow with: x402-pay status {} --origin {}",
                        p.amount_human,
                        p.currency,
                        p.scheme.as_str(),
                        p.network,
                        p.settlement_id.as_deref().unwrap_or("<id>"),
                        p.origin
                    );
                }
            } else if a.verbose {
                eprintln!(
                    "x402-pay: HTTP {} ({})",
                    r.status,
                    if r.token_used {
                        "cached token, nothing paid"
                    } else {
                        "nothing paid"
                    }
                );
            }
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&r.body);
            let _ = out.flush();
            if r.status >= 400 {
                eprintln!("x402-pay: HTTP {}", r.status);
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("x402-pay: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

async fn run_status(a: StatusArgs) -> ExitCode {
    let source = match (&a.origin, &a.settler) {
        (Some(o), None) => o.parse().map(Source::Gateway),
        (None, Some(s)) => s.parse().map(Source::Settler),
        _ => return usage("pass exactly one of --origin or --settler"),
    };
    let source = match source {
        Ok(s) => s,
        Err(e) => return usage(format!("invalid URL: {e}")),
    };
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(h) => h,
        Err(e) => return usage(e),
    };
    let opts = FollowOptions {
        interval: Duration::from_millis(a.interval_ms.max(50)),
        timeout: Duration::from_secs(a.timeout),
        progress: !a.quiet && !a.json,
    };
    match status::follow(&http, &source, &a.id, &opts).await {
        Ok(s) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                println!("state: {}", status::state_name(s.state));
                if let Some(tx) = &s.permit_tx {
                    println!("permit_tx: {tx}");
                }
                if let Some(tx) = &s.transfer_tx {
                    println!("transfer_tx: {tx}");
                }
                if let Some(b) = s.block_number {
                    println!("block: {b}");
                }
                if let Some(e) = &s.error {
                    println!("error: {e}");
                }
            }
            if s.state == SettlementState::Settled {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("x402-pay: {e}");
            ExitCode::from(4)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Get(a)) => run_get(a).await,
        Some(Command::Status(a)) => run_status(a).await,
        None => run_get(cli.get).await,
    }
}
