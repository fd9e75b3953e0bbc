//! Command line and environment configuration.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use x402_protocol::token::{TokenAlg, TokenSigningKey};
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
    /// Log lines as `text` (for a terminal) or `json` (one object per line, for a log
    /// pipeline; each request's lines carry its `request_id`, Envoy's `x-request-id`).
    #[arg(
        long = "log-format",
        env = "X402_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The access tokens' signature algorithm (`--token-alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenAlgArg {
    /// ECDSA over secp256k1 (JWS `ES256K`).
    Es256k,
    /// Ed25519 (JWS `EdDSA`): half the filter's cost per check (bench/results/verify.md).
    Eddsa,
}

impl TokenAlgArg {
    pub fn alg(self) -> x402_protocol::token::TokenAlg {
        match self {
            TokenAlgArg::Es256k => x402_protocol::token::TokenAlg::Es256k,
            TokenAlgArg::Eddsa => x402_protocol::token::TokenAlg::EdDsa,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prints {"kid", "public_key", "alg"} of the token signing key, the filter's
    /// `token_keys` entry (creating the key file if missing).
    TokenKey {
        #[arg(long, env = "X402_TOKEN_KEY_FILE")]
        token_key_file: PathBuf,
        /// How the key file is read (and a new key made): see `serve --token-alg`.
        #[arg(long = "token-alg", env = "X402_TOKEN_ALG", value_enum, default_value_t = TokenAlgArg::Es256k)]
        token_alg: TokenAlgArg,
    },
    /// Runs the service (the default when no subcommand is given).
    Serve,
    /// Clears payer blocking for a payer (all networks, or one with `--network`), recorded in
    /// the database (`x402_unblocks`). Prints {"payer", "network", "cleared"}.
    Unblock {
        #[arg(long)]
        payer: alloy::primitives::Address,
        #[arg(long)]
        network: Option<Network>,
        #[arg(
            long,
            env = "X402_DATABASE_URL",
            default_value = "sqlite://x402-settler.db?mode=rwc"
        )]
        database_url: String,
        /// Who/why, stored with the record.
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// One `--rpc eip155:<chain id>=<url>[|<fallback url>...]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcSpec {
    pub network: Network,
    /// The endpoints, first the primary; more than one: requests go to the best two.
    pub urls: Vec<String>,
}

impl FromStr for RpcSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (net, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected eip155:<chain id>=<url>"))?;
        let network: Network = net.trim().parse().map_err(|e| format!("{e}"))?;
        let mut urls = Vec::new();
        for url in url.split('|').map(str::trim) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{:?}: RPC url must be http(s)",
                    crate::chain::redact_url(url)
                ));
            }
            if urls.iter().any(|u| u == url) {
                return Err(format!(
                    "{:?}: the same RPC url twice",
                    crate::chain::redact_url(url)
                ));
            }
            urls.push(url.to_string());
        }
        if urls.len() > 8 {
            return Err(format!("{network}: at most 8 RPC urls"));
        }
        Ok(RpcSpec { network, urls })
    }
}

/// One `--settlement-contract eip155:<chain id>=<address>` entry: the batch settlement
/// contract (contracts/X402Settlement.sol) the lane of that network settles through.
#[derive(Debug, Clone)]
pub struct ContractSpec {
    pub network: Network,
    pub address: alloy::primitives::Address,
}

