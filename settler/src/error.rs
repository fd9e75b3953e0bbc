//! Errors of the settler and how they map onto the HTTP API (`ApiError` JSON).

use alloy::primitives::U256;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use x402_protocol::settler_api::ApiError;

/// Every `error` code of an [`ApiError`] the settler answers with, and its one HTTP status
/// (the payment parser's codes included). `settler/openapi.yaml` documents each under that
/// status; `tests/openapi.rs` checks it, and that every code in the source is listed here.
pub const CODES: &[(&str, u16)] = &[
    ("invalid_json", 400),
    ("invalid_request", 400),
    ("invalid_payment", 400),
    ("unsupported_payment_type", 400),
    ("network_unsupported", 400),
    ("unauthorized", 401),
    ("scheme_not_accepted", 402),
    ("network_mismatch", 402),
    ("asset_mismatch", 402),
    ("invalid_signature", 402),
    ("malleable_signature", 402),
    ("spender_mismatch", 402),
    ("recipient_mismatch", 402),
    ("insufficient_value", 402),
    ("expired", 402),
    ("deadline_too_soon", 402),
    ("not_yet_valid", 402),
    ("insufficient_balance", 402),
    ("not_found", 404),
    ("payment_already_used", 409),
    ("nonce_mismatch", 409),
    ("nonce_already_used", 409),
    ("payload_too_large", 413),
    ("internal", 500),
    ("chain_unavailable", 503),
    ("store_unavailable", 503),
];

/// A request the settler refuses, with its stable code, HTTP status and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub expected_nonce: Option<U256>,
}

impl Rejection {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Rejection { status, code, message: message.into(), expected_nonce: None }
    }
    /// 400: the request itself is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 402: the payment does not pay for the requirement.
    pub fn payment(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYMENT_REQUIRED, code, message)
    }
    /// 409: the payment conflicts with one already accepted or with chain state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn chain_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "chain_unavailable", message)
    }
    pub fn store_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn with_expected_nonce(mut self, n: U256) -> Self {
        self.expected_nonce = Some(n);
        self
    }
    pub fn to_api(&self) -> ApiError {
        ApiError {
            error: self.code.to_string(),
            message: self.message.clone(),
            expected_nonce: self.expected_nonce.map(|n| n.to_string()),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.to_api())).into_response();
        resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
        resp
    }
}

/// Failures of the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The unique single-use key of a payment already exists.
    #[error("payment already stored")]
    Duplicate,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<StoreError> for Rejection {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate => Rejection::conflict("payment_already_used", "this payment was already used to mint a token"),
            StoreError::Db(e) => Rejection::store_unavailable(format!("database unavailable: {e}")),
            StoreError::Corrupt(m) => Rejection::internal(m),
        }
    }
}

/// Failures talking to a chain's RPC endpoint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChainError {
    #[error("rpc {network}: {message}")]
    Rpc { network: String, message: String },
    #[error("rpc {network}: timed out")]
    Timeout { network: String },
    #[error("network {0} has no RPC endpoint configured")]
    UnknownNetwork(String),
}

impl From<ChainError> for Rejection {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::UnknownNetwork(n) => Rejection::bad_request("network_unsupported", format!("the settler has no RPC endpoint for {n}")),
            other => Rejection::chain_unavailable(other.to_string()),
        }
    }
}
