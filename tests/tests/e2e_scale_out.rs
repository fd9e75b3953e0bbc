//! Scale-out, end to end over real processes: TWO Envoys (the filter) in front of one
//! upstream, TWO settler replicas on ONE fresh Postgres database, anvil + the test USDC.
//! Envoy A calls settler 1, Envoy B calls settler 2 (one settler endpoint per Envoy).
//!
//! Topology, as the settler README supports it: the replicas share the settler WALLET (the
//! settlement lane is per wallet and runs under a Postgres lease, "exactly one replica drives
//! a wallet; another takes over when the lease expires") and the token key file (so the
//! filters of both Envoys accept tokens from either replica). One wallet also means one permit
//! spender, so both Envoys run the same filter config and both schemes (EIP-2612 permit and
//! ERC-3009) are paid through both. Wallet = anvil dev account 8, pay_to = dev account 9
//! (dev account 0 deploys and mints).
//!
//! Postgres: `X402_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`); a
//! fresh `x402_e2e_<random>` database is created and dropped.

// Helpers outside #[test] fns are test code too: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use x402_client::caps::Caps;
use x402_client::pay::{Config, PaidResponse, Payer};
use x402_protocol::settler_api::{SettlementState, SettlementStatus};
use x402_protocol::token::signing_key_from_hex;
use x402_protocol::{Network, Scheme};
use x402_testkit::anvil::{dev_address, Anvil, DEV_KEYS};
use x402_testkit::envoy::{Envoy, EnvoyOpts, HttpRequest};
use x402_testkit::settler::{usdc_terms, SettlerOptions, SettlerProcess};
use x402_testkit::stack::{attach_settler_secret, Stack, WEATHER_PRICE};
use x402_testkit::upstream::Upstream;

const SETTLER_WALLET: usize = 8;
const PAY_TO: usize = 9;
const LEASE_SECS: u64 = 3;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Every payer gets 1 USDC.
const FUNDING: u64 = 1_000_000;
/// Envoy stat: requests the filter sent to its settler.
const SETTLER_RQ: &str = "cluster.x402_settler.upstream_rq_total";

// ---- the scaled-out stack --------------------------------------------------------------

struct ScaleOut {
    /// Envoy A -> settlers[0], Envoy B -> settlers[1].
    envoys: [Envoy; 2],
    settlers: [SettlerProcess; 2],
    upstream: Upstream,
    anvil: Anvil,
    token: Address,
    pay_to: Address,
    /// The settler wallet of each replica (the same one in the supported topology).
    wallets: [Address; 2],
    _dir: tempfile::TempDir,
    db: x402_testkit::pg::TestDb,
}

impl ScaleOut {
    async fn start() -> ScaleOut {
        Self::start_with([SETTLER_WALLET, SETTLER_WALLET]).await
    }