impl FromStr for ContractSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (net, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected eip155:<chain id>=<contract address>"))?;
        let network: Network = net.trim().parse().map_err(|e| format!("{e}"))?;
        let address = addr
            .trim()
            .parse()
            .map_err(|e| format!("{:?}: not a contract address: {e}", addr.trim()))?;
        Ok(ContractSpec { network, address })
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
    /// File with the settler wallets' private keys (hex), one per line: a signer pool, each
    /// wallet its own settlement lane per network. Default: env EVM_PRIVATE_KEY (keys
    /// separated by commas).
    #[arg(long, env = "X402_SIGNER_KEY_FILE")]
    pub signer_key_file: Option<PathBuf>,
    /// Token signing key (hex, 32 bytes: a secp256k1 private key for es256k, an Ed25519
    /// seed for eddsa); created with mode 0600 if missing.
    #[arg(
        long,
        env = "X402_TOKEN_KEY_FILE",
        default_value = "x402-token-key.hex"
    )]
    pub token_key_file: PathBuf,
    /// Access token signature algorithm: `es256k` or `eddsa` (Ed25519, the cheaper check in
    /// the filter). The key file is read as this algorithm's secret: switching algorithms
    /// means a new key file (and a new `token_keys` entry in the filter config).
    #[arg(long = "token-alg", env = "X402_TOKEN_ALG", value_enum, default_value_t = TokenAlgArg::Es256k)]
    pub token_alg: TokenAlgArg,
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
    /// Acceptance (payer lock, store reads, chain reads, balance and exposure checks) must
    /// reach its commit within this many milliseconds of the request's arrival, else it is
    /// abandoned uncommitted with 503 `accept_deadline_exceeded` (a retry is safe). Keep it
    /// below the filter's `settler.timeout_ms` (3000 in the examples), so the settler gives
    /// up before the gateway does.
    #[arg(
        long = "accept-deadline-ms",
        env = "X402_ACCEPT_DEADLINE_MS",
        default_value_t = 2_000
    )]
    pub accept_deadline_ms: u64,
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
    /// Batch settlement contract per network (contracts/X402Settlement.sol, the settler's
    /// wallet an operator of it): that network's lane settles many payments per transaction
    /// through it, and it is the EIP-2612 spender permits may name. Without one, one
    /// transaction (two for a permit) per payment.
    #[arg(
        long = "settlement-contract",
        env = "X402_SETTLEMENT_CONTRACT",
        value_delimiter = ','
    )]
    pub settlement_contract: Vec<ContractSpec>,
    /// Payments per batch transaction at most (with `--settlement-contract`), 1..=500.
    #[arg(long = "batch-max", env = "X402_BATCH_MAX", default_value_t = 100)]
    pub batch_max: u64,
    /// With `--settlement-contract`: how long the lane lets payments gather before signing a
    /// batch that is not full, milliseconds (0..=10000).
    #[arg(
        long = "batch-wait-ms",
        env = "X402_BATCH_WAIT_MS",
        default_value_t = 50
    )]
    pub batch_wait_ms: u64,
    /// With `--settlement-contract`: batch transactions per wallet signed and not yet mined at
    /// most (1..=64); more payments wait pending and go together into the next batches once
    /// one is mined (so the bound costs little: a batch holds up to `--batch-max`).
    #[arg(
        long = "max-in-flight",
        env = "X402_MAX_IN_FLIGHT",
        default_value_t = 16
    )]
    pub max_in_flight: u64,
    /// Database connections of the settlement lanes' own pool (1..=64), apart from the
    /// API's: token minting and settlement do not wait for each other's connections.
    #[arg(
        long = "lane-db-connections",
        env = "X402_LANE_DB_CONNECTIONS",
        default_value_t = 4
    )]
    pub lane_db_connections: u32,
    /// Blocks a settlement transaction's receipt must be deep (its own block included)
    /// before the payment is `settled` or judged failed (1..=64; 1: at the receipt). On a
    /// public chain a few guard against the last blocks being reorganised away.
    #[arg(
        long = "confirmations",
        env = "X402_CONFIRMATIONS",
        default_value_t = 1
    )]
    pub confirmations: u64,
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
    /// Signer pool: each wallet's lane takes its own share of the payments first; one due
    /// this many seconds and still pending (its wallet's lane down, stalled or held back by
    /// `--max-in-flight`) is taken by any wallet's lane (1..=3600).
    #[arg(
        long = "pool-steal-secs",
        env = "X402_POOL_STEAL_SECS",
        default_value_t = 10
    )]
    pub pool_steal_secs: u64,
    /// Payer facts: poll each network for new blocks this often (milliseconds) and keep the
    /// balance and permit nonce of recent payers from their logs, so acceptance reads no
    /// node for them (`facts`); 0 turns it off (every acceptance reads the node).
    #[arg(
        long = "payer-facts-poll-ms",
        env = "X402_PAYER_FACTS_POLL_MS",
        default_value_t = 200
    )]
    pub payer_facts_poll_ms: u64,
    /// Payer facts older than this (milliseconds since the watcher's last good poll) are not
    /// used: acceptance reads the node instead. The bound on how stale a balance may be.
    #[arg(
        long = "payer-facts-max-age-ms",
        env = "X402_PAYER_FACTS_MAX_AGE_MS",
        default_value_t = 1000
    )]
    pub payer_facts_max_age_ms: u64,
    /// Payers whose facts are kept per network at most (least recently used dropped).
    #[arg(
        long = "payer-facts-capacity",
        env = "X402_PAYER_FACTS_CAPACITY",
        default_value_t = 100_000
    )]
    pub payer_facts_capacity: usize,
    /// Replace-by-fee: a settlement transaction without receipt this many seconds that the
    /// current base fee prices out is re-signed at its nonce (same call) with higher fees.
    #[arg(
        long = "replace-after-secs",
        env = "X402_REPLACE_AFTER_SECS",
        default_value_t = 12
    )]
    pub replace_after_secs: u64,
    /// Cap on the max fee per gas of any settlement transaction, gwei (decimal, e.g. `0.05`).
    #[arg(
        long = "max-fee-gwei",
        env = "X402_MAX_FEE_GWEI",
        default_value = "500"
    )]
    pub max_fee_gwei: String,
    /// A lane whose oldest unconfirmed transaction is older than this (seconds) is stalled:
    /// `/readyz` reports it and new payments on its network get 503 `settlement_stalled`.
    #[arg(
        long = "stall-after-secs",
        env = "X402_STALL_AFTER_SECS",
        default_value_t = 60
    )]
    pub stall_after_secs: u64,
    /// Per payment: at most this many settlement transactions (wallet nonces; fee
    /// replacements not counted) are signed, then it fails.
    #[arg(
        long = "max-txs-per-payment",
        env = "X402_MAX_TXS_PER_PAYMENT",
        default_value_t = 4
    )]
    pub max_txs_per_payment: u64,
    /// Per payment: at most this much gas is spent on reverted attempts before it fails
    /// (default: 4 x `--gas-limit`).
    #[arg(long = "max-gas-per-payment", env = "X402_MAX_GAS_PER_PAYMENT")]
    pub max_gas_per_payment: Option<u64>,
    /// A payer whose payment failed through the payer's doing (authorization cancelled, funds
    /// moved, permit nonce spent, allowance revoked) is refused new payments (403
    /// `payer_blocked`) for this many seconds, or until `x402-settler unblock`.
    #[arg(long = "block-secs", env = "X402_BLOCK_SECS", default_value_t = 86_400)]
    pub block_secs: u64,
    /// The gateway's bearer secret (at least 32 characters, trimmed): `POST /v1/tokens` and
    /// the facilitator endpoints (`/verify`, `/settle`, `/supported`) require
    /// `Authorization: Bearer <secret>`, so only the gateway can state requirements. Mandatory
    /// unless `--listen` is a loopback address.
    #[arg(long = "api-secret-file", env = "X402_API_SECRET_FILE")]
    pub api_secret_file: Option<PathBuf>,
    /// More facilitator callers: one `name:secret` per line (`#` comments, secrets of at least
    /// 32 characters). They may call `/verify`, `/settle` and `/supported` (not the token API);
    /// the name goes into logs and metrics.
    #[arg(
        long = "facilitator-credentials-file",
        env = "X402_FACILITATOR_CREDENTIALS_FILE"
    )]
    pub facilitator_credentials_file: Option<PathBuf>,
    /// What the settler honours, per network and asset (JSON, see `terms.rs` and README):
    /// mandatory.
    #[arg(long = "terms-file", env = "X402_TERMS_FILE")]
    pub terms_file: Option<PathBuf>,
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

