//! x402 settler: verifies x402 payments sent by the edge filter, mints access tokens, and
//! settles every accepted payment on chain, durably and exactly once.
//!
//! Modules, from the wire inwards (none imports a module above it):
//! - `api`: HTTP adapters - token API, x402 facilitator, operational endpoints, the route
//!   table. They parse, call the service and map its refusals (HTTP status / x402 reason).
//! - `service`: verification and acceptance shared by both APIs (payer locks, single use,
//!   chain reads, store insert, lane wake-up, token minting).
//! - `verify` (pure checks) and `scheme` (one module per payment scheme behind a trait).
//! - `error`: [`error::Refusal`], the one domain error enum; store and chain errors.
//! - `lane` (settlement), `chain` (RPC), `store` (database), `terms` (what the settler
//!   honours, `--terms-file`), and `config`, `metrics` (`ops_gauges` refreshes the gauges),
//!   `clock`.
//!
//! [`Settler::new`] builds everything from the command line; [`run`] serves it on a listener
//! until a shutdown future completes; [`serve`] is the binary's `run` with the listen
//! address and SIGINT/SIGTERM.

pub mod api;
pub(crate) mod chain;
pub(crate) mod clock;
pub mod config;
pub mod error;
pub(crate) mod facts;
mod lane;
pub(crate) mod metrics;
mod ops_gauges;
pub(crate) mod scheme;
pub(crate) mod service;
pub(crate) mod store;
pub mod terms;
#[cfg(test)]
mod test_fixtures;
pub(crate) mod verify;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::Address;
use anyhow::Context;
use tokio::sync::{watch, Notify};

use crate::api::AppState;
use crate::chain::{Chain, Chains};
use crate::config::ServeArgs;
use crate::service::{Minter, Service};
use crate::store::Store;

/// `x402-settler token-key`: prints the filter's `token_keys` entry for the key: key id,
/// public key and algorithm (creating the key if missing).
pub fn token_key_json(
    path: &std::path::Path,
    alg: x402_protocol::token::TokenAlg,
) -> anyhow::Result<serde_json::Value> {
    let vk = config::load_or_create_token_key(path, alg)?.verifying_key();
    Ok(serde_json::json!({
        "kid": vk.key_id(),
        "public_key": vk.to_hex(),
        "alg": vk.alg().jws_name(),
    }))
}

/// `x402-settler unblock`: clears payer blocking of `payer` (on `network`, or everywhere) in
/// the database and records it. Returns {"payer", "network", "cleared"}.
pub async fn unblock(
    database_url: &str,
    payer: alloy::primitives::Address,
    network: Option<x402_protocol::Network>,
    note: &str,
) -> anyhow::Result<serde_json::Value> {
    let store = Store::connect(database_url)
        .await
        .with_context(|| format!("database {}", store::redact(database_url)))?;
    let cleared = store
        .unblock(payer, network.map(|n| n.chain_id), note, clock::now_ms())
        .await?;
    store.close().await;
    tracing::info!(%payer, network = ?network.map(|n| n.to_string()), cleared, "payer unblocked");
    Ok(serde_json::json!({
        "payer": format!("{payer:#x}"),
        "network": network.map(|n| n.to_string()),
        "cleared": cleared,
    }))
}

/// A settler ready to serve: database connected and migrated, chains configured, state built.
pub struct Settler {
    state: Arc<AppState>,
    body_limit: usize,
    /// Settlement lanes to run, one per network; `None` with `--no-worker`.
    lanes: Option<LaneSpec>,
    /// How often the payer-facts watchers poll (`--payer-facts-poll-ms`).
    payer_facts_poll: Duration,
}

struct LaneSpec {
    cfg: lane::WorkerConfig,
    /// The lanes' own database pool (`--lane-db-connections`).
    store: Store,
}

