//! Durable storage of accepted payments and of the transactions that settle them (sqlx Any:
//! SQLite or Postgres, same SQL apart from the schema's id column).
//!
//! Invariants the worker relies on:
//! - A payment is inserted (with its UNIQUE single-use key) before its token is returned.
//! - Transactions are signed and stored, and the payment moved to `submitted`, in one DB
//!   transaction BEFORE they are broadcast; after a crash they are re-broadcast byte for byte,
//!   so a payment's transfer is signed exactly once and can execute at most once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row, Transaction};
use x402_protocol::payment::Sig;
use x402_protocol::settler_api::{SettlementState, SettlementStatus};
use x402_protocol::{Network, Scheme};

use crate::error::StoreError;

mod holds;
pub use holds::{AcceptExtras, HoldChange};
mod ops;
pub use ops::SettledItem;
mod group_commit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The database URL: the SQLite writer opens its own connection with it.
    url: Arc<str>,
    /// SQLite: the acceptances' writer, committing concurrent inserts together
    /// ([`group_commit`]), started by the first [`Store::session`] (a store that never
    /// accepts, the lanes' or a command's, has none).
    group: Arc<tokio::sync::OnceCell<group_commit::GroupCommit>>,
}

/// A payment as it is about to be stored.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub id: String,
    pub scheme: Scheme,
    pub network: Network,
    pub asset: Address,
    pub payer: Address,
    pub pay_to: Address,
    pub spender: Option<Address>,
    pub value: U256,
    pub price: U256,
    /// ERC-3009 nonce, or the EIP-2612 nonce as 32 bytes.
    pub nonce: B256,
    pub valid_after: U256,
    /// Permit deadline or ERC-3009 validBefore.
    pub deadline: U256,
    pub sig: Sig,
    pub route: String,
    pub resource: Option<String>,
    pub format: String,
    pub created_ms: i64,
}

impl NewPayment {
    pub fn use_key(&self) -> String {
        use_key(
            self.scheme,
            self.network,
            self.asset,
            self.payer,
            self.nonce,
        )
    }
}

/// The single-use key: one token per (scheme, chain, token, payer, nonce), ever. The scheme
/// is part of it: an EIP-2612 nonce and an ERC-3009 nonce of the same value are different
/// payments (migration 2 prefixed the older keys, so their replays still collide).
pub fn use_key(
    scheme: Scheme,
    network: Network,
    asset: Address,
    payer: Address,
    nonce: B256,
) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        scheme.as_str(),
        network.chain_id,
        hexa(asset),
        hexa(payer),
        hex32(nonce)
    )
}

fn hexa(a: Address) -> String {
    format!("{a:#x}")
}
fn hex32(b: B256) -> String {
    alloy::primitives::hex::encode_prefixed(b)
}

/// A stored payment.
#[derive(Debug, Clone)]
pub struct PaymentRow {
    /// Acceptance order. The lane takes pending payments by it in SQL and never reads it
    /// back; it is loaded so a row read is the whole row (the lane's fake store orders by it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub seq: i64,
    pub p: NewPayment,
    pub state: SettlementState,
    pub error: Option<String>,
    pub permit_tx: Option<String>,
    pub transfer_tx: Option<String>,
    pub block_number: Option<i64>,
    pub attempts: i64,
    pub updated_ms: i64,
}

impl PaymentRow {
    pub fn permit_nonce(&self) -> U256 {
        U256::from_be_bytes(self.p.nonce.0)
    }
    pub fn status(&self) -> SettlementStatus {
        SettlementStatus {
            settlement_id: self.p.id.clone(),
            state: self.state,
            scheme: self.p.scheme,
            network: self.p.network,
            asset: self.p.asset,
            payer: self.p.payer,
            pay_to: self.p.pay_to,
            amount: self.p.value,
            route: self.p.route.clone(),
            permit_tx: self.permit_tx.clone(),
            transfer_tx: self.transfer_tx.clone(),
            block_number: self.block_number.and_then(|b| u64::try_from(b).ok()),
            error: self.error.clone(),
            created_at: self.p.created_ms / 1000,
            updated_at: self.updated_ms / 1000,
            held: false,
        }
    }
}

/// A signed settlement transaction: the latest attempt at its wallet nonce (every attempt,
/// replaced ones included, is also in `x402_tx_attempts`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TxRow {
    pub chain_id: u64,
    pub signer: Address,
    pub nonce: u64,
    pub payment_id: String,
    /// `permit`, `transfer_from` or `transfer_with_authorization`.
    pub kind: String,
    pub hash: B256,
    pub raw: Vec<u8>,
    /// `sent`, `mined` or `dropped`. The lane selects by state in SQL and never reads it back;
    /// it is loaded so a row read is the whole row (tests check it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub state: String,
    pub last_broadcast_ms: i64,
    /// Fees this attempt was signed with (max fee, priority fee per gas), and when.
    pub max_fee: u128,
    pub priority_fee: u128,
    pub signed_ms: i64,
    /// When its first attempt was signed (stall detection).
    pub created_ms: i64,
}

/// A stored payment found by its single-use key (same payment re-posted).
#[derive(Debug, Clone)]
pub struct StoredPayment {
    pub row: PaymentRow,
    /// (iat, exp) of the token minted for it; `None` for facilitator payments and rows
    /// stored before migration 2.
    pub token: Option<(i64, i64)>,
    /// A settlement transaction was stored (and so possibly broadcast): its signature may
    /// be public.
    pub broadcast: bool,
    /// The client's idempotency key stored with it (`payment-identifier`, `Idempotency-Key`).
    pub payment_id: Option<String>,
    /// Pending and held for the gateway's release or void (see `store::holds`).
    pub held: bool,
}

/// An open (pending or submitted) payment of one payer in one token, for the token checks.
#[derive(Debug, Clone)]
pub struct OpenPayment {
    pub scheme: Scheme,
    pub state: SettlementState,
    pub value: U256,
    pub nonce: B256,
    pub pay_to: Address,
    /// The transaction moving the funds, once submitted.
    pub transfer_tx: Option<B256>,
}

/// An [`OpenPayment`] from a row of (scheme, state, value, nonce, pay_to, transfer_tx).
fn open_payment(r: &AnyRow) -> Result<OpenPayment, StoreError> {
    let scheme: String = r.try_get("scheme")?;
    let state: String = r.try_get("state")?;
    let transfer_tx: Option<String> = r.try_get("transfer_tx")?;
    Ok(OpenPayment {
        scheme: parse_scheme(&scheme)?,
        state: parse_state(&state)?,
        value: col_u256(r, "value")?,
        nonce: col(r, "nonce")?,
        pay_to: col(r, "pay_to")?,
        transfer_tx: transfer_tx
            .map(|h| {
                h.parse()
                    .map_err(|_| StoreError::Corrupt("transfer_tx".into()))
            })
            .transpose()?,
    })
}

fn parse_state(s: &str) -> Result<SettlementState, StoreError> {
    Ok(match s {
        "pending" => SettlementState::Pending,
        "submitted" => SettlementState::Submitted,
        "settled" => SettlementState::Settled,
        "failed" => SettlementState::Failed,
        other => return Err(StoreError::Corrupt(format!("unknown state {other:?}"))),
    })
}

fn parse_scheme(s: &str) -> Result<Scheme, StoreError> {
    match s {
        "permit" => Ok(Scheme::Permit),
        "exact" => Ok(Scheme::Exact),
        other => Err(StoreError::Corrupt(format!("unknown scheme {other:?}"))),
    }
}

fn col<T: FromStr>(row: &AnyRow, name: &str) -> Result<T, StoreError> {
    let s: String = row.try_get(name)?;
    s.parse::<T>()
        .map_err(|_| StoreError::Corrupt(format!("column {name}: {s:?}")))
}

/// An integer column read into a narrower or unsigned type: a value out of its range is a
/// corrupt row, never a wrapped number.
fn int_col<T: TryFrom<i64>>(name: &str, v: i64) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {name}: {v} out of range")))
}

fn col_u256(row: &AnyRow, name: &str) -> Result<U256, StoreError> {
    let s: String = row.try_get(name)?;
    U256::from_str_radix(&s, 10).map_err(|_| StoreError::Corrupt(format!("column {name}: {s:?}")))
}

const PAYMENT_COLS: &str = "seq, id, scheme, chain_id, asset, payer, pay_to, spender, value, price, nonce, valid_after, deadline, sig_v, sig_r, sig_s, route, resource, format, state, error, permit_tx, transfer_tx, block_number, attempts, created_ms, updated_ms";

