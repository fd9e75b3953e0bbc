//! The settler binary as a child process: `SettlerProcess::start(opts)` picks a free port,
//! starts it with the given database, RPC endpoints, signer key and token key file, and waits
//! for `/healthz`. `kill9()` kills it without warning (SIGKILL); `restart()` starts it again
//! with the same options (same database, same key files). Dropping the handle kills it.
//!
//! Every start passes `--terms-file` (from [`SettlerOptions::terms`], see [`usdc_terms`]) and
//! `--api-secret-file` (from [`SettlerOptions::api_secret`], a random secret by default), unless
//! `extra_args` carries that flag itself. [`SettlerProcess::api_secret`] is the secret to send
//! as `Authorization: Bearer ...` ([`SettlerProcess::bearer`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{paths, ports};

#[derive(Clone)]
pub struct SettlerOptions {
    /// The binary; default `paths::settler_bin()` (tests of the settler crate pass
    /// `env!("CARGO_BIN_EXE_x402-settler")`).
    pub bin: Option<PathBuf>,
    /// sqlx URL, e.g. `sqlite:///tmp/x/settler.db?mode=rwc` or `postgres://postgres@127.0.0.1:5432/db`.
    pub database_url: String,
    /// (CAIP-2 network, RPC url), e.g. ("eip155:31337", "http://127.0.0.1:8545").
    pub rpcs: Vec<(String, String)>,
    /// The settler wallet's private key (hex). Passed as `EVM_PRIVATE_KEY`, never on argv.
    pub signer_key: String,
    /// Token signing key file (created by the settler if missing).
    pub token_key_file: PathBuf,
    /// `--token-alg` (`es256k` or `eddsa`); `None`: the settler's default.
    pub token_alg: Option<String>,
    /// Fixed port; `None` picks a free one (kept across restarts).
    pub port: Option<u16>,
    /// More command line flags, e.g. `["--deadline-margin", "30"]`.
    pub extra_args: Vec<String>,
    /// More environment, e.g. `("RUST_LOG", "debug")`.
    pub env: Vec<(String, String)>,
    /// Where stdout/stderr go; default a file next to the token key.
    pub log_file: Option<PathBuf>,
    pub start_timeout: Duration,
    /// The settler's terms (`--terms-file`), e.g. [`usdc_terms`]. Mandatory unless
    /// `extra_args` has `--terms-file`.
    pub terms: Option<serde_json::Value>,
    /// The gateway secret (`--api-secret-file`); `new` makes a random one. `None`: no secret
    /// (the settler then only starts on loopback, with its APIs open).
    pub api_secret: Option<String>,
}

/// A random secret long enough for the settler (at least 32 characters).
pub fn random_secret() -> String {
    let k = alloy::signers::local::PrivateKeySigner::random();
    format!(
        "test-secret-{}",
        alloy::primitives::hex::encode(k.to_bytes())
    )
}

/// Terms accepting the test token (EIP-712 name "USDC", version "2", 6 decimals) on `network`,
/// paid to any of `pay_to`, with limits no test reaches by accident: min price 0, token TTL up
/// to a day, unsettled exposure 1,000,000 USDC per payer and 1,000,000,000 in total. Change
/// the returned JSON for tests of the limits (`assets[0].min_price`, ...).
pub fn usdc_terms(
    network: &str,
    token: alloy::primitives::Address,
    pay_to: &[alloy::primitives::Address],
) -> serde_json::Value {
    serde_json::json!({"assets": [{
        "network": network,
        "address": token.to_checksum(None),
        "name": "USDC", "version": "2", "decimals": 6,
        "pay_to": pay_to.iter().map(|a| a.to_checksum(None)).collect::<Vec<_>>(),
        "min_price": "0",
        "max_token_ttl_secs": 86_400,
        "max_unsettled_per_payer": "1000000",
        "max_unsettled_total": "1000000000"
    }]})
}

impl SettlerOptions {
    pub fn new(
        database_url: impl Into<String>,
        network: impl Into<String>,
        rpc_url: impl Into<String>,
        signer_key: impl Into<String>,
        token_key_file: impl Into<PathBuf>,
    ) -> Self {
        SettlerOptions {
            bin: None,
            database_url: database_url.into(),
            rpcs: vec![(network.into(), rpc_url.into())],
            signer_key: signer_key.into(),
            token_key_file: token_key_file.into(),
            token_alg: None,
            port: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            log_file: None,
            start_timeout: Duration::from_secs(30),
            terms: None,
            api_secret: Some(random_secret()),
        }
    }

    /// Sets the terms (builder style).
    pub fn with_terms(mut self, terms: serde_json::Value) -> Self {
        self.terms = Some(terms);
        self
    }
}

