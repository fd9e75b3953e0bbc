//! Following and finishing a settlement: `GET /v1/settlements/{id}` (optionally waiting for
//! it to end, `?wait_ms=`), and the gateway's word on a held payment,
//! `POST /v1/settlements/{id}/release` (the upstream answered below 400: settle it) and
//! `POST /v1/settlements/{id}/void` (it did not: never broadcast, not charged).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use x402_protocol::settler_api::{HoldOutcome, SettlementState, SettlementStatus};

use super::{answer, check_api_secret, check_facilitator_caller, parse_fields, AppError, AppState};
use crate::error::Refusal;
use crate::service::MAX_PUBLIC_WAITERS;

/// The longest `?wait_ms=` a status read may wait (below the router's 30 s request timeout).
pub(crate) const MAX_WAIT_MS: u64 = 20_000;

pub(super) async fn get_settlement(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<SettlementStatus>, AppError> {
    answer("settlement status", status(&st, &id, &q, &headers).await)
}

/// The status now, or - with `wait_ms` - once it is `settled` or `failed`, or when `wait_ms`
/// passed (whatever it is then). The read is public; a caller with the gateway's or a
/// facilitator's secret always gets its wait, others share [`MAX_PUBLIC_WAITERS`] places and
/// past them get the status at once (they may ask again).
async fn status(
    st: &AppState,
    id: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<SettlementStatus, Refusal> {
    let mut wait = None;
    for (k, v) in q {
        match k.as_str() {
            "wait_ms" => match v.parse::<u64>() {
                Ok(ms) if ms <= MAX_WAIT_MS => wait = Some(Duration::from_millis(ms)),
                _ => {
                    return Err(Refusal::InvalidRequest(format!(
                        "query parameter `wait_ms`: {v:?}, expected 0 to {MAX_WAIT_MS}"
                    )))
                }
            },
            other => {
                return Err(Refusal::InvalidRequest(format!(
                    "unknown query parameter `{other}`"
                )))
            }
        }
    }
    let now = st.service.settlement(id).await?;
    let done = |s: &SettlementStatus| {
        matches!(s.state, SettlementState::Settled | SettlementState::Failed)
    };
    let Some(wait) = wait.filter(|w| !done(&now) && !w.is_zero()) else {
        return Ok(now);
    };
    let known_caller = check_facilitator_caller(st, headers).is_ok_and(|c| c != "anonymous");
    let _slot = if known_caller {
        None
    } else {
        match st.service.finals.try_public_slot() {
            Some(slot) => Some(slot),
            None => {
                tracing::debug!(settlement_id = %id, "status wait not honoured: {MAX_PUBLIC_WAITERS} public waiters already");
                return Ok(now);
            }
        }
    };
    st.service.await_final(id, wait).await;
    st.service.settlement(id).await
}

pub(super) async fn post_release(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettlementStatus>, AppError> {
    let r = async {
        let outcome = outcome(&st, &headers, body)?;
        st.service.release(&id, &outcome).await
    };
    answer("settlement release", r.await)
}

pub(super) async fn post_void(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettlementStatus>, AppError> {
    let r = async {
        let outcome = outcome(&st, &headers, body)?;
        st.service.void(&id, &outcome).await
    };
    answer("settlement void", r.await)
}

/// The gateway's secret checked; the body (empty, or a [`HoldOutcome`]) read.
fn outcome(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<HoldOutcome, Refusal> {
    check_api_secret(st, headers)?;
    let body = body.map_err(|e| Refusal::InvalidRequest(e.body_text()))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(HoldOutcome::default());
    }
    serde_json::from_slice::<serde_json::Value>(&body)
        .map_err(|e| Refusal::InvalidJson(format!("request body is not valid JSON: {e}")))?;
    parse_fields(&body)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;

    use crate::api::router;
    use crate::clock;
    use crate::service::MAX_PUBLIC_WAITERS;
    use crate::store::Store;
    use crate::test_fixtures::api::{app_state, call, json_of, SECRET};
    use crate::test_fixtures::new_payment;

    /// Public long polls of a pending settlement: the first MAX_PUBLIC_WAITERS wait, the next
    /// one is answered at once (`pending`) while they still wait, the gateway's own wait is
    /// honoured past the cap, and when the payment ends every waiter gets `failed`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn public_waits_are_capped_and_all_waiters_see_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let st = app_state(&dir, Some(SECRET)).await;
        let app = router(st.clone(), 1024);
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        let id = "0190aaaa-0000-7000-8000-00000000000a";
        let mut session = store.session(1).await.unwrap();
        session.insert(&new_payment(id)).await.unwrap();
        session.commit().await.unwrap();
        let path = format!("/v1/settlements/{id}?wait_ms=20000");

        let spawn_wait = |bearer: Option<&'static str>| {
            let (app, path) = (app.clone(), path.clone());
            tokio::spawn(async move { call(&app, "GET", &path, bearer, None).await })
        };
        let public: Vec<_> = (0..MAX_PUBLIC_WAITERS).map(|_| spawn_wait(None)).collect();
        // All of them hold a place: the next public one is not made to wait.
        while st.service.finals.try_public_slot().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, body) = call(&app, "GET", &path, None, None).await;
        assert_eq!(status, StatusCode::OK);
        let over = json_of(&body);
        assert_eq!(over["state"], "pending", "{over}");
        assert!(
            public.iter().all(|h| !h.is_finished()),
            "the capped request was answered while the others still wait"
        );
        let gateway = spawn_wait(Some(SECRET));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !gateway.is_finished(),
            "the gateway's wait is honoured past the cap"
        );

        assert!(store
            .fail_pending(id, "authorization cancelled", false, clock::now_ms())
            .await
            .unwrap());
        for h in public.into_iter().chain([gateway]) {
            let (status, body) = h.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(json_of(&body)["state"], "failed");
        }
    }
}
