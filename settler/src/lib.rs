//! x402 settler: verifies x402 payments sent by the edge filter, mints access tokens, and
//! settles every accepted payment on chain, durably and exactly once.

pub mod chain;
mod clock;
pub mod config;
pub mod error;
pub mod facilitator;
pub mod http;
pub mod metrics;
pub mod store;
pub mod verify;
mod lane;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{watch, Notify};

use crate::chain::{Chain, Chains};
use crate::config::ServeArgs;
use crate::http::AppState;
use crate::store::Store;

/// `x402-settler token-key`: prints the key id and public key (creating the key if missing).
pub fn token_key_json(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let key = config::load_or_create_token_key(path)?;
    let vk = key.verifying_key();
    Ok(serde_json::json!({
        "kid": x402_protocol::token::key_id(vk),
        "public_key": x402_protocol::token::verifying_key_to_hex(vk),
    }))
}

/// Runs the service until SIGINT/SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token_key = config::load_or_create_token_key(&args.token_key_file)?;
    let kid = x402_protocol::token::key_id(token_key.verifying_key());
    let signer = config::load_signer(&args)?;
    let api_secret = config::load_api_secret(&args)?;
    anyhow::ensure!(!args.rpc.is_empty(), "no --rpc eip155:<chain id>=<url> configured");

    let store = Store::connect(&args.database_url).await.with_context(|| format!("database {}", store::redact(&args.database_url)))?;
    tracing::info!(database = %store::redact(&args.database_url), backend = ?store.backend(), "database ready");

    let mut chains = Chains::default();
    let mut wake = HashMap::new();
    for spec in &args.rpc {
        anyhow::ensure!(!chains.by_network.contains_key(&spec.network), "network {} configured twice", spec.network);
        let chain = Chain::new(spec.network, &spec.url, signer.clone(), args.rpc_timeout(), args.poll_interval(), args.gas_limit)?;
        match chain.chain_id().await {
            Ok(id) if id != spec.network.chain_id => anyhow::bail!("RPC {} serves chain id {id}, configured as {}", chain::redact_url(&spec.url), spec.network),
            Ok(_) => tracing::info!(network = %spec.network, wallet = %chain.signer(), "chain ready"),
            Err(e) => tracing::warn!(network = %spec.network, error = %e, "chain not reachable at start; requests on it fail closed until it is"),
        }
        chains.by_network.insert(spec.network, Arc::new(chain));
        wake.insert(spec.network, Arc::new(Notify::new()));
    }

    let state = Arc::new(AppState {
        store: store.clone(),
        chains: chains.clone(),
        token_key,
        kid: kid.clone(),
        issuer: args.issuer.clone(),
        token_ttl: args.token_ttl,
        max_token_ttl: args.max_token_ttl,
        deadline_margin: args.deadline_margin,
        api_secret,
        locks: Default::default(),
        wake: wake.clone(),
        metrics: metrics::handle(),
        settle_timeout: Duration::from_secs(args.settle_timeout_secs.max(1)),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    if !args.no_worker {
        let instance = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4());
        for (network, chain) in &chains.by_network {
            let cfg = lane::WorkerConfig {
                poll: args.poll_interval(),
                rebroadcast: Duration::from_secs(args.rebroadcast_secs.max(1)),
                lease: Duration::from_secs(args.lease_secs.max(3)),
                instance: instance.clone(),
                batch: 64,
            };
            let lane = lane::Lane::new(store.clone(), chain.clone(), wake[network].clone(), cfg);
            workers.spawn(lane.run(stop_rx.clone()));
        }
    }
    workers.spawn(gauges(store.clone(), stop_rx.clone()));

    let listener = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, kid, "x402 settler listening");
    let app = http::router(state, args.body_limit);
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;

    tracing::info!("shutting down: stopping settlement lanes");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async { while workers.join_next().await.is_some() {} }).await;
    store.close().await;
    Ok(())
}

async fn gauges(store: Store, mut stop: watch::Receiver<bool>) {
    loop {
        if let Ok(counts) = store.count_by_state().await {
            for state in ["pending", "submitted", "settled", "failed"] {
                let n = counts.iter().find(|(s, _)| s == state).map(|(_, n)| *n).unwrap_or(0);
                ::metrics::gauge!(metrics::SETTLEMENTS_BY_STATE, "state" => state).set(n as f64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
    }
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