fn payment_from_row(row: &AnyRow) -> Result<PaymentRow, StoreError> {
    let spender: Option<String> = row.try_get("spender")?;
    let sig_v: i64 = row.try_get("sig_v")?;
    let chain_id: i64 = row.try_get("chain_id")?;
    let scheme: String = row.try_get("scheme")?;
    let state: String = row.try_get("state")?;
    Ok(PaymentRow {
        seq: row.try_get("seq")?,
        p: NewPayment {
            id: row.try_get("id")?,
            scheme: parse_scheme(&scheme)?,
            network: Network::eip155(int_col("chain_id", chain_id)?),
            asset: col(row, "asset")?,
            payer: col(row, "payer")?,
            pay_to: col(row, "pay_to")?,
            spender: spender
                .map(|s| s.parse().map_err(|_| StoreError::Corrupt("spender".into())))
                .transpose()?,
            value: col_u256(row, "value")?,
            price: col_u256(row, "price")?,
            nonce: col(row, "nonce")?,
            valid_after: col_u256(row, "valid_after")?,
            deadline: col_u256(row, "deadline")?,
            sig: Sig {
                v: int_col("sig_v", sig_v)?,
                r: col(row, "sig_r")?,
                s: col(row, "sig_s")?,
            },
            route: row.try_get("route")?,
            resource: row.try_get("resource")?,
            format: row.try_get("format")?,
            created_ms: row.try_get("created_ms")?,
        },
        state: parse_state(&state)?,
        error: row.try_get("error")?,
        permit_tx: row.try_get("permit_tx")?,
        transfer_tx: row.try_get("transfer_tx")?,
        block_number: row.try_get("block_number")?,
        attempts: row.try_get("attempts")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

const TX_COLS: &str =
    "chain_id, signer, nonce, payment_id, kind, hash, raw, state, last_broadcast_ms, max_fee, priority_fee, signed_ms, created_ms";

fn tx_from_row(row: &AnyRow) -> Result<TxRow, StoreError> {
    let chain_id: i64 = row.try_get("chain_id")?;
    let nonce: i64 = row.try_get("nonce")?;
    let raw: String = row.try_get("raw")?;
    Ok(TxRow {
        chain_id: int_col("chain_id", chain_id)?,
        signer: col(row, "signer")?,
        nonce: int_col("nonce", nonce)?,
        payment_id: row.try_get("payment_id")?,
        kind: row.try_get("kind")?,
        hash: col(row, "hash")?,
        raw: alloy::primitives::hex::decode(&raw)
            .map_err(|_| StoreError::Corrupt("raw tx".into()))?,
        state: row.try_get("state")?,
        last_broadcast_ms: row.try_get("last_broadcast_ms")?,
        max_fee: col(row, "max_fee")?,
        priority_fee: col(row, "priority_fee")?,
        signed_ms: row.try_get("signed_ms")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || matches!(
                    db.code().as_deref(),
                    Some("23505") | Some("2067") | Some("1555")
                )
        }
        _ => false,
    }
}

/// Schema, per backend: (version, statements).
fn migrations(backend: Backend) -> Vec<(i64, Vec<String>)> {
    let id_col = match backend {
        Backend::Sqlite => "seq INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "seq BIGSERIAL PRIMARY KEY",
    };
    vec![(
        1,
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS x402_payments (
                {id_col},
                id TEXT NOT NULL UNIQUE,
                use_key TEXT NOT NULL UNIQUE,
                scheme TEXT NOT NULL,
                chain_id BIGINT NOT NULL,
                asset TEXT NOT NULL,
                payer TEXT NOT NULL,
                pay_to TEXT NOT NULL,
                spender TEXT,
                value TEXT NOT NULL,
                price TEXT NOT NULL,
                nonce TEXT NOT NULL,
                valid_after TEXT NOT NULL,
                deadline TEXT NOT NULL,
                sig_v BIGINT NOT NULL,
                sig_r TEXT NOT NULL,
                sig_s TEXT NOT NULL,
                route TEXT NOT NULL,
                resource TEXT,
                format TEXT NOT NULL,
                state TEXT NOT NULL,
                error TEXT,
                permit_tx TEXT,
                transfer_tx TEXT,
                block_number BIGINT,
                attempts BIGINT NOT NULL DEFAULT 0,
                next_attempt_ms BIGINT NOT NULL DEFAULT 0,
                created_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL,
                settled_ms BIGINT
            )"
            ),
            "CREATE INDEX IF NOT EXISTS x402_payments_work ON x402_payments (chain_id, state, seq)".into(),
            "CREATE INDEX IF NOT EXISTS x402_payments_payer ON x402_payments (chain_id, asset, payer, state)".into(),
            "CREATE TABLE IF NOT EXISTS x402_txs (
                chain_id BIGINT NOT NULL,
                signer TEXT NOT NULL,
                nonce BIGINT NOT NULL,
                payment_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                hash TEXT NOT NULL UNIQUE,
                raw TEXT NOT NULL,
                state TEXT NOT NULL,
                status BIGINT,
                block_number BIGINT,
                last_broadcast_ms BIGINT NOT NULL,
                created_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL,
                PRIMARY KEY (chain_id, signer, nonce)
            )"
            .into(),
            "CREATE INDEX IF NOT EXISTS x402_txs_payment ON x402_txs (payment_id)".into(),
            "CREATE TABLE IF NOT EXISTS x402_leases (
                name TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                until_ms BIGINT NOT NULL
            )"
            .into(),
        ],
    ),
    (
        2,
        // Same payment, same token: the token's iat/exp, so a re-post of the same signed
        // payment before broadcast gets the byte-identical token back. The single-use key
        // gains the scheme (released keys, `released:<id>`, stay as they are).
        vec![
            "ALTER TABLE x402_payments ADD COLUMN token_iat BIGINT".into(),
            "ALTER TABLE x402_payments ADD COLUMN token_exp BIGINT".into(),
            "UPDATE x402_payments SET use_key = scheme || ':' || use_key WHERE use_key NOT LIKE 'released:%'".into(),
        ],
    ),
    (
        3,
        // Settlement safety (lane): every signed attempt per wallet nonce (replace-by-fee),
        // the fees of the current one; why a payment failed and whether the payer caused it
        // (payer blocking, `unblock`); gas spent per payment (re-sign caps).
        vec![
            "ALTER TABLE x402_txs ADD COLUMN max_fee TEXT NOT NULL DEFAULT '0'".into(),
            "ALTER TABLE x402_txs ADD COLUMN priority_fee TEXT NOT NULL DEFAULT '0'".into(),
            "ALTER TABLE x402_txs ADD COLUMN signed_ms BIGINT NOT NULL DEFAULT 0".into(),
            "UPDATE x402_txs SET signed_ms = created_ms".into(),
            "CREATE TABLE IF NOT EXISTS x402_tx_attempts (
                hash TEXT PRIMARY KEY,
                chain_id BIGINT NOT NULL,
                signer TEXT NOT NULL,
                nonce BIGINT NOT NULL,
                payment_id TEXT NOT NULL,
                raw TEXT NOT NULL,
                max_fee TEXT NOT NULL,
                priority_fee TEXT NOT NULL,
                created_ms BIGINT NOT NULL
            )"
            .into(),
            "CREATE INDEX IF NOT EXISTS x402_tx_attempts_nonce ON x402_tx_attempts (chain_id, signer, nonce)".into(),
            "INSERT INTO x402_tx_attempts (hash, chain_id, signer, nonce, payment_id, raw, max_fee, priority_fee, created_ms) SELECT hash, chain_id, signer, nonce, payment_id, raw, max_fee, priority_fee, created_ms FROM x402_txs".into(),
            "ALTER TABLE x402_payments ADD COLUMN fail_cause TEXT".into(),
            "ALTER TABLE x402_payments ADD COLUMN payer_fault BIGINT NOT NULL DEFAULT 0".into(),
            "ALTER TABLE x402_payments ADD COLUMN failed_ms BIGINT".into(),
            "ALTER TABLE x402_payments ADD COLUMN unblocked_ms BIGINT".into(),
            "ALTER TABLE x402_payments ADD COLUMN gas_spent BIGINT NOT NULL DEFAULT 0".into(),
            "CREATE INDEX IF NOT EXISTS x402_payments_blocks ON x402_payments (payer, payer_fault, state)".into(),
            "CREATE TABLE IF NOT EXISTS x402_unblocks (
                payer TEXT NOT NULL,
                chain_id BIGINT,
                cleared BIGINT NOT NULL,
                at_ms BIGINT NOT NULL,
                note TEXT
            )"
            .into(),
        ],
    ),
    (
        4,
        // The revocation list: failed payments, newest first (`failed_since`).
        vec!["CREATE INDEX IF NOT EXISTS x402_payments_revoked ON x402_payments (state, created_ms)".into()],
    ),
    (
        10,
        // Batch settlement: which payments a batch transaction (`x402_txs.kind = 'batch'`,
        // `payment_id` = the batch id) carries, at which item index, with or without permit().
        vec![
            "CREATE TABLE IF NOT EXISTS x402_batch_items (
                batch_id TEXT NOT NULL,
                idx BIGINT NOT NULL,
                payment_id TEXT NOT NULL,
                with_permit BIGINT NOT NULL,
                PRIMARY KEY (batch_id, idx)
            )"
            .into(),
            "CREATE INDEX IF NOT EXISTS x402_batch_items_payment ON x402_batch_items (payment_id)"
                .into(),
        ],
    ),
    (
        12,
        // Idempotent retries and held payments (`holds`): the client's idempotency key, one
        // payment per key ever (NULLs do not collide, on both backends); a held payment's
        // deadline (NULL: not held; the lane takes only those), voided when it passes.
        vec![
            "ALTER TABLE x402_payments ADD COLUMN payment_id TEXT".into(),
            "ALTER TABLE x402_payments ADD COLUMN held_until_ms BIGINT".into(),
            "CREATE UNIQUE INDEX IF NOT EXISTS x402_payments_payment_id ON x402_payments (payment_id)".into(),
            "CREATE INDEX IF NOT EXISTS x402_payments_holds ON x402_payments (state, held_until_ms)".into(),
        ],
    ),
    (
        13,
        // How many requests hold a held payment (the same payment and idempotency key sent
        // again while held): a void takes one off, only the last one voids (`holds`).
        vec!["ALTER TABLE x402_payments ADD COLUMN hold_count BIGINT NOT NULL DEFAULT 1".into()],
    ),
    (
        14,
        // The asset's open total (`open_total`, under the asset's lock on every acceptance):
        // answered from this index alone, without a table lookup per open payment.
        vec!["CREATE INDEX IF NOT EXISTS x402_payments_open_value ON x402_payments (chain_id, asset, state, value)".into()],
    ),
    (
        15,
        // Signer pool: which wallet's lane takes a payment first (`lane_slot` modulo the pool
        // size; [`lane_slot`]). Rows from before count as slot 0.
        vec!["ALTER TABLE x402_payments ADD COLUMN lane_slot BIGINT NOT NULL DEFAULT 0".into()],
    ),
    (
        16,
        // Payer facts: a payer's payments settled after a block (`settled_after`), from the
        // index alone however many the payer has settled before.
        vec!["CREATE INDEX IF NOT EXISTS x402_payments_settled_block ON x402_payments (chain_id, asset, payer, state, block_number)".into()],
    )]
}

