//! The settler's HTTP API: what the filter sends to `POST /v1/tokens` and what comes back.

use alloy_primitives::{Address, U256};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::chain::Network;
use crate::method::PaymentMethod;

/// One accepted way to pay a route, with the price already in that asset's base units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricedMethod {
    #[serde(with = "crate::u256_serde")]
    pub amount: U256,
    pub method: PaymentMethod,
}

/// What a token costs, decided by the gateway from its own config, never by the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// Route name; the minted token is valid for this route only.
    pub route: String,
    pub accepts: Vec<PricedMethod>,
    /// Lifetime of the access token in seconds.
    pub token_ttl_secs: u64,
    /// The resource URL, for logs and x402 responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// Body of `POST /v1/tokens`: the requirement plus the client's payment, exactly as sent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub requirement: Requirement,
    pub payment: Box<RawValue>,
    /// The client's idempotency key for this payment: the token endpoint's `Idempotency-Key`
    /// header, as the gateway read it (an x402 v2 payload carries its own, in
    /// `extensions["payment-identifier"].info.id`). The same payment with the same key is
    /// answered with the same token, also after its settlement was broadcast; another payment
    /// under a used key is refused. Never sent on chain. See [`check_payment_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// Hold the payment: stored and counted as unsettled, but not settled until the gateway
    /// releases it (`POST /v1/settlements/{id}/release`, the upstream answered below 400);
    /// voided (never broadcast) by `POST /v1/settlements/{id}/void`, or when this many seconds
    /// pass without either. 1..=[`MAX_HOLD_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<u64>,
}

/// The longest a payment may be held for its upstream's answer.
pub const MAX_HOLD_SECS: u64 = 3600;

/// The x402 `payment-identifier` rules (16 to 128 characters of `A-Z a-z 0-9 _ -`), which
/// `Idempotency-Key` follows too; `Err` says what is wrong.
pub fn check_payment_id(id: &str) -> Result<(), String> {
    if !(16..=128).contains(&id.len()) {
        return Err(format!("{} characters, expected 16 to 128", id.len()));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("only A-Z, a-z, 0-9, '_' and '-' are allowed".into());
    }
    Ok(())
}

/// Body of `POST /v1/settlements/{id}/release` and `/void` (both fields optional): what the
/// upstream answered, for the log and the voided payment's `error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
}

/// How long after its `exp` a short-lived token may still be renewed (`POST /v1/tokens/renew`).
pub const RENEW_GRACE_SECS: u64 = 600;

/// Body of `POST /v1/tokens/renew`: a token the settler minted (valid, or expired at most
/// [`RENEW_GRACE_SECS`] ago) and the route's requirement stating the lifetime wanted. Once
/// the token's payment has settled, the answer is a [`TokenResponse`] with the same claims
/// and that lifetime counted from now.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub token: String,
    pub requirement: Requirement,
}

/// Success answer of `POST /v1/tokens`. The first three fields are the seed SDK's response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub settlement_id: String,
    pub payer: Address,
    pub network: Network,
    pub route: String,
    #[serde(with = "crate::u256_serde")]
    pub amount: U256,
    pub asset: Address,
    /// The settlement transaction, when one is known (a payment answered again after its
    /// settlement was broadcast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
}

/// Every error answer of the settler and of the filter: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub message: String,
    /// For `nonce_mismatch`: the EIP-2612 nonce the payer must sign next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_nonce: Option<String>,
    /// For `payment_already_used`: the settlement holding this payment, and its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SettlementState>,
}

impl ApiError {
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            error: error.into(),
            message: message.into(),
            expected_nonce: None,
            settlement_id: None,
            state: None,
        }
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| String::from("{\"error\":\"internal\",\"message\":\"\"}"))
    }
}

/// State of a settlement as `GET /v1/settlements/{id}` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettlementState {
    /// Stored, token minted, not yet sent.
    Pending,
    /// Transactions sent, waiting for receipts.
    Submitted,
    /// Funds arrived at `pay_to`.
    Settled,
    /// Can never settle; `error` says why.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementStatus {
    pub settlement_id: String,
    pub state: SettlementState,
    pub scheme: crate::method::Scheme,
    pub network: Network,
    pub asset: Address,
    pub payer: Address,
    pub pay_to: Address,
    #[serde(with = "crate::u256_serde")]
    pub amount: U256,
    pub route: String,
    /// `permit()` tx for EIP-2612 payments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit_tx: Option<String>,
    /// The tx that moved the funds (`transferFrom` or `transferWithAuthorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_tx: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_number: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// `pending` and held for the upstream's answer: not settled until the gateway releases
    /// it; voided (`failed`, never broadcast) if it does not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}
