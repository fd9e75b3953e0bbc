//! Verification and acceptance of one payment against one requirement, shared by the token
//! API and the facilitator: static checks, then - under the payer's lock - single use, chain
//! state and balance, then (when storing) the durable insert and the lane's wake-up.

use std::sync::Arc;
use std::time::Instant;

use alloy::primitives::{Address, U256};
use x402_protocol::payment::{ClientPayment, PaymentFormat};
use x402_protocol::settler_api::{PricedMethod, Requirement, SettlementState};

use super::locks::{lock_id, PayerGuard};
use super::totals::Reservation;
use super::{exposure, idempotency, Mode, NonceSource, Service};
use crate::chain::Chain;
use crate::clock::{now_ms, now_secs};
use crate::error::{Refusal, StoreError};
use crate::metrics as m;
use crate::scheme;
use crate::store::{AcceptExtras, Backend, NewPayment, OpenPayment, Session, StoredPayment};
use crate::verify;

/// A payment that passed the static checks: the accepted method it pays with, its chain.
pub(crate) struct Checked<'r> {
    pub(crate) priced: &'r PricedMethod,
    pub(crate) chain: Arc<Chain>,
    /// Unix seconds the checks ran at (the token's `iat`).
    pub(crate) now: u64,
    /// When the checks started: the acceptance deadline counts from here.
    pub(crate) started: Instant,
}

/// The outcome of acceptance.
pub(crate) enum Accepted {
    /// Stored now (or, with [`Mode::Verify`], checked).
    New(NewPayment),
    /// This very payment (same signature and terms, same route) was stored before and is
    /// still pending, never broadcast: answered from its row (same settlement, same token).
    Again(StoredPayment),
}

impl Accepted {
    /// The payment: the one just stored, or the stored one.
    pub(crate) fn payment(&self) -> &NewPayment {
        match self {
            Accepted::New(p) => p,
            Accepted::Again(s) => &s.row.p,
        }
    }
}

/// What [`Service::prepare`] leaves for the commit.
enum Prepared {
    /// Nothing to store: answered already.
    Done(Accepted),
    /// Checked; to insert and commit holding the payer's (and the asset total's) lock.
    Commit(Commit),
}

/// A checked payment to insert and commit.
struct Commit {
    session: Session,
    guards: (PayerGuard, Option<PayerGuard>),
    /// SQLite: the value counted in the asset's estimated total until the commit.
    reservation: Option<Reservation>,
    new: NewPayment,
}

