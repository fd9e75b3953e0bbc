//! `make bench` (settlement part): how fast a backlog of signed payments settles on anvil, as
//! a ratio to anvil's own ceiling of plain transactions/s measured in the same run, and the
//! gas per settled payment, batched (X402Settlement, `--settlement-contract`) vs one
//! transaction per payment. Writes bench/results/latest.{md,json}.
//!
//! A run: payments are accepted by a settler started with `--no-worker` (API only: the backlog
//! builds up), then the settler restarts with its lane and the clock starts. `per_s` =
//! backlog / time until every payment is final; `p50_ms`/`p99_ms` = time until half / 99 %
//! of the backlog was settled (from the settler's `x402_settlements_total` counter);
//! `settled_fraction` = payments `settled` (each checked) and the recipient's balance agreeing.
//!
//! Then the mint rows ([`mint`]): tokens bought through Envoy at c = 1, 8, 32 while a backlog
//! settles, and the settlement rate meanwhile.

#[path = "settle/mint.rs"]
mod mint;

use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{keccak256, Address, B256, U256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::{eip712_domain, SolStruct};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use x402_testkit::anvil::{dev_address, Anvil, DEV_KEYS};
use x402_testkit::settler::{usdc_terms, SettlerOptions, SettlerProcess};

mod typed {
    alloy::sol! {
        struct Permit { address owner; address spender; uint256 value; uint256 nonce; uint256 deadline; }
        struct TransferWithAuthorization { address from; address to; uint256 value; uint256 validAfter; uint256 validBefore; bytes32 nonce; }
    }
}

const SETTLER: usize = 9;
const PAY_TO: usize = 8;
const PRICE: u64 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact,
    Permit,
}

struct Row {
    name: String,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    settled_fraction: f64,
    gas_per_payment: f64,
    transactions: u64,
}

fn sign(key: &PrivateKeySigner, hash: B256) -> Result<(u8, U256, U256)> {
    let sig = key.sign_hash_sync(&hash)?;
    Ok((27 + u8::from(sig.v()), sig.r(), sig.s()))
}

fn hex(x: U256) -> String {
    format!("{x:#x}")
}

struct Chain {
    anvil: Anvil,
    token: Address,
    contract: Address,
}

fn payment(
    c: &Chain,
    key: &PrivateKeySigner,
    kind: Kind,
    spender: Address,
    nonce: u64,
    deadline: u64,
) -> Result<Value> {
    let chain_id = c.anvil.chain_id();
    let domain = eip712_domain! { name: "USDC", version: "2", chain_id: chain_id, verifying_contract: c.token, };
    Ok(match kind {
        Kind::Permit => {
            let msg = typed::Permit {
                owner: key.address(),
                spender,
                value: U256::from(PRICE),
                nonce: U256::from(nonce),
                deadline: U256::from(deadline),
            };
            let (v, r, s) = sign(key, msg.eip712_signing_hash(&domain))?;
            json!({"version": "Version 0.1", "permit": {
                "permit_type": "EIP2612",
                "signature": {"signature_type": "EIP2612", "v": v, "r": hex(r), "s": hex(s)},
                "owner": key.address(), "spender": spender, "token": c.token,
                "value": PRICE, "nonce": nonce, "deadline": deadline, "chain_id": chain_id}})
        }
        Kind::Exact => {
            let n = keccak256([key.address().as_slice(), &nonce.to_be_bytes()].concat());
            let msg = typed::TransferWithAuthorization {
                from: key.address(),
                to: dev_address(PAY_TO),
                value: U256::from(PRICE),
                validAfter: U256::ZERO,
                validBefore: U256::from(deadline),
                nonce: n,
            };
            let (v, r, s) = sign(key, msg.eip712_signing_hash(&domain))?;
            json!({"version": "Version 0.1", "permit": {
                "permit_type": "ERC3009",
                "signature": {"v": v, "r": hex(r), "s": hex(s)},
                "token": c.token, "chain_id": chain_id,
                "authorizer": key.address(), "recipient": dev_address(PAY_TO), "value": PRICE,
                "validAfter": 0, "validBefore": deadline, "nonce": n}})
        }
    })
}

