//! The lane on a fake chain and store (`fixtures.rs`): signing, confirmation, re-queues,
//! foreign transactions at the wallet's nonces, crash-restart and leases, step by step. The
//! integration tests in `settler/tests/` run the same lane against a real anvil.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::{watch, Notify};
use x402_protocol::settler_api::SettlementState;
use x402_protocol::Scheme;

use super::decide::MAX_REQUEUES;
use super::{Lane, LaneError, WorkerConfig};
use crate::scheme::{PERMIT, TRANSFER_FROM, TRANSFER_WITH_AUTHORIZATION};
use crate::store::TxRow;
use crate::test_fixtures::lane::{payment, FakeChain, FakeStore, PAYER, PAY_TO, SIGNER, VALUE};

fn config() -> WorkerConfig {
    WorkerConfig {
        poll: Duration::from_millis(5),
        rebroadcast: Duration::from_secs(15),
        lease: Duration::from_secs(10),
        instance: "me".into(),
        batch: 64,
        batch_max: 100,
        batch_wait: Duration::ZERO,
        max_in_flight: 64,
        gas_limit: 300_000,
        max_fee: 100_000_000_000,
        replace_after: Duration::from_secs(12),
        stall_after: Duration::from_secs(60),
        max_txs_per_payment: 4,
        max_gas_per_payment: 1_200_000,
        confirmations: 1,
        health: Arc::new(super::LaneHealth::new([(
            x402_protocol::Network::eip155(crate::test_fixtures::lane::CHAIN_ID),
            SIGNER,
        )])),
        share: super::Share::default(),
        steal_after: Duration::from_secs(10),
    }
}

fn lane_with(store: &FakeStore, chain: &FakeChain, cfg: WorkerConfig) -> Lane {
    Lane::new(
        store.clone(),
        Arc::new(chain.clone()),
        Arc::new(Notify::new()),
        cfg,
    )
}

fn lane(store: &FakeStore, chain: &FakeChain) -> Lane {
    lane_with(store, chain, config())
}

/// One submit step with the broadcaster running after it: returns the payments submitted.
async fn submit(lane: &Lane, next: &mut u64) -> usize {
    let (out, mut rx) = unbounded_channel();
    let n = lane.submit_due(next, &out).await.unwrap();
    drop(out);
    while let Some(t) = rx.recv().await {
        lane.broadcast(&t).await.unwrap();
    }
    n
}

fn kinds_and_nonces(store: &FakeStore, id: &str) -> Vec<(String, u64, String)> {
    store
        .txs_of(id)
        .into_iter()
        .map(|t| (t.kind, t.nonce, t.state))
        .collect()
}

fn k(kind: &str, nonce: u64, state: &str) -> (String, u64, String) {
    (kind.into(), nonce, state.into())
}

#[tokio::test]
async fn a_permit_payment_is_signed_once_and_settles() {
    let (store, chain) = (
        FakeStore::with([payment("a", 1, Scheme::Permit, 0)]),
        FakeChain::new(VALUE),
    );
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(next, 0);
    assert_eq!(submit(&lane, &mut next).await, 1);
    assert_eq!(next, 2);
    let row = store.row("a");
    assert_eq!(row.state, SettlementState::Submitted);
    let txs = store.txs_of("a");
    assert_eq!(
        (row.permit_tx, row.transfer_tx),
        (Some(txs[0].hash.to_string()), Some(txs[1].hash.to_string()))
    );
    assert_eq!(
        kinds_and_nonces(&store, "a"),
        [k(PERMIT, 0, "sent"), k(TRANSFER_FROM, 1, "sent")]
    );
    assert_eq!(
        chain.state().mempool.len(),
        2,
        "broadcast without waiting for a receipt"
    );
    // Submitted: never signed again, whatever runs meanwhile.
    assert_eq!(submit(&lane, &mut next).await, 0);
    lane.confirm().await.unwrap();
    assert_eq!(
        store.row("a").state,
        SettlementState::Submitted,
        "not mined yet: waits"
    );
    chain.mine();
    lane.confirm().await.unwrap();
    let row = store.row("a");
    assert_eq!(
        (row.state, row.block_number, row.error),
        (SettlementState::Settled, Some(1), None)
    );
    assert_eq!(
        kinds_and_nonces(&store, "a"),
        [k(PERMIT, 0, "mined"), k(TRANSFER_FROM, 1, "mined")]
    );
    assert_eq!(chain.balance(PAY_TO), U256::from(VALUE));
    assert_eq!(chain.state().signed.len(), 2);
}

#[tokio::test]
async fn payments_go_in_acceptance_order_with_consecutive_wallet_nonces() {
    // Accepted as: permit nonce 0, an ERC-3009 authorization, permit nonce 1 (same payer).
    let store = FakeStore::with([
        payment("p1", 3, Scheme::Permit, 1),
        payment("p0", 1, Scheme::Permit, 0),
        payment("e", 2, Scheme::Exact, 0),
    ]);
    let chain = FakeChain::new(3 * VALUE);
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 3);
    assert_eq!(
        kinds_and_nonces(&store, "p0"),
        [k(PERMIT, 0, "sent"), k(TRANSFER_FROM, 1, "sent")]
    );
    assert_eq!(
        kinds_and_nonces(&store, "e"),
        [k(TRANSFER_WITH_AUTHORIZATION, 2, "sent")]
    );
    assert_eq!(
        kinds_and_nonces(&store, "p1"),
        [k(PERMIT, 3, "sent"), k(TRANSFER_FROM, 4, "sent")],
        "permit 1 right after permit 0 is in flight"
    );
    assert_eq!(next, 5);
    chain.mine();
    lane.confirm().await.unwrap();
    for id in ["p0", "e", "p1"] {
        assert_eq!(store.row(id).state, SettlementState::Settled, "{id}");
    }
    assert_eq!(chain.balance(PAY_TO), U256::from(3 * VALUE));
    assert_eq!(store.row("e").permit_tx, None);
}

#[tokio::test]
async fn a_permit_ahead_of_the_chain_waits_for_the_earlier_one() {
    let store = FakeStore::with([payment("p1", 1, Scheme::Permit, 1)]);
    let chain = FakeChain::new(VALUE);
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 0);
    let row = store.row("p1");
    assert_eq!((row.state, row.attempts), (SettlementState::Pending, 1));
    assert!(row
        .error
        .unwrap_or_default()
        .contains("waiting for permit nonce 0"));
    assert!(store.state().payments[0].next_attempt_ms > 0, "deferred");
    assert!(chain.state().signed.is_empty());
    assert_eq!(submit(&lane, &mut next).await, 0, "not due again yet");
    assert_eq!(store.row("p1").attempts, 1);
}