/// Lowest `--deadline-margin`: a payment must stay valid long enough to be settled.
pub const MIN_DEADLINE_MARGIN_SECS: u64 = 10;
/// `--accept-deadline-ms` bounds: below, no chain read fits; above, no gateway waits.
pub const ACCEPT_DEADLINE_MS_RANGE: (u64, u64) = (100, 60_000);
/// The filter's usual `settler.timeout_ms` (README examples): a deadline at or above it
/// is warned about at start.
pub const FILTER_TIMEOUT_MS_EXAMPLE: u64 = 3_000;

impl ServeArgs {
    /// `--max-fee-gwei` in wei (refused at start when it is no decimal number or zero).
    pub fn max_fee_wei(&self) -> anyhow::Result<u128> {
        let wei = x402_protocol::parse_decimal(self.max_fee_gwei.trim(), 9)
            .map_err(|e| anyhow::anyhow!("--max-fee-gwei {:?}: {e}", self.max_fee_gwei))?;
        let wei = u128::try_from(wei)
            .map_err(|_| anyhow::anyhow!("--max-fee-gwei {:?}: too large", self.max_fee_gwei))?;
        anyhow::ensure!(wei > 0, "--max-fee-gwei must be above 0");
        Ok(wei)
    }
    /// Refuses batch settings out of range, naming the flag.
    pub fn check_batching(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=500).contains(&self.batch_max),
            "--batch-max {}: must be 1..=500 payments per batch transaction",
            self.batch_max
        );
        anyhow::ensure!(
            self.batch_wait_ms <= 10_000,
            "--batch-wait-ms {}: at most 10000",
            self.batch_wait_ms
        );
        anyhow::ensure!(
            (1..=64).contains(&self.confirmations),
            "--confirmations {}: must be 1..=64",
            self.confirmations
        );
        anyhow::ensure!(
            (1..=64).contains(&self.lane_db_connections),
            "--lane-db-connections {}: must be 1..=64",
            self.lane_db_connections
        );
        anyhow::ensure!(
            (1..=3600).contains(&self.pool_steal_secs),
            "--pool-steal-secs {}: must be 1..=3600",
            self.pool_steal_secs
        );
        anyhow::ensure!(
            self.payer_facts_poll_ms <= 60_000,
            "--payer-facts-poll-ms {}: must be 0 (off) ..= 60000",
            self.payer_facts_poll_ms
        );
        anyhow::ensure!(
            self.payer_facts_poll_ms == 0
                || (self.payer_facts_poll_ms < self.payer_facts_max_age_ms
                    && self.payer_facts_max_age_ms <= 600_000),
            "--payer-facts-max-age-ms {}: must be above --payer-facts-poll-ms ({}) and at most 600000",
            self.payer_facts_max_age_ms,
            self.payer_facts_poll_ms
        );
        anyhow::ensure!(
            (1..=10_000_000).contains(&self.payer_facts_capacity),
            "--payer-facts-capacity {}: must be 1..=10000000",
            self.payer_facts_capacity
        );
        anyhow::ensure!(
            (1..=64).contains(&self.max_in_flight),
            "--max-in-flight {}: must be 1..=64 batch transactions per wallet",
            self.max_in_flight
        );
        for (i, c) in self.settlement_contract.iter().enumerate() {
            anyhow::ensure!(
                self.settlement_contract[..i]
                    .iter()
                    .all(|o| o.network != c.network),
                "--settlement-contract: network {} named twice",
                c.network
            );
            anyhow::ensure!(
                self.rpc.iter().any(|r| r.network == c.network),
                "--settlement-contract {}: no --rpc for that network",
                c.network
            );
        }
        Ok(())
    }
    /// Refuses acceptance flags that cannot be safe, naming the flag.
    pub fn check_acceptance(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.deadline_margin >= MIN_DEADLINE_MARGIN_SECS,
            "--deadline-margin {}: at least {MIN_DEADLINE_MARGIN_SECS} seconds are needed to settle a payment before its deadline / validBefore",
            self.deadline_margin
        );
        let (lo, hi) = ACCEPT_DEADLINE_MS_RANGE;
        anyhow::ensure!(
            (lo..=hi).contains(&self.accept_deadline_ms),
            "--accept-deadline-ms {}: must be between {lo} and {hi} (and below the filter's settler.timeout_ms)",
            self.accept_deadline_ms
        );
        Ok(())
    }
    pub fn accept_deadline(&self) -> Duration {
        Duration::from_millis(self.accept_deadline_ms)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms.max(100))
    }
}