    /// `wallets`: anvil dev account of each replica's settler wallet.
    async fn start_with(wallets: [usize; 2]) -> ScaleOut {
        let db = x402_testkit::pg::TestDb::create().await;
        let dir = tempfile::Builder::new()
            .prefix("x402-scale-out-")
            .tempdir()
            .unwrap();
        let anvil = Anvil::start().unwrap();
        let token = anvil.deploy_token().await.unwrap();
        let key_file = dir.path().join("token.key");
        let mut settlers = Vec::new();
        // One after the other: the first creates the shared token key file, the second reads it.
        for w in wallets {
            let mut opts = SettlerOptions::new(
                db.url(),
                anvil.network().to_string(),
                anvil.rpc_url(),
                DEV_KEYS[w],
                &key_file,
            );
            opts.extra_args = [
                "--lease-secs",
                &LEASE_SECS.to_string(),
                "--rebroadcast-secs",
                "2",
            ]
            .map(String::from)
            .to_vec();
            opts.env.push(("RUST_LOG".into(), "info".into()));
            opts.terms = Some(usdc_terms(
                &anvil.network().to_string(),
                token,
                &[dev_address(PAY_TO)],
            ));
            settlers.push(SettlerProcess::start(opts).await.unwrap());
        }
        let settlers: [SettlerProcess; 2] = settlers.try_into().unwrap_or_else(|_| unreachable!());
        let wallets = wallets.map(dev_address);
        let pay_to = dev_address(PAY_TO);
        let key = signing_key_from_hex(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
        let upstream = Upstream::start().unwrap();
        // Each Envoy's permit spender is its settler's wallet (the same one when shared).
        let envoy = |i: usize| {
            let mut config =
                Stack::filter_config(&key, token, anvil.network().to_string(), wallets[i], pay_to);
            // These tests count the requests each Envoy sends to its settler to show that
            // tokens are validated at the edge. The revocation list is fetched on a timer (1 s
            // by default), which could land between two readings: fetch it once, at start.
            config["revocation"] = serde_json::json!({"interval_ms": 3_600_000});
            let mut opts = EnvoyOpts {
                upstream_port: Some(upstream.port()),
                settler_port: Some(settlers[i].port()),
                ..EnvoyOpts::default()
            };
            attach_settler_secret(&mut config, &mut opts, settlers[i].api_secret());
            Envoy::start(&config.to_string(), opts).unwrap()
        };
        let envoys = [envoy(0), envoy(1)];
        ScaleOut {
            envoys,
            settlers,
            upstream,
            anvil,
            token,
            pay_to,
            wallets,
            _dir: dir,
            db,
        }
    }

    fn network(&self) -> Network {
        Network::eip155(self.anvil.chain_id())
    }

    fn url(&self, envoy: usize) -> String {
        format!("{}/api/weather", self.envoys[envoy].base_url())
    }

    async fn funded_payers(&self, n: usize) -> Vec<PrivateKeySigner> {
        let mut out = Vec::new();
        for _ in 0..n {
            let s = PrivateKeySigner::random();
            self.anvil
                .mint(self.token, s.address(), U256::from(FUNDING))
                .await
                .unwrap();
            out.push(s);
        }
        out
    }

    fn payer(&self, signer: PrivateKeySigner, scheme: Scheme) -> Payer {
        let caps = Caps::default()
            .with_max("0.5")
            .unwrap()
            .allow_network(self.network())
            .allow_asset(self.token)
            .asset_decimals(self.token, 6)
            .schemes(vec![scheme]);
        Payer::new(Config::new(signer, caps).with_rpc(self.network(), self.anvil.rpc_url()))
            .unwrap()
    }

    async fn balance(&self, who: Address) -> U256 {
        self.anvil.balance_of(self.token, who).await.unwrap()
    }

    /// Everything needed to understand a failure: both settlers' logs, Envoy tails, chain.
    fn logs(&self) -> String {
        let mut s = String::new();
        for (i, st) in self.settlers.iter().enumerate() {
            s += &format!(
                "\n---- settler {} (pid {:?}, {}) ----\n{}",
                i + 1,
                st.pid(),
                st.log_path().display(),
                tail(&st.log(), 60)
            );
        }
        for (i, e) in self.envoys.iter().enumerate() {
            s += &format!("\n---- Envoy {} ----\n{}", ["A", "B"][i], e.log_tail(20));
        }
        s
    }

    async fn settlement(&self, via: usize, id: &str) -> Result<SettlementStatus, String> {
        let r = reqwest::get(format!("{}/v1/settlements/{id}", self.settlers[via].url()))
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("GET /v1/settlements/{id}: {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// Waits until every id is `settled`, asking replica `via` (any replica reads the shared
    /// database). Fails at once on `failed`, with the logs.
    async fn wait_all_settled(&self, via: usize, ids: &[String]) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut left: Vec<&String> = ids.iter().collect();
        while !left.is_empty() {
            let mut still = Vec::new();
            for id in left {
                match self.settlement(via, id).await {
                    Ok(s) if s.state == SettlementState::Settled => {}
                    Ok(s) if s.state == SettlementState::Failed => {
                        panic!("settlement {id} failed: {:?}\n{}", s.error, self.logs())
                    }
                    Ok(_) => still.push(id),
                    Err(e) => panic!(
                        "settlement {id} via settler {}: {e}\n{}",
                        via + 1,
                        self.logs()
                    ),
                }
            }
            left = still;
            if !left.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "{} settlement(s) not settled after {SETTLE_TIMEOUT:?}: {left:?}\ndb: {:?}\n{}",
                    left.len(),
                    self.states().await,
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    }

    /// Payments per state, straight from the shared database.
    async fn states(&self) -> Vec<(String, i64)> {
        let mut c = self.db.connect().await;
        sqlx::query_as("SELECT state, COUNT(*) FROM x402_payments GROUP BY state ORDER BY state")
            .fetch_all(&mut c)
            .await
            .unwrap()
    }

    async fn count_in(&self, state: &str) -> i64 {
        self.states()
            .await
            .iter()
            .find(|(s, _)| s == state)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }

    /// Which replica (0/1) holds the settlement lane's lease right now, if any.
    async fn lease_holder(&self) -> Option<usize> {
        let mut c = self.db.connect().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT name, owner, until_ms FROM x402_leases")
                .fetch_all(&mut c)
                .await
                .unwrap_or_default();
        let lane = format!("{:#x}", self.wallets[0]);
        let (_, owner, _) = rows
            .into_iter()
            .find(|(name, _, until)| *until > now && name.to_lowercase().ends_with(&lane))?;
        // The settler's lease owner is "<pid>-<uuid>".
        let pid: u32 = owner.split('-').next()?.parse().ok()?;
        self.settlers.iter().position(|s| s.pid() == Some(pid))
    }

    async fn wait_lease_holder(&self, want: Option<usize>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(h) = self.lease_holder().await {
                if want.is_none() || want == Some(h) {
                    return h;
                }
            }
            assert!(
                Instant::now() < deadline,
                "lease holder is not {want:?} after {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Settlement transactions in the database: (kind, state, status, signer).
    async fn txs(&self) -> Vec<(String, String, Option<i64>, String)> {
        let mut c = self.db.connect().await;
        sqlx::query_as("SELECT kind, state, status, signer FROM x402_txs ORDER BY nonce")
            .fetch_all(&mut c)
            .await
            .unwrap()
    }

    async fn rpc(&self, method: &str, params: serde_json::Value) {
        let _: serde_json::Value = self
            .anvil
            .provider()
            .raw_request(method.to_string().into(), params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
    }

    /// GET /api/weather on Envoy `envoy` with a bearer token and nothing else.
    fn get_with_token(&self, envoy: usize, token: &str) -> u16 {
        self.envoys[envoy]
            .send(
                &HttpRequest::new("GET", "/api/weather")
                    .header("authorization", &format!("Bearer {token}")),
            )
            .status
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One paid GET per payer, all at once; payer `i` goes through Envoy `envoys[i]`, pays by
/// `schemes[i]`. Returns the payers (their token caches) and the responses, in order.
async fn pay_concurrently(
    s: &ScaleOut,
    signers: Vec<PrivateKeySigner>,
    envoys: &[usize],
    schemes: &[Scheme],
) -> Vec<(std::sync::Arc<Payer>, Result<PaidResponse, String>)> {
    let mut tasks = Vec::new();
    for (i, signer) in signers.into_iter().enumerate() {
        let payer = std::sync::Arc::new(s.payer(signer, schemes[i]));
        let url = s.url(envoys[i]);
        let p = payer.clone();
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(20), p.get(&url)).await;
            (
                p,
                r.map_err(|_| "timed out".to_string())
                    .and_then(|r| r.map_err(|e| format!("{e:#}"))),
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn expect_paid(s: &ScaleOut, i: usize, r: &Result<PaidResponse, String>) -> String {
    let r = match r {
        Ok(r) => r,
        Err(e) => panic!("payer {i}: {e}\n{}", s.logs()),
    };
    assert_eq!(r.status, 200, "payer {i}: {}\n{}", r.text(), s.logs());
    let paid = r
        .paid
        .as_ref()
        .unwrap_or_else(|| panic!("payer {i} did not pay"));
    assert_eq!(paid.amount, U256::from(WEATHER_PRICE));
    paid.settlement_id
        .clone()
        .expect("the token response names the settlement")
}

/// 20 payers at once, half through each Envoy (both schemes on both): all served, every
/// payment settled exactly once; a token minted through one Envoy's settler opens the other
/// Envoy without any call to a settler.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_envoys_two_replicas_one_database_settle_every_payment_once() {
    let s = ScaleOut::start().await;
    let signers = s.funded_payers(20).await;
    let addrs: Vec<Address> = signers.iter().map(|p| p.address()).collect();
    let envoys: Vec<usize> = (0..20).map(|i| i % 2).collect();
    let schemes: Vec<Scheme> = (0..20)
        .map(|i| {
            if i % 4 < 2 {
                Scheme::Permit
            } else {
                Scheme::Exact
            }
        })
        .collect();

    let results = pay_concurrently(&s, signers, &envoys, &schemes).await;
    let ids: Vec<String> = results
        .iter()
        .enumerate()
        .map(|(i, (_, r))| expect_paid(&s, i, r))
        .collect();
    // Each Envoy's filter asked its own settler.
    for e in 0..2 {
        assert!(
            s.envoys[e].stat(SETTLER_RQ) >= 10,
            "Envoy {} sent {} requests to its settler",
            ["A", "B"][e],
            s.envoys[e].stat(SETTLER_RQ)
        );
    }

    // Ask the OTHER replica than the one that minted: one shared database.
    s.wait_all_settled(
        1,
        &ids[0..20].iter().step_by(2).cloned().collect::<Vec<_>>(),
    )
    .await;
    s.wait_all_settled(
        0,
        &ids[1..20].iter().step_by(2).cloned().collect::<Vec<_>>(),
    )
    .await;

    assert_eq!(
        s.balance(s.pay_to).await,
        U256::from(20 * WEATHER_PRICE),
        "pay_to got exactly 20 x price\n{}",
        s.logs()
    );
    for (i, a) in addrs.iter().enumerate() {
        assert_eq!(
            s.balance(*a).await,
            U256::from(FUNDING - WEATHER_PRICE),
            "payer {i} ({:?}, via Envoy {}) debited exactly once",
            schemes[i],
            ["A", "B"][envoys[i]]
        );
    }
    assert_eq!(s.states().await, vec![("settled".to_string(), 20)]);
    // 10 permits (permit + transferFrom) and 10 ERC-3009 transfers, each signed once, all mined
    // successfully, all from the one shared wallet.
    let txs = s.txs().await;
    assert_eq!(txs.len(), 30, "{txs:?}");
    assert!(
        txs.iter().all(|(_, state, status, signer)| state == "mined"
            && *status == Some(1)
            && signer.eq_ignore_ascii_case(&format!("{:#x}", s.wallets[0]))),
        "{txs:?}"
    );

    // Edge validation: a token minted by settler 1 (through Envoy A) opens Envoy B, and one
    // minted by settler 2 opens Envoy A, without the filter calling any settler.
    for (payer_idx, minted_via, used_at) in [(0usize, 0usize, 1usize), (1, 1, 0)] {
        let token = results[payer_idx]
            .0
            .cached_token(&s.url(minted_via))
            .expect("token cached")
            .access_token;
        let calls = s.envoys[used_at].stat(SETTLER_RQ);
        let upstream_before = s.upstream.requests().len();
        assert_eq!(
            s.get_with_token(used_at, &token),
            200,
            "token from Envoy {} refused at Envoy {}\n{}",
            ["A", "B"][minted_via],
            ["A", "B"][used_at],
            s.logs()
        );
        assert_eq!(
            s.envoys[used_at].stat(SETTLER_RQ),
            calls,
            "the filter validated the token without calling the settler"
        );
        assert_eq!(
            s.upstream.requests().len(),
            upstream_before + 1,
            "the upstream served it"
        );
    }
}

/// kill -9 of the replica driving the settlement lane, with 20 payments minted and their
/// transactions signed and stored but not mined (mining paused), and the node's mempool then
/// dropped (the transactions exist only in Postgres). The replica stays dead. The survivor
/// takes the lane's lease once it expires, re-broadcasts the stored transactions byte for byte,
/// settles them and the payments that arrived meanwhile through its own Envoy: every minted
/// payment settles exactly once. Tokens minted by the dead replica still open both Envoys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_lane_holder_is_taken_over_by_the_surviving_replica() {
    let mut s = ScaleOut::start().await;
    let signers = s.funded_payers(25).await;
    let addrs: Vec<Address> = signers.iter().map(|p| p.address()).collect();
    let mut signers = signers.into_iter();
    let holder = s.wait_lease_holder(None, Duration::from_secs(10)).await;
    let survivor = 1 - holder;

    // Mining paused: settlements get submitted (stored + broadcast) but not mined.
    s.rpc("evm_setAutomine", serde_json::json!([false])).await;
    let first: Vec<PrivateKeySigner> = signers.by_ref().take(20).collect();
    let envoys: Vec<usize> = (0..20).map(|i| i % 2).collect();
    let schemes: Vec<Scheme> = (0..20)
        .map(|i| {
            if i % 4 < 2 {
                Scheme::Permit
            } else {
                Scheme::Exact
            }
        })
        .collect();
    let results = pay_concurrently(&s, first, &envoys, &schemes).await;
    let mut ids: Vec<String> = results
        .iter()
        .enumerate()
        .map(|(i, (_, r))| expect_paid(&s, i, r))
        .collect();

    // The lane holder signs, stores and broadcasts all 20 (30 transactions).
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.count_in("submitted").await < 20 {
        assert!(
            Instant::now() < deadline,
            "the lane did not submit the 20 payments: {:?}\n{}",
            s.states().await,
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.states().await,
        vec![("submitted".to_string(), 20)],
        "minted, in flight, none settled"
    );

    // Exactly one replica drives the wallet: the other one never started the lane.
    assert!(
        !s.settlers[survivor]
            .log()
            .contains("settlement lane started"),
        "both replicas drive the wallet\n{}",
        s.logs()
    );
    // kill -9 the lane holder, mid-flight; its lease is still valid for up to LEASE_SECS.
    s.settlers[holder].kill9();
    let killed_at = Instant::now();
    // Lose the mempool too: the signed transactions now exist only in the shared database.
    s.rpc("anvil_dropAllTransactions", serde_json::json!([]))
        .await;
    s.rpc("evm_setAutomine", serde_json::json!([true])).await;

    // Meanwhile: a payment through the dead replica's Envoy fails closed (nothing charged);
    // 4 through the survivor's Envoy are minted (the API does not need the lane).
    let refused = signers.next().unwrap();
    let refused_addr = refused.address();
    let r = pay_concurrently(&s, vec![refused], &[holder], &[Scheme::Exact]).await;
    match &r[0].1 {
        Ok(resp) => assert_ne!(
            resp.status, 200,
            "a payment through the dead settler's Envoy cannot be served"
        ),
        Err(e) => assert!(
            e.contains("503") || e.contains("settler_unavailable") || e.contains("unavailable"),
            "unexpected refusal: {e}"
        ),
    }
    let later: Vec<PrivateKeySigner> = signers.collect();
    assert_eq!(later.len(), 4);
    let later_results = pay_concurrently(
        &s,
        later,
        &[survivor; 4],
        &[Scheme::Permit, Scheme::Exact, Scheme::Permit, Scheme::Exact],
    )
    .await;
    for (i, (_, r)) in later_results.iter().enumerate() {
        ids.push(expect_paid(&s, 20 + i, r));
    }

    // The survivor takes over the lane after the lease expires, and settles everything.
    s.wait_lease_holder(Some(survivor), Duration::from_secs(LEASE_SECS + 10))
        .await;
    let took_over = killed_at.elapsed();
    s.wait_all_settled(survivor, &ids).await;
    eprintln!(
        "lane taken over {took_over:?} after the kill; all 24 settled {:?} after it",
        killed_at.elapsed()
    );
    // The survivor's lane started once, and with the dead replica's 30 stored transactions.
    let started: Vec<String> = s.settlers[survivor]
        .log()
        .lines()
        .filter(|l| l.contains("settlement lane started"))
        .map(String::from)
        .collect();
    assert!(
        started.len() == 1 && started[0].contains("rebroadcast=30"),
        "{started:?}\n{}",
        s.logs()
    );

    // Exactly once: balances.
    assert_eq!(
        s.balance(s.pay_to).await,
        U256::from(24 * WEATHER_PRICE),
        "pay_to got exactly 24 x price\n{}",
        s.logs()
    );
    for (i, a) in addrs.iter().enumerate().filter(|(i, _)| *i != 20) {
        assert_eq!(
            s.balance(*a).await,
            U256::from(FUNDING - WEATHER_PRICE),
            "payer {i} debited exactly once"
        );
    }
    assert_eq!(
        s.balance(refused_addr).await,
        U256::from(FUNDING),
        "the refused payer is not charged"
    );
    assert_eq!(s.states().await, vec![("settled".to_string(), 24)]);
    // The 30 transactions the dead replica signed were mined as stored (nothing re-signed,
    // nothing dropped), plus 6 for the 4 later payments (2 permits, 2 ERC-3009).
    let txs = s.txs().await;
    assert_eq!(txs.len(), 36, "{txs:?}");
    assert!(
        txs.iter()
            .all(|(_, state, status, _)| state == "mined" && *status == Some(1)),
        "{txs:?}"
    );

    // Tokens minted by the dead replica still open its own Envoy (whose settler is gone) and
    // the other one: the filter validates them at the edge.
    let minted_by_dead = (0..20).find(|i| envoys[*i] == holder).unwrap();
    let token = results[minted_by_dead]
        .0
        .cached_token(&s.url(holder))
        .expect("token cached")
        .access_token;
    for e in [holder, survivor] {
        let calls = s.envoys[e].stat(SETTLER_RQ);
        assert_eq!(
            s.get_with_token(e, &token),
            200,
            "token minted by the dead replica refused at Envoy {}\n{}",
            ["A", "B"][e],
            s.logs()
        );
        assert_eq!(s.envoys[e].stat(SETTLER_RQ), calls, "no settler call");
    }
}

/// NOT the topology the settler README describes for fail-over, but one a user may try:
/// each replica with its OWN wallet, each Envoy naming its settler's wallet as permit spender.
/// Lanes are per wallet, so both lanes run at once on the shared database.
/// - A permit can only be settled by its spender's wallet (only it has the allowance): every
///   permit is settled by the lane of the replica that minted it, every payment settles once.
///   (Before the fix in `Store::due_pending` the other wallet's lane took some of them:
///   `permit()` then a reverting `transferFrom` -> `failed`, token served, merchant unpaid.)
/// - ERC-3009 payments are settled by whichever lane takes them first.
/// - kill -9 of one replica: what its wallet signed and stored is NOT taken over by the other
///   replica (its lane drives only its own wallet's transactions and nonces); it stays
///   `submitted`, nobody is charged, until that replica (that wallet) runs again, and then it
///   settles exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_wallets_settle_own_permits_and_a_dead_wallet_waits_for_its_replica() {
    let mut s = ScaleOut::start_with([7, 8]).await;
    let signers = s.funded_payers(28).await;
    let addrs: Vec<Address> = signers.iter().map(|p| p.address()).collect();
    let mut signers = signers.into_iter();

    let envoys: Vec<usize> = (0..20).map(|i| i % 2).collect();
    let schemes: Vec<Scheme> = (0..20)
        .map(|i| {
            if i % 4 < 2 {
                Scheme::Permit
            } else {
                Scheme::Exact
            }
        })
        .collect();
    let results =
        pay_concurrently(&s, signers.by_ref().take(20).collect(), &envoys, &schemes).await;
    let ids: Vec<String> = results
        .iter()
        .enumerate()
        .map(|(i, (_, r))| expect_paid(&s, i, r))
        .collect();
    s.wait_all_settled(0, &ids).await;
    assert_eq!(
        s.balance(s.pay_to).await,
        U256::from(20 * WEATHER_PRICE),
        "pay_to got exactly 20 x price\n{}",
        s.logs()
    );
    let mut c = s.db.connect().await;
    let (foreign,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM x402_txs t JOIN x402_payments p ON p.id = t.payment_id WHERE p.scheme = 'permit' AND t.signer <> p.spender")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(
        foreign, 0,
        "every permit is settled by its spender's wallet"
    );

    // Mining paused; 8 payments through Envoy A (replica 1, wallet 7), both schemes.
    s.rpc("evm_setAutomine", serde_json::json!([false])).await;
    let schemes2 = [Scheme::Permit, Scheme::Exact].repeat(4);
    let results2 =
        pay_concurrently(&s, signers.by_ref().take(8).collect(), &[0; 8], &schemes2).await;
    let ids2: Vec<String> = results2
        .iter()
        .enumerate()
        .map(|(i, (_, r))| expect_paid(&s, 20 + i, r))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.count_in("submitted").await < 8 {
        assert!(
            Instant::now() < deadline,
            "the 8 payments were not submitted: {:?}\n{}",
            s.states().await,
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut by_wallet7 = Vec::new();
    for id in &ids2 {
        let (signer,): (String,) =
            sqlx::query_as("SELECT DISTINCT signer FROM x402_txs WHERE payment_id = $1")
                .bind(id)
                .fetch_one(&mut c)
                .await
                .unwrap();
        if signer.eq_ignore_ascii_case(&format!("{:#x}", s.wallets[0])) {
            by_wallet7.push(id.clone());
        }
    }
    assert!(
        by_wallet7.len() >= 4,
        "the 4 permits name wallet 7 as spender: only its lane submits them ({} did)",
        by_wallet7.len()
    );

    // kill -9 replica 1 (wallet 7); the mempool is lost too; replica 2 keeps running.
    s.settlers[0].kill9();
    s.rpc("anvil_dropAllTransactions", serde_json::json!([]))
        .await;
    s.rpc("evm_setAutomine", serde_json::json!([true])).await;
    let others: Vec<String> = ids2
        .iter()
        .filter(|id| !by_wallet7.contains(id))
        .cloned()
        .collect();
    s.wait_all_settled(1, &others).await;
    // Well past wallet 7's lease: replica 2 does not take over wallet 7's stored transactions.
    tokio::time::sleep(Duration::from_secs(LEASE_SECS + 2)).await;
    for id in &by_wallet7 {
        let st = s.settlement(1, id).await.unwrap();
        assert_eq!(
            st.state,
            SettlementState::Submitted,
            "{id}: wallet 7's settlement waits for wallet 7\n{}",
            s.logs()
        );
    }
    let charged = U256::from((20 + others.len()) as u64 * WEATHER_PRICE);
    assert_eq!(
        s.balance(s.pay_to).await,
        charged,
        "nothing of wallet 7's moved while it is down"
    );

    // Replica 1 back (same wallet, same database): re-broadcasts and settles them, once.
    s.settlers[0].restart().await.unwrap();
    s.wait_all_settled(1, &by_wallet7).await;
    assert_eq!(
        s.balance(s.pay_to).await,
        U256::from(28 * WEATHER_PRICE),
        "pay_to got exactly 28 x price\n{}",
        s.logs()
    );
    for (i, a) in addrs.iter().enumerate() {
        assert_eq!(
            s.balance(*a).await,
            U256::from(FUNDING - WEATHER_PRICE),
            "payer {i} debited exactly once"
        );
    }
    assert_eq!(s.states().await, vec![("settled".to_string(), 28)]);
}