#[tokio::test]
async fn an_authorization_settles_with_one_transaction_and_a_used_one_fails() {
    let store = FakeStore::with([
        payment("e", 1, Scheme::Exact, 0),
        payment("used", 2, Scheme::Exact, 0),
    ]);
    let chain = FakeChain::new(VALUE);
    let used = store.row("used").p.nonce;
    chain.state().auth_used.insert((PAYER, used));
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 1);
    assert_eq!(next, 1);
    let row = store.row("used");
    assert_eq!(row.state, SettlementState::Failed);
    assert!(row
        .error
        .unwrap_or_default()
        .contains("authorization nonce was used"));
    assert!(!store.state().payments[1].key_released);
    chain.mine();
    lane.confirm().await.unwrap();
    assert_eq!(store.row("e").state, SettlementState::Settled);
}

/// `--confirmations 3`: a mined settlement is `settled` only once its block is 3 deep; the
/// transaction is not signed again meanwhile.
#[tokio::test]
async fn a_receipt_is_judged_once_it_is_deep_enough() {
    let store = FakeStore::with([payment("e", 1, Scheme::Exact, 0)]);
    let chain = FakeChain::new(VALUE);
    let lane = lane_with(
        &store,
        &chain,
        WorkerConfig {
            confirmations: 3,
            ..config()
        },
    );
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 1);
    chain.mine();
    for _ in 0..2 {
        lane.confirm().await.unwrap();
        assert_eq!(store.row("e").state, SettlementState::Submitted);
    }
    chain.mine(); // 2 deep
    lane.confirm().await.unwrap();
    assert_eq!(store.row("e").state, SettlementState::Submitted);
    chain.mine(); // 3 deep
    lane.confirm().await.unwrap();
    let row = store.row("e");
    assert_eq!(
        (row.state, row.block_number),
        (SettlementState::Settled, Some(1))
    );
    assert_eq!(chain.state().signed.len(), 1, "signed once");
}

#[tokio::test]
async fn an_expired_permit_fails_before_submission_and_releases_its_key() {
    let mut p = payment("a", 1, Scheme::Permit, 0);
    p.p.deadline = U256::from(1_000u64);
    let (store, chain) = (FakeStore::with([p]), FakeChain::new(VALUE));
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 0);
    assert_eq!(store.row("a").state, SettlementState::Failed);
    assert!(
        store.state().payments[0].key_released,
        "the payer may sign that permit nonce anew"
    );
    assert!(chain.state().signed.is_empty());
}

#[tokio::test]
async fn a_consumed_permit_nonce_with_allowance_settles_by_transfer_from_alone() {
    let (store, chain) = (
        FakeStore::with([payment("a", 1, Scheme::Permit, 0)]),
        FakeChain::new(VALUE),
    );
    {
        // Someone submitted the permit already.
        let mut s = chain.state();
        s.permit_nonces.insert(PAYER, U256::from(1));
        s.allowances.insert((PAYER, SIGNER), U256::from(VALUE));
    }
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 1);
    assert_eq!(kinds_and_nonces(&store, "a"), [k(TRANSFER_FROM, 0, "sent")]);
    assert_eq!(store.row("a").permit_tx, None);
    chain.mine();
    lane.confirm().await.unwrap();
    assert_eq!(store.row("a").state, SettlementState::Settled);
}

/// Signer pool: a stalled wallet signs nothing new while another wallet of the pool is
/// healthy (its share goes to them); with every wallet stalled, or alone, it keeps trying.
#[tokio::test]
async fn a_stalled_pool_wallet_leaves_its_share_to_the_healthy_ones() {
    let network = x402_protocol::Network::eip155(crate::test_fixtures::lane::CHAIN_ID);
    let other = Address::repeat_byte(0x44);
    for (pool, other_stalled, signs) in [(2, false, false), (2, true, true), (1, false, true)] {
        let store = FakeStore::with([payment("e", 1, Scheme::Exact, 0)]);
        let chain = FakeChain::new(VALUE);
        let health = Arc::new(super::LaneHealth::new([
            (network, SIGNER),
            (network, other),
        ]));
        health.set(network, SIGNER, Some("wallet empty".into()));
        if other_stalled {
            health.set(network, other, Some("wallet empty".into()));
        }
        let cfg = WorkerConfig {
            health,
            share: super::Share { of: pool, index: 0 },
            // Everything overdue: the share alone does not keep the payment from this lane.
            steal_after: Duration::ZERO,
            ..config()
        };
        let lane = lane_with(&store, &chain, cfg);
        let mut next = 0;
        assert_eq!(
            submit(&lane, &mut next).await,
            usize::from(signs),
            "pool of {pool}, other wallet stalled: {other_stalled}"
        );
    }
}

/// Signer pool: a payer's permit nonce 1 while nonce 0 is in flight. In this wallet's own
/// transaction it may follow (this wallet's nonces keep the order); in another wallet's it
/// waits for the chain to count nonce 0, or it could be mined first and fail.
#[tokio::test]
async fn a_later_permit_waits_while_the_payers_earlier_one_is_in_another_wallets_transaction() {
    for (in_flight_signer, signed_here) in [(Address::repeat_byte(0x44), false), (SIGNER, true)] {
        let mut first = payment("p0", 1, Scheme::Permit, 0);
        first.p.spender = None;
        first.state = SettlementState::Submitted;
        let hash = B256::repeat_byte(0xee);
        first.transfer_tx = Some(hash.to_string());
        let mut later = payment("p1", 2, Scheme::Permit, 1);
        later.p.spender = None;
        let (store, chain) = (FakeStore::with([first, later]), FakeChain::new(VALUE));
        store.state().txs.push(TxRow {
            chain_id: crate::test_fixtures::lane::CHAIN_ID,
            signer: in_flight_signer,
            nonce: 0,
            payment_id: "p0".into(),
            kind: "batch".into(),
            hash,
            state: "sent".into(),
            ..Default::default()
        });
        let lane = lane(&store, &chain);
        // This wallet's nonce 0 is taken when the earlier permit is in its transaction.
        let mut next = u64::from(signed_here);
        assert_eq!(
            submit(&lane, &mut next).await,
            usize::from(signed_here),
            "in flight in {in_flight_signer}"
        );
        let row = store.row("p1");
        if signed_here {
            assert_eq!(row.state, SettlementState::Submitted);
        } else {
            assert_eq!(row.state, SettlementState::Pending);
            assert!(
                row.error
                    .unwrap_or_default()
                    .contains("waiting for permit nonce 0"),
                "deferred, not failed"
            );
        }
    }
}

#[tokio::test]
async fn a_consumed_permit_nonce_without_allowance_fails() {
    let (store, chain) = (
        FakeStore::with([payment("a", 1, Scheme::Permit, 0)]),
        FakeChain::new(VALUE),
    );
    chain.state().permit_nonces.insert(PAYER, U256::from(1));
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 0);
    let row = store.row("a");
    assert_eq!(row.state, SettlementState::Failed);
    assert!(row
        .error
        .unwrap_or_default()
        .contains("was consumed on chain"));
    assert!(!store.state().payments[0].key_released);
}