impl Service {
    /// Static checks (no I/O): match, signature, parties, value, time.
    pub(crate) fn check<'r>(
        &self,
        payment: &ClientPayment,
        requirement: &'r Requirement,
    ) -> Result<Checked<'r>, Refusal> {
        let started = Instant::now();
        let priced = verify::match_method(payment, requirement)?;
        let method = &priced.method;
        let chain = self.chains.get(method.network)?.clone();
        self.check_settler_terms(priced, requirement)?;
        verify::check_signature(payment, method)?;
        let now = now_secs();
        // A permit may name the network's batch settlement contract as spender (the lane
        // settles it through the contract) or any wallet of the signer pool (that wallet's
        // lane settles it) instead of the primary wallet.
        let spender = match (payment, chain.settlement_contract()) {
            (ClientPayment::Permit(p), Some(c)) if p.spender == c => c,
            (ClientPayment::Permit(p), _)
                if self.chains.is_pool_wallet(method.network, p.spender) =>
            {
                p.spender
            }
            _ => chain.signer(),
        };
        verify::check_terms(payment, priced, spender, now, self.deadline_margin)?;
        Ok(Checked {
            priced,
            chain,
            now,
            started,
        })
    }

    /// Chain and store checks (single use, the scheme's on-chain nonce state, balance,
    /// exposure). With [`Mode::Store`] the payment is then stored (durable, single use) and
    /// its lane woken; with [`Mode::Verify`] it is only checked (the returned payment's id is
    /// then no settlement id). `extras`: (iat, exp) of the token to be minted for it, stored
    /// with it so a re-post gets the same token; the client's idempotency key
    /// (the same payment with the same key is answered again even after broadcast; another
    /// payment with it is 409 `payment_identifier_mismatch`) and the hold, stored with it.
    ///
    /// Deadline: everything up to the commit runs within `--accept-deadline-ms` of the
    /// checks' start ([`Checked::started`]); past it the session is dropped uncommitted (a
    /// Postgres transaction rolls back, SQLite has written nothing) and the answer is 503
    /// `accept_deadline_exceeded`, so the caller's retry is safe. The insert and commit then
    /// run in a task of their own: once started they finish even if this request is dropped
    /// (the gateway gave up), so a commit never half-happens; a payment committed after its
    /// caller gave up is answered to the retry of the same payment with the same token
    /// ([`Accepted::Again`]).
    pub(crate) async fn accept(
        &self,
        payment: &ClientPayment,
        format: PaymentFormat,
        requirement: &Requirement,
        checked: &Checked<'_>,
        (mode, nonces): (Mode, NonceSource),
        extras: AcceptExtras,
    ) -> Result<Accepted, Refusal> {
        let until = tokio::time::Instant::from_std(checked.started + self.accept_deadline);
        let prepared = tokio::time::timeout_at(
            until,
            self.prepare(
                payment,
                format,
                requirement,
                checked,
                (mode, nonces),
                extras.payment_id.as_deref(),
            ),
        )
        .await
        .map_err(|_| {
            Refusal::AcceptDeadlineExceeded(format!(
                "acceptance did not finish within {} ms (--accept-deadline-ms); nothing was stored, the same payment may be sent again",
                self.accept_deadline.as_millis()
            ))
        })??;
        let Commit {
            session,
            guards,
            reservation,
            new,
        } = match prepared {
            Prepared::Done(accepted) => return Ok(accepted),
            Prepared::Commit(c) => c,
        };
        // Durable before the token (or the facilitator's answer) exists. Not cancellable:
        // the task owns the session and the locks, and releases the locks after the commit.
        let t = Instant::now();
        let committing = tokio::spawn(async move {
            let mut session = session;
            session.insert_accepted(&new, &extras).await?;
            session.commit().await?;
            if let Some(r) = reservation {
                r.committed().await;
            }
            drop(guards);
            Ok::<_, StoreError>(new)
        });
        let new = committing
            .await
            .map_err(|e| Refusal::Internal(format!("storing the payment: {e}")))??;
        m::accept_phase("commit", t);
        metrics::counter!(m::SETTLEMENTS, "state" => "pending").increment(1);
        self.wake_lanes(new.network);
        Ok(Accepted::New(new))
    }

    /// Everything before the commit (see [`Service::accept`]); cancelled at the deadline.
    async fn prepare(
        &self,
        payment: &ClientPayment,
        format: PaymentFormat,
        requirement: &Requirement,
        checked: &Checked<'_>,
        (mode, nonces): (Mode, NonceSource),
        payment_id: Option<&str>,
    ) -> Result<Prepared, Refusal> {
        let priced = checked.priced;
        let method = &priced.method;
        let chain = checked.chain.clone();
        let of = scheme::of(payment);
        self.ensure_domain(&chain, method).await?;

        // One payer at a time from here to the commit.
        let payer = payment.payer();
        let payer_key = format!(
            "{}:{:#x}:{:#x}",
            method.network.chain_id, method.asset.address, payer
        );
        let t = Instant::now();
        let guard = self.locks.lock(&payer_key).await;
        let mut session = self.store.session(lock_id(&payer_key)).await?;
        m::accept_phase("lock", t);
        let terms = of.settlement_terms();
        let new = NewPayment {
            id: uuid::Uuid::now_v7().to_string(),
            scheme: payment.scheme(),
            network: method.network,
            asset: method.asset.address,
            payer,
            pay_to: method.pay_to,
            spender: terms.spender,
            value: payment.value(),
            price: priced.amount,
            nonce: payment.nonce_key(),
            valid_after: terms.valid_after,
            deadline: terms.deadline,
            sig: terms.sig,
            route: requirement.route.clone(),
            resource: requirement.resource.clone(),
            format: match format {
                PaymentFormat::Seed => "seed".into(),
                PaymentFormat::X402V2 => "x402v2".into(),
            },
            created_ms: now_ms(),
        };

        // Single use, before anything else that depends on state: the same payment again
        // (not broadcast yet) is answered from its row, anything else holding the key is 409.
        // A different permit holding a taken key was signed with a stale nonce (e.g. before
        // the first one was mined): 409 `nonce_mismatch` naming the nonce to sign instead.
        // An idempotency key names one payment: the same one again is answered from its row
        // (also after broadcast: the key was never on chain), another payment is refused.
        let t = Instant::now();
        if let Some(id) = payment_id {
            if let Some(stored) = session.by_payment_id(id).await? {
                return idempotency::judge(stored, &new, mode, payment_id)
                    .map(|s| Prepared::Done(Accepted::Again(s)));
            }
        }
        if let Some(stored) = session.by_use_key(&new.use_key()).await? {
            if new.scheme == x402_protocol::Scheme::Permit
                && !idempotency::same_signed_payment(&stored.row.p, &new)
            {
                let open = session
                    .open_payments(method.network, method.asset.address, payer)
                    .await?;
                of.check_chain(&chain, method.asset.address, &open).await?;
            }
            return idempotency::judge(stored, &new, mode, payment_id)
                .map(|s| Prepared::Done(Accepted::Again(s)));
        }

        m::accept_phase("single_use", t);

        // Settlement safety: no new payment while the network's lane is stalled, nor from a
        // payer whose earlier payment failed through the payer's doing.
        if let Some(why) = self.lanes.stalled(method.network) {
            return Err(Refusal::SettlementStalled(format!(
                "settlement on {} is stalled ({why}); new payments there are refused until it recovers",
                method.network
            )));
        }
        let t = Instant::now();
        let since = now_ms().saturating_sub((self.block_secs as i64).saturating_mul(1000));
        if let Some((id, cause)) = session
            .payer_block(method.network.chain_id, payer, since)
            .await?
        {
            return Err(Refusal::PayerBlocked {
                message: format!(
                    "payer {payer:#x} is blocked: settlement {id} failed through the payer's doing ({cause}); refused for {} s after that failure or until an operator runs `x402-settler unblock`",
                    self.block_secs
                ),
                settlement_id: id,
            });
        }

        // Chain state: the balance read concurrently with the payer's open payments and the
        // scheme's on-chain check that needs them (two RPC reads in the time of one); the
        // refusals keep their order (exposure before the on-chain nonce).
        m::accept_phase("payer_block", t);
        let t = Instant::now();
        let token_addr = method.asset.address;
        let caps = self.exposure_caps(method.network, token_addr);
        let snapshot = self.payer_facts(&chain, token_addr, payer, of.authorization_nonce());
        let cached = snapshot.is_some();
        let (mut balance, mut committed) = match snapshot {
            // The payer's facts as of a block (no RPC read): paired with the payments open or
            // settled after that block, less the open ones the block's logs show mined.
            Some(snap) => {
                // An ERC-3009 nonce the facts do not know used is asked of the node (beside
                // the database reads: it needs none of them) unless the caller takes the
                // facts' word for it (`NonceSource`).
                let ask_nonce = nonces == NonceSource::Node
                    && of.authorization_nonce().is_some()
                    && !snap.nonce_used;
                let (rows, asked) = tokio::join!(
                    async {
                        let open = session
                            .open_payments(method.network, token_addr, payer)
                            .await?;
                        let settled = session
                            .settled_after(method.network, token_addr, payer, snap.block)
                            .await?;
                        Ok::<_, Refusal>((open, settled))
                    },
                    async {
                        if ask_nonce {
                            Some(of.check_chain(&chain, token_addr, &[]).await)
                        } else {
                            None
                        }
                    }
                );
                let (open, settled) = rows?;
                let unsettled = exposure::unsettled(&open);
                if let Some(caps) = &caps {
                    caps.check_payer(payer, unsettled, new.value)?;
                }
                let spent: Vec<OpenPayment> = open.iter().chain(&settled).cloned().collect();
                match (asked, of.check_cached(&snap, &spent)) {
                    (Some(judged), _) | (None, Some(judged)) => judged?,
                    (None, None) => of.check_chain(&chain, token_addr, &open).await?,
                }
                let committed = unsettled
                    .saturating_add(exposure::unsettled(&settled))
                    .saturating_sub(snap.mined(&open));
                (snap.balance, committed)
            }
            // Chain state: the balance read concurrently with the payer's open payments and
            // the scheme's on-chain check that needs them (two RPC reads in the time of one);
            // the refusals keep their order (exposure before the on-chain nonce).
            None => {
                let (balance, opened) = tokio::join!(chain.balance_of(token_addr, payer), async {
                    let open = session
                        .open_payments(method.network, token_addr, payer)
                        .await?;
                    let on_chain = of.check_chain(&chain, token_addr, &open).await;
                    Ok::<_, Refusal>((open, on_chain))
                });
                let (open, on_chain) = opened?;
                let unsettled = exposure::unsettled(&open);
                if let Some(caps) = &caps {
                    caps.check_payer(payer, unsettled, new.value)?;
                }
                on_chain?;
                (balance?, unsettled)
            }
        };
        let mut available = balance.saturating_sub(committed);
        if available < new.value {
            // A payment whose transfer is mined but not yet marked settled is out of the
            // balance already: do not subtract it twice. The two reads above ran side by
            // side, so the balance may show a transfer whose payment the open list still had
            // `pending` (a lane, here or in another replica, stored and sent it in between).
            // So, in this order: the open payments again, their receipts, the balance again;
            // a transfer mined in between is then in the last read. Cached facts that fall
            // short are dropped too: never a refusal on them alone.
            if cached {
                if let Some(f) = &self.facts {
                    f.forget(method.network.chain_id, token_addr, payer);
                }
                metrics::counter!(m::PAYER_FACTS, "result" => "short").increment(1);
            }
            let open = session
                .open_payments(method.network, token_addr, payer)
                .await?;
            let mined = mined_transfers(&chain, token_addr, payer, &open).await?;
            balance = chain.balance_of(token_addr, payer).await?;
            committed = exposure::unsettled(&open).saturating_sub(mined);
            available = balance.saturating_sub(committed);
        }
        if available < new.value {
            return Err(Refusal::InsufficientBalance(format!(
                "balance {balance} minus {committed} in unsettled payments leaves {available}, below the payment's {}",
                new.value
            )));
        }

        m::accept_phase("chain_reads", t);

        // The asset's total. SQLite (one process writes): the in-memory estimate, never
        // below the real total, reserving this payment's value until its commit (see
        // `totals`). Postgres: under the asset's lock (in this process and across replicas)
        // held until the commit: no two acceptances of the asset overshoot it.
        let mut reservation = None;
        let total_guard = match &caps {
            Some(caps) if self.store.backend() == Backend::Sqlite => {
                let t = Instant::now();
                reservation = self
                    .totals
                    .check(
                        method.network.chain_id,
                        token_addr,
                        caps,
                        new.value,
                        mode == Mode::Store,
                        || session.open_total(method.network, token_addr),
                    )
                    .await?;
                m::accept_phase("total_cap", t);
                None
            }
            Some(caps) => {
                let total_key = format!("total:{}:{:#x}", method.network.chain_id, token_addr);
                let g = self.locks.lock(&total_key).await;
                if mode == Mode::Store {
                    session.lock_also(lock_id(&total_key)).await?;
                }
                let t = Instant::now();
                let total = session.open_total(method.network, token_addr).await?;
                caps.check_total(total, new.value)?;
                m::accept_phase("total_cap", t);
                Some(g)
            }
            None => None,
        };

        if mode == Mode::Verify {
            return Ok(Prepared::Done(Accepted::New(new)));
        }
        Ok(Prepared::Commit(Commit {
            session,
            guards: (guard, total_guard),
            reservation,
            new,
        }))
    }
}