fn requirement(c: &Chain, spender: Address) -> Value {
    let asset = json!({"address": c.token, "decimals": 6, "name": "USDC", "version": "2", "symbol": "USDC"});
    let network = c.anvil.network().to_string();
    json!({"route": "weather", "token_ttl_secs": 300, "resource": "http://bench/weather", "accepts": [
        {"amount": PRICE.to_string(), "method": {"scheme": "permit", "network": network, "asset": asset,
            "pay_to": dev_address(PAY_TO), "spender": spender}},
        {"amount": PRICE.to_string(), "method": {"scheme": "exact", "network": network, "asset": asset,
            "pay_to": dev_address(PAY_TO)}}]})
}

/// anvil's ceiling: plain ETH transfers, pre-signed, sent one after the other (automine: one
/// block each), transactions/s.
async fn anvil_ceiling(c: &Chain, n: u64) -> Result<f64> {
    let key: PrivateKeySigner = DEV_KEYS[3].parse()?;
    let wallet = EthereumWallet::from(key.clone());
    let p = c.anvil.provider();
    let start_nonce = p.get_transaction_count(key.address()).await?;
    let fees = p.estimate_eip1559_fees().await?;
    let mut raws = Vec::new();
    for i in 0..n {
        let tx = TransactionRequest::default()
            .with_from(key.address())
            .with_to(Address::repeat_byte(0x55))
            .with_value(U256::from(1))
            .with_nonce(start_nonce + i)
            .with_chain_id(c.anvil.chain_id())
            .with_gas_limit(21_000)
            .with_max_fee_per_gas(fees.max_fee_per_gas * 4)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let env = tx.build(&wallet).await?;
        raws.push(alloy::eips::eip2718::Encodable2718::encoded_2718(&env));
    }
    let t0 = Instant::now();
    for r in &raws {
        let _ = p.send_raw_transaction(r).await?;
    }
    while p.get_transaction_count(key.address()).await? < start_nonce + n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

async fn fund(c: &Chain, payers: &[PrivateKeySigner], each: u64) -> Result<()> {
    for k in payers {
        c.anvil.mint(c.token, k.address(), U256::from(each)).await?;
    }
    Ok(())
}

fn settled_count(metrics: &str, state: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("x402_settlements_total") && l.contains(&format!("state=\"{state}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One backlog of `payers.len() * per_payer` payments of `kind`, settled by a fresh settler
/// (batched through the contract when `batched`).
async fn run(
    c: &Chain,
    name: &str,
    kind: Kind,
    batched: bool,
    payers: usize,
    per_payer: u64,
    bin: Option<&str>,
) -> Result<Row> {
    let keys: Vec<PrivateKeySigner> = (0..payers).map(|_| PrivateKeySigner::random()).collect();
    fund(c, &keys, PRICE * per_payer).await?;
    let spender = if batched {
        c.contract
    } else {
        dev_address(SETTLER)
    };
    let dir = tempfile::tempdir()?;
    let mut opts = SettlerOptions::new(
        format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()),
        c.anvil.network().to_string(),
        c.anvil.rpc_url(),
        DEV_KEYS[SETTLER],
        dir.path().join("token.key"),
    );
    opts.terms = Some(usdc_terms(
        &c.anvil.network().to_string(),
        c.token,
        &[dev_address(PAY_TO)],
    ));
    // X402_BENCH_SETTLER_LOG=<dir>: keep the settlers' logs there (at info), to look into a row.
    match std::env::var("X402_BENCH_SETTLER_LOG") {
        Ok(d) => {
            opts.env.push(("RUST_LOG".into(), "info".into()));
            opts.log_file = Some(std::path::Path::new(&d).join(format!("{name}.log")));
        }
        Err(_) => opts.env.push(("RUST_LOG".into(), "warn".into())),
    }
    opts.bin = bin.map(Into::into);
    opts.extra_args = vec!["--no-worker".into()];
    if batched {
        opts.extra_args.extend([
            "--settlement-contract".into(),
            format!("{}={:#x}", c.anvil.network(), c.contract),
        ]);
    }
    let mut settler = SettlerProcess::start(opts).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/tokens", settler.url());
    let bearer = settler.bearer();
    let req = requirement(c, spender);
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    // The backlog: one payer's payments in nonce order, payers concurrently.
    let mut tasks = tokio::task::JoinSet::new();
    for k in &keys {
        let mut bodies = Vec::new();
        for n in 0..per_payer {
            bodies.push(
                json!({"requirement": req, "payment": payment(c, k, kind, spender, n, deadline)?}),
            );
        }
        let (http, url, bearer) = (http.clone(), url.clone(), bearer.clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for b in bodies {
                let r = http
                    .post(&url)
                    .header("authorization", &bearer)
                    .json(&b)
                    .send()
                    .await?;
                let status = r.status();
                let v: Value = r.json().await?;
                if status != 200 {
                    bail!("token request answered {status}: {v}");
                }
                ids.push(v["settlement_id"].as_str().unwrap_or_default().to_string());
            }
            Ok::<_, anyhow::Error>(ids)
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r??);
    }
    let total = ids.len() as u64;
    let p = c.anvil.provider();
    let block0 = p.get_block_number().await?;
    let nonce0 = p.get_transaction_count(dev_address(SETTLER)).await?;
    let pay_to0 = c.anvil.balance_of(c.token, dev_address(PAY_TO)).await?;

    settler
        .options_mut()
        .extra_args
        .retain(|a| a != "--no-worker");
    settler.restart().await?;
    // From the settler answering (its lane starting with it): the drain of the backlog.
    let t0 = Instant::now();
    let metrics_url = format!("{}/metrics", settler.url());
    let (mut p50, mut p99) = (None, None);
    loop {
        let m = http.get(&metrics_url).send().await?.text().await?;
        let settled = settled_count(&m, "settled");
        let done = settled + settled_count(&m, "failed");
        let at = t0.elapsed().as_secs_f64() * 1000.0;
        if p50.is_none() && settled * 2 >= total {
            p50 = Some(at);
        }
        if p99.is_none() && settled * 100 >= total * 99 {
            p99 = Some(at);
        }
        if done >= total {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("{name}: {done} of {total} final after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut settled = 0u64;
    for id in &ids {
        let v: Value = http
            .get(format!("{}/v1/settlements/{id}", settler.url()))
            .send()
            .await?
            .json()
            .await?;
        if v["state"] == "settled" {
            settled += 1;
        }
    }
    let moved = c.anvil.balance_of(c.token, dev_address(PAY_TO)).await? - pay_to0;
    let on_chain = u64::try_from(moved / U256::from(PRICE)).unwrap_or(0);
    if on_chain != settled {
        bail!("{name}: {settled} settled by the settler but {on_chain} paid on chain");
    }
    let block1 = p.get_block_number().await?;
    let mut gas = 0u64;
    for b in block0 + 1..=block1 {
        if let Some(block) = p.get_block_by_number(b.into()).await? {
            gas += block.header.gas_used;
        }
    }
    let transactions = p.get_transaction_count(dev_address(SETTLER)).await? - nonce0;
    settler.terminate(Duration::from_secs(5));
    Ok(Row {
        name: name.into(),
        per_s: total as f64 / secs,
        p50_ms: p50.unwrap_or(secs * 1000.0),
        p99_ms: p99.unwrap_or(secs * 1000.0),
        settled_fraction: settled as f64 / total as f64,
        gas_per_payment: gas as f64 / settled.max(1) as f64,
        transactions,
    })
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<()> {
    let backlog = env_usize("X402_BENCH_BACKLOG", 2000);
    let single = env_usize("X402_BENCH_SINGLE", 400);
    let anvil = Anvil::start().context("anvil")?;
    let token = anvil.deploy_token().await?;
    let contract = anvil.deploy_settlement(&[dev_address(SETTLER)]).await?;
    let c = Chain {
        anvil,
        token,
        contract,
    };
    let ceiling = anvil_ceiling(&c, 1000).await?;
    // 20 payments per payer (one owner's permits in nonce order), payers concurrently.
    let per = 20u64;
    // X402_BENCH_PARTS: which groups run (default all): batched, single, mint.
    let parts = std::env::var("X402_BENCH_PARTS").unwrap_or_else(|_| "batched,single,mint".into());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    // X402_BENCH_COMPARE_BIN: another settler binary (e.g. the previous commit's) measured in
    // the same run on the batched rows, as `<row>_compare`.
    let compare = std::env::var("X402_BENCH_COMPARE_BIN").ok();
    let mut rows = Vec::new();
    let mut groups: Vec<(Kind, bool, String, usize)> = Vec::new();
    if part("batched") {
        groups.push((
            Kind::Exact,
            true,
            format!("settle_exact_{backlog}"),
            backlog,
        ));
        groups.push((
            Kind::Permit,
            true,
            format!("settle_permit_{backlog}"),
            backlog,
        ));
    }
    if part("single") {
        groups.push((Kind::Exact, false, format!("single_exact_{single}"), single));
        groups.push((
            Kind::Permit,
            false,
            format!("single_permit_{single}"),
            single,
        ));
    }
    for (kind, batched, name, n) in groups {
        rows.push(run(&c, &name, kind, batched, n / per as usize, per, None).await?);
        if let (Some(bin), true) = (&compare, batched) {
            let name = format!("{name}_compare");
            rows.push(run(&c, &name, kind, batched, n / per as usize, per, Some(bin)).await?);
        }
    }
    let mint_rows = if part("mint") {
        mint::rows(
            &c,
            env_usize("X402_BENCH_MINT_C1", 300),
            env_usize("X402_BENCH_MINT", 2000),
            env_usize("X402_BENCH_MINT_BACKLOG", 1000),
        )
        .await?
    } else {
        Vec::new()
    };
    let mut md =
        String::from("## Settlement backlog on anvil (batched vs one transaction per payment)\n\n");
    md.push_str(&format!(
        "anvil_tx_ceiling: {ceiling:.0} plain transactions/s (one block each), the baseline of this run\n\n"
    ));
    md.push_str("| row | per_s | ratio to anvil ceiling | p50_ms | p99_ms | settled_fraction | gas per settled payment | wallet txs |\n|---|---|---|---|---|---|---|---|\n");
    let mut json_rows = vec![json!({"name": "anvil_tx_ceiling", "per_s": ceiling, "ratio": 1.0})];
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.4} | {:.0} | {} |\n",
            r.name,
            r.per_s,
            r.per_s / ceiling,
            r.p50_ms,
            r.p99_ms,
            r.settled_fraction,
            r.gas_per_payment,
            r.transactions
        ));
        json_rows.push(
            json!({"name": r.name, "per_s": r.per_s, "ratio": r.per_s / ceiling,
            "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "settled_fraction": r.settled_fraction,
            "gas_per_settled_payment": r.gas_per_payment, "wallet_transactions": r.transactions}),
        );
    }
    let gas_of = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix))
            .map(|r| r.gas_per_payment)
            .unwrap_or(0.0)
    };
    let mut gas = vec![];
    for (scheme, b, s) in [
        ("exact", gas_of("settle_exact"), gas_of("single_exact")),
        ("permit", gas_of("settle_permit"), gas_of("single_permit")),
    ] {
        let saving = if s > 0.0 { 1.0 - b / s } else { 0.0 };
        md.push_str(&format!(
            "\ngas per settled payment, {scheme}: batched {b:.0}, single {s:.0} ({:.0} % less)",
            saving * 100.0
        ));
        gas.push(json!({"scheme": scheme, "batched": b, "single": s, "saving": saving}));
    }
    md.push_str("\n\n### Minting through Envoy while a settlement backlog drains\n\n");
    let db = if std::env::var("X402_BENCH_MINT_DB").is_ok_and(|v| v == "postgres") {
        "Postgres"
    } else {
        "SQLite"
    };
    md.push_str(&format!("Each row: a backlog accepted with the lane off, then the lane starts and the token requests (pre-signed ERC-3009, 64 payers) go through Envoy (the filter, `--concurrency 2`) at c clients; `settle_during` = payments settled in the same window per second (goal: >= the mint rate). Settler database: {db} (`X402_BENCH_MINT_DB=postgres` for Postgres).\n\n"));
    md.push_str("`mint_c8_facts_off` runs with `--payer-facts-poll-ms=0` (every acceptance reads the balance from the node), the baseline of the payer-facts cache; `facts hit` = share of acceptances answered from it.\n\n");
    md.push_str("| row | per_s | p50_ms | p99_ms | settle_during per_s | settle_during / mint | settled_fraction | facts hit |\n|---|---|---|---|---|---|---|---|\n");
    for r in &mint_rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.4} | {:.3} |\n",
            r.name,
            r.per_s,
            r.p50_ms,
            r.p99_ms,
            r.settle_during,
            r.settle_during / r.per_s.max(f64::MIN_POSITIVE),
            r.settled_fraction,
            r.facts_hit
        ));
        json_rows.push(json!({"name": r.name, "per_s": r.per_s, "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms, "settled_fraction": r.settled_fraction, "payer_facts_hit": r.facts_hit}));
        if r.name != "mint_c1" {
            json_rows.push(json!({"name": format!("settle_during_{}", r.name),
                "per_s": r.settle_during, "ratio_to_mint": r.settle_during / r.per_s.max(f64::MIN_POSITIVE)}));
        }
        json_rows.push(json!({"name": format!("{}_phases_ms", r.name),
            "phases": r.phases.iter().map(|(p, ms)| json!({"phase": p, "mean_ms": ms})).collect::<Vec<_>>()}));
    }
    if mint_rows.iter().any(|r| !r.phases.is_empty()) {
        md.push_str("\nWhere a mint's time goes in the settler (mean ms per acceptance phase, `x402_accept_phase_seconds`; the rest of p50 is Envoy, the filter and HTTP):\n\n| row |");
        let names: Vec<&str> = mint_rows
            .iter()
            .flat_map(|r| r.phases.iter().map(|(p, _)| p.as_str()))
            .fold(Vec::new(), |mut v, p| {
                if !v.contains(&p) {
                    v.push(p);
                }
                v
            });
        for n in &names {
            md.push_str(&format!(" {n} |"));
        }
        md.push_str(" sum |\n|---|");
        md.push_str(&"---|".repeat(names.len() + 1));
        md.push('\n');
        for r in &mint_rows {
            md.push_str(&format!("| {} |", r.name));
            let mut sum = 0.0;
            for n in &names {
                let ms = r
                    .phases
                    .iter()
                    .find(|(p, _)| p == n)
                    .map_or(0.0, |(_, ms)| *ms);
                sum += ms;
                md.push_str(&format!(" {ms:.2} |"));
            }
            md.push_str(&format!(" {sum:.2} |\n"));
        }
    }
    md.push('\n');
    write_results(
        &md,
        json_rows,
        json!({"anvil_tx_ceiling": ceiling, "gas": gas}),
    )?;
    print!("{md}");
    Ok(())
}

/// Merges our rows, the gas comparison (`settle`) and the "settle bench" markdown section into
/// bench/results/latest.* (the edge bench writes there too).
fn write_results(md: &str, rows: Vec<Value>, settle: Value) -> Result<()> {
    x402_testkit::bench_results::merge_into_latest("settle bench", md, rows, &[("settle", settle)])
}