#[tokio::test]
async fn a_reverted_transfer_fails_with_its_diagnosis() {
    let (store, chain) = (
        FakeStore::with([payment("a", 1, Scheme::Permit, 0)]),
        FakeChain::new(VALUE - 1),
    );
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    submit(&lane, &mut next).await;
    chain.mine();
    lane.confirm().await.unwrap();
    let row = store.row("a");
    assert_eq!(row.state, SettlementState::Failed);
    assert_eq!(
        row.error.as_deref(),
        Some(
            format!(
                "transferFrom reverted; payer balance {} is below the value {VALUE}",
                VALUE - 1
            )
            .as_str()
        )
    );
    assert_eq!(row.block_number, Some(1));
}

#[tokio::test]
async fn success_without_the_transfer_event_fails() {
    let (store, chain) = (
        FakeStore::with([payment("e", 1, Scheme::Exact, 0)]),
        FakeChain::new(2 * VALUE),
    );
    chain.state().no_transfer_logs = true;
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    submit(&lane, &mut next).await;
    chain.mine();
    lane.confirm().await.unwrap();
    let row = store.row("e");
    assert_eq!(row.state, SettlementState::Failed);
    assert_eq!(
        row.error.as_deref(),
        Some("transferWithAuthorization succeeded without the expected Transfer event")
    );
}

#[tokio::test]
async fn an_out_of_order_permit_revert_is_requeued_until_the_transaction_cap() {
    // The store says permit nonce 0 of this payer is settled, the chain still expects 0: the
    // lane signs permit 1 after it, and permit() reverts every time. Re-signing stops at the
    // per-payment cap (4 transactions = 2 rounds of permit + transferFrom); it was 18
    // transactions before the cap.
    let mut earlier = payment("p0", 1, Scheme::Permit, 0);
    earlier.state = SettlementState::Settled;
    let (store, chain) = (
        FakeStore::with([earlier, payment("p1", 2, Scheme::Permit, 1)]),
        FakeChain::new(VALUE),
    );
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    let mut rounds = 0;
    while store.row("p1").state != SettlementState::Failed {
        if submit(&lane, &mut next).await == 0 {
            break;
        }
        chain.mine();
        lane.confirm().await.unwrap();
        rounds += 1;
        assert!(rounds <= MAX_REQUEUES + 1, "never gives up");
    }
    let row = store.row("p1");
    assert_eq!(row.state, SettlementState::Failed);
    assert_eq!((rounds, row.attempts), (2, 2));
    assert!(
        row.error.as_deref().unwrap_or("").contains("cap of 4"),
        "{row:?}"
    );
    assert_eq!(
        store.state().causes.get("p1").cloned(),
        Some(("retry_cap".to_string(), false)),
        "our retries are not the payer's fault"
    );
    assert_eq!(chain.state().signed.len(), 4);
    assert_eq!(chain.balance(PAY_TO), U256::ZERO);
}

