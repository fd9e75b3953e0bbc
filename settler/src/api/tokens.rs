//! The token API: `POST /v1/tokens` (payment -> access token) and
//! `GET /v1/settlements/{id}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use x402_protocol::payment::parse_payment;
use x402_protocol::settler_api::{SettlementStatus, TokenRequest, TokenResponse};

use super::{check_api_secret, http_status, AppError, AppState};
use crate::error::Refusal;
use crate::metrics as m;

pub(super) async fn post_token(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenResponse>, AppError> {
    match token(&st, &headers, body).await {
        Ok(resp) => Ok(Json(resp)),
        Err(e) => {
            metrics::counter!(m::REJECTIONS, "code" => e.code()).increment(1);
            if http_status(&e).is_server_error() {
                tracing::warn!(code = e.code(), message = %e.message(), "token request failed");
            } else {
                tracing::info!(code = e.code(), message = %e.message(), "token request refused");
            }
            Err(AppError(e))
        }
    }
}

async fn token(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<TokenResponse, Refusal> {
    check_api_secret(st, headers)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::PayloadTooLarge("request body exceeds the size limit".into())
        } else {
            Refusal::InvalidRequest(e.body_text())
        }
    })?;
    let req = parse_request(&body)?;
    let (payment, format) = parse_payment(req.payment.get().as_bytes())?;
    st.service
        .buy_token(&payment, format, &req.requirement)
        .await
}

fn parse_request(body: &[u8]) -> Result<TokenRequest, Refusal> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::InvalidJson(format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Refusal::InvalidJson(
            "request body must be a JSON object".into(),
        ));
    }
    for field in ["requirement", "payment"] {
        if v.get(field).is_none() {
            return Err(Refusal::InvalidRequest(format!(
                "request field `{field}`: missing"
            )));
        }
    }
    // The error names the field (`requirement.token_ttl_secs`, ...).
    let req: TokenRequest = serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_slice(body),
    )
    .map_err(|e| Refusal::InvalidRequest(format!("request field `{}`: {}", e.path(), e.inner())))?;
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
    Ok(req)
}

pub(super) async fn get_settlement(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<SettlementStatus>, AppError> {
    Ok(Json(st.service.settlement(&id).await?))
}