impl Settler {
    /// Loads the keys, connects the database (running migrations) and every `--rpc`.
    pub async fn new(args: &ServeArgs) -> anyhow::Result<Settler> {
        args.check_acceptance()?;
        args.check_batching()?;
        if args.accept_deadline_ms >= config::FILTER_TIMEOUT_MS_EXAMPLE {
            tracing::warn!(accept_deadline_ms = args.accept_deadline_ms, "--accept-deadline-ms is at or above the filter's usual settler.timeout_ms ({} ms): make the filter's timeout larger, or a client may get 503 for a payment the settler then stores (its retry still gets the same token)", config::FILTER_TIMEOUT_MS_EXAMPLE);
        }
        let token_key =
            config::load_or_create_token_key(&args.token_key_file, args.token_alg.alg())?;
        let signers = config::load_signers(args)?;
        let (signer, other_signers) = match signers.split_first() {
            Some((first, rest)) => (first.clone(), rest.to_vec()),
            None => anyhow::bail!("no signer key"),
        };
        let auth = config::load_caller_auth(args)?;
        let terms = match &args.terms_file {
            Some(p) => terms::Terms::load(p)?,
            None => anyhow::bail!(
                "no --terms-file (env X402_TERMS_FILE): the settler needs its terms, the assets, recipients and limits it honours (see settler/README.md)"
            ),
        };
        anyhow::ensure!(
            !args.rpc.is_empty(),
            "no --rpc eip155:<chain id>=<url> configured"
        );

        let store = Store::connect(&args.database_url)
            .await
            .with_context(|| format!("database {}", store::redact(&args.database_url)))?;
        tracing::info!(database = %store::redact(&args.database_url), backend = ?store.backend(), "database ready");

        let mut chains = Chains::default();
        let mut wake = HashMap::new();
        for spec in &args.rpc {
            anyhow::ensure!(
                chains.primary(spec.network).is_none(),
                "network {} configured twice",
                spec.network
            );
            // Every endpoint must serve the configured chain: with fallbacks a wrong one would
            // otherwise answer some requests only.
            if spec.urls.len() > 1 {
                for url in &spec.urls {
                    let one = Chain::new(
                        spec.network,
                        url,
                        signer.clone(),
                        args.rpc_timeout(),
                        args.poll_interval(),
                        args.gas_limit,
                    )?;
                    match one.chain_id().await {
                        Ok(id) if id != spec.network.chain_id => anyhow::bail!(
                            "RPC {} serves chain id {id}, configured as {}",
                            chain::redact_url(url),
                            spec.network
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(network = %spec.network, rpc = %chain::redact_url(url), error = %e, "RPC endpoint not reachable at start; the others serve meanwhile")
                        }
                    }
                }
            }
            let urls: Vec<&str> = spec.urls.iter().map(String::as_str).collect();
            let chain = Chain::with_fallbacks(
                spec.network,
                &urls,
                signer.clone(),
                args.rpc_timeout(),
                args.poll_interval(),
                args.gas_limit,
            )?
            .with_settlement_contract(
                args.settlement_contract
                    .iter()
                    .find(|c| c.network == spec.network)
                    .map(|c| c.address),
            );
            match chain.chain_id().await {
                Ok(id) if id != spec.network.chain_id => {
                    anyhow::bail!(
                        "RPC {} serves chain id {id}, configured as {}",
                        spec.urls
                            .first()
                            .map(|u| chain::redact_url(u))
                            .unwrap_or_default(),
                        spec.network
                    )
                }
                Ok(_) => {
                    tracing::info!(network = %spec.network, wallet = %chain.signer(), pool = signers.len(), endpoints = spec.urls.len(), "chain ready")
                }
                Err(e) => {
                    tracing::warn!(network = %spec.network, error = %e, "chain not reachable at start; requests on it fail closed until it is")
                }
            }
            chains.insert(chain, &other_signers);
            // One wake-up per lane: a lane's own "look again" must wake that lane.
            wake.insert(
                spec.network,
                signers.iter().map(|_| Arc::new(Notify::new())).collect(),
            );
        }

        let domains = verify_domains(&terms, &chains).await?;
        let max_fee = args.max_fee_wei()?;
        let lane_health =
            Arc::new(lane::LaneHealth::new(chains.pools.iter().flat_map(
                |(n, pool)| pool.iter().map(move |c| (*n, c.signer())),
            )));
        let service = Service {
            lanes: lane_health.clone(),
            block_secs: args.block_secs,
            store,
            chains,
            deadline_margin: args.deadline_margin,
            accept_deadline: args.accept_deadline(),
            locks: Default::default(),
            totals: Default::default(),
            wake,
            minter: Minter::new(
                token_key,
                args.issuer.clone(),
                args.token_ttl,
                args.max_token_ttl,
            ),
            terms,
            domains,
            finals: Default::default(),
            facts: (args.payer_facts_poll_ms > 0).then(|| {
                Arc::new(facts::PayerFacts::new(
                    Duration::from_millis(args.payer_facts_max_age_ms),
                    args.payer_facts_capacity,
                ))
            }),
        };
        let state = Arc::new(AppState {
            service: Arc::new(service),
            auth,
            metrics: metrics::handle(),
            settle_timeout: Duration::from_secs(args.settle_timeout_secs.max(1)),
        });
        let lane_store = if args.no_worker {
            None
        } else {
            Some(
                Store::connect_sized(&args.database_url, Some(args.lane_db_connections))
                    .await
                    .with_context(|| {
                        format!(
                            "database {} (lanes' pool)",
                            store::redact(&args.database_url)
                        )
                    })?,
            )
        };
        let lanes = lane_store.map(|lane_store| LaneSpec {
            store: lane_store,
            cfg: lane::WorkerConfig {
                poll: args.poll_interval(),
                rebroadcast: Duration::from_secs(args.rebroadcast_secs.max(1)),
                lease: Duration::from_secs(args.lease_secs.max(3)),
                instance: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4()),
                batch: 64,
                batch_max: args.batch_max as usize,
                batch_wait: Duration::from_millis(args.batch_wait_ms),
                max_in_flight: args.max_in_flight,
                gas_limit: args.gas_limit,
                max_fee,
                replace_after: Duration::from_secs(args.replace_after_secs.max(1)),
                stall_after: Duration::from_secs(args.stall_after_secs.max(1)),
                max_txs_per_payment: args.max_txs_per_payment.max(1),
                max_gas_per_payment: args
                    .max_gas_per_payment
                    .unwrap_or(args.gas_limit.saturating_mul(4)),
                confirmations: args.confirmations,
                health: lane_health,
                share: lane::Share::default(),
                steal_after: Duration::from_secs(args.pool_steal_secs),
            },
        });
        Ok(Settler {
            state,
            body_limit: args.body_limit,
            lanes,
            payer_facts_poll: Duration::from_millis(args.payer_facts_poll_ms.max(1)),
        })
    }

    /// The HTTP API (for `tower::ServiceExt::oneshot` in tests, or any server).
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone(), self.body_limit)
    }

    /// The key id of the token signing key.
    pub fn kid(&self) -> &str {
        &self.state.service.minter.kid
    }
}