#[tokio::test]
async fn a_foreign_transaction_at_our_nonce_sends_the_payment_back_to_pending_and_it_is_signed_again(
) {
    let (store, chain) = (
        FakeStore::with([payment("a", 1, Scheme::Permit, 0)]),
        FakeChain::new(VALUE),
    );
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    submit(&lane, &mut next).await;
    // Another program with our key takes nonce 0: our permit can never be mined; our
    // transferFrom at nonce 1 is mined and reverts (no allowance).
    chain.foreign_transaction();
    chain.mine();
    lane.confirm().await.unwrap();
    let row = store.row("a");
    assert_eq!(
        (row.state, row.attempts, row.transfer_tx),
        (SettlementState::Pending, 1, None)
    );
    assert!(row
        .error
        .unwrap_or_default()
        .starts_with("wallet nonce(s) [0] of "));
    assert_eq!(
        kinds_and_nonces(&store, "a"),
        [k(PERMIT, 0, "dropped"), k(TRANSFER_FROM, 1, "mined")]
    );
    // Re-checked on chain (permit nonce still 0) and signed again at fresh nonces.
    assert_eq!(submit(&lane, &mut next).await, 1);
    assert_eq!(
        store
            .txs_of("a")
            .iter()
            .filter(|t| t.state == "sent")
            .map(|t| t.nonce)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    chain.mine();
    lane.confirm().await.unwrap();
    assert_eq!(store.row("a").state, SettlementState::Settled);
    assert_eq!(
        chain.balance(PAY_TO),
        U256::from(VALUE),
        "moved exactly once"
    );
}

#[tokio::test]
async fn a_mined_permit_pair_whose_receipts_come_late_is_waited_for_never_signed_again() {
    let (store, chain) = (
        FakeStore::with([payment("a", 1, Scheme::Permit, 0)]),
        FakeChain::new(2 * VALUE),
    );
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    submit(&lane, &mut next).await;
    // The node counts both nonces as used at once but answers each receipt read with none
    // three times first (anvil serves the receipt a moment after it counts the nonce).
    chain.state().receipt_lag = 3;
    chain.mine();
    let mut rounds = 0;
    while store.row("a").state == SettlementState::Submitted {
        rounds += 1;
        assert!(rounds <= 12, "never settled");
        lane.confirm().await.unwrap();
        let row = store.row("a");
        assert_ne!(
            row.state,
            SettlementState::Pending,
            "round {rounds}: {row:?}"
        );
        assert_eq!(row.attempts, 0, "round {rounds}: not re-queued");
    }
    assert!(rounds > 3, "waited for the receipts ({rounds} rounds)");
    let row = store.row("a");
    assert_eq!((row.state, row.error), (SettlementState::Settled, None));
    assert_eq!(
        kinds_and_nonces(&store, "a"),
        [k(PERMIT, 0, "mined"), k(TRANSFER_FROM, 1, "mined")]
    );
    assert_eq!(chain.state().signed.len(), 2, "signed once");
    // The payer's next permit goes on as usual.
    chain.state().receipt_lag = 0;
    store.add(payment("b", 2, Scheme::Permit, 1));
    assert_eq!(submit(&lane, &mut next).await, 1);
    chain.mine();
    lane.confirm().await.unwrap();
    assert_eq!(store.row("b").state, SettlementState::Settled);
    assert_eq!(chain.balance(PAY_TO), U256::from(2 * VALUE));
}

#[tokio::test]
async fn a_foreign_transaction_before_signing_moves_the_lane_past_it() {
    let (store, chain) = (FakeStore::default(), FakeChain::new(VALUE));
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    chain.foreign_transaction();
    store.add(payment("e", 1, Scheme::Exact, 0));
    assert_eq!(submit(&lane, &mut next).await, 1);
    assert_eq!(
        kinds_and_nonces(&store, "e"),
        [k(TRANSFER_WITH_AUTHORIZATION, 1, "sent")]
    );
    chain.mine();
    lane.confirm().await.unwrap();
    assert_eq!(store.row("e").state, SettlementState::Settled);
}

#[tokio::test]
async fn after_a_crash_stored_transactions_are_rebroadcast_byte_for_byte_and_signing_continues_after_them(
) {
    let (store, chain) = (
        FakeStore::with([payment("a", 1, Scheme::Permit, 0)]),
        FakeChain::new(2 * VALUE),
    );
    let first = lane(&store, &chain);
    let mut next = first.recover().await.unwrap();
    // Crash between storing and broadcasting: the broadcaster never got them.
    let (out, rx) = unbounded_channel();
    drop(rx);
    assert_eq!(first.submit_due(&mut next, &out).await.unwrap(), 1);
    drop(first);
    assert!(chain.state().broadcasts.is_empty());
    // The node is down for broadcasts: the next nonce comes from the store, not the node.
    chain.state().refuse_broadcasts = true;
    let second = lane(&store, &chain);
    let mut next = second.recover().await.unwrap();
    assert_eq!(next, 2);
    let stored: Vec<Vec<u8>> = store.txs_of("a").into_iter().map(|t| t.raw).collect();
    assert_eq!(chain.state().broadcasts, stored);
    chain.state().refuse_broadcasts = false;
    // A third start re-sends the same bytes again; nothing is signed twice.
    let third = lane(&store, &chain);
    assert_eq!(third.recover().await.unwrap(), 2);
    assert_eq!(chain.state().broadcasts[2..], stored[..]);
    store.add(payment("e", 2, Scheme::Exact, 0));
    assert_eq!(submit(&third, &mut next).await, 1);
    assert_eq!(
        kinds_and_nonces(&store, "e"),
        [k(TRANSFER_WITH_AUTHORIZATION, 2, "sent")]
    );
    chain.mine();
    third.confirm().await.unwrap();
    assert_eq!(
        (store.row("a").state, store.row("e").state),
        (SettlementState::Settled, SettlementState::Settled)
    );
    assert_eq!(
        chain.state().signed.len(),
        3,
        "permit + transferFrom + transferWithAuthorization, each signed once"
    );
    assert_eq!(chain.balance(PAY_TO), U256::from(2 * VALUE));
}

#[tokio::test]
async fn unconfirmed_transactions_are_rebroadcast_only_after_the_interval() {
    let (store, chain) = (
        FakeStore::with([payment("e", 1, Scheme::Exact, 0)]),
        FakeChain::new(VALUE),
    );
    chain.state().refuse_broadcasts = true;
    let patient = lane(&store, &chain);
    let mut next = patient.recover().await.unwrap();
    submit(&patient, &mut next).await;
    assert_eq!(chain.state().broadcasts.len(), 1);
    patient.rebroadcast_stale().await.unwrap();
    assert_eq!(chain.state().broadcasts.len(), 1, "sent just now");
    chain.state().refuse_broadcasts = false;
    let eager = lane_with(
        &store,
        &chain,
        WorkerConfig {
            rebroadcast: Duration::from_millis(1),
            ..config()
        },
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    eager.rebroadcast_stale().await.unwrap();
    let s = chain.state();
    assert_eq!((s.broadcasts.len(), s.mempool.len()), (2, 1));
    assert_eq!(s.broadcasts[0], s.broadcasts[1]);
}

#[tokio::test]
async fn nonce_too_low_on_a_broadcast_makes_the_confirm_loop_look_at_once() {
    let (store, chain) = (
        FakeStore::with([payment("e", 1, Scheme::Exact, 0)]),
        FakeChain::new(VALUE),
    );
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    submit(&lane, &mut next).await;
    chain.mine();
    let t = store.txs_of("e").remove(0);
    lane.broadcast(&t).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), lane.recheck.notified())
        .await
        .expect("recheck poked");
}

#[tokio::test]
async fn a_lane_on_another_chain_id_does_not_start() {
    let (store, chain) = (FakeStore::default(), FakeChain::new(VALUE));
    chain.state().chain_id = 1;
    let lane = lane(&store, &chain);
    assert!(matches!(
        lane.recover().await,
        Err(LaneError::WrongChain {
            got: 1,
            want: 31337
        })
    ));
}