/// A payment's place in the signer pool's partition (0..2^32): the lane of wallet `k` of `n`
/// takes it first when `lane_slot % n == k`. A permit's slot is its payer's (with the asset),
/// so one payer's permits, which must run in nonce order, go through one wallet; an ERC-3009
/// authorization's is its own nonce's, spreading one payer's payments over the pool.
pub(crate) fn lane_slot(p: &NewPayment) -> i64 {
    let h = match p.scheme {
        Scheme::Permit => {
            alloy::primitives::keccak256([p.asset.as_slice(), p.payer.as_slice()].concat())
        }
        _ => alloy::primitives::keccak256(p.nonce),
    };
    i64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
}

/// Which pending payments a lane of the signer pool takes ([`Store::due_pending`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LaneShare {
    /// Wallets in the pool (1: the lane takes everything).
    pub of: u64,
    /// This lane's wallet's place in the pool (sorted by address).
    pub index: u64,
    /// Payments due since before this (ms) are taken whatever their slot: another wallet's
    /// share whose lane is down or held back is not left waiting.
    pub steal_before_ms: i64,
}

/// A connection for the token path: on Postgres a transaction holding an advisory lock on
/// the payer, so replicas serialise one payer's checks; on SQLite (single replica) a plain
/// connection, the in-process payer lock serialises.
pub enum Session {
    Pg(Transaction<'static, Any>),
    /// The connection (reads) and the store's writer (the insert, [`group_commit`]).
    Lite(PoolConnection<Any>, group_commit::GroupCommit),
}

impl Session {
    fn conn(&mut self) -> &mut AnyConnection {
        match self {
            Session::Pg(tx) => tx,
            Session::Lite(c, _) => c,
        }
    }

    /// Payer blocking: the latest payer-caused failure of `payer` on `chain_id` since
    /// `since_ms` not cleared by `unblock`: (settlement id, cause).
    pub async fn payer_block(
        &mut self,
        chain_id: u64,
        payer: Address,
        since_ms: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT id, fail_cause FROM x402_payments WHERE payer = $1 AND payer_fault = 1 AND state = 'failed' AND chain_id = $2 AND unblocked_ms IS NULL AND failed_ms >= $3 ORDER BY failed_ms DESC LIMIT 1")
            .bind(hexa(payer))
            .bind(chain_id as i64)
            .bind(since_ms)
            .fetch_optional(self.conn())
            .await?;
        row.map(|r| {
            let cause: Option<String> = r.try_get("fail_cause")?;
            Ok((r.try_get("id")?, cause.unwrap_or_default()))
        })
        .transpose()
    }

    #[cfg(test)]
    pub async fn use_key_exists(&mut self, key: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT id FROM x402_payments WHERE use_key = $1")
            .bind(key)
            .fetch_optional(self.conn())
            .await?;
        Ok(row.is_some())
    }

    /// The stored payment holding single-use key `key`, with its token's (iat, exp) if one
    /// was minted and whether any settlement transaction was ever stored for it (signed
    /// transactions are stored before they are broadcast: none stored = never broadcast).
    pub async fn by_use_key(&mut self, key: &str) -> Result<Option<StoredPayment>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLS}, token_iat, token_exp, payment_id AS client_payment_id, held_until_ms, (SELECT COUNT(*) FROM x402_txs t WHERE t.payment_id = x402_payments.id) + (SELECT COUNT(*) FROM x402_batch_items b WHERE b.payment_id = x402_payments.id) AS n_txs FROM x402_payments WHERE use_key = $1"
        ))
        .bind(key)
        .fetch_optional(self.conn())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let iat: Option<i64> = row.try_get("token_iat")?;
        let exp: Option<i64> = row.try_get("token_exp")?;
        let n_txs: i64 = row.try_get("n_txs")?;
        let held_until: Option<i64> = row.try_get("held_until_ms")?;
        let row_ = payment_from_row(&row)?;
        Ok(Some(StoredPayment {
            held: held_until.is_some() && row_.state == SettlementState::Pending,
            row: row_,
            token: iat.zip(exp),
            broadcast: n_txs > 0,
            payment_id: row.try_get("client_payment_id")?,
        }))
    }

    /// Sum of the values of all open (pending or submitted) payments in `asset` on
    /// `network`, every payer together (exposure total). Summed here: values are exact
    /// decimal text, no SQL number type holds every U256.
    pub async fn open_total(
        &mut self,
        network: Network,
        asset: Address,
    ) -> Result<U256, StoreError> {
        // It runs under the asset's lock for every acceptance: values of up to 12 digits
        // (all real prices) are summed by the database - exact, as each is < 10^12 and the
        // count is bounded below (the sum stays under i64::MAX) - and only longer ones here.
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n, CAST(SUM(CAST(value AS BIGINT)) AS BIGINT) AS total FROM x402_payments WHERE chain_id = $1 AND asset = $2 AND state IN ('pending', 'submitted') AND LENGTH(value) <= {SQL_SUM_DIGITS}"))
            .bind(network.chain_id as i64)
            .bind(hexa(asset))
            .fetch_one(self.conn())
            .await?;
        let n: i64 = row.try_get("n")?;
        let short: Option<i64> = row.try_get("total")?;
        let long_filter = if n > SQL_SUM_MAX_ROWS {
            // Too many for an exact SQL sum: every value here.
            String::new()
        } else {
            format!(" AND LENGTH(value) > {SQL_SUM_DIGITS}")
        };
        let mut total = if n > SQL_SUM_MAX_ROWS {
            U256::ZERO
        } else {
            U256::from(short.unwrap_or(0).max(0) as u64)
        };
        let rows = sqlx::query(&format!("SELECT value FROM x402_payments WHERE chain_id = $1 AND asset = $2 AND state IN ('pending', 'submitted'){long_filter}"))
            .bind(network.chain_id as i64)
            .bind(hexa(asset))
            .fetch_all(self.conn())
            .await?;
        for r in &rows {
            total = total.saturating_add(col_u256(r, "value")?);
        }
        Ok(total)
    }

    /// Postgres: also serialise on `lock_key` (an asset's exposure total) until this
    /// session's transaction ends, across replicas. SQLite: nothing (one replica; the
    /// in-process lock serialises).
    pub async fn lock_also(&mut self, lock_key: i64) -> Result<(), StoreError> {
        if let Session::Pg(tx) = self {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock_key)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Pending or submitted payments of `payer` in `asset`.
    pub async fn open_payments(
        &mut self,
        network: Network,
        asset: Address,
        payer: Address,
    ) -> Result<Vec<OpenPayment>, StoreError> {
        let rows = sqlx::query("SELECT scheme, state, value, nonce, pay_to, transfer_tx FROM x402_payments WHERE chain_id = $1 AND asset = $2 AND payer = $3 AND state IN ('pending', 'submitted')")
            .bind(network.chain_id as i64)
            .bind(hexa(asset))
            .bind(hexa(payer))
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(open_payment).collect()
    }

    /// Payments of `payer` in `asset` settled in a block after `block` (payer facts: their
    /// funds are still in a balance read at `block`).
    pub async fn settled_after(
        &mut self,
        network: Network,
        asset: Address,
        payer: Address,
        block: u64,
    ) -> Result<Vec<OpenPayment>, StoreError> {
        let rows = sqlx::query("SELECT scheme, state, value, nonce, pay_to, transfer_tx FROM x402_payments WHERE chain_id = $1 AND asset = $2 AND payer = $3 AND state = 'settled' AND block_number > $4")
            .bind(network.chain_id as i64)
            .bind(hexa(asset))
            .bind(hexa(payer))
            .bind(i64::try_from(block).unwrap_or(i64::MAX))
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(open_payment).collect()
    }

    #[cfg(test)]
    pub async fn insert(&mut self, p: &NewPayment) -> Result<(), StoreError> {
        self.insert_with_token(p, None).await
    }

    /// Inserts `p`, recording the (iat, exp) of the token minted for it, if any.
    #[cfg(test)]
    pub async fn insert_with_token(
        &mut self,
        p: &NewPayment,
        token: Option<(i64, i64)>,
    ) -> Result<(), StoreError> {
        let extras = AcceptExtras {
            token,
            ..AcceptExtras::default()
        };
        self.insert_accepted(p, &extras).await
    }

    /// Inserts `p` with `extras` (its token's times, idempotency key, hold). A taken
    /// single-use key or idempotency key is [`StoreError::Duplicate`]. Postgres: in this
    /// session's transaction (durable at [`Session::commit`]); SQLite: durable when this
    /// returns, committed together with the acceptances inserting at the same time.
    pub async fn insert_accepted(
        &mut self,
        p: &NewPayment,
        extras: &AcceptExtras,
    ) -> Result<(), StoreError> {
        match self {
            Session::Pg(tx) => insert_payment(tx, p, extras).await,
            Session::Lite(_, group) => group.insert(p, extras).await,
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Session::Pg(tx) => tx.commit().await?,
            Session::Lite(..) => {}
        }
        Ok(())
    }
}

