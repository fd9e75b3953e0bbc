//! The mint rows: tokens bought through Envoy (the real filter in front of the settler) at
//! c = 1, 8 and 32 concurrent clients WHILE the settler's lane drains a backlog, and the
//! settlement rate in the same window (`settle_during_mint_c8/_c32`): the lane must keep up
//! with minting, or the backlog grows.
//!
//! A row: the settler runs with `--no-worker` while `backlog` payments are accepted directly
//! (API only, they pile up), then it restarts with its lane and the mint load starts at once:
//! `n` pre-signed ERC-3009 payments from 64 payers, POSTed to `/x402/token/weather` by `c`
//! clients. `per_s` = n / window, `p50_ms`/`p99_ms` per token request (client side, through
//! Envoy); `settle_during` = payments settled in the window / window. Afterwards every payment
//! must be `settled` exactly once (the recipient's balance moved by all of them).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use x402_protocol::token::signing_key_from_hex;
use x402_testkit::anvil::{dev_address, DEV_KEYS};
use x402_testkit::envoy::{Envoy, EnvoyOpts};
use x402_testkit::settler::{usdc_terms, SettlerOptions, SettlerProcess};
use x402_testkit::stack::{attach_settler_secret, Stack};
use x402_testkit::upstream::Upstream;

use super::{fund, payment, requirement, settled_count, Chain, Kind, PAY_TO, PRICE, SETTLER};

/// Payers of a mint row: more than the largest concurrency, so the per-payer lock of the
/// acceptance is not what is measured.
const PAYERS: usize = 64;

pub(crate) struct MintRow {
    pub name: String,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Settlements/s in the same window.
    pub settle_during: f64,
    pub settled_fraction: f64,
    /// Mean milliseconds per acceptance phase in the settler during the row
    /// (`x402_accept_phase_seconds`: sum / count), in the settler's order.
    pub phases: Vec<(String, f64)>,
    /// Share of the row's acceptances answered from the payer-facts cache (no balance read).
    pub facts_hit: f64,
}

/// The acceptance phases the settler reports, in the order they run.
const PHASES: [&str; 8] = [
    "check",
    "lock",
    "single_use",
    "payer_block",
    "chain_reads",
    "total_cap",
    "commit",
    "sign",
];

