//! x402 facilitator API for other gateways: `POST /verify`, `POST /settle`, `GET /supported`
//! (x402 v2, scheme `exact` = ERC-3009 `transferWithAuthorization`; wire types from
//! `x402_protocol::x402v2`).
//!
//! A facilitator settlement is the same durable single-use payment as one behind a token: the
//! requirement is built from `paymentRequirements` (route `x402-facilitator`), checked by the
//! same service, stored with the same unique key and settled by the same lane. `/settle` then
//! waits for the lane up to `--settle-timeout-secs`. Invalid payments answer HTTP 200 with
//! `isValid: false` / `success: false` and a reason code of the reference implementation.

use std::sync::Arc;

use alloy::primitives::{Address, U256};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use x402_protocol::payment::{ClientPayment, PaymentError, PaymentFormat};
use x402_protocol::settler_api::{check_payment_id, PricedMethod, Requirement, SettlementState};
use x402_protocol::x402v2::{
    raw_payment_identifier, FacilitatorRequest, SettleResponse, SupportedKind, SupportedResponse,
    VerifyResponse, PAYMENT_IDENTIFIER, SCHEME_EXACT, X402_VERSION,
};
use x402_protocol::{Asset, Network, PaymentMethod, Scheme};

use super::{check_facilitator_caller, no_store, AppError, AppState};
use crate::error::Refusal;
use crate::metrics as m;
use crate::service::Mode;
use crate::store::NewPayment;

/// The route facilitator payments are stored under.
pub(crate) const ROUTE: &str = "x402-facilitator";

/// Every `invalidReason` / `errorReason` `/verify` and `/settle` answer with.
/// `settler/openapi.yaml` documents each (`tests/openapi.rs`, through `api::reasons`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    InvalidPayload,
    InvalidX402Version,
    UnsupportedScheme,
    NetworkMismatch,
    Signature,
    RecipientMismatch,
    ValueMismatch,
    ValidBefore,
    ValidAfter,
    NonceAlreadyUsed,
    InsufficientBalance,
    Unauthorized,
    UnexpectedVerifyError,
    UnexpectedSettleError,
    TransactionFailed,
    SettlementPending,
    /// The requirements are outside the settler's terms (asset, payTo, price, EIP-712 domain).
    InvalidPaymentRequirements,
    /// The payer's unsettled value in this asset would exceed the settler's per-payer cap.
    PayerExposureLimit,
    /// A payment of this payer failed through the payer's doing: blocked for a while.
    PayerBlocked,
}