impl Store {
    /// The API's pool (16 connections on Postgres, 4 on SQLite), schema migrated.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_sized(url, None).await
    }

    /// A pool of its own of `connections` (the settlement lanes use one, so minting traffic
    /// never makes settlement wait for a connection, nor the other way round); `None` for the
    /// API's default size. Migrates the schema like [`Store::connect`] (idempotent).
    pub async fn connect_sized(url: &str, connections: Option<u32>) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Corrupt(format!(
                "unsupported database url (sqlite:// or postgres://): {}",
                redact(url)
            )));
        };
        let pool = open_pool(
            url,
            backend,
            connections.unwrap_or(match backend {
                // WAL: readers run beside the one writer. An acceptance holds its
                // connection through its chain reads (RPC), so more than a few are useful.
                Backend::Sqlite => 16,
                Backend::Postgres => 16,
            }),
        )
        .await?;
        let store = Store {
            pool,
            backend,
            url: url.into(),
            group: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            // Replicas starting together migrate one at a time.
            sqlx::query("SELECT pg_advisory_lock(4020402)")
                .execute(&mut *conn)
                .await?;
        }
        let result = async {
            conn.execute("CREATE TABLE IF NOT EXISTS x402_schema (version BIGINT PRIMARY KEY)")
                .await?;
            let done: Vec<i64> = sqlx::query("SELECT version FROM x402_schema")
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>("version"))
                .collect::<Result<_, _>>()?;
            for (version, stmts) in migrations(self.backend) {
                if done.contains(&version) {
                    continue;
                }
                let mut tx = conn.begin().await?;
                for s in stmts {
                    tx.execute(s.as_str()).await?;
                }
                sqlx::query("INSERT INTO x402_schema (version) VALUES ($1)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                tracing::info!(version, "database migrated");
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if self.backend == Backend::Postgres {
            let _ = sqlx::query("SELECT pg_advisory_unlock(4020402)")
                .execute(&mut *conn)
                .await;
        }
        result.map_err(Into::into)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// Opens the token path's session, locking `lock_key` (a payer hash) on Postgres.
    pub async fn session(&self, lock_key: i64) -> Result<Session, StoreError> {
        match self.backend {
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(lock_key)
                    .execute(&mut *tx)
                    .await?;
                Ok(Session::Pg(tx))
            }
            Backend::Sqlite => {
                // The writer has a connection of its own: acceptances hold theirs while they
                // wait for it, so one taken from their pool could be one none gives back.
                let group = self
                    .group
                    .get_or_try_init(|| async {
                        let pool = open_pool(&self.url, Backend::Sqlite, 1).await?;
                        Ok::<_, StoreError>(group_commit::GroupCommit::start(pool))
                    })
                    .await?
                    .clone();
                Ok(Session::Lite(self.pool.acquire().await?, group))
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<PaymentRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLS} FROM x402_payments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(payment_from_row).transpose()
    }

    /// Pending payments of a chain due for an attempt by `signer`'s lane, oldest first (so one
    /// payer's permits come in nonce order: they were accepted in that order). A permit is only
    /// for the lane of its spender: another wallet's `transferFrom` has no allowance (replicas
    /// with different wallets on one database). ERC-3009 can be submitted by any wallet.
    /// `contract`: the lane's batch settlement contract, the other spender its permits may name.
    /// `share`: with a signer pool, the lane's part of the payments any wallet may settle
    /// (a permit naming this wallet is always its own).
    pub(crate) async fn due_pending(
        &self,
        chain_id: u64,
        signer: Address,
        contract: Option<Address>,
        now_ms: i64,
        limit: i64,
        share: LaneShare,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {PAYMENT_COLS} FROM x402_payments WHERE chain_id = $1 AND state = 'pending' AND next_attempt_ms <= $2 AND held_until_ms IS NULL
             AND (scheme <> 'permit' OR spender IS NULL OR spender = $4 OR spender = $5)
             AND ($6 <= 1 OR lane_slot % $6 = $7 OR (scheme = 'permit' AND spender = $4) OR (created_ms <= $8 AND next_attempt_ms <= $8))
             ORDER BY seq LIMIT $3"
        ))
        .bind(chain_id as i64)
        .bind(now_ms)
        .bind(limit)
        .bind(hexa(signer))
        .bind(hexa(contract.unwrap_or(signer)))
        .bind(share.of.max(1) as i64)
        .bind(share.index as i64)
        .bind(share.steal_before_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(payment_from_row).collect()
    }

    /// Permit nonces >= `from` of a payer's permits this settler has settled, or submitted in
    /// a transaction of `signer`: they consume their nonces ahead of later ones. A permit in
    /// flight in another wallet's transaction does not count: that wallet's transactions are
    /// mined in their own order, so a later nonce signed here could run first and fail.
    pub(crate) async fn submitted_permit_nonces(
        &self,
        chain_id: u64,
        asset: Address,
        payer: Address,
        from: U256,
        signer: Address,
    ) -> Result<Vec<U256>, StoreError> {
        // Nonces are stored as fixed-width lowercase hex: text order is numeric order.
        let rows = sqlx::query("SELECT nonce FROM x402_payments WHERE chain_id = $1 AND asset = $2 AND payer = $3 AND scheme = 'permit' AND nonce >= $4
             AND (state = 'settled' OR (state = 'submitted' AND EXISTS (SELECT 1 FROM x402_txs t WHERE t.hash = x402_payments.transfer_tx AND t.signer = $5)))")
            .bind(chain_id as i64)
            .bind(hexa(asset))
            .bind(hexa(payer))
            .bind(hex32(B256::from(from)))
            .bind(hexa(signer))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| col::<B256>(r, "nonce").map(|b| U256::from_be_bytes(b.0)))
            .collect()
    }

    pub(crate) async fn defer(
        &self,
        id: &str,
        next_attempt_ms: i64,
        note: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE x402_payments SET attempts = attempts + 1, next_attempt_ms = $2, error = $3, updated_ms = $4 WHERE id = $1 AND state = 'pending'")
            .bind(id)
            .bind(next_attempt_ms)
            .bind(note)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a payment that never reached the chain as `failed`. `release_key` frees its
    /// single-use key when the signature can never be used again (deadline passed), so the
    /// payer can sign that permit nonce anew.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) async fn fail_pending(
        &self,
        id: &str,
        reason: &str,
        release_key: bool,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.fail_pending_with_cause(id, reason, release_key, None, now_ms)
            .await
    }

    /// [`Store::fail_pending`] recording why: `cause` = (cause code, payer caused it).
    pub(crate) async fn fail_pending_with_cause(
        &self,
        id: &str,
        reason: &str,
        release_key: bool,
        cause: Option<(&str, bool)>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let q = if release_key {
            "UPDATE x402_payments SET state = 'failed', error = $2, updated_ms = $3, failed_ms = $3, fail_cause = $4, payer_fault = $5, use_key = 'released:' || id WHERE id = $1 AND state = 'pending'"
        } else {
            "UPDATE x402_payments SET state = 'failed', error = $2, updated_ms = $3, failed_ms = $3, fail_cause = $4, payer_fault = $5 WHERE id = $1 AND state = 'pending'"
        };
        let (fail_cause, payer_fault) = fail_cols(cause);
        let r = sqlx::query(q)
            .bind(id)
            .bind(reason)
            .bind(now_ms)
            .bind(fail_cause)
            .bind(payer_fault)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Stores signed transactions and moves the payment to `submitted`, atomically.
    /// Returns false (and stores nothing) if the payment was no longer pending.
    pub(crate) async fn record_submission(
        &self,
        payment_id: &str,
        txs: &[TxRow],
        permit_tx: Option<B256>,
        transfer_tx: B256,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Write first: SQLite takes the write lock at once (no read-to-write upgrade).
        let moved = sqlx::query("UPDATE x402_payments SET state = 'submitted', permit_tx = $2, transfer_tx = $3, error = NULL, updated_ms = $4 WHERE id = $1 AND state = 'pending'")
            .bind(payment_id)
            .bind(permit_tx.map(hex32))
            .bind(hex32(transfer_tx))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        for t in txs {
            sqlx::query("INSERT INTO x402_txs (chain_id, signer, nonce, payment_id, kind, hash, raw, state, last_broadcast_ms, created_ms, updated_ms, max_fee, priority_fee, signed_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, 'sent', $8, $8, $8, $9, $10, $8)")
                .bind(t.chain_id as i64)
                .bind(hexa(t.signer))
                .bind(t.nonce as i64)
                .bind(&t.payment_id)
                .bind(&t.kind)
                .bind(hex32(t.hash))
                .bind(alloy::primitives::hex::encode(&t.raw))
                .bind(now_ms)
                .bind(t.max_fee.to_string())
                .bind(t.priority_fee.to_string())
                .execute(&mut *tx)
                .await?;
            insert_attempt(&mut tx, t, now_ms).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Stores a signed batch transaction (`tx.payment_id` = the batch id) and moves every
    /// item's payment to `submitted` with it as `transfer_tx` (and `permit_tx` when the item
    /// runs its permit), atomically. `items`: (payment id, with permit) in item order.
    /// Returns false (and stores nothing) if any of them was no longer pending.
    pub(crate) async fn record_batch(
        &self,
        tx_row: &TxRow,
        items: &[(String, bool)],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let hash = hex32(tx_row.hash);
        // One UPDATE per permit column value (items running their permit record the batch as
        // `permit_tx` too) and one multi-row INSERT: a batch costs a few statements, not a few
        // per item. Ids are distinct, so every item moved <=> the counts add up to the items.
        let mut moved = 0u64;
        for with_permit in [true, false] {
            let ids: Vec<&str> = items
                .iter()
                .filter(|(_, w)| *w == with_permit)
                .map(|(id, _)| id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let sql = format!("UPDATE x402_payments SET state = 'submitted', permit_tx = $1, transfer_tx = $2, error = NULL, updated_ms = $3 WHERE state = 'pending' AND id IN ({})", placeholders(4, ids.len()));
            let mut q = sqlx::query(&sql)
                .bind(with_permit.then(|| hash.clone()))
                .bind(&hash)
                .bind(now_ms);
            for id in &ids {
                q = q.bind(*id);
            }
            moved += q.execute(&mut *tx).await?.rows_affected();
        }
        if moved != items.len() as u64 {
            tx.rollback().await?;
            return Ok(false);
        }
        if !items.is_empty() {
            let rows: Vec<String> = (0..items.len())
                .map(|i| format!("({})", placeholders(1 + 4 * i, 4)))
                .collect();
            let sql = format!(
                "INSERT INTO x402_batch_items (batch_id, idx, payment_id, with_permit) VALUES {}",
                rows.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (i, (id, with_permit)) in items.iter().enumerate() {
                q = q
                    .bind(&tx_row.payment_id)
                    .bind(i as i64)
                    .bind(id)
                    .bind(i64::from(*with_permit));
            }
            q.execute(&mut *tx).await?;
        }
        let t = tx_row;
        sqlx::query("INSERT INTO x402_txs (chain_id, signer, nonce, payment_id, kind, hash, raw, state, last_broadcast_ms, created_ms, updated_ms, max_fee, priority_fee, signed_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, 'sent', $8, $8, $8, $9, $10, $8)")
            .bind(t.chain_id as i64)
            .bind(hexa(t.signer))
            .bind(t.nonce as i64)
            .bind(&t.payment_id)
            .bind(&t.kind)
            .bind(&hash)
            .bind(alloy::primitives::hex::encode(&t.raw))
            .bind(now_ms)
            .bind(t.max_fee.to_string())
            .bind(t.priority_fee.to_string())
            .execute(&mut *tx)
            .await?;
        insert_attempt(&mut tx, t, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A batch's items in item order: (payment id, with permit).
    pub(crate) async fn batch_items(
        &self,
        batch_id: &str,
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let rows = sqlx::query(
            "SELECT payment_id, with_permit FROM x402_batch_items WHERE batch_id = $1 ORDER BY idx",
        )
        .bind(batch_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("payment_id")?;
                let p: i64 = r.try_get("with_permit")?;
                Ok((id, p != 0))
            })
            .collect()
    }

    /// Every attempt (hash) of every batch transaction that carried `payment_id`, with its item
    /// index there: where a re-queued payment's funds may have moved after all.
    pub(crate) async fn batch_attempts_of(
        &self,
        payment_id: &str,
    ) -> Result<Vec<(B256, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.hash AS hash, b.idx AS idx FROM x402_batch_items b JOIN x402_txs t ON t.payment_id = b.batch_id JOIN x402_tx_attempts a ON a.chain_id = t.chain_id AND a.signer = t.signer AND a.nonce = t.nonce AND a.payment_id = t.payment_id WHERE b.payment_id = $1 ORDER BY a.created_ms, a.hash",
        )
        .bind(payment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let idx: i64 = r.try_get("idx")?;
                Ok((col::<B256>(r, "hash")?, u64::try_from(idx).unwrap_or(0)))
            })
            .collect()
    }

    /// The payments of `ids` that exist, in no particular order (one query for a batch's items).
    pub(crate) async fn get_many(&self, ids: &[String]) -> Result<Vec<PaymentRow>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        // Chunks keep the statement under every backend's bind-parameter limit.
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT {PAYMENT_COLS} FROM x402_payments WHERE id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(payment_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Ends the judging of a mined batch transaction in ONE DB transaction: every payment of
    /// `settled` still `submitted` becomes `settled` (block, `gas_each` charged), and the batch
    /// transaction gets its receipt (`success`, `block`), so it is closed with its last items.
    /// Returns the ids moved (the others were judged before, e.g. before a restart).
    pub(crate) async fn settle_batch(
        &self,
        hash: B256,
        success: bool,
        block: Option<u64>,
        settled: &[String],
        gas_each: u64,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut moved = Vec::with_capacity(settled.len());
        for chunk in settled.chunks(500) {
            let sql = format!("UPDATE x402_payments SET state = 'settled', block_number = $1, error = NULL, updated_ms = $2, settled_ms = $2, failed_ms = NULL, fail_cause = NULL, payer_fault = 0, gas_spent = gas_spent + $3 WHERE state = 'submitted' AND id IN ({}) RETURNING id", placeholders(4, chunk.len()));
            let mut q = sqlx::query(&sql)
                .bind(block.map(|b| b as i64))
                .bind(now_ms)
                .bind(gas_each as i64);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                moved.push(row.try_get::<String, _>("id")?);
            }
        }
        record_receipts(&mut tx, &[(hash, success, block.unwrap_or(0))], &[], now_ms).await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// How many transactions of a signer wait for a receipt (the lane's in-flight bound).
    pub(crate) async fn in_flight(
        &self,
        chain_id: u64,
        signer: Address,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM x402_txs WHERE chain_id = $1 AND signer = $2 AND state = 'sent'")
            .bind(chain_id as i64)
            .bind(hexa(signer))
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        Ok(n.max(0) as u64)
    }

    /// Closes a batch transaction once every item is judged: `receipt` (success, block) when
    /// mined, `None` when it can never be mined (dropped).
    pub(crate) async fn close_tx(
        &self,
        hash: B256,
        receipt: Option<(bool, u64)>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        match receipt {
            Some((ok, b)) => record_receipts(&mut tx, &[(hash, ok, b)], &[], now_ms).await?,
            None => record_receipts(&mut tx, &[], &[hash], now_ms).await?,
        }
        tx.commit().await?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) async fn txs_of(&self, payment_id: &str) -> Result<Vec<TxRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TX_COLS} FROM x402_txs WHERE payment_id = $1 ORDER BY nonce"
        ))
        .bind(payment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tx_from_row).collect()
    }

    /// Transactions of a signer still waiting for a receipt, in nonce order.
    pub(crate) async fn unconfirmed_txs(
        &self,
        chain_id: u64,
        signer: Address,
    ) -> Result<Vec<TxRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {TX_COLS} FROM x402_txs WHERE chain_id = $1 AND signer = $2 AND state = 'sent' ORDER BY nonce"))
            .bind(chain_id as i64)
            .bind(hexa(signer))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tx_from_row).collect()
    }

    pub(crate) async fn max_tx_nonce(
        &self,
        chain_id: u64,
        signer: Address,
    ) -> Result<Option<u64>, StoreError> {
        let row =
            sqlx::query("SELECT MAX(nonce) AS n FROM x402_txs WHERE chain_id = $1 AND signer = $2")
                .bind(chain_id as i64)
                .bind(hexa(signer))
                .fetch_one(&self.pool)
                .await?;
        let n: Option<i64> = row.try_get("n")?;
        Ok(n.map(|n| n as u64))
    }

    pub(crate) async fn mark_broadcast(&self, hash: B256, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE x402_txs SET last_broadcast_ms = $2 WHERE hash = $1")
            .bind(hex32(hash))
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the receipts of a payment's transactions and its final state, atomically.
    /// `receipts`: (tx hash, success, block); `dropped`: transactions that can never be mined
    /// (their wallet nonce was used by another transaction). Returns false if it was not `submitted`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn finish(
        &self,
        payment_id: &str,
        receipts: &[(B256, bool, u64)],
        dropped: &[B256],
        settled: bool,
        block: Option<u64>,
        error: Option<&str>,
        cause: Option<(&str, bool)>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (fail_cause, payer_fault) = fail_cols(cause);
        let moved = sqlx::query("UPDATE x402_payments SET state = $2, block_number = $3, error = $4, updated_ms = $5, settled_ms = $6, failed_ms = $7, fail_cause = $8, payer_fault = $9 WHERE id = $1 AND state = 'submitted'")
            .bind(payment_id)
            .bind(if settled { "settled" } else { "failed" })
            .bind(block.map(|b| b as i64))
            .bind(error.map(str::to_string))
            .bind(now_ms)
            .bind(if settled { Some(now_ms) } else { None })
            .bind(if settled { None } else { Some(now_ms) })
            .bind(fail_cause)
            .bind(payer_fault)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        record_receipts(&mut tx, receipts, dropped, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Moves a `submitted` payment back to `pending` so the lane re-checks it on chain and signs
    /// its settlement again, with fresh wallet nonces. Only for payments whose stored
    /// transactions can no longer move the funds: some were `dropped` (nonce used by another
    /// transaction), the others are mined (`receipts`) and did not transfer. Atomic; returns
    /// false if the payment was not `submitted`.
    pub(crate) async fn requeue(
        &self,
        payment_id: &str,
        receipts: &[(B256, bool, u64)],
        dropped: &[B256],
        note: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query("UPDATE x402_payments SET state = 'pending', permit_tx = NULL, transfer_tx = NULL, error = $2, attempts = attempts + 1, next_attempt_ms = $3, updated_ms = $3 WHERE id = $1 AND state = 'submitted'")
            .bind(payment_id)
            .bind(note)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        record_receipts(&mut tx, receipts, dropped, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A payment executed on chain by a transaction this settler did not send (front-run, or
    /// submitted by the payer): `settled` with THAT transaction, from `pending` or
    /// `submitted` (its own transactions then get their `receipts` / `dropped`). Atomic;
    /// false if it was in neither state.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn settle_by(
        &self,
        payment_id: &str,
        transfer_tx: B256,
        block: u64,
        note: &str,
        receipts: &[(B256, bool, u64)],
        dropped: &[B256],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query("UPDATE x402_payments SET state = 'settled', transfer_tx = $2, block_number = $3, error = $4, updated_ms = $5, settled_ms = $5 WHERE id = $1 AND state IN ('pending', 'submitted')")
            .bind(payment_id)
            .bind(hex32(transfer_tx))
            .bind(block as i64)
            .bind(note)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        record_receipts(&mut tx, receipts, dropped, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Replace-by-fee: `new` (same wallet nonce, same call, higher fees) becomes the current
    /// attempt of the transaction whose current attempt is `old`; both stay in
    /// `x402_tx_attempts`. Stored before it is broadcast. False if `old` is no longer current
    /// and unconfirmed.
    pub(crate) async fn replace_tx(
        &self,
        old: B256,
        new: &TxRow,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query("UPDATE x402_txs SET hash = $2, raw = $3, max_fee = $4, priority_fee = $5, signed_ms = $6, last_broadcast_ms = $6, updated_ms = $6 WHERE hash = $1 AND state = 'sent'")
            .bind(hex32(old))
            .bind(hex32(new.hash))
            .bind(alloy::primitives::hex::encode(&new.raw))
            .bind(new.max_fee.to_string())
            .bind(new.priority_fee.to_string())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_attempt(&mut tx, new, now_ms).await?;
        repoint_payment(&mut tx, &new.payment_id, old, new.hash).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every attempt's hash at one wallet nonce (oldest first).
    pub(crate) async fn attempt_hashes(
        &self,
        chain_id: u64,
        signer: Address,
        nonce: u64,
    ) -> Result<Vec<B256>, StoreError> {
        let rows = sqlx::query("SELECT hash FROM x402_tx_attempts WHERE chain_id = $1 AND signer = $2 AND nonce = $3 ORDER BY created_ms, hash")
            .bind(chain_id as i64)
            .bind(hexa(signer))
            .bind(nonce as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| col::<B256>(r, "hash")).collect()
    }

    /// An earlier attempt `mined` (not the current one, `current`) is the one the chain
    /// executed: it becomes the transaction's current attempt (and the payment's hash).
    pub(crate) async fn adopt_attempt(
        &self,
        payment_id: &str,
        current: B256,
        mined: B256,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE x402_txs SET hash = $2, raw = (SELECT raw FROM x402_tx_attempts WHERE hash = $2), updated_ms = $3 WHERE hash = $1")
            .bind(hex32(current))
            .bind(hex32(mined))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        repoint_payment(&mut tx, payment_id, current, mined).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Transactions signed (wallet nonces used) and gas spent so far for a payment.
    pub(crate) async fn payment_spend(&self, payment_id: &str) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query("SELECT (SELECT COUNT(*) FROM x402_txs WHERE payment_id = $1) + (SELECT COUNT(*) FROM x402_batch_items WHERE payment_id = $1) AS n, (SELECT gas_spent FROM x402_payments WHERE id = $1) AS g")
            .bind(payment_id)
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        let g: Option<i64> = row.try_get("g")?;
        Ok((n.max(0) as u64, g.unwrap_or(0).max(0) as u64))
    }

    pub(crate) async fn charge_gas(&self, payment_id: &str, gas: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE x402_payments SET gas_spent = gas_spent + $2 WHERE id = $1")
            .bind(payment_id)
            .bind(gas as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `x402-settler unblock`: clears the payer-caused failures of `payer` (on one network or
    /// all) for payer blocking, and records it. Returns how many were cleared.
    pub async fn unblock(
        &self,
        payer: Address,
        chain_id: Option<u64>,
        note: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE x402_payments SET unblocked_ms = $3 WHERE payer = $1 AND payer_fault = 1 AND state = 'failed' AND unblocked_ms IS NULL AND ($2 < 0 OR chain_id = $2)")
            .bind(hexa(payer))
            .bind(chain_id.map(|c| c as i64).unwrap_or(-1))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO x402_unblocks (payer, chain_id, cleared, at_ms, note) VALUES ($1, $2, $3, $4, $5)")
            .bind(hexa(payer))
            .bind(chain_id.map(|c| c as i64))
            .bind(r.rows_affected() as i64)
            .bind(now_ms)
            .bind(note)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    /// Takes or renews the lease `name` for `owner`; true if `owner` holds it now.
    pub(crate) async fn lease(
        &self,
        name: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        sqlx::query("INSERT INTO x402_leases (name, owner, until_ms) VALUES ($1, $2, 0) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        let r = sqlx::query("UPDATE x402_leases SET owner = $2, until_ms = $3 WHERE name = $1 AND (owner = $2 OR until_ms < $4)")
            .bind(name)
            .bind(owner)
            .bind(now_ms + ttl_ms)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub(crate) async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE x402_leases SET until_ms = 0 WHERE name = $1 AND owner = $2")
            .bind(name)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The revocation list: (id, created_ms) of the `failed` payments created at or after
    /// `since_ms`, newest first, at most `limit` (index `x402_payments_revoked`).
    pub(crate) async fn failed_since(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT id, created_ms FROM x402_payments WHERE state = 'failed' AND created_ms >= $1 ORDER BY created_ms DESC LIMIT $2")
            .bind(since_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("id")?,
                    r.try_get::<i64, _>("created_ms")?,
                ))
            })
            .collect()
    }

    /// Number of payments per state (for the metrics gauge).
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM x402_payments GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("state")?, r.try_get::<i64, _>("n")?)))
            .collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn repoint_payment(
    tx: &mut Transaction<'static, Any>,
    payment_id: &str,
    old: B256,
    new: B256,
) -> Result<(), StoreError> {
    for col in ["transfer_tx", "permit_tx"] {
        sqlx::query(&format!(
            "UPDATE x402_payments SET {col} = $3 WHERE id = $1 AND {col} = $2"
        ))
        .bind(payment_id)
        .bind(hex32(old))
        .bind(hex32(new))
        .execute(&mut **tx)
        .await?;
        // A batch transaction (`payment_id` is the batch id): its items' payments.
        sqlx::query(&format!(
            "UPDATE x402_payments SET {col} = $3 WHERE {col} = $2 AND id IN (SELECT payment_id FROM x402_batch_items WHERE batch_id = $1)"
        ))
        .bind(payment_id)
        .bind(hex32(old))
        .bind(hex32(new))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A pool of `connections` on `url`; SQLite connections in WAL mode with a busy timeout and
/// `synchronous = FULL`.
async fn open_pool(url: &str, backend: Backend, connections: u32) -> Result<AnyPool, StoreError> {
    let opts = AnyConnectOptions::from_str(url)?;
    let pool = AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    // FULL: a commit is on disk before it returns (WAL fsync at every
                    // commit), so a token never exists without its durable payment row.
                    conn.execute("PRAGMA synchronous = FULL").await?;
                }
                Ok(())
            })
        })
        .connect_with(opts)
        .await?;
    Ok(pool)
}

/// The INSERT of an accepted payment on `conn` (a session's transaction, or the SQLite
/// writer's group).
pub(crate) async fn insert_payment(
    conn: &mut AnyConnection,
    p: &NewPayment,
    extras: &AcceptExtras,
) -> Result<(), StoreError> {
    let token = extras.token;
    let res = sqlx::query(
        "INSERT INTO x402_payments (id, use_key, scheme, chain_id, asset, payer, pay_to, spender, value, price, nonce, valid_after, deadline, sig_v, sig_r, sig_s, route, resource, format, state, attempts, next_attempt_ms, created_ms, updated_ms, token_iat, token_exp, payment_id, held_until_ms, lane_slot)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, 'pending', 0, 0, $20, $20, $21, $22, $23, $24, $25)",
    )
    .bind(&p.id)
    .bind(p.use_key())
    .bind(p.scheme.as_str())
    .bind(p.network.chain_id as i64)
    .bind(hexa(p.asset))
    .bind(hexa(p.payer))
    .bind(hexa(p.pay_to))
    .bind(p.spender.map(hexa))
    .bind(p.value.to_string())
    .bind(p.price.to_string())
    .bind(hex32(p.nonce))
    .bind(p.valid_after.to_string())
    .bind(p.deadline.to_string())
    .bind(p.sig.v as i64)
    .bind(hex32(p.sig.r))
    .bind(hex32(p.sig.s))
    .bind(&p.route)
    .bind(p.resource.clone())
    .bind(&p.format)
    .bind(p.created_ms)
    .bind(token.map(|t| t.0))
    .bind(token.map(|t| t.1))
    .bind(extras.payment_id.clone())
    .bind(extras.held_until_ms)
    .bind(lane_slot(p))
    .execute(conn)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate),
        Err(e) => Err(e.into()),
    }
}

async fn insert_attempt(
    tx: &mut Transaction<'static, Any>,
    t: &TxRow,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO x402_tx_attempts (hash, chain_id, signer, nonce, payment_id, raw, max_fee, priority_fee, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(hex32(t.hash))
        .bind(t.chain_id as i64)
        .bind(hexa(t.signer))
        .bind(t.nonce as i64)
        .bind(&t.payment_id)
        .bind(alloy::primitives::hex::encode(&t.raw))
        .bind(t.max_fee.to_string())
        .bind(t.priority_fee.to_string())
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// [`Session::open_total`]: values of at most this many decimal digits are summed in SQL ...
const SQL_SUM_DIGITS: usize = 12;
/// ... when there are at most this many of them (each < 10^12: the sum < 9.2 * 10^18 fits i64).
const SQL_SUM_MAX_ROWS: i64 = 9_000_000;

/// `$first, $first+1, ...` (n of them): the bind placeholders of an `IN (...)` list or a row.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The failure columns: (cause code, payer caused it).
fn fail_cols(cause: Option<(&str, bool)>) -> (Option<String>, i64) {
    match cause {
        Some((c, payer)) => (Some(c.to_string()), i64::from(payer)),
        None => (None, 0),
    }
}

async fn record_receipts(
    tx: &mut Transaction<'static, Any>,
    receipts: &[(B256, bool, u64)],
    dropped: &[B256],
    now_ms: i64,
) -> Result<(), StoreError> {
    for (hash, ok, b) in receipts {
        sqlx::query("UPDATE x402_txs SET state = 'mined', status = $2, block_number = $3, updated_ms = $4 WHERE hash = $1")
            .bind(hex32(*hash))
            .bind(if *ok { 1i64 } else { 0i64 })
            .bind(*b as i64)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
    }
    for hash in dropped {
        sqlx::query("UPDATE x402_txs SET state = 'dropped', updated_ms = $2 WHERE hash = $1")
            .bind(hex32(*hash))
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of one: every due payment.
    const ALL: LaneShare = LaneShare {
        of: 1,
        index: 0,
        steal_before_ms: 0,
    };

    pub(crate) fn sample(id: &str, nonce: u8) -> NewPayment {
        NewPayment {
            id: id.into(),
            scheme: Scheme::Permit,
            network: Network::eip155(31337),
            asset: Address::repeat_byte(0xaa),
            payer: Address::repeat_byte(0x11),
            pay_to: Address::repeat_byte(0x22),
            spender: Some(Address::repeat_byte(0x33)),
            value: U256::from(500_000u64),
            price: U256::from(500_000u64),
            nonce: B256::from(U256::from(nonce)),
            valid_after: U256::ZERO,
            deadline: U256::from(1_900_000_000u64),
            sig: Sig {
                r: B256::repeat_byte(1),
                s: B256::repeat_byte(2),
                v: 27,
            },
            route: "weather".into(),
            resource: None,
            format: "seed".into(),
            created_ms: 1_000,
        }
    }

    async fn insert(store: &Store, p: &NewPayment) {
        let mut s = store.session(1).await.unwrap();
        s.insert(p).await.unwrap();
        s.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_signer_pool_splits_due_payments_by_slot_and_takes_the_overdue_of_others() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let wallets = [Address::repeat_byte(0x33), Address::repeat_byte(0x44)];
        let mut slots = Vec::new();
        for i in 0..40u8 {
            let mut p = sample(&format!("e{i}"), i);
            p.scheme = Scheme::Exact;
            p.spender = None;
            p.nonce = B256::repeat_byte(i);
            p.created_ms = 5_000;
            slots.push((p.id.clone(), lane_slot(&p)));
            insert(&store, &p).await;
        }
        // One payer's permits: one slot, so one wallet's lane, in nonce order.
        for n in 0..3u8 {
            let mut p = sample(&format!("p{n}"), n);
            p.spender = None;
            p.payer = Address::repeat_byte(0x77);
            p.created_ms = 5_000;
            slots.push((p.id.clone(), lane_slot(&p)));
            insert(&store, &p).await;
        }
        // A permit naming wallet 0x44 goes to that wallet whatever its slot.
        let mut named = sample("named", 9);
        named.payer = Address::repeat_byte(0x78);
        named.spender = Some(wallets[1]);
        named.created_ms = 5_000;
        insert(&store, &named).await;
        let due = |index: u64, steal_before_ms: i64| {
            let store = store.clone();
            async move {
                let share = LaneShare {
                    of: 2,
                    index,
                    steal_before_ms,
                };
                store
                    .due_pending(31337, wallets[index as usize], None, 10_000, 100, share)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.p.id)
                    .collect::<Vec<_>>()
            }
        };
        let (a, b) = (due(0, 0).await, due(1, 0).await);
        for (id, slot) in &slots {
            let want = if slot % 2 == 0 { &a } else { &b };
            let other = if slot % 2 == 0 { &b } else { &a };
            assert!(want.contains(id) && !other.contains(id), "{id} slot {slot}");
        }
        assert!(b.contains(&"named".to_string()) && !a.contains(&"named".to_string()));
        assert_eq!(a.len() + b.len(), 44, "every payment in one share");
        assert!(!a.is_empty() && !b.is_empty(), "both wallets get a share");
        let permits: Vec<&String> = a.iter().chain(&b).filter(|i| i.starts_with('p')).collect();
        assert!(
            a.iter().filter(|i| i.starts_with('p')).count() == 3
                || b.iter().filter(|i| i.starts_with('p')).count() == 3,
            "one payer's permits in one share: {permits:?}"
        );
        // Due since before the steal line: wallet 0 takes wallet 1's share too (not the permit
        // naming wallet 1).
        let stolen = due(0, 6_000).await;
        assert_eq!(stolen.len(), 43, "{stolen:?}");
        assert!(!stolen.contains(&"named".to_string()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sqlite_inserts_commit_in_groups_and_a_duplicate_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let mut set = tokio::task::JoinSet::new();
        // 40 payments, one of them sent twice (two use the same single-use key).
        for i in 0..41u8 {
            let store = store.clone();
            set.spawn(async move {
                let mut p = sample(&format!("g{i}"), i.min(39));
                p.payer = Address::repeat_byte(0x50);
                let mut s = store.session(i64::from(i)).await.unwrap();
                let r = s.insert_accepted(&p, &AcceptExtras::default()).await;
                s.commit().await.unwrap();
                r
            });
        }
        let mut dup = 0;
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(()) => {}
                Err(StoreError::Duplicate) => dup += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(dup, 1, "the second use of the key alone is refused");
        // Every other one is durable: a new connection sees 40 rows.
        let again = Store::connect(&url).await.unwrap();
        let counts = again.count_by_state().await.unwrap();
        assert_eq!(counts, vec![("pending".to_string(), 40)]);
    }

    #[tokio::test]
    async fn sqlite_round_trip_unique_key_and_submission() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        // Migrations are idempotent.
        let store2 = Store::connect(&url).await.unwrap();
        let mut s = store.session(1).await.unwrap();
        s.insert(&sample("a", 0)).await.unwrap();
        assert!(matches!(
            s.insert(&sample("b", 0)).await,
            Err(StoreError::Duplicate)
        ));
        s.insert(&sample("c", 1)).await.unwrap();
        assert!(s.use_key_exists(&sample("x", 1).use_key()).await.unwrap());
        assert_eq!(
            s.open_payments(
                Network::eip155(31337),
                Address::repeat_byte(0xaa),
                Address::repeat_byte(0x11)
            )
            .await
            .unwrap()
            .len(),
            2
        );
        s.commit().await.unwrap();
        let row = store2.get("a").await.unwrap().unwrap();
        assert_eq!(row.state, SettlementState::Pending);
        assert_eq!(row.p.value, U256::from(500_000u64));
        assert_eq!(row.p.sig.s, B256::repeat_byte(2));
        let due = store
            .due_pending(31337, Address::repeat_byte(0x33), None, 10, 10, ALL)
            .await
            .unwrap();
        assert!(
            store
                .due_pending(31337, Address::repeat_byte(0x44), None, 10, 10, ALL)
                .await
                .unwrap()
                .is_empty(),
            "another wallet's lane takes no permit naming 0x33.."
        );
        assert_eq!(
            due.iter().map(|r| r.p.id.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        let tx = TxRow {
            chain_id: 31337,
            signer: Address::repeat_byte(5),
            nonce: 7,
            payment_id: "a".into(),
            kind: "transfer_from".into(),
            hash: B256::repeat_byte(9),
            raw: vec![1, 2, 3],
            state: "sent".into(),
            last_broadcast_ms: 0,
            ..Default::default()
        };
        assert!(store
            .record_submission("a", std::slice::from_ref(&tx), None, tx.hash, 5)
            .await
            .unwrap());
        assert!(!store
            .record_submission("a", std::slice::from_ref(&tx), None, tx.hash, 5)
            .await
            .unwrap());
        assert_eq!(
            store
                .max_tx_nonce(31337, Address::repeat_byte(5))
                .await
                .unwrap(),
            Some(7)
        );
        assert_eq!(
            store
                .unconfirmed_txs(31337, Address::repeat_byte(5))
                .await
                .unwrap()[0]
                .raw,
            vec![1, 2, 3]
        );
        let in_flight_for = |wallet: u8| {
            let store = store.clone();
            async move {
                store
                    .submitted_permit_nonces(
                        31337,
                        Address::repeat_byte(0xaa),
                        Address::repeat_byte(0x11),
                        U256::ZERO,
                        Address::repeat_byte(wallet),
                    )
                    .await
                    .unwrap()
            }
        };
        assert_eq!(in_flight_for(5).await, vec![U256::ZERO]);
        assert!(
            in_flight_for(6).await.is_empty(),
            "in flight in another wallet's transaction: not counted for this wallet's lane"
        );
        assert!(store
            .submitted_permit_nonces(
                31337,
                Address::repeat_byte(0xaa),
                Address::repeat_byte(0x11),
                U256::from(1),
                Address::repeat_byte(5)
            )
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .finish(
                "a",
                &[(tx.hash, true, 12)],
                &[],
                true,
                Some(12),
                None,
                None,
                9
            )
            .await
            .unwrap());
        assert!(!store
            .finish(
                "a",
                &[(tx.hash, true, 12)],
                &[],
                true,
                Some(12),
                None,
                None,
                9
            )
            .await
            .unwrap());
        let st = store.get("a").await.unwrap().unwrap().status();
        assert_eq!(st.state, SettlementState::Settled);
        assert_eq!(st.block_number, Some(12));
        assert!(store
            .unconfirmed_txs(31337, Address::repeat_byte(5))
            .await
            .unwrap()
            .is_empty());
        // Released key: the nonce can be used again.
        assert!(store
            .fail_pending("c", "deadline passed", true, 10)
            .await
            .unwrap());
        let mut s = store.session(1).await.unwrap();
        s.insert(&sample("d", 1)).await.unwrap();
        // Leases.
        assert!(store.lease("lane", "me", 1000, 0).await.unwrap());
        assert!(!store.lease("lane", "you", 1000, 500).await.unwrap());
        assert!(store.lease("lane", "you", 1000, 1500).await.unwrap());
    }

    #[tokio::test]
    async fn requeue_returns_a_submitted_payment_to_pending_and_drops_its_dead_txs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("t.db").display()
        ))
        .await
        .unwrap();
        let mut s = store.session(1).await.unwrap();
        s.insert(&sample("a", 0)).await.unwrap();
        let signer = Address::repeat_byte(5);
        let tx = |nonce: u64, kind: &str, h: u8| TxRow {
            chain_id: 31337,
            signer,
            nonce,
            payment_id: "a".into(),
            kind: kind.into(),
            hash: B256::repeat_byte(h),
            raw: vec![h],
            state: "sent".into(),
            last_broadcast_ms: 0,
            ..Default::default()
        };
        let txs = [tx(0, "permit", 1), tx(1, "transfer_from", 2)];
        assert!(store
            .record_submission("a", &txs, Some(txs[0].hash), txs[1].hash, 5)
            .await
            .unwrap());
        // The permit lost its nonce; the transfer reverted.
        assert!(store
            .requeue(
                "a",
                &[(txs[1].hash, false, 3)],
                &[txs[0].hash],
                "nonce taken",
                6
            )
            .await
            .unwrap());
        assert!(
            !store.requeue("a", &[], &[], "again", 7).await.unwrap(),
            "only a submitted payment"
        );
        let row = store.get("a").await.unwrap().unwrap();
        assert_eq!(row.state, SettlementState::Pending);
        assert_eq!(
            (row.permit_tx, row.transfer_tx, row.attempts),
            (None, None, 1)
        );
        assert!(store
            .unconfirmed_txs(31337, signer)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .due_pending(31337, Address::repeat_byte(0x33), None, 6, 10, ALL)
                .await
                .unwrap()
                .len(),
            1
        );
        // Signed again at fresh nonces; the old rows stay (dropped / mined).
        let again = [tx(2, "permit", 3), tx(3, "transfer_from", 4)];
        assert!(store
            .record_submission("a", &again, Some(again[0].hash), again[1].hash, 8)
            .await
            .unwrap());
        assert_eq!(
            store
                .txs_of("a")
                .await
                .unwrap()
                .iter()
                .map(|t| t.state.as_str())
                .collect::<Vec<_>>(),
            ["dropped", "mined", "sent", "sent"]
        );
        assert_eq!(store.max_tx_nonce(31337, signer).await.unwrap(), Some(3));
    }

    #[tokio::test]
    async fn sqlite_is_synchronous_full_and_keeps_token_times_by_use_key() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        // Every pooled connection: FULL (2), so a commit is on disk when it returns.
        for _ in 0..3 {
            let mut conn = store.pool.acquire().await.unwrap();
            let row = sqlx::query("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(
                row.try_get::<i64, _>(0).unwrap(),
                2,
                "PRAGMA synchronous = FULL"
            );
        }
        let p = sample("a", 3);
        assert!(p.use_key().starts_with("permit:31337:"), "{}", p.use_key());
        let mut s = store.session(1).await.unwrap();
        assert!(s.by_use_key(&p.use_key()).await.unwrap().is_none());
        s.insert_with_token(&p, Some((100, 400))).await.unwrap();
        let mut q = sample("b", 4);
        q.scheme = Scheme::Exact;
        s.insert(&q).await.unwrap();
        let found = s.by_use_key(&p.use_key()).await.unwrap().unwrap();
        assert_eq!(
            (found.row.p.id.as_str(), found.token, found.broadcast),
            ("a", Some((100, 400)), false)
        );
        assert_eq!(
            s.open_total(Network::eip155(31337), Address::repeat_byte(0xaa))
                .await
                .unwrap(),
            U256::from(1_000_000u64)
        );
        // Same nonce, other scheme: another key.
        let mut other = sample("c", 3);
        other.scheme = Scheme::Exact;
        assert!(s.by_use_key(&other.use_key()).await.unwrap().is_none());
        s.commit().await.unwrap();
        let tx = TxRow {
            chain_id: 31337,
            signer: Address::repeat_byte(5),
            nonce: 0,
            payment_id: "a".into(),
            kind: "transfer_from".into(),
            hash: B256::repeat_byte(9),
            raw: vec![1],
            state: "sent".into(),
            last_broadcast_ms: 0,
            ..Default::default()
        };
        let _ = store
            .record_submission("a", std::slice::from_ref(&tx), None, tx.hash, 5)
            .await;
        let mut s = store.session(1).await.unwrap();
        let found = s.by_use_key(&p.use_key()).await.unwrap().unwrap();
        assert!(
            found.broadcast,
            "a stored transaction may have been broadcast"
        );
    }

    /// The batch statements of the lane (one UPDATE / INSERT for a whole batch, one commit to
    /// settle it) keep the per-item rules: all items pending or nothing stored, only
    /// `submitted` ones settled, each once.
    #[tokio::test]
    async fn batch_is_recorded_and_settled_in_whole_statements() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("t.db").display()
        ))
        .await
        .unwrap();
        let mut s = store.session(1).await.unwrap();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            s.insert(&sample(id, i as u8)).await.unwrap();
        }
        drop(s);
        let signer = Address::repeat_byte(5);
        let batch = |h: u8, nonce: u64| TxRow {
            chain_id: 31337,
            signer,
            nonce,
            payment_id: format!("batch:{h}"),
            kind: "batch".into(),
            hash: B256::repeat_byte(h),
            raw: vec![h],
            state: "sent".into(),
            ..Default::default()
        };
        let items: Vec<(String, bool)> =
            vec![("a".into(), true), ("b".into(), false), ("c".into(), true)];
        let first = batch(1, 0);
        assert!(store.record_batch(&first, &items, 5).await.unwrap());
        assert_eq!(store.in_flight(31337, signer).await.unwrap(), 1);
        let a = store.get("a").await.unwrap().unwrap();
        let b = store.get("b").await.unwrap().unwrap();
        assert_eq!(a.state, SettlementState::Submitted);
        assert_eq!(a.permit_tx.as_deref(), Some(hex32(first.hash).as_str()));
        assert_eq!(b.permit_tx, None);
        assert_eq!(b.transfer_tx.as_deref(), Some(hex32(first.hash).as_str()));
        assert_eq!(store.batch_items("batch:1").await.unwrap(), items);
        // Where each item's funds may have moved: the batch's attempts, at the item's index.
        assert_eq!(
            store.batch_attempts_of("c").await.unwrap(),
            [(first.hash, 2)]
        );
        assert!(store.batch_attempts_of("d").await.unwrap().is_empty());
        // "a" is no longer pending: a second batch with it stores nothing, "d" stays pending.
        let second = batch(2, 1);
        let overlap = vec![("d".into(), false), ("a".into(), true)];
        assert!(!store.record_batch(&second, &overlap, 6).await.unwrap());
        assert_eq!(
            store.get("d").await.unwrap().unwrap().state,
            SettlementState::Pending
        );
        assert!(store.batch_items("batch:2").await.unwrap().is_empty());
        assert_eq!(store.in_flight(31337, signer).await.unwrap(), 1);
        let mut got: Vec<String> = store
            .get_many(&["a".into(), "c".into(), "zz".into()])
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.p.id)
            .collect();
        got.sort();
        assert_eq!(got, ["a", "c"]);
        // "c" judged on its own before (failed); the batch settles "a" and "b" only, once.
        assert!(store
            .finish("c", &[], &[], false, Some(7), Some("no"), None, 7)
            .await
            .unwrap());
        let ids: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let mut moved = store
            .settle_batch(first.hash, true, Some(7), &ids, 1000, 8)
            .await
            .unwrap();
        moved.sort();
        assert_eq!(moved, ["a", "b"]);
        assert!(store
            .settle_batch(first.hash, true, Some(7), &ids, 1000, 9)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.in_flight(31337, signer).await.unwrap(), 0);
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(a.state, SettlementState::Settled);
        assert_eq!(a.block_number, Some(7));
        assert_eq!(store.payment_spend("a").await.unwrap().1, 1000);
        assert_eq!(
            store.get("c").await.unwrap().unwrap().state,
            SettlementState::Failed
        );
    }

    /// The exposure total summed partly in SQL is the exact sum, also with a value too long
    /// for the SQL sum.
    #[tokio::test]
    async fn open_total_is_exact_for_short_and_long_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("t.db").display()
        ))
        .await
        .unwrap();
        let mut s = store.session(1).await.unwrap();
        let big = U256::from(10u8).pow(U256::from(30u8)) + U256::from(7u8);
        let values = [U256::from(10_000u64), U256::from(999_999_999_999u64), big];
        for (i, v) in values.iter().enumerate() {
            let mut p = sample(&format!("p{i}"), i as u8);
            p.value = *v;
            s.insert(&p).await.unwrap();
        }
        let mut settled = sample("done", 9);
        settled.value = U256::from(5u8);
        s.insert(&settled).await.unwrap();
        drop(s);
        sqlx::query("UPDATE x402_payments SET state = 'settled' WHERE id = 'done'")
            .execute(&store.pool)
            .await
            .unwrap();
        let mut s = store.session(1).await.unwrap();
        let total = s
            .open_total(Network::eip155(31337), Address::repeat_byte(0xaa))
            .await
            .unwrap();
        assert_eq!(total, values.iter().fold(U256::ZERO, |a, v| a + *v));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