#[tokio::test]
async fn a_lane_without_the_lease_signs_nothing_and_one_that_loses_it_stops() {
    let (store, chain) = (
        FakeStore::with([payment("a", 1, Scheme::Exact, 0)]),
        FakeChain::new(2 * VALUE),
    );
    store.state().lease = Some(("other".into(), i64::MAX));
    let cfg = WorkerConfig {
        lease: Duration::from_millis(30),
        ..config()
    };
    let (stop, stopped) = watch::channel(false);
    let run = tokio::spawn(lane_with(&store, &chain, cfg.clone()).run(stopped.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        chain.state().signed.is_empty(),
        "another replica drives this wallet"
    );
    assert_eq!(store.row("a").state, SettlementState::Pending);
    // The other replica's lease expires: this one takes over.
    store.state().lease = Some(("other".into(), 0));
    wait_for(|| store.row("a").state == SettlementState::Submitted).await;
    // And loses it again: it stops signing (renewal every lease/3).
    store.state().lease = Some(("other".into(), i64::MAX));
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.add(payment("b", 2, Scheme::Exact, 0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.row("b").state, SettlementState::Pending);
    assert_eq!(chain.state().signed.len(), 1);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_running_lane_settles_and_stops_on_shutdown() {
    let (store, chain) = (
        FakeStore::with([payment("a", 1, Scheme::Permit, 0)]),
        FakeChain::new(VALUE),
    );
    let (stop, stopped) = watch::channel(false);
    let run = tokio::spawn(lane(&store, &chain).run(stopped));
    wait_for(|| chain.state().mempool.len() == 2).await;
    chain.mine();
    wait_for(|| store.row("a").state == SettlementState::Settled).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.state().lease.as_ref().map(|l| l.1),
        Some(0),
        "lease released on the way out"
    );
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_underpriced_transaction_is_replaced_at_its_nonce_and_settles_once() {
    let (store, chain) = (
        FakeStore::with([payment("e", 1, Scheme::Exact, 0)]),
        FakeChain::new(VALUE),
    );
    let mut cfg = config();
    cfg.replace_after = Duration::from_millis(0);
    let lane = lane_with(&store, &chain, cfg);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 1);
    let first = store.txs_of("e")[0].clone();
    // The base fee jumps above the signed max fee: nothing is mined.
    chain.state().base_fee = 10_000_000_000;
    chain.mine();
    lane.confirm().await.unwrap();
    assert_eq!(store.row("e").state, SettlementState::Submitted);
    lane.replace_and_report().await.unwrap();
    let now = store.txs_of("e");
    assert_eq!(now.len(), 1, "one transaction, replaced in place");
    let second = now[0].clone();
    assert_eq!(second.nonce, first.nonce, "same nonce");
    assert_ne!(second.hash, first.hash);
    assert!(second.max_fee >= 2 * 10_000_000_000 && second.max_fee * 8 >= first.max_fee * 9);
    assert!(second.priority_fee * 8 >= first.priority_fee * 9);
    chain.mine();
    lane.confirm().await.unwrap();
    let row = store.row("e");
    assert_eq!(row.state, SettlementState::Settled);
    assert_eq!(row.transfer_tx, Some(second.hash.to_string()));
    assert_eq!(chain.balance(PAY_TO), U256::from(VALUE));
    assert_eq!(store.state().attempts.len(), 2, "every attempt is stored");
}

#[tokio::test]
async fn a_replaced_transactions_earlier_attempt_mined_is_recognised() {
    let (store, chain) = (
        FakeStore::with([payment("e", 1, Scheme::Exact, 0)]),
        FakeChain::new(VALUE),
    );
    let mut cfg = config();
    cfg.replace_after = Duration::from_millis(0);
    let lane = lane_with(&store, &chain, cfg);
    let mut next = lane.recover().await.unwrap();
    submit(&lane, &mut next).await;
    let first = store.txs_of("e")[0].clone();
    chain.state().base_fee = 10_000_000_000;
    lane.replace_and_report().await.unwrap();
    // The node had kept the first attempt and mines it (the base fee drops again).
    {
        let mut s = chain.state();
        s.base_fee = 0;
        s.mempool.insert(first.nonce, first.raw.clone());
    }
    chain.mine();
    lane.confirm().await.unwrap();
    let row = store.row("e");
    assert_eq!(row.state, SettlementState::Settled);
    assert_eq!(row.transfer_tx, Some(first.hash.to_string()));
    assert_eq!(
        store.txs_of("e")[0].hash,
        first.hash,
        "the mined attempt is the current one"
    );
    assert_eq!(chain.balance(PAY_TO), U256::from(VALUE));
}

#[tokio::test]
async fn a_permit_the_chain_refuses_fails_after_its_first_revert() {
    let (store, chain) = (
        FakeStore::with([payment("p", 1, Scheme::Permit, 0)]),
        FakeChain::new(VALUE),
    );
    chain
        .state()
        .bad_permit_sigs
        .insert(alloy::primitives::B256::from(U256::ZERO));
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 1);
    chain.mine();
    lane.confirm().await.unwrap();
    let row = store.row("p");
    assert_eq!(row.state, SettlementState::Failed, "{row:?}");
    assert_eq!(chain.state().signed.len(), 2, "permit + transferFrom, once");
    assert_eq!(
        store.state().causes.get("p").cloned(),
        Some(("signature_rejected".to_string(), false))
    );
}

#[tokio::test]
async fn a_front_run_authorization_is_settled_with_the_other_transaction() {
    let e = payment("e", 1, Scheme::Exact, 0);
    let (store, chain) = (FakeStore::with([e.clone()]), FakeChain::new(VALUE));
    // The payer submits it first: funds moved to pay_to in a transaction we did not send.
    let theirs = alloy::primitives::B256::repeat_byte(0x99);
    {
        let mut s = chain.state();
        s.auth_used.insert((PAYER, e.p.nonce));
        s.auth_events.insert(
            (PAYER, e.p.nonce),
            super::io::AuthorizationEvent::Used {
                tx: theirs,
                block: 7,
            },
        );
        s.receipts.insert(
            theirs,
            super::io::Receipt {
                success: true,
                block_number: Some(7),
                transfers: vec![super::io::TransferLog {
                    token: e.p.asset,
                    from: PAYER,
                    to: PAY_TO,
                    value: e.p.value,
                }],
                gas_used: 1,
                items: vec![],
            },
        );
    }
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    assert_eq!(submit(&lane, &mut next).await, 0, "nothing to sign");
    let row = store.row("e");
    assert_eq!(row.state, SettlementState::Settled);
    assert_eq!(row.transfer_tx, Some(theirs.to_string()));
    assert!(chain.state().signed.is_empty());
}

#[tokio::test]
async fn a_cancelled_authorization_fails_as_the_payers_doing() {
    let e = payment("e", 1, Scheme::Exact, 0);
    let (store, chain) = (FakeStore::with([e.clone()]), FakeChain::new(VALUE));
    {
        let mut s = chain.state();
        s.auth_used.insert((PAYER, e.p.nonce));
        s.auth_events.insert(
            (PAYER, e.p.nonce),
            super::io::AuthorizationEvent::Canceled {
                tx: alloy::primitives::B256::repeat_byte(1),
            },
        );
    }
    let lane = lane(&store, &chain);
    let mut next = lane.recover().await.unwrap();
    submit(&lane, &mut next).await;
    assert_eq!(store.row("e").state, SettlementState::Failed);
    assert_eq!(
        store.state().causes.get("e").cloned(),
        Some(("authorization_canceled".to_string(), true))
    );
}

#[tokio::test]
async fn an_empty_wallet_stalls_the_lane_until_it_is_funded() {
    let (store, chain) = (
        FakeStore::with([payment("e", 1, Scheme::Exact, 0)]),
        FakeChain::new(VALUE),
    );
    let cfg = config();
    let health = cfg.health.clone();
    let lane = lane_with(&store, &chain, cfg);
    let network = x402_protocol::Network::eip155(crate::test_fixtures::lane::CHAIN_ID);
    lane.replace_and_report().await.unwrap();
    assert_eq!(health.stalled(network), None);
    chain.state().signer_eth = U256::ZERO;
    lane.replace_and_report().await.unwrap();
    let why = health.stalled(network).unwrap();
    assert!(why.contains("wallet holds 0 wei"), "{why}");
    chain.state().signer_eth = U256::from(10u128.pow(18));
    lane.replace_and_report().await.unwrap();
    assert_eq!(health.stalled(network), None);
}

mod batching {
    //! Batches through the batch contract (`test_fixtures::lane::CONTRACT`): many payments per
    //! transaction, per-item outcomes, whole-batch reverts, crash-restart.
    use super::*;
    use crate::lane::batch::{BATCH, MAX_BATCH_REQUEUES};
    use crate::lane::io::AuthorizationEvent;
    use crate::test_fixtures::lane::CONTRACT;

    /// A permit made out to the batch contract.
    fn to_contract(id: &str, seq: i64, nonce: u64) -> crate::store::PaymentRow {
        let mut p = payment(id, seq, Scheme::Permit, nonce);
        p.p.spender = Some(CONTRACT);
        p
    }

    fn batched(store: &FakeStore, chain: &FakeChain) -> Lane {
        chain.state().contract = true;
        lane(store, chain)
    }

    fn batch_txs(store: &FakeStore) -> Vec<crate::store::TxRow> {
        store
            .state()
            .txs
            .iter()
            .filter(|t| t.kind == BATCH)
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn many_payments_of_both_schemes_go_in_one_transaction_and_settle_once() {
        // One owner's permits 0..3 (nonce order kept inside the batch) and 3 ERC-3009.
        let mut rows: Vec<_> = (0..3)
            .map(|i| to_contract(&format!("p{i}"), i as i64 + 1, i))
            .collect();
        rows.extend((0..3).map(|i| payment(&format!("e{i}"), 10 + i, Scheme::Exact, 0)));
        let store = FakeStore::with(rows);
        let chain = FakeChain::new(6 * VALUE);
        let lane = batched(&store, &chain);
        let mut next = lane.recover().await.unwrap();
        assert_eq!(submit(&lane, &mut next).await, 6);
        assert_eq!(next, 1, "one wallet nonce for the whole batch");
        let txs = batch_txs(&store);
        assert_eq!(txs.len(), 1);
        for id in ["p0", "p1", "p2", "e0", "e1", "e2"] {
            let row = store.row(id);
            assert_eq!(row.state, SettlementState::Submitted, "{id}");
            assert_eq!(row.transfer_tx, Some(txs[0].hash.to_string()), "{id}");
        }
        assert_eq!(
            submit(&lane, &mut next).await,
            0,
            "a payment is in one batch at a time"
        );
        chain.mine();
        lane.confirm().await.unwrap();
        for id in ["p0", "p1", "p2", "e0", "e1", "e2"] {
            assert_eq!(store.row(id).state, SettlementState::Settled, "{id}");
        }
        assert_eq!(chain.balance(PAY_TO), U256::from(6 * VALUE));
        assert_eq!(chain.balance(PAYER), U256::ZERO);
        assert_eq!(batch_txs(&store)[0].state, "mined");
        assert!(chain.state().broadcasts.len() == 1);
    }

    #[tokio::test]
    async fn a_bad_item_fails_alone_with_the_payers_cause() {
        let store =
            FakeStore::with((0..5).map(|i| payment(&format!("e{i}"), i + 1, Scheme::Exact, 0)));
        let chain = FakeChain::new(5 * VALUE);
        let lane = batched(&store, &chain);
        let mut next = lane.recover().await.unwrap();
        assert_eq!(submit(&lane, &mut next).await, 5);
        // The payer cancels the middle authorization while the batch is pooled.
        let mid = store.row("e2");
        {
            let mut s = chain.state();
            s.auth_used.insert((PAYER, mid.p.nonce));
            s.auth_events.insert(
                (PAYER, mid.p.nonce),
                AuthorizationEvent::Canceled {
                    tx: alloy::primitives::B256::repeat_byte(7),
                },
            );
        }
        chain.mine();
        lane.confirm().await.unwrap();
        for id in ["e0", "e1", "e3", "e4"] {
            assert_eq!(store.row(id).state, SettlementState::Settled, "{id}");
        }
        assert_eq!(store.row("e2").state, SettlementState::Failed);
        assert_eq!(
            store.state().causes.get("e2"),
            Some(&("authorization_canceled".to_string(), true))
        );
        assert_eq!(chain.balance(PAY_TO), U256::from(4 * VALUE));
    }

    #[tokio::test]
    async fn a_short_balance_fails_only_that_item() {
        // Balance for 3 of 4: the last one in acceptance order is short.
        let store =
            FakeStore::with((0..4).map(|i| payment(&format!("e{i}"), i + 1, Scheme::Exact, 0)));
        let chain = FakeChain::new(3 * VALUE);
        let lane = batched(&store, &chain);
        let mut next = lane.recover().await.unwrap();
        assert_eq!(submit(&lane, &mut next).await, 4);
        chain.mine();
        lane.confirm().await.unwrap();
        let states: Vec<_> = (0..4).map(|i| store.row(&format!("e{i}")).state).collect();
        assert_eq!(
            states,
            [
                SettlementState::Settled,
                SettlementState::Settled,
                SettlementState::Settled,
                SettlementState::Failed
            ]
        );
        assert_eq!(
            store.state().causes.get("e3"),
            Some(&("insufficient_balance".to_string(), true))
        );
    }

    #[tokio::test]
    async fn a_whole_batch_revert_requeues_its_items_bounded_then_they_fail() {
        let store =
            FakeStore::with((0..3).map(|i| payment(&format!("e{i}"), i + 1, Scheme::Exact, 0)));
        let chain = FakeChain::new(3 * VALUE);
        let lane = batched(&store, &chain);
        let mut next = lane.recover().await.unwrap();
        chain.state().batch_reverts = true;
        let mut gas_limits = vec![];
        for round in 0..=MAX_BATCH_REQUEUES {
            assert_eq!(submit(&lane, &mut next).await, 3, "round {round}");
            gas_limits.push(crate::lane::batch::batch_gas(
                &(0..3)
                    .map(|i| crate::lane::batch::BatchEntry {
                        row: store.row(&format!("e{i}")),
                        with_permit: false,
                    })
                    .collect::<Vec<_>>(),
            ));
            chain.mine();
            lane.confirm().await.unwrap();
            let row = store.row("e0");
            if round < MAX_BATCH_REQUEUES {
                assert_eq!(row.state, SettlementState::Pending, "round {round}");
                assert_eq!(row.transfer_tx, None);
            }
        }
        for i in 0..3 {
            let id = format!("e{i}");
            assert_eq!(store.row(&id).state, SettlementState::Failed);
            assert_eq!(
                store.state().causes.get(&id),
                Some(&("reverted".to_string(), false)),
                "not the payer's doing"
            );
        }
        assert_eq!(batch_txs(&store).len() as i64, MAX_BATCH_REQUEUES + 1);
        assert!(
            gas_limits.windows(2).all(|w| w[0] <= w[1]),
            "{gas_limits:?}"
        );
        assert!(
            gas_limits.last() > gas_limits.first(),
            "gas rises after a revert"
        );
        assert_eq!(chain.balance(PAY_TO), U256::ZERO);
    }

    #[tokio::test]
    async fn a_requeued_item_settles_in_a_later_batch_once() {
        let store =
            FakeStore::with((0..3).map(|i| payment(&format!("e{i}"), i + 1, Scheme::Exact, 0)));
        let chain = FakeChain::new(3 * VALUE);
        let lane = batched(&store, &chain);
        let mut next = lane.recover().await.unwrap();
        chain.state().batch_reverts = true;
        submit(&lane, &mut next).await;
        chain.mine();
        lane.confirm().await.unwrap();
        chain.state().batch_reverts = false;
        assert_eq!(submit(&lane, &mut next).await, 3);
        chain.mine();
        lane.confirm().await.unwrap();
        for i in 0..3 {
            assert_eq!(store.row(&format!("e{i}")).state, SettlementState::Settled);
        }
        assert_eq!(chain.balance(PAY_TO), U256::from(3 * VALUE));
        assert!(store.state().txs.iter().all(|t| t.state == "mined"));
    }

    #[tokio::test]
    async fn batches_split_at_batch_max_and_a_restart_rebroadcasts_them_byte_for_byte() {
        let store =
            FakeStore::with((0..7).map(|i| payment(&format!("e{i}"), i + 1, Scheme::Exact, 0)));
        let chain = FakeChain::new(7 * VALUE);
        chain.state().contract = true;
        let cfg = WorkerConfig {
            batch_max: 3,
            ..config()
        };
        let lane = lane_with(&store, &chain, cfg.clone());
        let mut next = lane.recover().await.unwrap();
        assert_eq!(submit(&lane, &mut next).await, 7);
        assert_eq!(next, 3, "3 + 3 + 1 items");
        let sent: Vec<Vec<u8>> = batch_txs(&store).into_iter().map(|t| t.raw).collect();
        // "kill -9": the node lost its pool; a new lane re-sends the stored batches as they are.
        chain.state().mempool.clear();
        chain.state().broadcasts.clear();
        let lane = lane_with(&store, &chain, cfg);
        let mut next = lane.recover().await.unwrap();
        assert_eq!(next, 3);
        assert_eq!(chain.state().broadcasts, sent);
        assert_eq!(submit(&lane, &mut next).await, 0, "nothing signed again");
        chain.mine();
        lane.confirm().await.unwrap();
        for i in 0..7 {
            assert_eq!(store.row(&format!("e{i}")).state, SettlementState::Settled);
        }
        assert_eq!(chain.balance(PAY_TO), U256::from(7 * VALUE));
    }

    #[tokio::test]
    async fn at_most_max_in_flight_batches_wait_for_receipts_and_the_rest_follow_in_order() {
        // One owner's permits 0..5 to the contract and three ERC-3009 after them; batches of
        // 2, at most 2 unmined.
        let mut rows: Vec<_> = (0..5)
            .map(|i| to_contract(&format!("p{i}"), i as i64 + 1, i))
            .collect();
        rows.extend((0..3).map(|i| payment(&format!("e{i}"), 10 + i, Scheme::Exact, 0)));
        let store = FakeStore::with(rows);
        let chain = FakeChain::new(8 * VALUE);
        chain.state().contract = true;
        let cfg = WorkerConfig {
            batch_max: 2,
            max_in_flight: 2,
            ..config()
        };
        let lane = lane_with(&store, &chain, cfg);
        let mut next = lane.recover().await.unwrap();
        assert_eq!(submit(&lane, &mut next).await, 4);
        assert_eq!(next, 2, "two batch transactions");
        assert_eq!(batch_txs(&store).len(), 2);
        for id in ["p0", "p1", "p2", "p3"] {
            assert_eq!(store.row(id).state, SettlementState::Submitted, "{id}");
        }
        for id in ["p4", "e0", "e1", "e2"] {
            assert_eq!(store.row(id).state, SettlementState::Pending, "{id}");
        }
        assert_eq!(
            submit(&lane, &mut next).await,
            0,
            "the bound holds while both wait for receipts"
        );
        chain.mine();
        lane.confirm().await.unwrap();
        for id in ["p0", "p1", "p2", "p3"] {
            assert_eq!(store.row(id).state, SettlementState::Settled, "{id}");
        }
        // Room again: the owner's next permit (its nonce follows the mined ones) and the rest.
        assert_eq!(submit(&lane, &mut next).await, 4);
        chain.mine();
        lane.confirm().await.unwrap();
        for id in ["p0", "p1", "p2", "p3", "p4", "e0", "e1", "e2"] {
            assert_eq!(store.row(id).state, SettlementState::Settled, "{id}");
        }
        assert_eq!(chain.balance(PAY_TO), U256::from(8 * VALUE));
        assert_eq!(
            chain.state().permit_nonces.get(&PAYER).copied(),
            Some(U256::from(5))
        );
        assert_eq!(
            batch_txs(&store).len(),
            4,
            "each payment in one batch, once"
        );
    }

    /// One owner's permits 0 and 1 to the contract and an ERC-3009 authorization, in one batch.
    async fn one_batch_of_three(store: &FakeStore, lane: &Lane) -> u64 {
        store.add(to_contract("p0", 1, 0));
        store.add(to_contract("p1", 2, 1));
        store.add(payment("e0", 3, Scheme::Exact, 0));
        let mut next = lane.recover().await.unwrap();
        assert_eq!(submit(lane, &mut next).await, 3);
        next
    }

    #[tokio::test]
    async fn a_mined_batch_whose_receipt_comes_late_is_waited_for_and_its_items_settle() {
        let (store, chain) = (FakeStore::default(), FakeChain::new(4 * VALUE));
        let lane = batched(&store, &chain);
        let mut next = one_batch_of_three(&store, &lane).await;
        // The node counts the batch's nonce as used at once but answers the first three
        // receipt reads with none (anvil serves the receipt a moment after it counts the nonce).
        chain.state().receipt_lag = 3;
        chain.mine();
        for round in 1..=3 {
            lane.confirm().await.unwrap();
            for id in ["p0", "p1", "e0"] {
                let row = store.row(id);
                assert_eq!(
                    (row.state, row.attempts),
                    (SettlementState::Submitted, 0),
                    "round {round} {id}: waits, not re-queued"
                );
            }
            assert_eq!(batch_txs(&store)[0].state, "sent", "round {round}");
        }
        lane.confirm().await.unwrap();
        for id in ["p0", "p1", "e0"] {
            let row = store.row(id);
            assert_eq!(
                (row.state, row.error, row.attempts),
                (SettlementState::Settled, None, 0),
                "{id}"
            );
        }
        assert_eq!(batch_txs(&store)[0].state, "mined");
        assert_eq!(chain.state().signed.len(), 1, "the batch was signed once");
        // The payer is not blocked: its next permit settles.
        chain.state().receipt_lag = 0;
        store.add(to_contract("p2", 4, 2));
        assert_eq!(submit(&lane, &mut next).await, 1);
        chain.mine();
        lane.confirm().await.unwrap();
        assert_eq!(store.row("p2").state, SettlementState::Settled);
        assert_eq!(chain.balance(PAY_TO), U256::from(4 * VALUE));
        assert_eq!(
            chain.state().permit_nonces.get(&PAYER).copied(),
            Some(U256::from(3))
        );
    }

    #[tokio::test]
    async fn the_running_lane_looks_again_for_a_late_receipt_without_a_new_block() {
        let (store, chain) = (FakeStore::default(), FakeChain::new(3 * VALUE));
        chain.state().contract = true;
        // No rebroadcast round in the test's time: only the lane's own look-again re-runs
        // the confirm step once the chain is idle.
        let cfg = WorkerConfig {
            rebroadcast: Duration::from_secs(3600),
            ..config()
        };
        let probe = lane_with(&store, &chain, cfg.clone());
        one_batch_of_three(&store, &probe).await;
        drop(probe);
        chain.state().receipt_lag = 3;
        chain.mine();
        let (stop, stopped) = watch::channel(false);
        let run = tokio::spawn(lane_with(&store, &chain, cfg).run(stopped));
        wait_for(|| {
            ["p0", "p1", "e0"]
                .iter()
                .all(|id| store.row(id).state == SettlementState::Settled)
        })
        .await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .unwrap()
            .unwrap();
        for id in ["p0", "p1", "e0"] {
            assert_eq!(store.row(id).attempts, 0, "{id}");
        }
        assert_eq!(chain.balance(PAY_TO), U256::from(3 * VALUE));
    }

    #[tokio::test]
    async fn a_batch_whose_nonce_a_foreign_transaction_took_is_requeued_and_settles_once() {
        let (store, chain) = (FakeStore::default(), FakeChain::new(3 * VALUE));
        let lane = batched(&store, &chain);
        let mut next = one_batch_of_three(&store, &lane).await;
        // Another program with our key takes nonce 0; the node drops our batch and knows its
        // hash no more. The same receipt lag as above changes nothing here.
        chain.state().receipt_lag = 3;
        chain.foreign_transaction();
        lane.confirm().await.unwrap();
        for id in ["p0", "p1", "e0"] {
            let row = store.row(id);
            assert_eq!(
                (row.state, row.attempts),
                (SettlementState::Pending, 1),
                "{id}"
            );
            assert!(
                row.error
                    .unwrap_or_default()
                    .starts_with("wallet nonce(s) [0] of "),
                "{id}"
            );
        }
        assert_eq!(batch_txs(&store)[0].state, "dropped");
        // Re-checked on chain (nothing moved) and signed again.
        chain.state().receipt_lag = 0;
        assert_eq!(submit(&lane, &mut next).await, 3);
        chain.mine();
        lane.confirm().await.unwrap();
        for id in ["p0", "p1", "e0"] {
            assert_eq!(store.row(id).state, SettlementState::Settled, "{id}");
        }
        assert_eq!(chain.balance(PAY_TO), U256::from(3 * VALUE), "moved once");
    }

    #[tokio::test]
    async fn a_permit_of_a_batch_taken_as_lost_but_mined_is_settled_not_failed_as_spent() {
        let (store, chain) = (FakeStore::default(), FakeChain::new(2 * VALUE));
        let lane = batched(&store, &chain);
        store.add(to_contract("p0", 1, 0));
        store.add(to_contract("p1", 2, 1));
        let mut next = lane.recover().await.unwrap();
        assert_eq!(submit(&lane, &mut next).await, 2);
        // The worst node: it counts the nonce, serves no receipt for two reads and does not
        // know the mined hash either. The lane takes the batch as lost and re-queues its items.
        {
            let mut s = chain.state();
            s.receipt_lag = 2;
            s.hide_mined = true;
        }
        chain.mine();
        lane.confirm().await.unwrap();
        for id in ["p0", "p1"] {
            assert_eq!(store.row(id).state, SettlementState::Pending, "{id}");
        }
        // Re-checked: both permit nonces are spent and the allowance is gone - by our own
        // batch, whose receipt now shows each item moving the funds.
        assert_eq!(submit(&lane, &mut next).await, 0, "nothing signed again");
        let batch = batch_txs(&store)[0].hash;
        for id in ["p0", "p1"] {
            let row = store.row(id);
            assert_eq!(row.state, SettlementState::Settled, "{id}: {row:?}");
            assert_eq!(row.transfer_tx, Some(batch.to_string()), "{id}");
            assert_eq!(store.state().causes.get(id), None, "{id}");
        }
        assert_eq!(batch_txs(&store)[0].state, "mined");
        assert_eq!(chain.state().signed.len(), 1);
        assert_eq!(chain.balance(PAY_TO), U256::from(2 * VALUE));
    }

    #[tokio::test]
    async fn a_batch_still_pooled_after_its_nonce_was_counted_is_waited_for() {
        let (store, chain) = (FakeStore::default(), FakeChain::new(3 * VALUE));
        let lane = batched(&store, &chain);
        one_batch_of_three(&store, &lane).await;
        // The node counts nonce 0 as used while our batch is still in its pool (a lagging
        // node): ours may be the transaction that used it.
        chain.state().confirmed = 1;
        lane.confirm().await.unwrap();
        for id in ["p0", "p1", "e0"] {
            let row = store.row(id);
            assert_eq!(
                (row.state, row.attempts),
                (SettlementState::Submitted, 0),
                "{id}"
            );
        }
        assert_eq!(batch_txs(&store)[0].state, "sent");
    }

    #[tokio::test]
    async fn permits_to_the_wallet_stay_single_and_a_lost_batch_nonce_requeues() {
        // A permit to the wallet cannot go through the contract: two transactions of its own.
        let store = FakeStore::with([
            payment("w", 1, Scheme::Permit, 0),
            payment("e", 2, Scheme::Exact, 0),
        ]);
        let chain = FakeChain::new(2 * VALUE);
        let lane = batched(&store, &chain);
        let mut next = lane.recover().await.unwrap();
        assert_eq!(submit(&lane, &mut next).await, 2);
        assert_eq!(
            kinds_and_nonces(&store, "w"),
            [k(PERMIT, 0, "sent"), k(TRANSFER_FROM, 1, "sent")]
        );
        assert_eq!(batch_txs(&store)[0].nonce, 2);
        // Mine the permit pair, then a foreign transaction takes the batch's nonce.
        {
            let mut s = chain.state();
            s.mempool.remove(&2);
        }
        chain.mine();
        chain.foreign_transaction();
        lane.confirm().await.unwrap();
        assert_eq!(store.row("w").state, SettlementState::Settled);
        assert_eq!(
            store.row("e").state,
            SettlementState::Pending,
            "signed again"
        );
        assert_eq!(batch_txs(&store)[0].state, "dropped");
        assert_eq!(submit(&lane, &mut next).await, 1);
        chain.mine();
        lane.confirm().await.unwrap();
        assert_eq!(store.row("e").state, SettlementState::Settled);
        assert_eq!(chain.balance(PAY_TO), U256::from(2 * VALUE));
    }
}