impl Reason {
    pub(crate) const ALL: &'static [Reason] = &[
        Reason::InvalidPayload,
        Reason::InvalidX402Version,
        Reason::UnsupportedScheme,
        Reason::NetworkMismatch,
        Reason::Signature,
        Reason::RecipientMismatch,
        Reason::ValueMismatch,
        Reason::ValidBefore,
        Reason::ValidAfter,
        Reason::NonceAlreadyUsed,
        Reason::InsufficientBalance,
        Reason::Unauthorized,
        Reason::UnexpectedVerifyError,
        Reason::UnexpectedSettleError,
        Reason::TransactionFailed,
        Reason::SettlementPending,
        Reason::InvalidPaymentRequirements,
        Reason::PayerExposureLimit,
        Reason::PayerBlocked,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidPayload => "invalid_payload",
            Reason::InvalidX402Version => "invalid_x402_version",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::NetworkMismatch => "network_mismatch",
            Reason::Signature => "invalid_exact_evm_payload_signature",
            Reason::RecipientMismatch => "invalid_exact_evm_payload_recipient_mismatch",
            Reason::ValueMismatch => "invalid_exact_evm_payload_authorization_value_mismatch",
            Reason::ValidBefore => "invalid_exact_evm_payload_authorization_valid_before",
            Reason::ValidAfter => "invalid_exact_evm_payload_authorization_valid_after",
            Reason::NonceAlreadyUsed => "invalid_exact_evm_nonce_already_used",
            Reason::InsufficientBalance => "invalid_exact_evm_insufficient_balance",
            Reason::Unauthorized => "unauthorized",
            Reason::UnexpectedVerifyError => "unexpected_verify_error",
            Reason::UnexpectedSettleError => "unexpected_settle_error",
            Reason::TransactionFailed => "transaction_failed",
            Reason::SettlementPending => "settlement_pending",
            Reason::InvalidPaymentRequirements => "invalid_payment_requirements",
            Reason::PayerExposureLimit => "invalid_exact_evm_payer_exposure_limit",
            Reason::PayerBlocked => "invalid_exact_evm_payer_blocked",
        }
    }

    /// The reason of a service refusal. Outages are not "invalid": `unexpected_*` (HTTP 503).
    fn of(r: &Refusal, mode: Mode) -> Reason {
        match r {
            Refusal::InvalidSignature(_) | Refusal::MalleableSignature(_) => Reason::Signature,
            Refusal::RecipientMismatch(_) => Reason::RecipientMismatch,
            Refusal::InsufficientValue(_) => Reason::ValueMismatch,
            Refusal::Expired(_) | Refusal::DeadlineTooSoon(_) => Reason::ValidBefore,
            Refusal::NotYetValid(_) => Reason::ValidAfter,
            Refusal::NonceAlreadyUsed(_) | Refusal::PaymentAlreadyUsed(_) => {
                Reason::NonceAlreadyUsed
            }
            Refusal::InsufficientBalance(_) => Reason::InsufficientBalance,
            Refusal::PayerExposureLimit(_) => Reason::PayerExposureLimit,
            Refusal::PayerBlocked { .. } => Reason::PayerBlocked,
            Refusal::NetworkMismatch(_) | Refusal::NetworkUnsupported(_) => Reason::NetworkMismatch,
            Refusal::SchemeNotAccepted(_) | Refusal::UnsupportedPaymentType(_) => {
                Reason::UnsupportedScheme
            }
            Refusal::AssetNotAccepted(_)
            | Refusal::PayToNotAccepted(_)
            | Refusal::PriceBelowMinimum(_)
            | Refusal::TokenTtlTooLong(_)
            | Refusal::DomainMismatch(_) => Reason::InvalidPaymentRequirements,
            Refusal::ChainUnavailable(_)
            | Refusal::StoreUnavailable(_)
            | Refusal::Internal(_)
            | Refusal::AssetUnverified(_)
            | Refusal::TotalExposureLimit(_)
            | Refusal::AcceptDeadlineExceeded(_)
            | Refusal::SettlementStalled(_) => match mode {
                Mode::Store => Reason::UnexpectedSettleError,
                Mode::Verify => Reason::UnexpectedVerifyError,
            },
            Refusal::InvalidJson(_)
            | Refusal::InvalidRequest(_)
            | Refusal::InvalidPayment(_)
            | Refusal::PayloadTooLarge(_)
            | Refusal::Unauthorized(_)
            | Refusal::AssetMismatch(_)
            | Refusal::SpenderMismatch(_)
            | Refusal::NotFound(_)
            | Refusal::NonceMismatch { .. } => Reason::InvalidPayload,
            // Renewal refusals; the facilitator never renews, so never answers these.
            Refusal::InvalidToken(_) => Reason::InvalidPayload,
            Refusal::SettlementPending { .. } => Reason::SettlementPending,
            Refusal::PaymentFailed { .. } => Reason::TransactionFailed,
            // The payload's `payment-identifier` names another payment; holds are the token
            // API's (never answered here).
            Refusal::PaymentIdMismatch(_) | Refusal::NotHeld { .. } => Reason::InvalidPayload,
        }
    }
}

/// Why a payment is invalid, in the reference implementation's words.
#[derive(Debug)]
pub(crate) struct Invalid {
    status: StatusCode,
    reason: Reason,
    message: String,
    payer: Option<Address>,
}

impl Invalid {
    fn new(reason: Reason, message: impl Into<String>) -> Invalid {
        Invalid {
            status: StatusCode::OK,
            reason,
            message: message.into(),
            payer: None,
        }
    }
    fn with_payer(mut self, payer: Address) -> Invalid {
        self.payer = Some(payer);
        self
    }
    /// A service refusal, counted like the token API's.
    fn refused(r: Refusal, mode: Mode) -> Invalid {
        metrics::counter!(m::REJECTIONS, "code" => r.code()).increment(1);
        let status = if r.is_outage() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let payer = None;
        if r.is_outage() {
            tracing::warn!(code = r.code(), message = %r.message(), "facilitator request failed");
        }
        Invalid {
            status,
            reason: Reason::of(&r, mode),
            // No database or RPC text in the answer (the log line above has it).
            message: r.public_message().to_string(),
            payer,
        }
    }
}

