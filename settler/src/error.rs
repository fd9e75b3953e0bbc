//! The settler's refusals: [`Refusal`], one variant per stable code, each with its message and
//! the facts a client needs. HTTP adapters map it (`api::http_status` for `/v1/tokens`,
//! `api::facilitator` for x402 reasons); nothing here knows about HTTP. Also the failures of
//! the store and the chains, and how they become refusals.

use alloy::primitives::U256;
use x402_protocol::payment::PaymentError;
use x402_protocol::settler_api::{ApiError, SettlementState};

/// Why the settler refuses a request. `code()` is the stable `error` string of the
/// [`ApiError`] answer; the message is for humans. [`Refusal::ALL`] lists every variant, so
/// documentation checks (`tests/openapi.rs`) derive the code list from this enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", self.code(), self.message())]
pub enum Refusal {
    /// The body, or the payment in it, is not JSON (or not an object).
    InvalidJson(String),
    /// The request's shape is wrong (missing `requirement`/`payment`, empty `accepts`).
    InvalidRequest(String),
    /// A payment field is missing or malformed; the message names it.
    InvalidPayment(String),
    /// A payment type the settler does not take (e.g. Permit2).
    UnsupportedPaymentType(String),
    /// The body exceeds the size limit.
    PayloadTooLarge(String),
    /// The gateway's bearer secret is missing or wrong.
    Unauthorized(String),
    /// The matched network has no RPC endpoint.
    NetworkUnsupported(String),
    SchemeNotAccepted(String),
    NetworkMismatch(String),
    AssetMismatch(String),
    InvalidSignature(String),
    MalleableSignature(String),
    SpenderMismatch(String),
    RecipientMismatch(String),
    InsufficientValue(String),
    Expired(String),
    DeadlineTooSoon(String),
    NotYetValid(String),
    InsufficientBalance(String),
    NotFound(String),
    /// The same (scheme, chain, token, payer, nonce) was already accepted; the answer names
    /// the settlement holding it when known.
    PaymentAlreadyUsed(UsedPayment),
    /// The permit nonce is not the next one; `expected_nonce` is the one to sign.
    NonceMismatch {
        expected_nonce: U256,
        message: String,
    },
    /// The ERC-3009 authorization is already used on chain.
    NonceAlreadyUsed(String),
    Internal(String),
    /// RPC error or timeout: fail closed.
    ChainUnavailable(String),
    /// Database error: fail closed.
    StoreUnavailable(String),
    /// The requirement names a network/asset the settler's terms do not list.
    AssetNotAccepted(String),
    /// The requirement's `pay_to` is not one of the asset's terms `pay_to`.
    PayToNotAccepted(String),
    /// The requirement's price is below the asset's terms `min_price`.
    PriceBelowMinimum(String),
    /// The requirement's token lifetime is over the asset's terms `max_token_ttl_secs`.
    TokenTtlTooLong(String),
    /// The requirement's EIP-712 name/version differ from the asset's terms.
    DomainMismatch(String),
    /// The asset's EIP-712 domain could not be checked against the contract yet (RPC down
    /// at start): payments on it are refused until it is.
    AssetUnverified(String),
    /// Accepting this payment would take the payer's unsettled value in this asset over
    /// the terms' `max_unsettled_per_payer`.
    PayerExposureLimit(String),
    /// Accepting this payment would take the unsettled value of all payers in this asset
    /// over the terms' `max_unsettled_total`.
    TotalExposureLimit(String),
    /// Acceptance (chain reads, store) did not finish within `--accept-deadline-ms`:
    /// nothing was stored, a retry of the same payment is safe.
    AcceptDeadlineExceeded(String),
    /// The network's settlement lane is stalled (transactions not mined, wallet cannot pay
    /// for gas): no new payment is accepted there until it recovers.
    SettlementStalled(String),
    /// A payment of this payer failed through the payer's doing (authorization cancelled,
    /// funds moved, permit nonce spent, allowance revoked): refused until `--block-secs`
    /// pass or an operator runs `x402-settler unblock`.
    PayerBlocked {
        settlement_id: String,
        message: String,
    },
    /// Renewal: the token is not one this settler minted (signature, key, shape), is
    /// expired past the renewal grace, or does not match its settlement / the route.
    InvalidToken(String),
    /// Renewal: the token's payment is not settled yet (`pending` or `submitted`); retry.
    SettlementPending {
        settlement_id: String,
        state: SettlementState,
        message: String,
    },
    /// Renewal: the token's payment failed to settle; no token is renewed.
    PaymentFailed {
        settlement_id: String,
        message: String,
    },
    /// The idempotency key (`payment-identifier`, `Idempotency-Key`) was used with another
    /// payment (or route): refused, naming nothing of the other payment.
    PaymentIdMismatch(String),
    /// Release or void of a payment that is not held (any more): released or voided before,
    /// or never held; `state` says which way it went.
    NotHeld {
        settlement_id: String,
        state: SettlementState,
        message: String,
    },
}

