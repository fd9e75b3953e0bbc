//! `POST /v1/tokens/renew`: a short-lived token exchanged, once its payment has settled, for
//! one with the route's normal lifetime (`service::renew`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use x402_protocol::settler_api::{RenewRequest, TokenResponse};

use super::{check_api_secret, http_status, AppError, AppState};
use crate::clock;
use crate::error::Refusal;
use crate::metrics as m;

pub(super) async fn post_renew(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenResponse>, AppError> {
    match renew(&st, &headers, body).await {
        Ok(resp) => Ok(Json(resp)),
        Err(e) => {
            metrics::counter!(m::REJECTIONS, "code" => e.code()).increment(1);
            if http_status(&e).is_server_error() {
                tracing::warn!(code = e.code(), message = %e.message(), "token renewal failed");
            } else {
                tracing::info!(code = e.code(), message = %e.message(), "token renewal refused");
            }
            Err(AppError(e))
        }
    }
}

async fn renew(
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
    st.service
        .renew_token(&req.token, &req.requirement, clock::now_secs())
        .await
}

fn parse_request(body: &[u8]) -> Result<RenewRequest, Refusal> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::InvalidJson(format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Refusal::InvalidJson(
            "request body must be a JSON object".into(),
        ));
    }
    for field in ["token", "requirement"] {
        if v.get(field).is_none() {
            return Err(Refusal::InvalidRequest(format!(
                "request field `{field}`: missing"
            )));
        }
    }
    let req: RenewRequest =
        serde_json::from_value(v).map_err(|e| Refusal::InvalidRequest(format!("request: {e}")))?;
    if req.requirement.route.is_empty() {
        return Err(Refusal::InvalidRequest(
            "requirement field `route`: empty".into(),
        ));
    }
    Ok(req)
}