/// A parsed facilitator request.
struct Request {
    payment: ClientPayment,
    requirement: Requirement,
    network: Network,
    amount: U256,
    /// The payload's x402 `payment-identifier`: the same payload with it posted to
    /// `/settle` again gets the same answer, after broadcast too (see `service::idempotency`).
    payment_id: Option<String>,
}

/// Parses `{x402Version, paymentPayload, paymentRequirements}`. A body that is not such an
/// object is HTTP 400; anything wrong inside it is an invalid payment (HTTP 200).
fn parse(st: &AppState, body: &[u8]) -> Result<Request, Invalid> {
    let bad = |m: String| Invalid {
        status: StatusCode::BAD_REQUEST,
        reason: Reason::InvalidPayload,
        message: m,
        payer: None,
    };
    let root: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("request body is not JSON: {e}")))?;
    let (Some(payload), Some(reqs)) = (root.get("paymentPayload"), root.get("paymentRequirements"))
    else {
        return Err(bad(
            "request body must have paymentPayload and paymentRequirements".into(),
        ));
    };
    if !payload.is_object() || !reqs.is_object() {
        return Err(bad(
            "paymentPayload and paymentRequirements must be objects".into(),
        ));
    }
    // The version first: a body of another version is not read as this one.
    for (what, v) in [
        ("x402Version", root.get("x402Version")),
        ("paymentPayload.x402Version", payload.get("x402Version")),
    ] {
        if v.and_then(Value::as_u64) != Some(u64::from(X402_VERSION)) {
            return Err(Invalid::new(
                Reason::InvalidX402Version,
                format!("{what} must be 2"),
            ));
        }
    }
    let payment_id = raw_payment_identifier(payload)
        .and_then(|id| match id {
            Some(id) => check_payment_id(&id)
                .map(|()| Some(id))
                .map_err(|e| format!("paymentPayload.extensions.payment-identifier.info.id: {e}")),
            None => Ok(None),
        })
        .map_err(|m| Invalid::new(Reason::InvalidPayload, m))?;
    // The error names the field (`paymentPayload.payload.authorization.value`, ...).
    let req: FacilitatorRequest = serde_path_to_error::deserialize(root).map_err(|e| {
        Invalid::new(
            Reason::InvalidPayload,
            format!("request field `{}`: {}", e.path(), e.inner()),
        )
    })?;

    // The requirements (the gateway's terms).
    let reqs = &req.payment_requirements;
    if reqs.scheme != SCHEME_EXACT {
        return Err(Invalid::new(
            Reason::UnsupportedScheme,
            format!("scheme {:?} is not supported (exact)", reqs.scheme),
        ));
    }
    let network: Network = reqs.network.parse().map_err(|e| {
        Invalid::new(
            Reason::NetworkMismatch,
            format!("paymentRequirements.network: {e}"),
        )
    })?;
    if !st.service.serves(network) {
        return Err(Invalid::new(
            Reason::NetworkMismatch,
            format!("network {network} is not supported by this facilitator"),
        ));
    }
    let amount = U256::from_str_radix(&reqs.amount, 10).map_err(|_| {
        Invalid::new(
            Reason::InvalidPayload,
            "paymentRequirements.amount: must be a decimal integer string",
        )
    })?;
    let asset: Address = reqs.asset.parse().map_err(|_| {
        Invalid::new(
            Reason::InvalidPayload,
            "paymentRequirements.asset: not an address",
        )
    })?;
    let pay_to: Address = reqs.pay_to.parse().map_err(|_| {
        Invalid::new(
            Reason::InvalidPayload,
            "paymentRequirements.payTo: not an address",
        )
    })?;
    let Some(extra) = &reqs.extra else {
        return Err(Invalid::new(
            Reason::InvalidPayload,
            "paymentRequirements.extra.name and .version (the token's EIP-712 domain) are required",
        ));
    };

    // The payload (the client's signed authorization).
    let accepted = &req.payment_payload.accepted;
    if accepted.scheme != SCHEME_EXACT {
        return Err(Invalid::new(
            Reason::UnsupportedScheme,
            format!(
                "paymentPayload.accepted.scheme {:?} is not supported (exact)",
                accepted.scheme
            ),
        ));
    }
    if accepted.network != reqs.network {
        return Err(Invalid::new(
            Reason::NetworkMismatch,
            format!(
                "paymentPayload.accepted.network {} is not paymentRequirements.network {}",
                accepted.network, reqs.network
            ),
        ));
    }
    let payment = req
        .payment_payload
        .to_client_payment()
        .map_err(|e| match e {
            PaymentError::Unsupported(s) => Invalid::new(
                Reason::UnsupportedScheme,
                format!("payment type {s:?} is not supported"),
            ),
            other => Invalid::new(Reason::InvalidPayload, other.to_string()),
        })?;
    if payment.token() != asset {
        return Err(Invalid::new(
            Reason::InvalidPayload,
            format!(
                "paymentPayload.accepted.asset {} is not paymentRequirements.asset {asset}",
                payment.token()
            ),
        )
        .with_payer(payment.payer()));
    }
    let resource = req
        .payment_payload
        .resource
        .as_ref()
        .map(|r| r.url.clone())
        .filter(|u| !u.is_empty());
    let requirement = Requirement {
        route: ROUTE.into(),
        accepts: vec![PricedMethod {
            amount,
            method: PaymentMethod {
                scheme: Scheme::Exact,
                network,
                asset: Asset {
                    address: asset,
                    decimals: 0,
                    name: extra.name.clone(),
                    version: extra.version.clone(),
                    symbol: String::new(),
                },
                pay_to,
                spender: None,
            },
        }],
        token_ttl_secs: 0,
        resource,
    };
    Ok(Request {
        payment,
        requirement,
        network,
        amount,
        payment_id,
    })
}