/// Reads the token signing key of `alg` (32 bytes of hex), creating it (mode 0600) if the
/// file does not exist.
pub fn load_or_create_token_key(path: &Path, alg: TokenAlg) -> anyhow::Result<TokenSigningKey> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(text) => TokenSigningKey::from_hex(alg, &text).ok_or_else(|| {
            let what = match alg {
                TokenAlg::Es256k => "a secp256k1 private key",
                TokenAlg::EdDsa => "an Ed25519 seed",
            };
            anyhow::anyhow!(
                "{}: not {what} (32 bytes of hex) for --token-alg {}",
                path.display(),
                alg.jws_name()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = loop {
                let bytes: [u8; 32] = rand::random();
                if let Some(k) = TokenSigningKey::from_secret(alg, &bytes) {
                    break k;
                }
            };
            let hex = key.secret_hex();
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
                    load_or_create_token_key(path, alg)
                }
                Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
            }
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Wallets in one signer pool at most (`--signer-key-file`, `EVM_PRIVATE_KEY`).
pub const MAX_SIGNERS: usize = 16;

/// The settler's wallet keys, its signer pool: `--signer-key-file` (one hex key per line;
/// blank lines and `#` comments ignored) or env `EVM_PRIVATE_KEY` (keys separated by commas).
/// Each wallet gets its own settlement lane per network, with its own nonces. The first key
/// is the primary wallet (the permit spender shown when no settlement contract is set).
pub fn load_signers(
    args: &ServeArgs,
) -> anyhow::Result<Vec<alloy::signers::local::PrivateKeySigner>> {
    let (text, origin) = match &args.signer_key_file {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            std::env::var("EVM_PRIVATE_KEY").map_err(|_| {
                anyhow::anyhow!("no signer key: set EVM_PRIVATE_KEY or --signer-key-file")
            })?,
            "EVM_PRIVATE_KEY".to_string(),
        ),
    };
    parse_signers(&text, &origin)
}

