//! Durable asynchronous settlement: one lane per signer wallet per network (a signer pool
//! of several wallets has several lanes per network, each taking its share of the payments).
//!
//! A lane owns its wallet's transaction nonces. It takes pending payments in acceptance order
//! (so one payer's permits go in permit-nonce order), signs the settlement transactions with
//! consecutive wallet nonces, stores them and moves the payment to `submitted` in one DB
//! transaction, THEN broadcasts them, without waiting for the previous receipt. Receipts are
//! confirmed as blocks arrive. After a crash the lane re-broadcasts every stored transaction
//! without receipt byte for byte and continues after the highest stored nonce: a payment's
//! transfer is signed once and can execute at most once. Replicas on a shared Postgres take a
//! lease on the lane, so exactly one process drives a wallet at a time.
//!
//! The one exception to "signed once": a stored transaction whose wallet nonce was used by a
//! transaction this settler did not send (the key is used elsewhere too). Once the wallet's
//! confirmed nonce is above it, it has no receipt and the node knows none of its attempts
//! (nodes count a nonce a moment before they serve the receipt: a transaction the node has
//! in a block is waited for, never called dead), it can never be mined; its payment goes
//! back to `pending`, is re-checked on chain (permit nonce and allowance, authorization state)
//! and signed again with fresh nonces. The lane also re-syncs its next nonce from the node
//! before every batch, so a foreign transaction sent before signing costs nothing.
//!
//! Structure: this file holds [`Lane`], its lease and recovery, and the three loops run
//! together (submit, broadcast, confirm). [`io`] has the traits the lane reads and writes
//! through ([`LaneChain`], [`LaneStore`]) and their real implementations; [`decide`] and the
//! pure half of [`preflight`] hold every decision, without I/O; `submit.rs`, `broadcast.rs`
//! and `confirm.rs` are the I/O around them, one per loop.

mod batch;
mod broadcast;
mod confirm;
mod decide;
mod health;
pub(crate) mod io;
mod preflight;
mod submit;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::{watch, Notify};

pub(crate) use self::health::LaneHealth;
pub(crate) use self::io::{LaneChain, LaneStore};
use crate::clock::now_ms;
use crate::error::{ChainError, StoreError};
use crate::metrics as m;
use crate::store::TxRow;

#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    /// Poll interval of the submit and confirm loops.
    pub poll: Duration,
    /// A stored transaction without receipt is sent again after this.
    pub rebroadcast: Duration,
    /// Lease of the lane (renewed every third of it).
    pub lease: Duration,
    /// This process, as the lease's owner.
    pub instance: String,
    /// Payments taken per batch.
    pub batch: i64,
    /// With a batch settlement contract: payments per batch transaction at most.
    pub batch_max: usize,
    /// With a batch settlement contract: how long payments may gather before a batch that is
    /// not full is signed.
    pub batch_wait: Duration,
    /// With a batch settlement contract: batch transactions signed and not mined yet at most
    /// (`--max-in-flight`); payments beyond wait pending for the next batches.
    pub max_in_flight: u64,
    /// Gas limit of each settlement transaction (for what the wallet must hold).
    pub gas_limit: u64,
    /// `--max-fee-gwei` in wei: no transaction is signed with a higher max fee per gas.
    pub max_fee: u128,
    /// A transaction without receipt this long is re-signed at its nonce with higher fees.
    pub replace_after: Duration,
    /// The lane is stalled when its oldest unconfirmed transaction is older than this.
    pub stall_after: Duration,
    /// Per payment: at most this many transactions (wallet nonces) ...
    pub max_txs_per_payment: u64,
    /// ... and this much gas spent, then it fails.
    pub max_gas_per_payment: u64,
    /// Blocks a receipt must be deep (its own included) before the lane judges it
    /// (`--confirmations`; 1: at the receipt). Deeper survives reorganisations that drop
    /// the last blocks, at the price of later `settled`.
    pub confirmations: u64,
    /// Where the lane reports whether it is stalled.
    pub health: Arc<LaneHealth>,
    /// This wallet's share of the signer pool's payments.
    pub share: Share,
    /// Payments due this long are taken whatever their share (`--pool-steal-secs`).
    pub steal_after: Duration,
}

/// A wallet's place in the signer pool of its network: `index` of `of` (sorted by address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    pub of: u64,
    pub index: u64,
}