impl Service {
    /// The payer facts of (`token`, `payer`) on `chain`, when cached and current; a miss
    /// starts filling them beside this acceptance (which reads the node).
    fn payer_facts(
        &self,
        chain: &Arc<Chain>,
        token: Address,
        payer: Address,
        auth_nonce: Option<alloy::primitives::B256>,
    ) -> Option<crate::facts::Snapshot> {
        use crate::facts::Lookup;
        let facts = self.facts.as_ref()?;
        let chain_id = chain.network.chain_id;
        let (found, result) = match facts.lookup(chain_id, token, payer, auth_nonce, Instant::now())
        {
            Lookup::Hit(s) => (Some(s), "hit"),
            Lookup::Miss { block } => {
                crate::facts::watch::spawn_fill(facts.clone(), chain.clone(), token, payer, block);
                (None, "miss")
            }
            Lookup::Bypass => (None, "bypass"),
        };
        metrics::counter!(m::PAYER_FACTS, "result" => result).increment(1);
        found
    }
}

/// How often, and how far apart, a receipt is asked for again when the node knows its
/// transaction: nodes serve a new block's state (the payer's lower balance) a moment before
/// they serve its receipts, or even show its transactions as mined (anvil does both), and
/// without the receipt the payment would count twice. Only a balance that falls short waits
/// for this (200 ms at most), never a payment that is covered.
const RECEIPT_RETRIES: u32 = 10;
const RECEIPT_RETRY_MS: u64 = 20;