/// Every check of `/v1/tokens`, plus `exact`'s value == amount; with [`Mode::Store`] the
/// payment is stored for settlement. Returns the request and the payment (its id is a
/// settlement id only when stored).
async fn check(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    mode: Mode,
) -> Result<(Request, NewPayment), Invalid> {
    let caller = check_facilitator_caller(st, headers).map_err(|r| {
        metrics::counter!(m::REJECTIONS, "code" => r.code()).increment(1);
        Invalid {
            status: StatusCode::UNAUTHORIZED,
            reason: Reason::Unauthorized,
            message: r.message().to_string(),
            payer: None,
        }
    })?;
    let endpoint = match mode {
        Mode::Verify => "verify",
        Mode::Store => "settle",
    };
    metrics::counter!(m::FACILITATOR_REQUESTS, "caller" => caller.clone(), "endpoint" => endpoint)
        .increment(1);
    tracing::debug!(caller = %caller, endpoint, "facilitator request");
    let body = body.map_err(|e| Invalid {
        status: e.status(),
        reason: Reason::InvalidPayload,
        message: e.body_text(),
        payer: None,
    })?;
    let req = parse(st, &body)?;
    let payer = req.payment.payer();
    let svc = &st.service;
    let checked = svc
        .check(&req.payment, &req.requirement)
        .map_err(|r| Invalid::refused(r, mode).with_payer(payer))?;
    if req.payment.value() != req.amount {
        return Err(Invalid::new(
            Reason::ValueMismatch,
            format!(
                "authorization value {} is not the required amount {}",
                req.payment.value(),
                req.amount
            ),
        )
        .with_payer(payer));
    }
    let new = svc
        .accept(
            &req.payment,
            PaymentFormat::X402V2,
            &req.requirement,
            &checked,
            (mode, crate::service::NonceSource::Node),
            crate::store::AcceptExtras {
                payment_id: req.payment_id.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|r| Invalid::refused(r, mode).with_payer(payer))?;
    // The same payload posted to `/settle` again before its settlement was broadcast is
    // answered from the stored settlement (`Accepted::Again`); after broadcast too when it
    // carries the `payment-identifier` it was first settled with (the identifier is never on
    // chain, so it is the original server retrying); otherwise it is
    // `invalid_exact_evm_nonce_already_used` naming the settlement, as any replay. The same
    // identifier with another payload is `invalid_payload` (payment_identifier_mismatch).
    Ok((req, new.payment().clone()))
}

/// A refused `/verify`: the verify answer under the refusal's status.
pub(crate) struct VerifyRefused(Invalid);

impl IntoResponse for VerifyRefused {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = VerifyResponse {
            is_valid: false,
            invalid_reason: Some(e.reason.as_str().into()),
            invalid_message: Some(e.message),
            payer: e.payer,
        };
        no_store((e.status, Json(body)).into_response())
    }
}

