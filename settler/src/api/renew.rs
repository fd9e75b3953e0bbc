//! `POST /v1/tokens/renew`: a short-lived token exchanged, once its payment has settled, for
//! one with the route's normal lifetime (`service::renew`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use x402_protocol::settler_api::{RenewRequest, TokenResponse};

use super::{answer, authenticated_body, parse_fields, AppError, AppState};
use crate::clock;
use crate::error::Refusal;

pub(super) async fn post_renew(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenResponse>, AppError> {
    answer("token renewal", renew(&st, &headers, body).await)
}

async fn renew(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<TokenResponse, Refusal> {
    let body = authenticated_body(st, headers, body, &["token", "requirement"])?;
    let req: RenewRequest = parse_fields(&body)?;
    if req.requirement.route.is_empty() {
        return Err(Refusal::InvalidRequest(
            "requirement field `route`: empty".into(),
        ));
    }
    st.service
        .renew_token(&req.token, &req.requirement, clock::now_secs())
        .await
}
