//! Command line and environment configuration.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use k256::ecdsa::SigningKey;
use x402_protocol::Network;

#[derive(Debug, Parser)]
#[command(
    name = "x402-settler",
    version,
    about = "Verifies x402 payments, mints access tokens and settles them on chain"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prints {"kid", "public_key"} of the token signing key (creating the key file if missing).
    TokenKey {
        #[arg(long, env = "X402_TOKEN_KEY_FILE")]
        token_key_file: PathBuf,
    },
    /// Runs the service (the default when no subcommand is given).
    Serve,
}

/// One `--rpc eip155:<chain id>=<url>` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcSpec {
    pub network: Network,
    pub url: String,
}

impl FromStr for RpcSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (net, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected eip155:<chain id>=<url>"))?;
        let network: Network = net.trim().parse().map_err(|e| format!("{e}"))?;
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("{url:?}: RPC url must be http(s)"));
        }
        Ok(RpcSpec {
            network,
            url: url.to_string(),
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "X402_LISTEN", default_value = "127.0.0.1:8402")]
    pub listen: String,
    /// sqlx database URL: sqlite://FILE?mode=rwc or postgres://user@host/db.
    #[arg(
        long,
        env = "X402_DATABASE_URL",
        default_value = "sqlite://x402-settler.db?mode=rwc"
    )]
    pub database_url: String,
    /// RPC endpoint per network, `eip155:31337=http://127.0.0.1:8545`; repeatable
    /// (env: comma-separated).
    #[arg(long = "rpc", env = "X402_RPC", value_delimiter = ',')]
    pub rpc: Vec<RpcSpec>,
    /// File with the settler wallet's private key (hex). Default: env EVM_PRIVATE_KEY.
    #[arg(long, env = "X402_SIGNER_KEY_FILE")]
    pub signer_key_file: Option<PathBuf>,
    /// Token signing key (hex, 32 bytes); created with mode 0600 if missing.
    #[arg(
        long,
        env = "X402_TOKEN_KEY_FILE",
        default_value = "x402-token-key.hex"
    )]
    pub token_key_file: PathBuf,
    /// Default access token lifetime in seconds (used when the requirement names none).
    #[arg(long = "token-ttl", env = "X402_TOKEN_TTL", default_value_t = 300)]
    pub token_ttl: u64,
    /// Upper bound on any access token lifetime, seconds.
    #[arg(
        long = "max-token-ttl",
        env = "X402_MAX_TOKEN_TTL",
        default_value_t = 86_400
    )]
    pub max_token_ttl: u64,
    /// `iss` claim of minted tokens.
    #[arg(long, env = "X402_ISSUER", default_value = "x402-settler")]
    pub issuer: String,
    /// Seconds a permit deadline / validBefore must still be away when the payment arrives.
    #[arg(
        long = "deadline-margin",
        env = "X402_DEADLINE_MARGIN",
        default_value_t = 60
    )]
    pub deadline_margin: u64,
    /// How often unconfirmed transactions are polled for receipts, milliseconds.
    #[arg(
        long = "poll-interval-ms",
        env = "X402_POLL_INTERVAL_MS",
        default_value_t = 200
    )]
    pub poll_interval_ms: u64,
    /// Timeout of each RPC call, milliseconds.
    #[arg(
        long = "rpc-timeout-ms",
        env = "X402_RPC_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub rpc_timeout_ms: u64,
    /// Gas limit of each settlement transaction.
    #[arg(long = "gas-limit", env = "X402_GAS_LIMIT", default_value_t = 300_000)]
    pub gas_limit: u64,
    /// Re-broadcast a sent transaction without receipt after this many seconds.
    #[arg(
        long = "rebroadcast-secs",
        env = "X402_REBROADCAST_SECS",
        default_value_t = 15
    )]
    pub rebroadcast_secs: u64,
    /// Lease on a signer wallet's settlement lane (shared Postgres, several replicas), seconds.
    #[arg(long = "lease-secs", env = "X402_LEASE_SECS", default_value_t = 10)]
    pub lease_secs: u64,
    /// If set, `POST /v1/tokens` and the facilitator endpoints (`/verify`, `/settle`,
    /// `/supported`) require `Authorization: Bearer <secret>` (the gateway's credential), so
    /// only the gateway can state requirements.
    #[arg(long = "api-secret-file", env = "X402_API_SECRET_FILE")]
    pub api_secret_file: Option<PathBuf>,
    /// How long facilitator `POST /settle` waits for the settlement to be final, seconds
    /// (then it answers `settlement_pending`; settlement goes on).
    #[arg(
        long = "settle-timeout-secs",
        env = "X402_SETTLE_TIMEOUT_SECS",
        default_value_t = 20
    )]
    pub settle_timeout_secs: u64,
    /// Request body limit in bytes.
    #[arg(long = "body-limit", env = "X402_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// Run the HTTP API only, without settlement workers (another replica settles).
    #[arg(long = "no-worker", env = "X402_NO_WORKER")]
    pub no_worker: bool,
}