/// The facts of a `payment_already_used` refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedPayment {
    pub message: String,
    /// The settlement that holds this payment's single-use key.
    pub settlement_id: Option<String>,
    pub state: Option<SettlementState>,
}

impl UsedPayment {
    pub fn new(message: impl Into<String>) -> UsedPayment {
        UsedPayment {
            message: message.into(),
            settlement_id: None,
            state: None,
        }
    }
}

impl Refusal {
    /// One of each variant (empty messages), in the order of the documentation.
    pub const ALL: &'static [Refusal] = &[
        Refusal::InvalidJson(String::new()),
        Refusal::InvalidRequest(String::new()),
        Refusal::InvalidPayment(String::new()),
        Refusal::UnsupportedPaymentType(String::new()),
        Refusal::PayloadTooLarge(String::new()),
        Refusal::Unauthorized(String::new()),
        Refusal::NetworkUnsupported(String::new()),
        Refusal::SchemeNotAccepted(String::new()),
        Refusal::NetworkMismatch(String::new()),
        Refusal::AssetMismatch(String::new()),
        Refusal::InvalidSignature(String::new()),
        Refusal::MalleableSignature(String::new()),
        Refusal::SpenderMismatch(String::new()),
        Refusal::RecipientMismatch(String::new()),
        Refusal::InsufficientValue(String::new()),
        Refusal::Expired(String::new()),
        Refusal::DeadlineTooSoon(String::new()),
        Refusal::NotYetValid(String::new()),
        Refusal::InsufficientBalance(String::new()),
        Refusal::NotFound(String::new()),
        Refusal::PaymentAlreadyUsed(UsedPayment {
            message: String::new(),
            settlement_id: None,
            state: None,
        }),
        Refusal::NonceMismatch {
            expected_nonce: U256::ZERO,
            message: String::new(),
        },
        Refusal::NonceAlreadyUsed(String::new()),
        Refusal::Internal(String::new()),
        Refusal::ChainUnavailable(String::new()),
        Refusal::StoreUnavailable(String::new()),
        Refusal::AssetNotAccepted(String::new()),
        Refusal::PayToNotAccepted(String::new()),
        Refusal::PriceBelowMinimum(String::new()),
        Refusal::TokenTtlTooLong(String::new()),
        Refusal::DomainMismatch(String::new()),
        Refusal::AssetUnverified(String::new()),
        Refusal::PayerExposureLimit(String::new()),
        Refusal::TotalExposureLimit(String::new()),
        Refusal::AcceptDeadlineExceeded(String::new()),
        Refusal::SettlementStalled(String::new()),
        Refusal::PayerBlocked {
            settlement_id: String::new(),
            message: String::new(),
        },
        Refusal::InvalidToken(String::new()),
        Refusal::SettlementPending {
            settlement_id: String::new(),
            state: SettlementState::Pending,
            message: String::new(),
        },
        Refusal::PaymentFailed {
            settlement_id: String::new(),
            message: String::new(),
        },
        Refusal::PaymentIdMismatch(String::new()),
        Refusal::NotHeld {
            settlement_id: String::new(),
            state: SettlementState::Pending,
            message: String::new(),
        },
    ];

    /// The stable code (`ApiError.error`, metric label).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InvalidJson(_) => "invalid_json",
            Refusal::InvalidRequest(_) => "invalid_request",
            Refusal::InvalidPayment(_) => "invalid_payment",
            Refusal::UnsupportedPaymentType(_) => "unsupported_payment_type",
            Refusal::PayloadTooLarge(_) => "payload_too_large",
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::NetworkUnsupported(_) => "network_unsupported",
            Refusal::SchemeNotAccepted(_) => "scheme_not_accepted",
            Refusal::NetworkMismatch(_) => "network_mismatch",
            Refusal::AssetMismatch(_) => "asset_mismatch",
            Refusal::InvalidSignature(_) => "invalid_signature",
            Refusal::MalleableSignature(_) => "malleable_signature",
            Refusal::SpenderMismatch(_) => "spender_mismatch",
            Refusal::RecipientMismatch(_) => "recipient_mismatch",
            Refusal::InsufficientValue(_) => "insufficient_value",
            Refusal::Expired(_) => "expired",
            Refusal::DeadlineTooSoon(_) => "deadline_too_soon",
            Refusal::NotYetValid(_) => "not_yet_valid",
            Refusal::InsufficientBalance(_) => "insufficient_balance",
            Refusal::NotFound(_) => "not_found",
            Refusal::PaymentAlreadyUsed(_) => "payment_already_used",
            Refusal::NonceMismatch { .. } => "nonce_mismatch",
            Refusal::NonceAlreadyUsed(_) => "nonce_already_used",
            Refusal::Internal(_) => "internal",
            Refusal::ChainUnavailable(_) => "chain_unavailable",
            Refusal::StoreUnavailable(_) => "store_unavailable",
            Refusal::AssetNotAccepted(_) => "asset_not_accepted",
            Refusal::PayToNotAccepted(_) => "pay_to_not_accepted",
            Refusal::PriceBelowMinimum(_) => "price_below_minimum",
            Refusal::TokenTtlTooLong(_) => "token_ttl_too_long",
            Refusal::DomainMismatch(_) => "eip712_domain_mismatch",
            Refusal::AssetUnverified(_) => "asset_unverified",
            Refusal::PayerExposureLimit(_) => "payer_exposure_limit",
            Refusal::TotalExposureLimit(_) => "total_exposure_limit",
            Refusal::AcceptDeadlineExceeded(_) => "accept_deadline_exceeded",
            Refusal::SettlementStalled(_) => "settlement_stalled",
            Refusal::PayerBlocked { .. } => "payer_blocked",
            Refusal::InvalidToken(_) => "invalid_token",
            Refusal::SettlementPending { .. } => "settlement_pending",
            Refusal::PaymentFailed { .. } => "payment_failed",
            Refusal::PaymentIdMismatch(_) => "payment_identifier_mismatch",
            Refusal::NotHeld { .. } => "settlement_not_held",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::NonceMismatch { message, .. } => message,
            Refusal::PaymentAlreadyUsed(u) => &u.message,
            Refusal::PayerBlocked { message, .. } => message,
            Refusal::SettlementPending { message, .. } => message,
            Refusal::PaymentFailed { message, .. } => message,
            Refusal::NotHeld { message, .. } => message,
            Refusal::InvalidJson(m)
            | Refusal::InvalidRequest(m)
            | Refusal::InvalidPayment(m)
            | Refusal::UnsupportedPaymentType(m)
            | Refusal::PayloadTooLarge(m)
            | Refusal::Unauthorized(m)
            | Refusal::NetworkUnsupported(m)
            | Refusal::SchemeNotAccepted(m)
            | Refusal::NetworkMismatch(m)
            | Refusal::AssetMismatch(m)
            | Refusal::InvalidSignature(m)
            | Refusal::MalleableSignature(m)
            | Refusal::SpenderMismatch(m)
            | Refusal::RecipientMismatch(m)
            | Refusal::InsufficientValue(m)
            | Refusal::Expired(m)
            | Refusal::DeadlineTooSoon(m)
            | Refusal::NotYetValid(m)
            | Refusal::InsufficientBalance(m)
            | Refusal::NotFound(m)
            | Refusal::NonceAlreadyUsed(m)
            | Refusal::Internal(m)
            | Refusal::ChainUnavailable(m)
            | Refusal::StoreUnavailable(m)
            | Refusal::AssetNotAccepted(m)
            | Refusal::PayToNotAccepted(m)
            | Refusal::PriceBelowMinimum(m)
            | Refusal::TokenTtlTooLong(m)
            | Refusal::DomainMismatch(m)
            | Refusal::AssetUnverified(m)
            | Refusal::PayerExposureLimit(m)
            | Refusal::TotalExposureLimit(m)
            | Refusal::AcceptDeadlineExceeded(m)
            | Refusal::SettlementStalled(m)
            | Refusal::InvalidToken(m)
            | Refusal::PaymentIdMismatch(m) => m,
        }
    }

    /// For `nonce_mismatch`: the EIP-2612 nonce the payer must sign next.
    pub fn expected_nonce(&self) -> Option<U256> {
        match self {
            Refusal::NonceMismatch { expected_nonce, .. } => Some(*expected_nonce),
            _ => None,
        }
    }

    /// An outage on the settler's side (chain, database, bug), not a fault of the payment.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Refusal::Internal(_)
                | Refusal::ChainUnavailable(_)
                | Refusal::StoreUnavailable(_)
                | Refusal::AssetUnverified(_)
                | Refusal::TotalExposureLimit(_)
                | Refusal::AcceptDeadlineExceeded(_)
                | Refusal::SettlementStalled(_)
        )
    }

    /// The message a caller sees: [`Refusal::message`], except for failures on the settler's
    /// side (`internal`, `chain_unavailable`, `store_unavailable`), whose details (database
    /// and RPC errors, URLs, SQL) stay in the log and which answer a fixed text.
    pub fn public_message(&self) -> &str {
        match self {
            Refusal::Internal(_) => INTERNAL,
            Refusal::ChainUnavailable(_) => CHAIN_UNAVAILABLE,
            Refusal::StoreUnavailable(_) => STORE_UNAVAILABLE,
            _ => self.message(),
        }
    }

    /// The JSON body of the answer (with [`Refusal::public_message`]).
    pub fn to_api(&self) -> ApiError {
        ApiError {
            error: self.code().to_string(),
            message: self.public_message().to_string(),
            expected_nonce: self.expected_nonce().map(|n| n.to_string()),
            settlement_id: match self {
                Refusal::PaymentAlreadyUsed(u) => u.settlement_id.clone(),
                Refusal::PayerBlocked { settlement_id, .. } => Some(settlement_id.clone()),
                Refusal::SettlementPending { settlement_id, .. }
                | Refusal::PaymentFailed { settlement_id, .. }
                | Refusal::NotHeld { settlement_id, .. } => Some(settlement_id.clone()),
                _ => None,
            },
            state: match self {
                Refusal::PaymentAlreadyUsed(u) => u.state,
                Refusal::SettlementPending { state, .. } | Refusal::NotHeld { state, .. } => {
                    Some(*state)
                }
                Refusal::PaymentFailed { .. } => Some(SettlementState::Failed),
                _ => None,
            },
        }
    }
}

