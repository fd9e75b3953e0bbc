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

use super::{answer, check_api_secret, parse_fields, AppError, AppState};
use crate::error::Refusal;

/// The longest `?wait_ms=` a status read may wait (below the router's 30 s request timeout).
pub(crate) const MAX_WAIT_MS: u64 = 20_000;

pub(super) async fn get_settlement(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<SettlementStatus>, AppError> {
    answer("settlement status", status(&st, &id, &q).await)
}

/// The status now, or - with `wait_ms` - once it is `settled` or `failed`, or when `wait_ms`
/// passed (whatever it is then).
async fn status(
    st: &AppState,
    id: &str,
    q: &HashMap<String, String>,
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
    match wait {
        Some(wait) if !done(&now) && !wait.is_zero() => {
            st.service.await_final(id, wait).await;
            st.service.settlement(id).await
        }
        _ => Ok(now),
    }
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
