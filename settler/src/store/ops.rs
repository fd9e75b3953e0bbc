//! Read-only queries for the operational gauges and revenue counters (`ops_gauges`): how
//! much is waiting to settle, since when, and what has settled. None of them is on the
//! acceptance or settlement path.

use alloy::primitives::{Address, U256};
use sqlx::Row;

use super::{col, col_u256, int_col, Store};
use crate::error::StoreError;

/// One settled payment, as the revenue counters need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledItem {
    pub seq: i64,
    pub chain_id: u64,
    pub asset: Address,
    pub route: String,
    /// Base units moved to the recipient (the signed value: what `transfer*` moves).
    pub value: U256,
    pub settled_ms: i64,
}

impl Store {
    /// Payments not yet final (`pending` or `submitted`) on `chain_id`: (count, the oldest
    /// one's `created_ms`). Uses the (chain_id, state, seq) index.
    pub(crate) async fn unsettled(&self, chain_id: u64) -> Result<(u64, Option<i64>), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(created_ms) AS oldest FROM x402_payments WHERE chain_id = $1 AND state IN ('pending', 'submitted')",
        )
        .bind(chain_id as i64)
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        Ok((int_col("n", n)?, oldest))
    }

    /// Settled payments after `(settled_ms, seq)` = `after` in that order, at most `limit`:
    /// one page of a walk over the settlements (a batch settles many payments at one
    /// `settled_ms`, hence the `seq` tie-break).
    pub(crate) async fn settled_after(
        &self,
        after: (i64, i64),
        limit: i64,
    ) -> Result<Vec<SettledItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, chain_id, asset, route, value, settled_ms FROM x402_payments WHERE state = 'settled' AND (settled_ms > $1 OR (settled_ms = $2 AND seq > $3)) ORDER BY settled_ms, seq LIMIT $4",
        )
        .bind(after.0)
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let chain_id: i64 = r.try_get("chain_id")?;
                Ok(SettledItem {
                    seq: r.try_get("seq")?,
                    chain_id: int_col("chain_id", chain_id)?,
                    asset: col(r, "asset")?,
                    route: r.try_get("route")?,
                    value: col_u256(r, "value")?,
                    settled_ms: r.try_get::<Option<i64>, _>("settled_ms")?.unwrap_or(0),
                })
            })
            .collect()
    }
}