/// The payment parser's failures, answered with its own codes (`PaymentError::code`).
impl From<PaymentError> for Refusal {
    fn from(e: PaymentError) -> Self {
        let message = e.to_string();
        match e {
            PaymentError::Json(_) => Refusal::InvalidJson(message),
            PaymentError::Unsupported(_) => Refusal::UnsupportedPaymentType(message),
            PaymentError::Field { .. } => Refusal::InvalidPayment(message),
        }
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

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate => Refusal::PaymentAlreadyUsed(UsedPayment::new(
                "this payment was already used to mint a token",
            )),
            // The database's own text (SQL, driver, host) goes to the log, never to a caller.
            StoreError::Db(e) => {
                tracing::warn!(error = %e, "database error; answered store_unavailable");
                Refusal::StoreUnavailable(STORE_UNAVAILABLE.into())
            }
            StoreError::Corrupt(m) => {
                tracing::warn!(error = %m, "corrupt database row; answered internal");
                Refusal::Internal(INTERNAL.into())
            }
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

impl From<ChainError> for Refusal {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::UnknownNetwork(n) => {
                Refusal::NetworkUnsupported(format!("the settler has no RPC endpoint for {n}"))
            }
            // The RPC's own text (transport errors, endpoint URLs) goes to the log only.
            other => {
                tracing::warn!(error = %other, "chain RPC error; answered chain_unavailable");
                Refusal::ChainUnavailable(CHAIN_UNAVAILABLE.into())
            }
        }
    }
}