/// Everything but the signer key, which is never printed.
impl std::fmt::Debug for SettlerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettlerOptions")
            .field("bin", &self.bin)
            .field("database_url", &self.database_url)
            .field("rpcs", &self.rpcs)
            .field("signer_key", &"<redacted>")
            .field("token_key_file", &self.token_key_file)
            .field("token_alg", &self.token_alg)
            .field("port", &self.port)
            .field("extra_args", &self.extra_args)
            .field("env", &self.env)
            .field("log_file", &self.log_file)
            .field("start_timeout", &self.start_timeout)
            .field("terms", &self.terms)
            .field(
                "api_secret",
                &self.api_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

pub struct SettlerProcess {
    child: Option<Child>,
    opts: SettlerOptions,
    port: u16,
    log_file: PathBuf,
}

impl SettlerProcess {
    /// Starts the settler and waits until `/healthz` answers 200.
    pub async fn start(mut opts: SettlerOptions) -> Result<SettlerProcess> {
        let port = opts.port.unwrap_or_else(ports::free_port);
        if port == 0 {
            bail!("no free port");
        }
        opts.port = Some(port);
        let log_file = opts.log_file.clone().unwrap_or_else(|| {
            let dir = opts
                .token_key_file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(std::env::temp_dir);
            dir.join(format!("settler-{port}.log"))
        });
        let mut s = SettlerProcess {
            child: None,
            opts,
            port,
            log_file,
        };
        s.spawn().await?;
        Ok(s)
    }

    fn bin(&self) -> PathBuf {
        self.opts.bin.clone().unwrap_or_else(paths::settler_bin)
    }

    async fn spawn(&mut self) -> Result<()> {
        let bin = self.bin();
        if !bin.exists() {
            bail!("settler binary not found at {} (cargo build -p x402-settler, or set X402_SETTLER_BIN)", bin.display());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("log file {}", self.log_file.display()))?;
        let rpc = self
            .opts
            .rpcs
            .iter()
            .map(|(n, u)| format!("{n}={u}"))
            .collect::<Vec<_>>()
            .join(",");
        let dir = self
            .log_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let has_flag = |f: &str| self.opts.extra_args.iter().any(|a| a == f);
        let mut own_args: Vec<std::ffi::OsString> = Vec::new();
        if !has_flag("--terms-file") {
            let Some(terms) = &self.opts.terms else {
                bail!("SettlerOptions.terms is not set (the settler needs --terms-file; see x402_testkit::settler::usdc_terms)");
            };
            let path = dir.join(format!("terms-{}.json", self.port));
            std::fs::write(&path, serde_json::to_vec_pretty(terms)?)
                .with_context(|| format!("write {}", path.display()))?;
            own_args.push("--terms-file".into());
            own_args.push(path.into());
        }
        if let (Some(secret), false) = (&self.opts.api_secret, has_flag("--api-secret-file")) {
            let path = dir.join(format!("api-secret-{}", self.port));
            std::fs::write(&path, format!("{secret}\n"))
                .with_context(|| format!("write {}", path.display()))?;
            own_args.push("--api-secret-file".into());
            own_args.push(path.into());
        }
        if let Some(alg) = &self.opts.token_alg {
            own_args.push("--token-alg".into());
            own_args.push(alg.into());
        }
        let mut cmd = Command::new(&bin);
        cmd.args(&own_args)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--database-url")
            .arg(&self.opts.database_url)
            .arg("--rpc")
            .arg(&rpc)
            .arg("--token-key-file")
            .arg(&self.opts.token_key_file)
            .args(&self.opts.extra_args)
            .env("EVM_PRIVATE_KEY", &self.opts.signer_key)
            .env_remove("X402_RPC")
            .env_remove("X402_DATABASE_URL")
            .env_remove("X402_TERMS_FILE")
            .env_remove("X402_API_SECRET_FILE")
            .env_remove("X402_FACILITATOR_CREDENTIALS_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + self.opts.start_timeout;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "settler exited during start-up ({status}); log:\n{}",
                        self.log()
                    );
                }
            }
            if let Ok(r) = client.get(format!("{}/healthz", self.url())).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!(
                    "settler did not answer /healthz within {:?}; log:\n{}",
                    self.opts.start_timeout,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The gateway secret the settler was started with (`None`: none, or one passed in
    /// `extra_args`).
    pub fn api_secret(&self) -> Option<&str> {
        if self
            .opts
            .extra_args
            .iter()
            .any(|a| a == "--api-secret-file")
        {
            return None;
        }
        self.opts.api_secret.as_deref()
    }

    /// `Bearer <secret>` for the `Authorization` header ("" when there is no secret).
    pub fn bearer(&self) -> String {
        self.api_secret()
            .map(|s| format!("Bearer {s}"))
            .unwrap_or_default()
    }

    /// The filter's `token_keys` entry for this settler's key ({"kid", "public_key", "alg"}),
    /// as an operator gets it: `x402-settler token-key` on the same key file and algorithm.
    pub fn token_key_entry(&self) -> Result<serde_json::Value> {
        let mut cmd = Command::new(self.bin());
        cmd.arg("token-key")
            .arg("--token-key-file")
            .arg(&self.opts.token_key_file)
            .env_remove("X402_TOKEN_ALG");
        if let Some(alg) = &self.opts.token_alg {
            cmd.arg("--token-alg").arg(alg);
        }
        let out = cmd.output().context("run x402-settler token-key")?;
        if !out.status.success() {
            bail!(
                "x402-settler token-key failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("token-key prints JSON")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn options(&self) -> &SettlerOptions {
        &self.opts
    }

    /// Options for the next `restart()` (e.g. other flags); port, database and keys stay.
    pub fn options_mut(&mut self) -> &mut SettlerOptions {
        &mut self.opts
    }

    /// SIGKILL, then reap. No graceful shutdown, nothing flushed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (graceful shutdown) and wait up to `timeout`; SIGKILL after.
    pub fn terminate(&mut self, timeout: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the settler again with the same options, port, database and keys.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn().await
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the process logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_file
    }
}

impl Drop for SettlerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