/// The receipt of `hash`; when there is none yet but the node knows the transaction (in a
/// block or still in its pool), asked again a few times ([`RECEIPT_RETRIES`]) before
/// answering none.
async fn mined_receipt(
    chain: &Chain,
    hash: alloy::primitives::B256,
) -> Result<Option<alloy::rpc::types::TransactionReceipt>, crate::error::ChainError> {
    if let Some(r) = chain.receipt(hash).await? {
        return Ok(Some(r));
    }
    if chain.transaction_block(hash).await?.is_none() {
        return Ok(None);
    }
    for _ in 0..RECEIPT_RETRIES {
        tokio::time::sleep(std::time::Duration::from_millis(RECEIPT_RETRY_MS)).await;
        if let Some(r) = chain.receipt(hash).await? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Sum of the open payments whose transfer transaction is mined and moved the funds.
async fn mined_transfers(
    chain: &Arc<Chain>,
    token: Address,
    payer: Address,
    open: &[OpenPayment],
) -> Result<U256, Refusal> {
    // One receipt read per transaction: a batch settles several of the payer's payments.
    let mut by_tx: std::collections::HashMap<alloy::primitives::B256, Vec<&OpenPayment>> =
        Default::default();
    for o in open
        .iter()
        .filter(|o| o.state == SettlementState::Submitted)
    {
        if let Some(h) = o.transfer_tx {
            by_tx.entry(h).or_default().push(o);
        }
    }
    let mut reads = tokio::task::JoinSet::new();
    for h in by_tx.keys().copied() {
        let chain = chain.clone();
        reads.spawn(async move { mined_receipt(&chain, h).await.map(|r| (h, r)) });
    }
    let mut mined = U256::ZERO;
    while let Some(r) = reads.join_next().await {
        let (h, receipt) = r.map_err(|e| Refusal::Internal(format!("receipt read: {e}")))??;
        let Some(receipt) = receipt.filter(|r| r.status()) else {
            tracing::debug!(tx = %h, payer = %payer, "balance check: a submitted payment's transaction has no successful receipt; counted as unsettled");
            continue;
        };
        // Each Transfer log pays for one payment at most: two equal payments in one batch
        // whose one item failed must not both count as mined.
        let mut logs: Vec<_> = crate::chain::transfer_logs(&receipt)
            .into_iter()
            .filter(|l| l.token == token && l.from == payer)
            .collect();
        for o in by_tx.get(&h).into_iter().flatten() {
            if let Some(i) = logs
                .iter()
                .position(|l| l.to == o.pay_to && l.value == o.value)
            {
                logs.swap_remove(i);
                mined = mined.saturating_add(o.value);
            }
        }
    }
    Ok(mined)
}
