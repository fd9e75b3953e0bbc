//! The HTTP adapters: the token API (`tokens`), the x402 facilitator API (`facilitator`) and
//! the operational endpoints (`ops`). Each handler parses, calls the service and maps its
//! [`Refusal`] onto the wire; the routing table here is the one list of routes.

mod catch_panic;
pub(crate) mod facilitator;
mod ops;
mod renew;
mod request_id;
mod revocations;
mod settlements;
#[cfg(test)]
mod tests;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::Refusal;
use crate::metrics as m;
use crate::service::Service;

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) service: Arc<Service>,
    /// Who may call the token and facilitator APIs.
    pub(crate) auth: crate::config::CallerAuth,
    pub(crate) metrics: Option<PrometheusHandle>,
    /// How long facilitator `/settle` waits for the settlement.
    pub(crate) settle_timeout: Duration,
}

/// The OpenAPI 3.1 description of this API, served at `GET /openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

type Route = (&'static str, &'static str, MethodRouter<Arc<AppState>>);

/// Every route as (method, path, handler): the router is built from this table only.
fn table() -> Vec<Route> {
    vec![
        ("POST", "/v1/tokens", post(tokens::post_token)),
        ("POST", "/v1/tokens/renew", post(renew::post_renew)),
        ("POST", "/verify", post(facilitator::post_verify)),
        ("POST", "/settle", post(facilitator::post_settle)),
        ("GET", "/supported", get(facilitator::get_supported)),
        (
            "GET",
            "/v1/settlements/{id}",
            get(settlements::get_settlement),
        ),
        (
            "POST",
            "/v1/settlements/{id}/release",
            post(settlements::post_release),
        ),
        (
            "POST",
            "/v1/settlements/{id}/void",
            post(settlements::post_void),
        ),
        ("GET", "/v1/revocations", get(revocations::get_revocations)),
        ("GET", "/.well-known/jwks.json", get(ops::jwks)),
        ("GET", "/healthz", get(ops::healthz)),
        ("GET", "/readyz", get(ops::readyz)),
        ("GET", "/metrics", get(ops::metrics)),
        ("GET", "/openapi.yaml", get(ops::openapi)),
    ]
}

/// Every route of the API as (method, path); `settler/openapi.yaml` documents exactly these
/// (`tests/openapi.rs`), and `api::tests` checks each answers its method.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

pub(crate) fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    // `/settle` may wait for its receipt: the request timeout stays above that.
    let request_timeout =
        Duration::from_secs(30).max(state.settle_timeout + Duration::from_secs(10));
    let routes = table()
        .into_iter()
        .fold(Router::new(), |r, (_, path, handler)| {
            r.route(path, handler)
        });
    #[cfg(test)]
    let routes = catch_panic::test_routes(routes);
    let routes = routes
        .fallback(|| async { AppError(Refusal::NotFound("no such endpoint".into())) })
        // A handler's panic is a 500 `internal` answer, never a dropped connection.
        .layer(catch_panic::layer())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    request_id::layer(routes).with_state(state)
}

/// The HTTP status of each refusal in the token API (and every `ApiError` answer).
pub(crate) fn http_status(r: &Refusal) -> StatusCode {
    match r {
        Refusal::InvalidJson(_)
        | Refusal::InvalidRequest(_)
        | Refusal::InvalidPayment(_)
        | Refusal::UnsupportedPaymentType(_)
        | Refusal::NetworkUnsupported(_) => StatusCode::BAD_REQUEST,
        Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Refusal::SchemeNotAccepted(_)
        | Refusal::NetworkMismatch(_)
        | Refusal::AssetMismatch(_)
        | Refusal::InvalidSignature(_)
        | Refusal::MalleableSignature(_)
        | Refusal::SpenderMismatch(_)
        | Refusal::RecipientMismatch(_)
        | Refusal::InsufficientValue(_)
        | Refusal::Expired(_)
        | Refusal::DeadlineTooSoon(_)
        | Refusal::NotYetValid(_)
        | Refusal::InsufficientBalance(_) => StatusCode::PAYMENT_REQUIRED,
        Refusal::NotFound(_) => StatusCode::NOT_FOUND,
        Refusal::PaymentAlreadyUsed(_)
        | Refusal::NonceMismatch { .. }
        | Refusal::NonceAlreadyUsed(_) => StatusCode::CONFLICT,
        Refusal::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        Refusal::ChainUnavailable(_)
        | Refusal::StoreUnavailable(_)
        | Refusal::AssetUnverified(_) => StatusCode::SERVICE_UNAVAILABLE,
        // Exposure: the payer may pay again once its earlier payments settle; the total
        // and the acceptance deadline are the settler's state, not the payment's fault.
        Refusal::PayerExposureLimit(_) => StatusCode::TOO_MANY_REQUESTS,
        Refusal::TotalExposureLimit(_) | Refusal::AcceptDeadlineExceeded(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        // The settlement lane cannot settle now; the payer's own failure blocks the payer.
        Refusal::SettlementStalled(_) => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::PayerBlocked { .. } => StatusCode::FORBIDDEN,
        // Renewal (`POST /v1/tokens/renew`): not this settler's token; not settled yet
        // (retry later); failed (never renewed).
        Refusal::InvalidToken(_) => StatusCode::UNAUTHORIZED,
        Refusal::SettlementPending { .. } => StatusCode::CONFLICT,
        // Idempotency key reused with another payment; release/void of a payment not held.
        Refusal::PaymentIdMismatch(_) | Refusal::NotHeld { .. } => StatusCode::CONFLICT,
        Refusal::PaymentFailed { .. } => StatusCode::FORBIDDEN,
        // The caller (gateway) stated terms the settler does not honour.
        Refusal::AssetNotAccepted(_)
        | Refusal::PayToNotAccepted(_)
        | Refusal::PriceBelowMinimum(_)
        | Refusal::TokenTtlTooLong(_)
        | Refusal::DomainMismatch(_) => StatusCode::FORBIDDEN,
    }
}

/// Every `ApiError` code the settler answers with and its one HTTP status, from
/// [`Refusal::ALL`] (for `tests/openapi.rs`).
pub fn codes() -> Vec<(&'static str, u16)> {
    Refusal::ALL
        .iter()
        .map(|r| (r.code(), http_status(r).as_u16()))
        .collect()
}

/// Every `invalidReason` / `errorReason` of the facilitator, from its reason enum.
pub fn reasons() -> Vec<&'static str> {
    facilitator::Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .collect()
}