/// [`load_signers`] on the text of the file or variable; `origin` names it in errors (never
/// the key itself).
pub(crate) fn parse_signers(
    text: &str,
    origin: &str,
) -> anyhow::Result<Vec<alloy::signers::local::PrivateKeySigner>> {
    let mut keys: Vec<alloy::signers::local::PrivateKeySigner> = Vec::new();
    let entries = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    for (i, entry) in entries.enumerate() {
        let key: alloy::signers::local::PrivateKeySigner = entry.parse().map_err(|_| {
            anyhow::anyhow!("{origin}: signer key {} is not a hex private key", i + 1)
        })?;
        anyhow::ensure!(
            !keys.iter().any(|k| k.address() == key.address()),
            "{origin}: signer key {} repeats wallet {:#x}",
            i + 1,
            key.address()
        );
        keys.push(key);
    }
    anyhow::ensure!(!keys.is_empty(), "{origin}: no signer key in it");
    anyhow::ensure!(
        keys.len() <= MAX_SIGNERS,
        "{origin}: {} signer keys, at most {MAX_SIGNERS}",
        keys.len()
    );
    Ok(keys)
}

/// Shortest bearer secret accepted (`--api-secret-file`, `--facilitator-credentials-file`).
pub const MIN_SECRET_LEN: usize = 32;

/// Who may call the token and facilitator APIs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerAuth {
    /// The gateway's secret (`--api-secret-file`): token API and facilitator API.
    pub gateway: Option<String>,
    /// `(name, secret)` of facilitator callers: facilitator API only.
    pub facilitators: Vec<(String, String)>,
}

/// Whether `listen` (`host:port`) only accepts connections from this machine.
pub fn is_loopback_listen(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    match listen.rsplit_once(':') {
        Some((host, _)) => host.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn read_secret_file(flag: &str, p: &Path) -> anyhow::Result<String> {
    let s =
        std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))?;
    let s = s.trim().to_string();
    anyhow::ensure!(
        s.chars().count() >= MIN_SECRET_LEN,
        "{flag} {}: the secret has {} characters, at least {MIN_SECRET_LEN} are required",
        p.display(),
        s.chars().count()
    );
    anyhow::ensure!(
        !s.chars().any(char::is_whitespace),
        "{flag} {}: the secret must not contain whitespace",
        p.display()
    );
    // The shipped manifests' placeholders (envoy/k8s) are no secret.
    anyhow::ensure!(
        !s.contains("REPLACE_ME"),
        "{flag} {}: this is the shipped placeholder; put a random secret there",
        p.display()
    );
    Ok(s)
}