/// A refused `/settle`: the settle answer under the refusal's status. `network` is the
/// requirement's as sent (empty when unreadable).
pub(crate) struct SettleRefused(Invalid, String);

impl IntoResponse for SettleRefused {
    fn into_response(self) -> Response {
        let SettleRefused(e, network) = self;
        let body = SettleResponse {
            success: false,
            error_reason: Some(e.reason.as_str().into()),
            error_message: Some(e.message),
            payer: e.payer.map(|a| lower_hex(&a)),
            transaction: String::new(),
            network,
            extra: None,
        };
        no_store((e.status, Json(body)).into_response())
    }
}

pub(super) async fn post_verify(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, VerifyRefused> {
    match check(&st, &headers, body, Mode::Verify).await {
        Ok((req, _)) => {
            let body = VerifyResponse {
                is_valid: true,
                invalid_reason: None,
                invalid_message: None,
                payer: Some(req.payment.payer()),
            };
            Ok(no_store(Json(body).into_response()))
        }
        Err(e) => {
            tracing::info!(reason = e.reason.as_str(), message = %e.message, "facilitator verify: invalid");
            Err(VerifyRefused(e))
        }
    }
}

pub(super) async fn post_settle(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, SettleRefused> {
    // For the refusal's `network` field only: parsed again on that path, not on success.
    let raw = body.as_ref().ok().cloned();
    let (req, id) = match check(&st, &headers, body, Mode::Store).await {
        Ok((req, new)) => (req, new.id),
        Err(e) => {
            let network = raw
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| {
                    v.pointer("/paymentRequirements/network")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_default();
            tracing::info!(reason = e.reason.as_str(), message = %e.message, "facilitator settle: refused");
            return Err(SettleRefused(e, network));
        }
    };
    let payer = req.payment.payer();
    tracing::info!(settlement_id = %id, payer = %payer, network = %req.network, amount = %req.amount, "facilitator settlement accepted");

    // Wait for the lane (it settles the stored payment whatever happens to this request).
    let last = st.service.await_final(&id, st.settle_timeout).await;
    let transaction = last
        .as_ref()
        .and_then(|r| r.transfer_tx.clone())
        .unwrap_or_default();
    let network = req.network.to_string();
    let body = match last.as_ref().map(|r| r.state) {
        Some(SettlementState::Settled) => SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some(lower_hex(&payer)),
            transaction,
            network,
            extra: None,
        },
        Some(SettlementState::Failed) => SettleResponse {
            success: false,
            error_reason: Some(Reason::TransactionFailed.as_str().into()),
            error_message: last.as_ref().and_then(|r| r.error.clone()),
            payer: Some(lower_hex(&payer)),
            transaction,
            network,
            extra: None,
        },
        _ => SettleResponse {
            success: false,
            error_reason: Some(Reason::SettlementPending.as_str().into()),
            error_message: Some(format!(
                "not settled within {} s; settlement {id} continues in the background",
                st.settle_timeout.as_secs()
            )),
            payer: Some(lower_hex(&payer)),
            transaction,
            network,
            extra: None,
        },
    };
    Ok(no_store(Json(body).into_response()))
}

pub(super) async fn get_supported(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<SupportedResponse>, AppError> {
    let caller = check_facilitator_caller(&st, &headers)?;
    metrics::counter!(m::FACILITATOR_REQUESTS, "caller" => caller, "endpoint" => "supported")
        .increment(1);
    let (networks, signers) = st.service.networks_and_signers();
    let kinds = networks
        .iter()
        .map(|n| SupportedKind {
            x402_version: X402_VERSION,
            scheme: SCHEME_EXACT.into(),
            network: n.to_string(),
            extra: None,
        })
        .collect();
    Ok(Json(SupportedResponse {
        kinds,
        // Honoured by `/settle` (idempotent retries, see `check`).
        extensions: vec![PAYMENT_IDENTIFIER.to_string()],
        signers: [("eip155:*".to_string(), signers)].into(),
    }))
}

/// An address as the facilitator API has always written it: lower-case hex.
fn lower_hex(a: &Address) -> String {
    format!("{a:#x}")
}
