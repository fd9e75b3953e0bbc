//! The token API: `POST /v1/tokens` (payment -> access token) and
//! `GET /v1/settlements/{id}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use x402_protocol::payment::parse_payment;
use x402_protocol::settler_api::{SettlementStatus, TokenRequest, TokenResponse};

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
    let (payment, format) = parse_payment(req.payment.get().as_bytes())?;
    st.service
        .buy_token(&payment, format, &req.requirement)
        .await
}

pub(super) async fn get_settlement(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<SettlementStatus>, AppError> {
    Ok(Json(st.service.settlement(&id).await?))
}