/// The public message of `internal` answers: a bug's details are the log's.
pub const INTERNAL: &str = "internal error";
/// The public message of `chain_unavailable` answers.
pub const CHAIN_UNAVAILABLE: &str = "chain RPC unavailable";
/// The public message of `store_unavailable` answers.
pub const STORE_UNAVAILABLE: &str = "database unavailable";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_answer_generic_messages() {
        let db: Refusal = StoreError::Db(sqlx::Error::Protocol(
            "error returned from database: relation \"x402_payments\" does not exist".into(),
        ))
        .into();
        assert_eq!(db.code(), "store_unavailable");
        assert_eq!(db.to_api().message, "database unavailable");
        let rpc: Refusal = ChainError::Rpc {
            network: "eip155:1".into(),
            message: "eth_call: error sending request for url (http://10.0.0.1:8545/key)".into(),
        }
        .into();
        assert_eq!(rpc.code(), "chain_unavailable");
        assert_eq!(rpc.to_api().message, "chain RPC unavailable");
        let timeout: Refusal = ChainError::Timeout {
            network: "eip155:1".into(),
        }
        .into();
        assert_eq!(timeout.to_api().message, "chain RPC unavailable");
        let corrupt: Refusal = StoreError::Corrupt("column value: \"x\"".into()).into();
        assert_eq!(corrupt.to_api().message, "internal error");
        // Built with details elsewhere: the answer still carries none.
        let joined = Refusal::Internal("storing the payment: task 7 panicked".into());
        assert_eq!(joined.to_api().message, "internal error");
        assert_eq!(
            Refusal::ChainUnavailable("http://rpc".into())
                .to_api()
                .message,
            "chain RPC unavailable"
        );
        // A client's fault keeps its message.
        assert_eq!(
            Refusal::InvalidPayment("payment field `v`: 29".into())
                .to_api()
                .message,
            "payment field `v`: 29"
        );
        let unknown: Refusal = ChainError::UnknownNetwork("eip155:5".into()).into();
        assert_eq!(unknown.code(), "network_unsupported");
    }

    #[test]
    fn codes_are_unique_and_answers_carry_the_facts() {
        let codes: std::collections::BTreeSet<&str> =
            Refusal::ALL.iter().map(Refusal::code).collect();
        assert_eq!(codes.len(), Refusal::ALL.len());
        let r = Refusal::NonceMismatch {
            expected_nonce: U256::from(3u8),
            message: "m".into(),
        };
        assert_eq!(
            r.to_api(),
            ApiError {
                error: "nonce_mismatch".into(),
                message: "m".into(),
                expected_nonce: Some("3".into()),
                settlement_id: None,
                state: None,
            }
        );
        assert_eq!(r.to_string(), "nonce_mismatch: m");
        let parsed: Refusal = PaymentError::Field {
            field: "v",
            problem: "p".into(),
        }
        .into();
        assert_eq!(
            parsed.code(),
            PaymentError::Field {
                field: "v",
                problem: "p".into()
            }
            .code()
        );
    }
}
