//! Held payments and idempotency keys in the store.
//!
//! A held payment is `pending` with `held_until_ms` set: stored durably and counted as
//! unsettled (exposure, balance), but the lane does not take it (`due_pending` selects
//! `held_until_ms IS NULL`) until the gateway releases it (the upstream answered below 400).
//! Voiding it (the upstream failed, or the hold expired) ends it `failed` with cause
//! `voided`, never broadcast, and frees its single-use key and idempotency key: the payer
//! was not charged, so the same signed payment may be used again. Release and void are one
//! conditional UPDATE each (`... AND held_until_ms IS NOT NULL`): whichever comes first
//! wins, across replicas. The same payment sent again with its idempotency key while held is
//! held by one more request (`hold_count`): a release by any holder charges it, a void only
//! takes that holder off until the last one voids it, so a request whose upstream fails
//! cannot void the payment of a concurrent one that was served.

use sqlx::Row;
use x402_protocol::settler_api::SettlementStatus;

use super::{payment_from_row, Session, Store, StoredPayment, PAYMENT_COLS};
use crate::error::StoreError;

/// What acceptance stores with a payment besides the payment itself.
#[derive(Debug, Clone, Default)]
pub struct AcceptExtras {
    /// (iat, exp) of the token minted for it, if any (the same payment again gets it back).
    pub token: Option<(i64, i64)>,
    /// The client's idempotency key (unique over all payments).
    pub payment_id: Option<String>,
    /// Held until this time (ms) unless released or voided first.
    pub held_until_ms: Option<i64>,
}

/// The outcome of a release or void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldChange {
    /// Done now.
    Changed,
    /// Void: another request holds the same payment too (sent again with its idempotency
    /// key while held); this one's hold is dropped, the payment stays held for the other.
    OthersHold(Box<SettlementStatus>),
    /// It was not held (any more): released before, voided before, or never held; the
    /// current status says which.
    NotHeld(Box<SettlementStatus>),
    /// No such payment.
    Unknown,
}

/// The `fail_cause` of a voided payment.
pub const VOIDED: &str = "voided";

impl Session {
    /// The payment stored under idempotency key `payment_id`, as [`Session::by_use_key`].
    pub async fn by_payment_id(
        &mut self,
        payment_id: &str,
    ) -> Result<Option<StoredPayment>, StoreError> {
        let row = sqlx::query("SELECT use_key FROM x402_payments WHERE payment_id = $1")
            .bind(payment_id)
            .fetch_optional(self.conn())
            .await?;
        match row {
            Some(r) => {
                let key: String = r.try_get("use_key")?;
                self.by_use_key(&key).await
            }
            None => Ok(None),
        }
    }
}

impl Store {
    /// The status of payment `id`, `held` included.
    pub async fn status(&self, id: &str) -> Result<Option<SettlementStatus>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PAYMENT_COLS}, held_until_ms FROM x402_payments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let held: Option<i64> = row.try_get("held_until_ms")?;
        let mut status = payment_from_row(&row)?.status();
        status.held = held.is_some();
        Ok(Some(status))
    }

    /// Releases held payment `id` to its lane.
    pub async fn release(&self, id: &str, now_ms: i64) -> Result<HoldChange, StoreError> {
        let moved = sqlx::query("UPDATE x402_payments SET held_until_ms = NULL, updated_ms = $2 WHERE id = $1 AND state = 'pending' AND held_until_ms IS NOT NULL")
            .bind(id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        self.changed_or_current(id, moved.rows_affected()).await
    }

    /// One more request holds payment `id` (the same payment and idempotency key again while
    /// it is held): it is voided only when every holder voided it (or the hold expired), and
    /// charged when any releases it. False when it is not held any more.
    pub async fn hold_again(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let moved = sqlx::query("UPDATE x402_payments SET hold_count = hold_count + 1, updated_ms = $2 WHERE id = $1 AND state = 'pending' AND held_until_ms IS NOT NULL")
            .bind(id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// One holder of payment `id` voids it: the last holder's void voids it
    /// ([`Store::void_now`]); before that, the holder is only taken off.
    pub async fn void(&self, id: &str, why: &str, now_ms: i64) -> Result<HoldChange, StoreError> {
        let left = sqlx::query("UPDATE x402_payments SET hold_count = hold_count - 1, updated_ms = $2 WHERE id = $1 AND state = 'pending' AND held_until_ms IS NOT NULL AND hold_count > 1")
            .bind(id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        if left.rows_affected() == 1 {
            if let Some(s) = self.status(id).await? {
                return Ok(HoldChange::OthersHold(Box::new(s)));
            }
        }
        self.void_now(id, why, now_ms).await
    }

    /// Voids held payment `id` whoever holds it: `failed` (cause `voided`, not the payer's
    /// fault), never broadcast; its single-use key and idempotency key are released.
    pub async fn void_now(
        &self,
        id: &str,
        why: &str,
        now_ms: i64,
    ) -> Result<HoldChange, StoreError> {
        let moved = sqlx::query("UPDATE x402_payments SET state = 'failed', error = $2, updated_ms = $3, failed_ms = $3, fail_cause = $4, payer_fault = 0, use_key = 'released:' || id, payment_id = NULL, held_until_ms = NULL WHERE id = $1 AND state = 'pending' AND held_until_ms IS NOT NULL")
            .bind(id)
            .bind(why)
            .bind(now_ms)
            .bind(VOIDED)
            .execute(&self.pool)
            .await?;
        self.changed_or_current(id, moved.rows_affected()).await
    }

    /// Voids every payment whose hold ran out by `now_ms`; their ids.
    pub async fn expire_holds(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM x402_payments WHERE state = 'pending' AND held_until_ms IS NOT NULL AND held_until_ms <= $1")
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?;
        let mut voided = Vec::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            let why = "voided: the gateway neither released nor voided the held payment before its hold expired; not charged";
            if self.void_now(&id, why, now_ms).await? == HoldChange::Changed {
                voided.push(id);
            }
        }
        Ok(voided)
    }

    async fn changed_or_current(&self, id: &str, moved: u64) -> Result<HoldChange, StoreError> {
        if moved == 1 {
            return Ok(HoldChange::Changed);
        }
        Ok(match self.status(id).await? {
            Some(s) => HoldChange::NotHeld(Box::new(s)),
            None => HoldChange::Unknown,
        })
    }
}
