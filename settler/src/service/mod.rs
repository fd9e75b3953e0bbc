//! The settler's service layer, behind both HTTP APIs: verification and acceptance of
//! payments (`accept`), per-payer serialisation (`locks`), access tokens (`mint`), and the
//! reads the operational endpoints answer from. Typed inputs and outputs, refusals as
//! [`Refusal`]; nothing here knows about HTTP.

mod accept;
mod exposure;
mod finals;
mod hold;
mod idempotency;
mod locks;
mod mint;
mod renew;
mod revoke;
mod terms_check;
mod totals;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::Address;
use tokio::sync::Notify;
use x402_protocol::payment::{ClientPayment, PaymentFormat};
use x402_protocol::settler_api::{Requirement, SettlementStatus, TokenResponse, MAX_HOLD_SECS};
use x402_protocol::Network;

pub(crate) use self::accept::Accepted;
pub(crate) use self::finals::{Finals, MAX_PUBLIC_WAITERS};
pub(crate) use self::hold::expire_holds;
pub(crate) use self::locks::PayerLocks;
pub(crate) use self::mint::Minter;
pub(crate) use self::revoke::Revocations;
pub(crate) use self::terms_check::{check_domain, DomainCheck, DomainState, Domains};
use crate::chain::Chains;
use crate::clock::now_secs;
use crate::error::Refusal;
use crate::lane::LaneHealth;
use crate::metrics as m;
use crate::store::{AcceptExtras, PaymentRow, Store};

/// Whether acceptance stores the payment (token, facilitator `/settle`) or only checks it
/// (facilitator `/verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Verify,
    Store,
}

pub(crate) struct Service {
    /// Whether each network's settlement lane is stalled (written by the lanes).
    pub(crate) lanes: Arc<LaneHealth>,
    /// Payer blocking lasts this long after a payer-caused failure (`--block-secs`).
    pub(crate) block_secs: u64,
    pub(crate) store: Store,
    pub(crate) chains: Chains,
    /// Seconds a deadline / `validBefore` must still be away.
    pub(crate) deadline_margin: u64,
    /// Acceptance must reach its commit within this long of the request (`accept`).
    pub(crate) accept_deadline: Duration,
    pub(crate) locks: PayerLocks,
    /// SQLite: each asset's unsettled total, estimated in memory (`totals`).
    pub(crate) totals: totals::OpenTotals,
    /// Wakes a network's settlement lanes (one per pool wallet, in pool order) when a
    /// payment is stored ([`Service::wake_lanes`]).
    pub(crate) wake: HashMap<Network, Vec<Arc<Notify>>>,
    pub(crate) minter: Minter,
    /// What the settler honours (`--terms-file`).
    pub(crate) terms: crate::terms::Terms,
    /// Per asset of the terms, whether its EIP-712 domain is verified against the contract.
    pub(crate) domains: Domains,
    /// Waiters for settlements to end, polled together.
    pub(crate) finals: Finals,
    /// Recent payers' on-chain facts (`--payer-facts-poll-ms`; `None`: off).
    pub(crate) facts: Option<Arc<crate::facts::PayerFacts>>,
}

/// Where acceptance takes an ERC-3009 authorization's on-chain state from, when the payer's
/// facts are cached (`facts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceSource {
    /// The facts: used only if a block log showed it (the token API, whose access is granted
    /// ahead of settlement anyway: an authorization used or cancelled since the last poll, or
    /// before the payer was first seen, is a payment undone, and bounded as one).
    Facts,
    /// The node, always (the facilitator: a resource server asks whether a payment is valid
    /// now, and is answered from the chain).
    Node,
}

/// What `/readyz` reports: the database and each chain, `Err` with the reason.
pub(crate) struct Readiness {
    pub(crate) database: Result<(), String>,
    pub(crate) chains: Vec<(Network, Result<u64, String>)>,
    /// A chain read that did not finish (its task failed): not ready.
    pub(crate) incomplete: bool,
    /// Stalled settlement lanes, with the reason (new payments there are refused).
    pub(crate) stalled: Vec<(Network, String)>,
}

impl Readiness {
    pub(crate) fn ready(&self) -> bool {
        self.database.is_ok()
            && !self.incomplete
            && self.stalled.is_empty()
            && self.chains.iter().all(|(_, c)| c.is_ok())
    }
}

