//! Verification and acceptance of one payment against one requirement, shared by the token
//! API and the facilitator: static checks, then - under the payer's lock - single use, chain
//! state and balance, then (when storing) the durable insert and the lane's wake-up.

use std::sync::Arc;

use alloy::primitives::{Address, U256};
use x402_protocol::payment::{ClientPayment, PaymentFormat};
use x402_protocol::settler_api::{PricedMethod, Requirement, SettlementState};

use super::locks::lock_id;
use super::{Mode, Service};
use crate::chain::Chain;
use crate::clock::{now_ms, now_secs};
use crate::error::{Refusal, StoreError};
use crate::metrics as m;
use crate::scheme;
use crate::store::{NewPayment, OpenPayment};
use crate::verify;

/// A payment that passed the static checks: the accepted method it pays with, its chain.
pub(crate) struct Checked<'r> {
    pub(crate) priced: &'r PricedMethod,
    pub(crate) chain: Arc<Chain>,
    /// Unix seconds the checks ran at (the token's `iat`).
    pub(crate) now: u64,
}

impl Service {
    /// Static checks (no I/O): match, signature, parties, value, time.
    pub(crate) fn check<'r>(
        &self,
        payment: &ClientPayment,
        requirement: &'r Requirement,
    ) -> Result<Checked<'r>, Refusal> {
        let priced = verify::match_method(payment, requirement)?;
        let method = &priced.method;
        let chain = self.chains.get(method.network)?.clone();
        verify::check_signature(payment, method)?;
        let now = now_secs();
        verify::check_terms(payment, priced, chain.signer(), now, self.deadline_margin)?;
        Ok(Checked { priced, chain, now })
    }

    /// Chain and store checks (single use, the scheme's on-chain nonce state, balance). With
    /// [`Mode::Store`] the payment is then stored (durable, single use) and its lane woken;
    /// with [`Mode::Verify`] it is only checked (the returned payment's id is then no
    /// settlement id).
    pub(crate) async fn accept(
        &self,
        payment: &ClientPayment,
        format: PaymentFormat,
        requirement: &Requirement,
        checked: &Checked<'_>,
        mode: Mode,
    ) -> Result<NewPayment, Refusal> {
        let priced = checked.priced;
        let method = &priced.method;
        let chain = checked.chain.clone();
        let of = scheme::of(payment);

        // One payer at a time from here to the insert.
        let payer = payment.payer();
        let payer_key = format!(
            "{}:{:#x}:{:#x}",
            method.network.chain_id, method.asset.address, payer
        );
        let guard = self.locks.lock(&payer_key).await;
        let mut session = self.store.session(lock_id(&payer_key)).await?;
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

        // Single use, before anything else that depends on state.
        if session.use_key_exists(&new.use_key()).await? {
            return Err(StoreError::Duplicate.into());
        }

        // Chain state, read concurrently with the payer's open payments.
        let token_addr = method.asset.address;
        let (balance, open) = tokio::join!(
            chain.balance_of(token_addr, payer),
            session.open_payments(method.network, token_addr, payer)
        );
        let open = open?;
        of.check_chain(&chain, token_addr, &open).await?;
        let mut balance = balance?;
        let mut committed = open
            .iter()
            .fold(U256::ZERO, |acc, o| acc.saturating_add(o.value));
        let mut available = balance.saturating_sub(committed);
        if available < new.value {
            // A submitted payment whose transfer is mined but not yet marked settled is out of
            // the balance already: do not subtract it twice. Receipts first, then the balance
            // again, so a transfer mined in between is in the balance read.
            let mined = mined_transfers(&chain, token_addr, payer, &open).await?;
            if !mined.is_zero() {
                balance = chain.balance_of(token_addr, payer).await?;
                committed = committed.saturating_sub(mined);
                available = balance.saturating_sub(committed);
            }
        }
        if available < new.value {
            return Err(Refusal::InsufficientBalance(format!(
                "balance {balance} minus {committed} in unsettled payments leaves {available}, below the payment's {}",
                new.value
            )));
        }

        if mode == Mode::Verify {
            return Ok(new);
        }
        // Durable before the token (or the facilitator's answer) exists.
        session.insert(&new).await?;
        session.commit().await?;
        drop(guard);
        metrics::counter!(m::SETTLEMENTS, "state" => "pending").increment(1);
        if let Some(w) = self.wake.get(&method.network) {
            w.notify_one();
        }
        Ok(new)
    }
}

/// Sum of the open payments whose transfer transaction is mined and moved the funds.
async fn mined_transfers(
    chain: &Arc<Chain>,
    token: Address,
    payer: Address,
    open: &[OpenPayment],
) -> Result<U256, Refusal> {
    let mut reads = tokio::task::JoinSet::new();
    for o in open
        .iter()
        .filter(|o| o.state == SettlementState::Submitted)
    {
        if let Some(h) = o.transfer_tx {
            let (chain, o) = (chain.clone(), o.clone());
            reads.spawn(async move { chain.receipt(h).await.map(|r| (o, r)) });
        }
    }
    let mut mined = U256::ZERO;
    while let Some(r) = reads.join_next().await {
        let (o, receipt) = r.map_err(|e| Refusal::Internal(format!("receipt read: {e}")))??;
        if let Some(receipt) = receipt {
            if receipt.status()
                && crate::chain::has_transfer(&receipt, token, payer, o.pay_to, o.value)
            {
                mined = mined.saturating_add(o.value);
            }
        }
    }
    Ok(mined)
}