impl ServeArgs {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms.max(100))
    }
}

/// Reads the token signing key, creating it (mode 0600) if the file does not exist.
pub fn load_or_create_token_key(path: &Path) -> anyhow::Result<SigningKey> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(text) => x402_protocol::token::signing_key_from_hex(&text)
            .ok_or_else(|| anyhow::anyhow!("{}: not a hex secp256k1 private key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = loop {
                let bytes: [u8; 32] = rand::random();
                if let Ok(k) = SigningKey::from_slice(&bytes) {
                    break k;
                }
            };
            let hex = alloy::primitives::hex::encode(key.to_bytes());
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            match opts.open(path) {
                Ok(mut f) => {
                    f.write_all(hex.as_bytes())?;
                    f.write_all(b"\n")?;
                    f.sync_all()?;
                    tracing::info!(path = %path.display(), "created a new token signing key");
                    Ok(key)
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_token_key(path)
                }
                Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
            }
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// The settler wallet key: `--signer-key-file` or env `EVM_PRIVATE_KEY`.
pub fn load_signer(args: &ServeArgs) -> anyhow::Result<alloy::signers::local::PrivateKeySigner> {
    let text = match &args.signer_key_file {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => std::env::var("EVM_PRIVATE_KEY").map_err(|_| {
            anyhow::anyhow!("no signer key: set EVM_PRIVATE_KEY or --signer-key-file")
        })?,
    };
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("signer key is not a hex private key"))
}

pub fn load_api_secret(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    match &args.api_secret_file {
        None => Ok(None),
        Some(p) => {
            let s =
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let s = s.trim().to_string();
            anyhow::ensure!(!s.is_empty(), "{}: empty API secret", p.display());
            Ok(Some(s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rpc_specs_and_env_style_lists() {
        let cli = Cli::try_parse_from([
            "x",
            "--rpc",
            "eip155:31337=http://127.0.0.1:8545",
            "--rpc",
            "eip155:84532=https://sepolia.base.org",
        ])
        .unwrap();
        assert_eq!(cli.serve.rpc.len(), 2);
        assert_eq!(cli.serve.rpc[1].network.chain_id, 84532);
        let cli =
            Cli::try_parse_from(["x", "--rpc", "eip155:1=http://a,eip155:2=http://b"]).unwrap();
        assert_eq!(cli.serve.rpc.len(), 2);
        assert!(Cli::try_parse_from(["x", "--rpc", "31337=http://a"]).is_err());
        assert_eq!(cli.serve.listen, "127.0.0.1:8402");
        assert_eq!(cli.serve.deadline_margin, 60);
        let cli = Cli::try_parse_from(["x", "token-key", "--token-key-file", "/tmp/k"]).unwrap();
        assert!(matches!(cli.command, Some(Command::TokenKey { .. })));
    }

    #[test]
    fn token_key_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.hex");
        let a = load_or_create_token_key(&path).unwrap();
        let b = load_or_create_token_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