impl Service {
    /// Checks and stores the payment, then mints its access token (`POST /v1/tokens`).
    /// `payment_id`: the client's idempotency key; `hold_secs`: hold it for the upstream's
    /// answer that long at most (see `hold`).
    pub(crate) async fn buy_token(
        &self,
        payment: &ClientPayment,
        format: PaymentFormat,
        requirement: &Requirement,
        payment_id: Option<String>,
        hold_secs: Option<u64>,
    ) -> Result<TokenResponse, Refusal> {
        if hold_secs.is_some() && payment.scheme() != x402_protocol::Scheme::Exact {
            // The lane settles a payer's permits in nonce order: a held permit would stall
            // the payer's later ones.
            return Err(Refusal::InvalidRequest(
                "field `hold_secs`: only ERC-3009 (exact) payments can be held".into(),
            ));
        }
        let t = std::time::Instant::now();
        let checked = self.check(payment, requirement)?;
        m::accept_phase("check", t);
        let ttl = self.token_ttl(requirement, &checked.priced.method);
        let exp = checked.now.saturating_add(ttl);
        let extras = AcceptExtras {
            // The token's times, stored so the same payment again gets the same token.
            token: Some((checked.now as i64, exp as i64)),
            payment_id,
            held_until_ms: hold_secs.map(|s| {
                crate::clock::now_ms().saturating_add((s.min(MAX_HOLD_SECS) as i64) * 1000)
            }),
        };
        let new = match self
            .accept(
                payment,
                format,
                requirement,
                &checked,
                (Mode::Store, NonceSource::Facts),
                extras,
            )
            .await?
        {
            Accepted::New(new) => new,
            Accepted::Again(stored) => {
                // A held payment sent again (same payment, same idempotency key) while the
                // first request waits for its upstream: this request holds it too, so the
                // first one's void cannot undo a charge this one earns (store::holds). One
                // that would not hold it (no hold asked) must wait until it is decided.
                if stored.held {
                    let held_again = hold_secs.is_some()
                        && self
                            .store
                            .hold_again(&stored.row.p.id, crate::clock::now_ms())
                            .await?;
                    if !held_again {
                        return Err(Refusal::SettlementPending {
                            settlement_id: stored.row.p.id.clone(),
                            state: stored.row.state,
                            message: "this payment is held for a request in flight (its upstream's answer decides whether it is charged); retry when that request is done".into(),
                        });
                    }
                }
                // The same payment again, before broadcast: the token it got first.
                let mut token = idempotency::token_again(&self.minter, &stored, now_secs())?;
                token.transaction = stored.row.transfer_tx.clone();
                tracing::info!(settlement_id = %stored.row.p.id, payer = %stored.row.p.payer, route = %stored.row.p.route, "same payment posted again before broadcast: same token");
                metrics::counter!(m::TOKENS_REISSUED).increment(1);
                return Ok(token);
            }
        };
        let t = std::time::Instant::now();
        let token = self.minter.mint(&new, checked.now, ttl);
        m::accept_phase("sign", t);
        metrics::counter!(m::TOKENS_MINTED, "network" => new.network.to_string(), "route" => new.route.clone()).increment(1);
        tracing::info!(settlement_id = %new.id, payer = %new.payer, route = %new.route, amount = %new.value, network = %new.network, "token minted");
        Ok(token)
    }

    /// The state of a stored payment (`GET /v1/settlements/{id}`).
    pub(crate) async fn settlement(&self, id: &str) -> Result<SettlementStatus, Refusal> {
        // No id is this long: answered without a database round trip.
        if id.len() > 64 {
            return Err(Refusal::NotFound("no such settlement".into()));
        }
        match self.store.status(id).await? {
            Some(status) => Ok(status),
            None => Err(Refusal::NotFound(format!("no settlement {id}"))),
        }
    }

    /// Waits up to `timeout` for the lane to finish settlement `id`; the last row read
    /// (`None` if none could be read). The lane settles it whatever happens here.
    pub(crate) async fn await_final(&self, id: &str, timeout: Duration) -> Option<PaymentRow> {
        self.finals.wait(&self.store, id, timeout).await
    }

    /// Wakes every settlement lane of `network`: the payment is in one wallet's share, and
    /// each lane keeps its own wake-up (a lane busy now takes it at its next wait).
    pub(crate) fn wake_lanes(&self, network: Network) {
        for w in self.wake.get(&network).into_iter().flatten() {
            w.notify_one();
        }
    }

    /// Whether `network` has an RPC endpoint.
    pub(crate) fn serves(&self, network: Network) -> bool {
        self.chains.primary(network).is_some()
    }

    /// The configured networks, sorted, and the settler's wallets (sorted, deduplicated).
    pub(crate) fn networks_and_signers(&self) -> (Vec<Network>, Vec<Address>) {
        let mut networks: Vec<Network> = self.chains.pools.keys().copied().collect();
        networks.sort();
        let mut signers: Vec<Address> = self
            .chains
            .pools
            .values()
            .flatten()
            .map(|c| c.signer())
            .collect();
        signers.sort();
        signers.dedup();
        (networks, signers)
    }

    /// Pings the database (3 s at most) and asks every chain for its block number.
    pub(crate) async fn readiness(&self) -> Readiness {
        let database = match tokio::time::timeout(Duration::from_secs(3), self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        };
        let mut set = tokio::task::JoinSet::new();
        for (n, c) in self.chains.primaries() {
            let c = c.clone();
            set.spawn(async move { (n, c.block_number().await.map_err(|e| e.to_string())) });
        }
        let mut r = Readiness {
            database,
            chains: Vec::new(),
            incomplete: false,
            stalled: self.lanes.all_stalled(),
        };
        while let Some(done) = set.join_next().await {
            match done {
                Ok(c) => r.chains.push(c),
                Err(_) => r.incomplete = true,
            }
        }
        r
    }
}