/// Mean ms of each phase from the settler's metrics text (summary `_sum` / `_count`).
fn phase_means(metrics: &str) -> Vec<(String, f64)> {
    let value = |name: &str, phase: &str| -> Option<f64> {
        let key = format!("x402_accept_phase_seconds_{name}{{phase=\"{phase}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
    };
    PHASES
        .iter()
        .filter_map(|p| {
            let (sum, count) = (value("sum", p)?, value("count", p)?);
            (count > 0.0).then(|| (p.to_string(), sum / count * 1000.0))
        })
        .collect()
}

/// `x402_payer_facts_total{result="hit"}` over all results, from the metrics text.
fn facts_hit_share(metrics: &str) -> f64 {
    let count = |result: &str| -> f64 {
        let key = format!("x402_payer_facts_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let hit = count("hit");
    let all = hit + count("miss") + count("bypass");
    if all > 0.0 {
        hit / all
    } else {
        0.0
    }
}

/// One mint row's load: `conc` clients minting `n` tokens, with or without payer facts.
#[derive(Clone, Copy)]
struct Load {
    conc: usize,
    n: usize,
    facts: bool,
}

/// Settler (batched through the contract), upstream and Envoy with the filter.
struct Edge {
    settler: SettlerProcess,
    envoy: Envoy,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

/// The mint rows' database: SQLite (one settler, as `make demo` runs it), or with
/// `X402_BENCH_MINT_DB=postgres` Postgres (what replicas share; `X402_BENCH_POSTGRES_URL`,
/// default the local server's `test` database, where a fresh database is created). Returns
/// the URL and a label for the results.
fn mint_database(dir: &std::path::Path) -> Result<(String, String)> {
    if std::env::var("X402_BENCH_MINT_DB").map_or(true, |v| v != "postgres") {
        let url = format!("sqlite://{}?mode=rwc", dir.join("s.db").display());
        return Ok((url, "SQLite".into()));
    }
    let admin = std::env::var("X402_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("x402_bench_mint_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        let out = std::process::Command::new("psql")
            .args([admin.as_str(), "-q", "-c", sql.as_str()])
            .output()
            .context("psql (Postgres client) for the mint rows' database")?;
        if !out.status.success() {
            bail!(
                "{sql}: {} (X402_BENCH_MINT_DB=postgres needs a Postgres server)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Ok((format!("{base}/{name}"), "Postgres".into()))
}

async fn start_edge(c: &Chain) -> Result<Edge> {
    let dir = tempfile::tempdir()?;
    let network = c.anvil.network().to_string();
    let key_file = dir.path().join("token.key");
    let (db_url, _) = mint_database(dir.path())?;
    let mut opts = SettlerOptions::new(
        db_url,
        network.clone(),
        c.anvil.rpc_url(),
        DEV_KEYS[SETTLER],
        &key_file,
    )
    .with_terms(usdc_terms(&network, c.token, &[dev_address(PAY_TO)]));
    opts.env.push(("RUST_LOG".into(), "warn".into()));
    opts.extra_args = vec![
        "--no-worker".into(),
        "--settlement-contract".into(),
        format!("{}={:#x}", c.anvil.network(), c.contract),
    ];
    let settler = SettlerProcess::start(opts).await?;
    let upstream = Upstream::start()?;
    let key_hex = std::fs::read_to_string(&key_file).context("settler token key file")?;
    let key = signing_key_from_hex(&key_hex).context("token key parses")?;
    // Permits would name the contract; the rows pay with ERC-3009 (no per-payer order).
    let mut config = Stack::filter_config(&key, c.token, network, c.contract, dev_address(PAY_TO));
    let mut envoy_opts = EnvoyOpts {
        upstream_port: Some(upstream.port()),
        settler_port: Some(settler.port()),
        concurrency: 2,
        ..EnvoyOpts::default()
    };
    attach_settler_secret(&mut config, &mut envoy_opts, settler.api_secret());
    let envoy = Envoy::start(&config.to_string(), envoy_opts)?;
    Ok(Edge {
        settler,
        envoy,
        _upstream: upstream,
        _dir: dir,
    })
}

fn deadline() -> Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600)
}

/// `n` ERC-3009 payments round-robin over `keys` (nonces from `first`).
fn signed(c: &Chain, keys: &[PrivateKeySigner], n: usize, first: u64) -> Result<Vec<Value>> {
    let d = deadline()?;
    (0..n)
        .map(|i| {
            let k = &keys[i % keys.len()];
            payment(c, k, Kind::Exact, Address::ZERO, first + i as u64, d)
        })
        .collect()
}

async fn settled_now(http: &reqwest::Client, settler: &SettlerProcess) -> Result<u64> {
    let m = http
        .get(format!("{}/metrics", settler.url()))
        .send()
        .await?
        .text()
        .await?;
    Ok(settled_count(&m, "settled"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One mint row at concurrency `c`, with `backlog` payments draining meanwhile.
async fn row(
    chain: &Chain,
    edge: &mut Edge,
    keys: &[PrivateKeySigner],
    load: Load,
    backlog: usize,
    first_nonce: u64,
) -> Result<MintRow> {
    let Load { conc, n, facts } = load;
    let http = reqwest::Client::new();
    // The backlog, accepted by the API-only settler.
    let args = &mut edge.settler.options_mut().extra_args;
    if !args.iter().any(|a| a == "--no-worker") {
        args.insert(0, "--no-worker".into());
    }
    // Without the payer-facts cache: every acceptance reads the node (the baseline row).
    args.retain(|a| a != "--payer-facts-poll-ms=0");
    if !facts {
        args.push("--payer-facts-poll-ms=0".into());
    }
    edge.settler.restart().await?;
    let req = requirement(chain, chain.contract);
    let url = format!("{}/v1/tokens", edge.settler.url());
    let bearer = edge.settler.bearer();
    let pending = signed(chain, keys, backlog, first_nonce)?;
    let mut tasks = tokio::task::JoinSet::new();
    for part in pending.chunks(backlog.div_ceil(8).max(1)) {
        let bodies: Vec<Value> = part
            .iter()
            .map(|p| json!({"requirement": req, "payment": p}))
            .collect();
        let (http, url, bearer) = (http.clone(), url.clone(), bearer.clone());
        tasks.spawn(async move {
            for b in bodies {
                let r = http
                    .post(&url)
                    .header("authorization", &bearer)
                    .json(&b)
                    .send()
                    .await?;
                if r.status() != 200 {
                    bail!("backlog payment answered {}", r.status());
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let to_mint = signed(chain, keys, n, first_nonce + backlog as u64)?;
    let total = (backlog + n) as u64;
    let pay_to0 = chain
        .anvil
        .balance_of(chain.token, dev_address(PAY_TO))
        .await?;

    // The lane starts with the settler; the mint load at once.
    edge.settler
        .options_mut()
        .extra_args
        .retain(|a| a != "--no-worker");
    edge.settler.restart().await?;
    let buy = format!("{}/x402/token/weather", edge.envoy.base_url());
    let queue = Arc::new(Mutex::new(VecDeque::from(to_mint)));
    let settled0 = settled_now(&http, &edge.settler).await?;
    let t0 = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..conc {
        let (http, buy, queue) = (http.clone(), buy.clone(), queue.clone());
        clients.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(body) = next else { break };
                let t = Instant::now();
                let r = http.post(&buy).json(&body).send().await?;
                let status = r.status();
                let text = r.text().await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                if status != 200 {
                    bail!("token request through Envoy answered {status}: {text}");
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(n);
    while let Some(r) = clients.join_next().await {
        latencies.extend(r??);
    }
    let window = t0.elapsed().as_secs_f64();
    let settled1 = settled_now(&http, &edge.settler).await?;
    // The settler restarted for this row: its phase figures are the mint window's (and the
    // wait below adds none: nothing is accepted then).
    let metrics = http
        .get(format!("{}/metrics", edge.settler.url()))
        .send()
        .await?
        .text()
        .await?;
    let phases = phase_means(&metrics);
    let facts_hit = facts_hit_share(&metrics);
    latencies.sort_by(f64::total_cmp);

    // Exactly once: every payment settled, the recipient paid for each.
    let t1 = Instant::now();
    loop {
        let done = settled_now(&http, &edge.settler).await?;
        if done - settled0 >= total {
            break;
        }
        if t1.elapsed() > Duration::from_secs(300) {
            bail!(
                "mint_c{conc}: {} of {total} settled after 300 s",
                done - settled0
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = chain
        .anvil
        .balance_of(chain.token, dev_address(PAY_TO))
        .await?
        - pay_to0;
    let on_chain = u64::try_from(moved / U256::from(PRICE)).unwrap_or(0);
    if on_chain != total {
        bail!("mint_c{conc}: {total} payments settled but {on_chain} paid on chain");
    }
    Ok(MintRow {
        name: format!("mint_c{conc}{}", if facts { "" } else { "_facts_off" }),
        per_s: n as f64 / window,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        settle_during: (settled1 - settled0) as f64 / window,
        settled_fraction: on_chain as f64 / total as f64,
        phases,
        facts_hit,
    })
}

/// mint_c1, mint_c8, mint_c32 (`n1` / `n` tokens each), each while `backlog` payments drain.
pub(crate) async fn rows(c: &Chain, n1: usize, n: usize, backlog: usize) -> Result<Vec<MintRow>> {
    let keys: Vec<PrivateKeySigner> = (0..PAYERS).map(|_| PrivateKeySigner::random()).collect();
    // Round-robin from payer 0 in each of the eight signing runs: up to one more each.
    let per_payer = ((n1 + 3 * n + 4 * backlog) / PAYERS + 8) as u64;
    fund(c, &keys, PRICE * per_payer).await?;
    let mut edge = start_edge(c).await?;
    let mut out = Vec::new();
    let mut nonce = 1_000_000u64;
    // mint_c8_facts_off: the baseline of the payer-facts cache in the same run.
    for (conc, count, facts) in [
        (1usize, n1, true),
        (8, n, false),
        (8, n, true),
        (32, n, true),
    ] {
        let load = Load {
            conc,
            n: count,
            facts,
        };
        let r = row(c, &mut edge, &keys, load, backlog, nonce).await?;
        nonce += (count + backlog) as u64;
        out.push(r);
    }
    edge.settler.terminate(Duration::from_secs(5));
    drop(edge.envoy);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::phase_means;

    #[test]
    fn phase_means_read_the_summary_sums_and_counts() {
        let text = "x402_accept_phase_seconds{phase=\"lock\",quantile=\"0.5\"} 0.001\n\
            x402_accept_phase_seconds_sum{phase=\"lock\"} 0.5\n\
            x402_accept_phase_seconds_count{phase=\"lock\"} 250\n\
            x402_accept_phase_seconds_sum{phase=\"sign\"} 0\n\
            x402_accept_phase_seconds_count{phase=\"sign\"} 0\n";
        assert_eq!(phase_means(text), vec![("lock".to_string(), 2.0)]);
    }
}