/// A refusal as an HTTP answer: its status, `ApiError` JSON, `Cache-Control: no-store`.
#[derive(Debug)]
pub(crate) struct AppError(pub(crate) Refusal);

impl From<Refusal> for AppError {
    fn from(r: Refusal) -> Self {
        AppError(r)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        no_store((http_status(&self.0), axum::Json(self.0.to_api())).into_response())
    }
}

pub(crate) fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The bearer secret of the request (`Authorization: Bearer <secret>`), "" when none.
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Constant-time comparison (the length of a secret is not secret).
fn same_secret(given: &str, secret: &str) -> bool {
    given.len() == secret.len()
        && given
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The token API (`POST /v1/tokens`): only the gateway's secret. Open only when the settler
/// has none (loopback listener, warned at start).
pub(crate) fn check_api_secret(st: &AppState, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(secret) = &st.auth.gateway else {
        return Ok(());
    };
    if same_secret(bearer(headers), secret) {
        Ok(())
    } else {
        Err(Refusal::Unauthorized(
            "this endpoint requires the gateway's bearer secret".into(),
        ))
    }
}

/// The facilitator API (`/verify`, `/settle`, `/supported`): the gateway's secret or one of
/// the `--facilitator-credentials-file` secrets. Returns the caller's name (`gateway`, the
/// credential's name, or `anonymous` when no credential is configured at all).
pub(crate) fn check_facilitator_caller(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<String, Refusal> {
    let auth = &st.auth;
    if auth.gateway.is_none() && auth.facilitators.is_empty() {
        return Ok("anonymous".into());
    }
    let given = bearer(headers);
    // Every credential is compared, so the time taken does not tell which one matched.
    let mut caller = None;
    if let Some(g) = &auth.gateway {
        if same_secret(given, g) {
            caller = Some("gateway".to_string());
        }
    }
    for (name, secret) in &auth.facilitators {
        if same_secret(given, secret) && caller.is_none() {
            caller = Some(name.clone());
        }
    }
    caller.ok_or_else(|| {
        Refusal::Unauthorized(
            "this endpoint requires a facilitator credential or the gateway's bearer secret".into(),
        )
    })
}

/// The answer of a JSON API handler: the value, or the refusal counted and logged (warn for
/// outages, info for the client's own mistakes) under `what` ("token request", ...).
pub(super) fn answer<T>(what: &str, result: Result<T, Refusal>) -> Result<Json<T>, AppError> {
    match result {
        Ok(v) => Ok(Json(v)),
        Err(e) => {
            metrics::counter!(m::REJECTIONS, "code" => e.code()).increment(1);
            if http_status(&e).is_server_error() {
                tracing::warn!(code = e.code(), message = %e.message(), "{what} failed");
            } else {
                tracing::info!(code = e.code(), message = %e.message(), "{what} refused");
            }
            Err(AppError(e))
        }
    }
}

/// The request body of an authenticated JSON endpoint: the caller's bearer secret checked,
/// the body within the size limit, a JSON object holding every one of `required`.
pub(super) fn authenticated_body(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    required: &[&str],
) -> Result<Bytes, Refusal> {
    check_api_secret(st, headers)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::PayloadTooLarge("request body exceeds the size limit".into())
        } else {
            Refusal::InvalidRequest(e.body_text())
        }
    })?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| Refusal::InvalidJson(format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Refusal::InvalidJson(
            "request body must be a JSON object".into(),
        ));
    }
    for field in required {
        if v.get(field).is_none() {
            return Err(Refusal::InvalidRequest(format!(
                "request field `{field}`: missing"
            )));
        }
    }
    Ok(body)
}

/// Reads a request type; the error names the field (`requirement.token_ttl_secs`, ...).
pub(super) fn parse_fields<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)).map_err(|e| {
        Refusal::InvalidRequest(format!("request field `{}`: {}", e.path(), e.inner()))
    })
}
