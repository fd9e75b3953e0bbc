//! The token API: `POST /v1/tokens` (payment -> access token). The settlements it creates
//! are followed, released and voided in `settlements`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use x402_protocol::payment::parse_payment;
use x402_protocol::settler_api::{check_payment_id, TokenRequest, TokenResponse, MAX_HOLD_SECS};
use x402_protocol::x402v2::raw_payment_identifier;

use super::{answer, authenticated_body, parse_fields, AppError, AppState};
use crate::error::Refusal;

pub(super) async fn post_token(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenResponse>, AppError> {
    answer("token request", token(&st, &headers, body).await)
}

async fn token(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<TokenResponse, Refusal> {
    let body = authenticated_body(st, headers, body, &["requirement", "payment"])?;
    let req: TokenRequest = parse_fields(&body)?;
    if req.requirement.accepts.is_empty() {
        return Err(Refusal::InvalidRequest(
            "requirement field `accepts`: empty".into(),
        ));
    }
    if req.requirement.route.is_empty() {
        return Err(Refusal::InvalidRequest(
            "requirement field `route`: empty".into(),
        ));
    }
    if let Some(h) = req.hold_secs {
        if !(1..=MAX_HOLD_SECS).contains(&h) {
            return Err(Refusal::InvalidRequest(format!(
                "request field `hold_secs`: {h}, expected 1 to {MAX_HOLD_SECS}"
            )));
        }
    }
    let (payment, format) = parse_payment(req.payment.get().as_bytes())?;
    let payment_id = payment_id(&req)?;
    st.service
        .buy_token(
            &payment,
            format,
            &req.requirement,
            payment_id,
            req.hold_secs,
        )
        .await
}

/// The request's idempotency key: the gateway's `payment_id` (the client's
/// `Idempotency-Key`) or the x402 v2 payload's `payment-identifier`; both given, they must be
/// the same. Checked against the x402 rules.
fn payment_id(req: &TokenRequest) -> Result<Option<String>, Refusal> {
    let v: serde_json::Value = serde_json::from_str(req.payment.get())
        .map_err(|e| Refusal::InvalidJson(format!("payment is not JSON: {e}")))?;
    let in_payload = raw_payment_identifier(&v).map_err(Refusal::InvalidPayment)?;
    let id =
        match (req.payment_id.clone(), in_payload) {
            (Some(a), Some(b)) if a != b => return Err(Refusal::InvalidRequest(
                "field `payment_id` (Idempotency-Key) and the payment's payment-identifier differ"
                    .into(),
            )),
            (a, b) => a.or(b),
        };
    if let Some(id) = &id {
        check_payment_id(id).map_err(|e| {
            Refusal::InvalidPayment(format!("payment identifier (Idempotency-Key): {e}"))
        })?;
    }
    Ok(id)
}
