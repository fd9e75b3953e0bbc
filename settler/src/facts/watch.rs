//! The payer-facts watcher of one network: polls the node for new blocks and applies the
//! asset logs of each to [`PayerFacts`], in block order; fills entries acceptance missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};
use tokio::sync::watch;

use super::{FactLog, PayerFacts};
use crate::chain::Chain;
use crate::error::ChainError;

/// A watcher further behind than this many blocks starts over at the head instead of asking
/// for all their logs (nodes cap `eth_getLogs` ranges).
const MAX_CATCH_UP_BLOCKS: u64 = 500;

/// Polls `chain` every `poll` until `stop`.
pub(crate) async fn run(
    facts: Arc<PayerFacts>,
    chain: Arc<Chain>,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let chain_id = chain.network.chain_id;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
        match step(&facts, &chain).await {
            Ok(()) => {
                if failing {
                    tracing::info!(network = %chain.network, "payer facts: watching blocks again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(network = %chain.network, error = %e, "payer facts: block poll failed; acceptance reads the node until it recovers");
                }
                failing = true;
            }
        }
        metrics::gauge!(crate::metrics::PAYER_FACTS_ENTRIES, "network" => chain.network.to_string())
            .set(facts.len(chain_id) as f64);
    }
}

/// One poll: the head block; the logs from the block after the one applied up to it.
async fn step(facts: &PayerFacts, chain: &Chain) -> Result<(), ChainError> {
    let chain_id = chain.network.chain_id;
    let (number, hash, parent) = chain.head_block().await?;
    let now = Instant::now();
    let Some((applied, applied_hash)) = facts.head(chain_id) else {
        facts.reset(chain_id, (number, hash), now);
        return Ok(());
    };
    if number == applied && hash == applied_hash {
        facts.live(chain_id, now);
        return Ok(());
    }
    if number <= applied || number - applied > MAX_CATCH_UP_BLOCKS {
        tracing::info!(network = %chain.network, applied, head = number, "payer facts: reorg or far behind; starting over at the head");
        facts.reset(chain_id, (number, hash), now);
        return Ok(());
    }
    // The block applied last must still be on the chain: the head's parent when one block
    // came, else asked for.
    let still = if number == applied + 1 {
        parent == applied_hash
    } else {
        chain.block_hash(applied).await? == Some(applied_hash)
    };
    if !still {
        tracing::info!(network = %chain.network, applied, "payer facts: reorg; starting over at the head");
        facts.reset(chain_id, (number, hash), now);
        return Ok(());
    }
    let tokens = facts.tokens(chain_id);
    let logs = if tokens.is_empty() {
        Vec::new()
    } else {
        chain.asset_logs(&tokens, applied + 1, number).await?
    };
    // Every log asked for must be understood (and not one of a dropped block), or the
    // facts would miss a change: start over instead.
    let Some(logs) = logs
        .iter()
        .map(|l| if l.removed { None } else { decode(l) })
        .collect::<Option<Vec<FactLog>>>()
    else {
        tracing::info!(network = %chain.network, "payer facts: a log not understood; starting over at the head");
        facts.reset(chain_id, (number, hash), now);
        return Ok(());
    };
    if !facts.apply(chain_id, applied + 1, (&tokens, &logs), (number, hash), now) {
        // Another head was set meanwhile (cannot happen with one watcher): start over.
        facts.reset(chain_id, (number, hash), now);
    }
    Ok(())
}

/// Fills the entry of (`token`, `payer`) by reads at `block` (balance, permit nonce); run
/// beside the acceptance that missed it, so no acceptance waits for it.
pub(crate) fn spawn_fill(
    facts: Arc<PayerFacts>,
    chain: Arc<Chain>,
    token: Address,
    payer: Address,
    block: u64,
) {
    tokio::spawn(async move {
        // A node without the block's state: not cached (the next acceptance tries again).
        let read = chain.balance_and_nonce_at(token, payer, block).await.ok();
        facts.fill(chain.network.chain_id, token, payer, block, read);
    });
}

/// The watcher's view of a log: the decoded [`FactLog`], `None` for a log it cannot read.
pub(crate) fn decode(log: &alloy::rpc::types::Log) -> Option<FactLog> {
    use crate::chain::IToken;
    use alloy::sol_types::SolEvent;
    let token = log.address();
    let topic0 = *log.topic0()?;
    let tx: B256 = log.transaction_hash?;
    if topic0 == IToken::Transfer::SIGNATURE_HASH {
        let e = IToken::Transfer::decode_log(&log.inner).ok()?;
        Some(FactLog::Transfer {
            token,
            from: e.from,
            to: e.to,
            value: e.value,
            tx,
        })
    } else if topic0 == IToken::Approval::SIGNATURE_HASH {
        let e = IToken::Approval::decode_log(&log.inner).ok()?;
        Some(FactLog::Approval {
            token,
            owner: e.owner,
        })
    } else if topic0 == IToken::AuthorizationUsed::SIGNATURE_HASH {
        let e = IToken::AuthorizationUsed::decode_log(&log.inner).ok()?;
        Some(FactLog::Authorization {
            token,
            authorizer: e.authorizer,
            nonce: e.nonce,
        })
    } else if topic0 == IToken::AuthorizationCanceled::SIGNATURE_HASH {
        let e = IToken::AuthorizationCanceled::decode_log(&log.inner).ok()?;
        Some(FactLog::Authorization {
            token,
            authorizer: e.authorizer,
            nonce: e.nonce,
        })
    } else {
        None
    }
}