impl Default for Share {
    /// A pool of one: every payment.
    fn default() -> Share {
        Share { of: 1, index: 0 }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LaneError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lease lost")]
    LeaseLost,
    #[error("RPC serves chain id {got}, configured as {want}")]
    WrongChain { got: u64, want: u64 },
}

pub(crate) struct Lane {
    store: Arc<dyn LaneStore>,
    chain: Arc<dyn LaneChain>,
    wake: Arc<Notify>,
    /// Poked by the broadcaster on "nonce too low": the confirm loop checks at once.
    recheck: Notify,
    /// The base fee the last health round saw (wei, saturated at `u64::MAX`; 0 before the
    /// first): a transaction it priced out that the current one does not is sent again at
    /// once (a node may have refused or dropped it meanwhile, anvil does both).
    last_base_fee: AtomicU64,
    /// The last submit round left payments pending because of `--max-in-flight`: the next
    /// round runs as soon as a batch is mined, without the gathering wait.
    held: AtomicBool,
    /// Wallet nonces counted as used whose transaction has no receipt yet but is known to the
    /// node: since when the lane waits (ms) and whether it warned (`confirm.rs` `tx_fate`).
    awaiting_receipt: Mutex<HashMap<u64, (i64, bool)>>,
    /// The last confirm round waited on such a receipt: the next one runs after a poll, not
    /// at the next block (with an idle chain there may be none for a while).
    look_again: AtomicBool,
    cfg: WorkerConfig,
}

impl Lane {
    /// `store`: the real [`crate::store::Store`] (or a test fake); `chain`: an
    /// `Arc<crate::chain::Chain>` coerces.
    pub(crate) fn new(
        store: impl LaneStore + 'static,
        chain: Arc<dyn LaneChain>,
        wake: Arc<Notify>,
        cfg: WorkerConfig,
    ) -> Lane {
        Lane {
            store: Arc::new(store),
            chain,
            wake,
            recheck: Notify::new(),
            last_base_fee: AtomicU64::new(0),
            held: AtomicBool::new(false),
            awaiting_receipt: Mutex::new(HashMap::new()),
            look_again: AtomicBool::new(false),
            cfg,
        }
    }

    fn lease_name(&self) -> String {
        decide::lease_name(self.chain.network().chain_id, self.chain.signer())
    }

    async fn hold_lease(&self) -> Result<bool, StoreError> {
        self.store
            .hold_lease(
                &self.lease_name(),
                &self.cfg.instance,
                self.cfg.lease.as_millis() as i64,
                now_ms(),
            )
            .await
    }

    /// Runs until `shutdown` turns true. Errors restart the lane after a backoff.
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let network = self.chain.network();
        let mut backoff = Duration::from_millis(200);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let result = match self.hold_lease().await {
                Ok(true) => self.drive(&mut shutdown).await,
                Ok(false) => {
                    tracing::debug!(%network, "lane lease held by another replica");
                    Err(LaneError::LeaseLost)
                }
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(()) => break,
                Err(LaneError::LeaseLost) => {
                    backoff = self.cfg.lease / 3;
                }
                Err(e) => {
                    metrics::counter!(m::RPC_ERRORS, "network" => network.to_string()).increment(1);
                    tracing::warn!(%network, error = %e, retry_in_ms = backoff.as_millis() as u64, "settlement lane error; restarting the lane");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        let _ = self
            .store
            .release_lease(&self.lease_name(), &self.cfg.instance)
            .await;
        tracing::info!(%network, "settlement lane stopped");
    }

    /// Recovery, then the submit / confirm loop.
    async fn drive(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), LaneError> {
        let mut next_nonce = self.recover().await?;
        let (tx_out, tx_in) = unbounded_channel::<TxRow>();
        let submit = self.submit_loop(&mut next_nonce, tx_out, shutdown.clone());
        let confirm = self.confirm_loop(shutdown.clone());
        let send = self.broadcast_loop(tx_in, shutdown.clone());
        tokio::try_join!(submit, confirm, send)?;
        Ok(())
    }

    /// Checks the RPC serves the configured chain, re-broadcasts everything stored but
    /// unconfirmed (it may never have left this process) and returns the next wallet nonce.
    async fn recover(&self) -> Result<u64, LaneError> {
        let want = self.chain.network().chain_id;
        let got = self.chain.chain_id().await?;
        if got != want {
            return Err(LaneError::WrongChain { got, want });
        }
        let signer = self.chain.signer();
        if let Some(contract) = self.chain.settlement_contract() {
            if !self.chain.is_operator(contract).await? {
                tracing::error!(network = %self.chain.network(), wallet = %signer, %contract,
                    "the settler wallet is not an operator of the settlement contract: batches would revert; settling one transaction per payment is not possible for permits to the contract. Fix the contract's operators or --settlement-contract");
            }
        }
        let unconfirmed = self.store.unconfirmed_txs(want, signer).await?;
        for t in &unconfirmed {
            self.broadcast(t).await?;
        }
        let chain_next = self.chain.pending_nonce().await?;
        let next_nonce =
            decide::start_nonce(chain_next, self.store.max_tx_nonce(want, signer).await?);
        tracing::info!(network = %self.chain.network(), signer = %signer, next_nonce, rebroadcast = unconfirmed.len(), "settlement lane started");
        Ok(next_nonce)
    }

    /// Takes due payments, signs and stores their transactions, hands them to the broadcaster
    /// in nonce order. Never waits for a receipt.
    async fn submit_loop(
        &self,
        next_nonce: &mut u64,
        out: UnboundedSender<TxRow>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), LaneError> {
        let mut last_lease = Instant::now();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if last_lease.elapsed() >= self.cfg.lease / 3 {
                if !self.hold_lease().await? {
                    return Err(LaneError::LeaseLost);
                }
                last_lease = Instant::now();
            }
            let submitted = self.submit_due(next_nonce, &out).await?;
            let full = match self.chain.settlement_contract() {
                Some(_) => submitted >= self.cfg.batch_max,
                None => submitted >= self.cfg.batch as usize,
            };
            if full {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.poll) => {}
                _ = shutdown.changed() => {}
            }
            // Held back by the in-flight bound: full batches are waiting, nothing to gather.
            let held = self.held.load(Ordering::Relaxed);
            if self.chain.settlement_contract().is_some() && !self.cfg.batch_wait.is_zero() && !held
            {
                // Let more payments gather into the next batch.
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.batch_wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}
