//! The revocation list (`GET /v1/revocations`): the ids of tokens whose payment failed to
//! settle and that may still be alive, so the edge refuses them before they expire.

use serde::Serialize;

use super::Service;
use crate::error::Refusal;

/// One revoked token: its `jti` (the settlement id) and the latest time it can expire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Revoked {
    pub(crate) jti: String,
    /// Unix seconds: the payment's creation plus the longest lifetime a token can have
    /// (`--max-token-ttl`); the token itself may expire sooner.
    pub(crate) exp: u64,
}

/// The answer of `GET /v1/revocations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Revocations {
    /// Newest first, at most `limit`.
    pub(crate) revoked: Vec<Revoked>,
    /// Unix seconds when the list was read.
    pub(crate) as_of: u64,
    /// More revoked tokens may still be alive than were listed.
    pub(crate) truncated: bool,
}

impl Service {
    /// The failed payments whose token may still be unexpired at `now_ms`, newest first,
    /// at most `limit`.
    pub(crate) async fn revocations(
        &self,
        limit: usize,
        now_ms: i64,
    ) -> Result<Revocations, Refusal> {
        let max_ttl_ms =
            i64::try_from(self.minter.max_ttl.saturating_mul(1000)).unwrap_or(i64::MAX);
        // A token minted before `since` expired by now, whatever its lifetime.
        let since = now_ms.saturating_sub(max_ttl_ms);
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let mut rows = self.store.failed_since(since, fetch).await?;
        let truncated = rows.len() > limit;
        rows.truncate(limit);
        let revoked = rows
            .into_iter()
            .map(|(jti, created_ms)| Revoked {
                jti,
                exp: u64::try_from(created_ms.max(0) / 1000)
                    .unwrap_or(0)
                    .saturating_add(self.minter.max_ttl),
            })
            .collect();
        Ok(Revocations {
            revoked,
            as_of: u64::try_from(now_ms.max(0) / 1000).unwrap_or(0),
            truncated,
        })
    }
}