/// Checks every asset of the terms against its contract's `DOMAIN_SEPARATOR()`: a mismatch
/// refuses the start (naming the contract's own name and version); an asset whose chain does
/// not answer now is verified on first use and refused until then.
async fn verify_domains(terms: &terms::Terms, chains: &Chains) -> anyhow::Result<service::Domains> {
    let mut states = HashMap::new();
    for asset in &terms.assets {
        let state = match chains.primary(asset.network) {
            None => {
                tracing::warn!(network = %asset.network, asset = %asset.address, "{}: no --rpc for this network; payments on it are refused", asset.label());
                service::DomainState::Unverified
            }
            Some(chain) => match service::check_domain(chain, asset).await {
                service::DomainCheck::Verified => {
                    tracing::info!(network = %asset.network, asset = %asset.address, name = %asset.name, version = %asset.version, "EIP-712 domain verified against the contract");
                    service::DomainState::Verified
                }
                service::DomainCheck::Mismatch(m) => anyhow::bail!("{m}"),
                service::DomainCheck::Unreachable(e) => {
                    tracing::warn!(network = %asset.network, asset = %asset.address, error = %e, "{}: EIP-712 domain not verified (chain unreachable); payments on it are refused until it is", asset.label());
                    service::DomainState::Unverified
                }
            },
        };
        states.insert((asset.network, asset.address), state);
    }
    Ok(service::Domains::new(terms, |a| {
        states
            .get(&(a.network, a.address))
            .cloned()
            .unwrap_or(service::DomainState::Unverified)
    }))
}

/// Serves `settler` on `listener` with its settlement lanes until `shutdown` completes; then
/// stops accepting, lets the lanes finish their step (10 s at most) and closes the database.
pub async fn run(
    listener: tokio::net::TcpListener,
    settler: Settler,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let service = settler.state.service.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    if let Some(spec) = &settler.lanes {
        for (network, pool) in &service.chains.pools {
            let Some(wakes) = service.wake.get(network) else {
                continue;
            };
            // The pool's share of each wallet: its place among the pool's addresses, sorted,
            // so replicas configured with the same pool in any order agree.
            let mut wallets: Vec<Address> = pool.iter().map(|c| c.signer()).collect();
            wallets.sort();
            for (chain, wake) in pool.iter().zip(wakes) {
                let mut cfg = spec.cfg.clone();
                cfg.share = lane::Share {
                    of: wallets.len() as u64,
                    index: wallets
                        .iter()
                        .position(|w| *w == chain.signer())
                        .unwrap_or(0) as u64,
                };
                let lane = lane::Lane::new(spec.store.clone(), chain.clone(), wake.clone(), cfg);
                workers.spawn(lane.run(stop_rx.clone()));
            }
        }
    }
    if let Some(facts) = &service.facts {
        for (_, chain) in service.chains.primaries() {
            workers.spawn(facts::watch::run(
                facts.clone(),
                chain.clone(),
                settler.payer_facts_poll,
                stop_rx.clone(),
            ));
        }
    }
    workers.spawn(ops_gauges::run(service.clone(), stop_rx.clone()));
    workers.spawn(service::expire_holds(
        service.store.clone(),
        stop_rx.clone(),
    ));

    tracing::info!(listen = %listener.local_addr()?, kid = settler.kid(), "x402 settler listening");
    axum::serve(listener, settler.router())
        .with_graceful_shutdown(shutdown)
        .await?;

    tracing::info!("shutting down: stopping settlement lanes");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    service.store.close().await;
    if let Some(spec) = &settler.lanes {
        spec.store.close().await;
    }
    Ok(())
}

/// Runs the service until SIGINT/SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settler = Settler::new(&args).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    run(listener, settler, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