/// Parses a `--facilitator-credentials-file`: `name:secret` per line, `#` comments.
pub fn parse_facilitator_credentials(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, secret) = line
            .split_once(':')
            .ok_or_else(|| format!("line {n}: expected name:secret"))?;
        let (name, secret) = (name.trim(), secret.trim());
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "line {n}: caller name {name:?} must be letters, digits, '-', '_' or '.'"
            ));
        }
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(format!(
                "line {n}: the secret of {name} has {} characters, at least {MIN_SECRET_LEN} are required",
                secret.chars().count()
            ));
        }
        if out.iter().any(|(o, _)| o == name) {
            return Err(format!("line {n}: caller {name} is listed twice"));
        }
        if out.iter().any(|(_, s)| s == secret) {
            return Err(format!(
                "line {n}: the secret of {name} is another caller's"
            ));
        }
        out.push((name.to_string(), secret.to_string()));
    }
    Ok(out)
}

/// The callers' credentials. Refuses a listener that is not loopback without
/// `--api-secret-file`; on loopback without it the APIs are open (warned).
pub fn load_caller_auth(args: &ServeArgs) -> anyhow::Result<CallerAuth> {
    let gateway = match &args.api_secret_file {
        Some(p) => Some(read_secret_file("--api-secret-file", p)?),
        None => None,
    };
    let facilitators = match &args.facilitator_credentials_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                anyhow::anyhow!("--facilitator-credentials-file {}: {e}", p.display())
            })?;
            let creds = parse_facilitator_credentials(&text).map_err(|e| {
                anyhow::anyhow!("--facilitator-credentials-file {}: {e}", p.display())
            })?;
            if let Some(g) = &gateway {
                if let Some((name, _)) = creds.iter().find(|(_, s)| s == g) {
                    anyhow::bail!(
                        "--facilitator-credentials-file {}: the secret of {name} is the gateway's (--api-secret-file)",
                        p.display()
                    );
                }
            }
            creds
        }
        None => Vec::new(),
    };
    if gateway.is_none() {
        // Partners authenticate but the token API would not: a partner (or anyone local)
        // could then state its own requirement to /v1/tokens. One secret means all do.
        anyhow::ensure!(
            facilitators.is_empty(),
            "--facilitator-credentials-file is set but --api-secret-file is not: the token API would be open while the facilitator API is not; set --api-secret-file too"
        );
        anyhow::ensure!(
            is_loopback_listen(&args.listen),
            "--listen {} is not a loopback address: caller authentication is required, set --api-secret-file (env X402_API_SECRET_FILE) to a file holding the gateway's secret (at least {MIN_SECRET_LEN} characters)",
            args.listen
        );
        tracing::warn!(listen = %args.listen, "no --api-secret-file: the token API is open to every local process (loopback only); set one in production");
    }
    Ok(CallerAuth {
        gateway,
        facilitators,
    })
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
        // Fallback endpoints after `|`, each checked.
        let cli = Cli::try_parse_from([
            "x",
            "--rpc",
            "eip155:8453=https://a.example/k|https://b.example,eip155:1=http://c",
        ])
        .unwrap();
        assert_eq!(
            cli.serve.rpc[0].urls,
            vec![
                "https://a.example/k".to_string(),
                "https://b.example".into()
            ]
        );
        assert_eq!(cli.serve.rpc[1].urls, vec!["http://c".to_string()]);
        for bad in [
            "eip155:1=http://a|ws://b",
            "eip155:1=http://a|http://a",
            "eip155:1=http://a|",
        ] {
            assert!(Cli::try_parse_from(["x", "--rpc", bad]).is_err(), "{bad}");
        }
        assert_eq!(cli.serve.listen, "127.0.0.1:8402");
        assert_eq!(cli.serve.deadline_margin, 60);
        let cli = Cli::try_parse_from(["x", "token-key", "--token-key-file", "/tmp/k"]).unwrap();
        assert!(matches!(cli.command, Some(Command::TokenKey { .. })));
    }

    #[test]
    fn loopback_listeners_and_credentials() {
        assert!(is_loopback_listen("127.0.0.1:8402"));
        assert!(is_loopback_listen("[::1]:8402"));
        assert!(is_loopback_listen("localhost:8402"));
        assert!(!is_loopback_listen("0.0.0.0:8402"));
        assert!(!is_loopback_listen("[::]:8402"));
        assert!(!is_loopback_listen("settler.example:8402"));
        let long = "a".repeat(MIN_SECRET_LEN);
        let creds =
            parse_facilitator_credentials(&format!("# callers\n\npartner-a: {long}\nb:{long}b\n"))
                .unwrap();
        assert_eq!(creds.len(), 2);
        assert_eq!(creds[0], ("partner-a".to_string(), long.clone()));
        let e = |t: &str| parse_facilitator_credentials(t).unwrap_err();
        assert!(e("x:short").starts_with("line 1: the secret of x has 5"));
        assert!(e(&format!("\nx {long}")).starts_with("line 2: expected name:secret"));
        assert!(e(&format!("a:{long}\na:{long}x")).contains("listed twice"));
        assert!(e(&format!("a:{long}\nb:{long}")).contains("another caller's"));
        assert!(e(&format!("a b:{long}")).contains("caller name"));

        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let mut cli = Cli::try_parse_from(["x", "--listen", "0.0.0.0:8402"]).unwrap();
        let err = load_caller_auth(&cli.serve).unwrap_err().to_string();
        assert!(err.contains("--api-secret-file"), "{err}");
        cli.serve.api_secret_file = Some(short);
        let err = load_caller_auth(&cli.serve).unwrap_err().to_string();
        assert!(
            err.starts_with("--api-secret-file ") && err.contains("at least 32"),
            "{err}"
        );
        // The Kubernetes manifests' placeholder secret is refused.
        let shipped = dir.path().join("shipped");
        std::fs::write(&shipped, "REPLACE_ME_WITH_AT_LEAST_32_RANDOM_CHARACTERS\n").unwrap();
        cli.serve.api_secret_file = Some(shipped);
        let err = load_caller_auth(&cli.serve).unwrap_err().to_string();
        assert!(err.contains("shipped placeholder"), "{err}");
        let ok = dir.path().join("ok");
        std::fs::write(&ok, format!("  {long}\n")).unwrap();
        cli.serve.api_secret_file = Some(ok);
        assert_eq!(load_caller_auth(&cli.serve).unwrap().gateway, Some(long));
    }

    #[test]
    fn token_key_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.hex");
        let a = load_or_create_token_key(&path, TokenAlg::Es256k).unwrap();
        let b = load_or_create_token_key(&path, TokenAlg::Es256k).unwrap();
        assert_eq!(a.secret_hex(), b.secret_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn eddsa_token_key_is_a_hex_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ed.hex");
        let a = load_or_create_token_key(&path, TokenAlg::EdDsa).unwrap();
        assert_eq!(a.alg(), TokenAlg::EdDsa);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64, "32 bytes of hex");
        let b = load_or_create_token_key(&path, TokenAlg::EdDsa).unwrap();
        assert_eq!(a.verifying_key(), b.verifying_key());
        std::fs::write(&path, "0x1234\n").unwrap();
        let err = load_or_create_token_key(&path, TokenAlg::EdDsa)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("Ed25519 seed") && err.contains("EdDSA"),
            "{err}"
        );
        let cli = Cli::try_parse_from(["x402-settler", "--token-alg", "eddsa"]).unwrap();
        assert_eq!(cli.serve.token_alg, TokenAlgArg::Eddsa);
        assert!(Cli::try_parse_from(["x402-settler", "--token-alg", "es256"]).is_err());
    }

    #[test]
    fn a_signer_pool_is_one_key_per_line_or_comma_and_refuses_repeats_and_junk() {
        const A: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
        const B: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
        let one = parse_signers(&format!("{A}\n"), "f").unwrap();
        assert_eq!(one.len(), 1);
        let file = parse_signers(&format!("# pool\n{A}\n\n  {B}  # second\n"), "f").unwrap();
        let env = parse_signers(&format!("{A},{B}"), "EVM_PRIVATE_KEY").unwrap();
        let addrs = |v: &[alloy::signers::local::PrivateKeySigner]| {
            v.iter().map(|k| k.address()).collect::<Vec<_>>()
        };
        assert_eq!(addrs(&file), addrs(&env));
        assert_eq!(file.len(), 2);
        let e = parse_signers(&format!("{A}\n{A}"), "keys.txt").unwrap_err();
        assert!(
            e.to_string()
                .contains("keys.txt: signer key 2 repeats wallet 0x"),
            "{e}"
        );
        let e = parse_signers(&format!("{A}\nnot-a-key"), "keys.txt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "keys.txt: signer key 2 is not a hex private key"
        );
        let e = parse_signers("# nothing\n", "keys.txt").unwrap_err();
        assert_eq!(e.to_string(), "keys.txt: no signer key in it");
    }
}
