//! x402 facilitator API for other gateways: `POST /verify`, `POST /settle`, `GET /supported`
//! (x402 v2, scheme `exact` = ERC-3009 `transferWithAuthorization`).
//!
//! A facilitator settlement is the same durable single-use payment as one behind a token: the
//! requirement is built from `paymentRequirements` (route `x402-facilitator`), checked by the
//! same code, stored with the same unique key and settled by the same lane. `/settle` then
//! waits for the lane up to `--settle-timeout-secs`. Invalid payments answer HTTP 200 with
//! `isValid: false` / `success: false` and a reason code of the reference implementation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use x402_protocol::payment::{parse_payment_value, ClientPayment, PaymentError};
use x402_protocol::settler_api::{PricedMethod, Requirement, SettlementState};
use x402_protocol::{Asset, Network, PaymentMethod, Scheme};

use crate::error::Rejection;
use crate::http::{check_api_secret, check_chain_and_store, check_static, AppState};
use crate::metrics as m;
use crate::store::NewPayment;

/// The route facilitator payments are stored under.
pub const ROUTE: &str = "x402-facilitator";

/// Every `invalidReason` / `errorReason` `/verify` and `/settle` answer with.
/// `settler/openapi.yaml` documents each; `tests/openapi.rs` checks it, and that every reason
/// in this file is listed here.
pub const REASONS: &[&str] = &[
    "invalid_payload",
    "invalid_x402_version",
    "unsupported_scheme",
    "network_mismatch",
    "invalid_exact_evm_payload_signature",
    "invalid_exact_evm_payload_recipient_mismatch",
    "invalid_exact_evm_payload_authorization_value_mismatch",
    "invalid_exact_evm_payload_authorization_valid_before",
    "invalid_exact_evm_payload_authorization_valid_after",
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_insufficient_balance",
    "unauthorized",
    "unexpected_verify_error",
    "unexpected_settle_error",
    "transaction_failed",
    "settlement_pending",
];

/// Why a payment is invalid, in the reference implementation's words.
#[derive(Debug)]
struct Invalid {
    status: StatusCode,
    reason: &'static str,
    message: String,
    payer: Option<Address>,
}

impl Invalid {
    fn new(reason: &'static str, message: impl Into<String>) -> Invalid {
        Invalid { status: StatusCode::OK, reason, message: message.into(), payer: None }
    }
    fn with_payer(mut self, payer: Address) -> Invalid {
        self.payer = Some(payer);
        self
    }
}

/// Maps the settler's check codes onto x402 reason codes. Outages are not "invalid": HTTP 503.
fn from_rejection(r: Rejection, settle: bool) -> Invalid {
    metrics::counter!(m::REJECTIONS, "code" => r.code).increment(1);
    let reason = match r.code {
        "invalid_signature" | "malleable_signature" => "invalid_exact_evm_payload_signature",
        "recipient_mismatch" => "invalid_exact_evm_payload_recipient_mismatch",
        "insufficient_value" => "invalid_exact_evm_payload_authorization_value_mismatch",
        "expired" | "deadline_too_soon" => "invalid_exact_evm_payload_authorization_valid_before",
        "not_yet_valid" => "invalid_exact_evm_payload_authorization_valid_after",
        "nonce_already_used" | "payment_already_used" => "invalid_exact_evm_nonce_already_used",
        "insufficient_balance" => "invalid_exact_evm_insufficient_balance",
        "network_mismatch" | "network_unsupported" => "network_mismatch",
        "scheme_not_accepted" | "unsupported_payment_type" => "unsupported_scheme",
        "chain_unavailable" | "store_unavailable" | "internal" => {
            let reason = if settle { "unexpected_settle_error" } else { "unexpected_verify_error" };
            return Invalid { status: StatusCode::SERVICE_UNAVAILABLE, reason, message: r.message, payer: None };
        }
        _ => "invalid_payload",
    };
    Invalid::new(reason, r.message)
}

/// A parsed facilitator request.
struct Request {
    payment: ClientPayment,
    requirement: Requirement,
    network: Network,
    amount: U256,
}

fn field<'a>(v: &'a Value, path: &str, name: &str) -> Result<&'a Value, Invalid> {
    v.get(name).ok_or_else(|| Invalid::new("invalid_payload", format!("{path}.{name}: missing")))
}

fn string<'a>(v: &'a Value, path: &str, name: &str) -> Result<&'a str, Invalid> {
    field(v, path, name)?.as_str().ok_or_else(|| Invalid::new("invalid_payload", format!("{path}.{name}: must be a string")))
}

/// Parses `{x402Version, paymentPayload, paymentRequirements}`. A body that is not such an
/// object is HTTP 400; anything wrong inside it is an invalid payment (HTTP 200).
fn parse(st: &AppState, body: &[u8]) -> Result<Request, Invalid> {
    let bad = |m: String| Invalid { status: StatusCode::BAD_REQUEST, reason: "invalid_payload", message: m, payer: None };
    let root: Value = serde_json::from_slice(body).map_err(|e| bad(format!("request body is not JSON: {e}")))?;
    let (Some(payload), Some(reqs)) = (root.get("paymentPayload"), root.get("paymentRequirements")) else {
        return Err(bad("request body must have paymentPayload and paymentRequirements".into()));
    };
    if !payload.is_object() || !reqs.is_object() {
        return Err(bad("paymentPayload and paymentRequirements must be objects".into()));
    }
    for (what, v) in [("x402Version", root.get("x402Version")), ("paymentPayload.x402Version", payload.get("x402Version"))] {
        if v.and_then(Value::as_u64) != Some(2) {
            return Err(Invalid::new("invalid_x402_version", format!("{what} must be 2")));
        }
    }

    // The requirements (the gateway's terms).
    let scheme = string(reqs, "paymentRequirements", "scheme")?;
    if scheme != "exact" {
        return Err(Invalid::new("unsupported_scheme", format!("scheme {scheme:?} is not supported (exact)")));
    }
    let net_str = string(reqs, "paymentRequirements", "network")?;
    let network: Network = net_str.parse().map_err(|e| Invalid::new("network_mismatch", format!("paymentRequirements.network: {e}")))?;
    if !st.chains.by_network.contains_key(&network) {
        return Err(Invalid::new("network_mismatch", format!("network {network} is not supported by this facilitator")));
    }
    let amount = U256::from_str_radix(string(reqs, "paymentRequirements", "amount")?, 10)
        .map_err(|_| Invalid::new("invalid_payload", "paymentRequirements.amount: must be a decimal integer string"))?;
    let asset: Address = string(reqs, "paymentRequirements", "asset")?.parse().map_err(|_| Invalid::new("invalid_payload", "paymentRequirements.asset: not an address"))?;
    let pay_to: Address = string(reqs, "paymentRequirements", "payTo")?.parse().map_err(|_| Invalid::new("invalid_payload", "paymentRequirements.payTo: not an address"))?;
    let extra = reqs.get("extra").cloned().unwrap_or(Value::Null);
    let (Some(name), Some(version)) = (extra.get("name").and_then(Value::as_str), extra.get("version").and_then(Value::as_str)) else {
        return Err(Invalid::new("invalid_payload", "paymentRequirements.extra.name and .version (the token's EIP-712 domain) are required"));
    };

    // The payload (the client's signed authorization).
    let accepted = field(payload, "paymentPayload", "accepted")?;
    let acc_scheme = string(accepted, "paymentPayload.accepted", "scheme")?;
    if acc_scheme != "exact" {
        return Err(Invalid::new("unsupported_scheme", format!("paymentPayload.accepted.scheme {acc_scheme:?} is not supported (exact)")));
    }
    let acc_net = string(accepted, "paymentPayload.accepted", "network")?;
    if acc_net != net_str {
        return Err(Invalid::new("network_mismatch", format!("paymentPayload.accepted.network {acc_net} is not paymentRequirements.network {net_str}")));
    }
    let (payment, _) = parse_payment_value(payload).map_err(|e| match e {
        PaymentError::Unsupported(s) => Invalid::new("unsupported_scheme", format!("payment type {s:?} is not supported")),
        other => Invalid::new("invalid_payload", other.to_string()),
    })?;
    if payment.token() != asset {
        return Err(Invalid::new("invalid_payload", format!("paymentPayload.accepted.asset {} is not paymentRequirements.asset {asset}", payment.token())).with_payer(payment.payer()));
    }
    let resource = payload.get("resource").and_then(|r| r.get("url")).and_then(Value::as_str).map(str::to_string);
    let requirement = Requirement {
        route: ROUTE.into(),
        accepts: vec![PricedMethod {
            amount,
            method: PaymentMethod {
                scheme: Scheme::Exact,
                network,
                asset: Asset { address: asset, decimals: 0, name: name.into(), version: version.into(), symbol: String::new() },
                pay_to,
                spender: None,
            },
        }],
        token_ttl_secs: 0,
        resource,
    };
    Ok(Request { payment, requirement, network, amount })
}

/// Every check of `/v1/tokens`, plus `exact`'s value == amount; with `store` the payment is
/// stored for settlement. Returns the request and the payment (its id is a settlement id
/// only when stored).
async fn check(st: &AppState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>, store: bool) -> Result<(Request, NewPayment), Invalid> {
    check_api_secret(st, headers).map_err(|r| Invalid { status: StatusCode::UNAUTHORIZED, reason: "unauthorized", message: r.message, payer: None })?;
    let body = body.map_err(|e| Invalid { status: e.status(), reason: "invalid_payload", message: e.body_text(), payer: None })?;
    let req = parse(st, &body)?;
    let payer = req.payment.payer();
    let checked = check_static(st, &req.payment, &req.requirement).map_err(|r| from_rejection(r, store).with_payer(payer))?;
    if req.payment.value() != req.amount {
        return Err(Invalid::new(
            "invalid_exact_evm_payload_authorization_value_mismatch",
            format!("authorization value {} is not the required amount {}", req.payment.value(), req.amount),
        )
        .with_payer(payer));
    }
    let new = check_chain_and_store(st, &req.payment, x402_protocol::payment::PaymentFormat::X402V2, &req.requirement, &checked, store)
        .await
        .map_err(|r| from_rejection(r, store).with_payer(payer))?;
    Ok((req, new))
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn obj(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        if !v.is_null() {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

fn addr(a: Option<Address>) -> Value {
    a.map(|a| json!(a)).unwrap_or(Value::Null)
}

pub async fn post_verify(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let resp = match check(&st, &headers, body, false).await {
        Ok((req, _)) => (StatusCode::OK, Json(json!({"isValid": true, "payer": req.payment.payer()}))),
        Err(e) => {
            tracing::info!(reason = e.reason, message = %e.message, "facilitator verify: invalid");
            (e.status, Json(obj(vec![("isValid", json!(false)), ("invalidReason", json!(e.reason)), ("invalidMessage", json!(e.message)), ("payer", addr(e.payer))])))
        }
    };
    no_store(resp.into_response())
}

pub async fn post_settle(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    // For the refusal's `network` field only: parsed again on that path, not on success.
    let raw = body.as_ref().ok().cloned();
    let (req, id) = match check(&st, &headers, body, true).await {
        Ok((req, new)) => (req, new.id),
        Err(e) => {
            let network = raw
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.pointer("/paymentRequirements/network").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            tracing::info!(reason = e.reason, message = %e.message, "facilitator settle: refused");
            let body = obj(vec![("success", json!(false)), ("errorReason", json!(e.reason)), ("errorMessage", json!(e.message)), ("payer", addr(e.payer)), ("transaction", json!("")), ("network", json!(network))]);
            return no_store((e.status, Json(body)).into_response());
        }
    };
    let payer = req.payment.payer();
    tracing::info!(settlement_id = %id, payer = %payer, network = %req.network, amount = %req.amount, "facilitator settlement accepted");

    // Wait for the lane (it settles the stored payment whatever happens to this request).
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < st.settle_timeout {
        match st.store.get(&id).await {
            Ok(Some(row)) => {
                let done = matches!(row.state, SettlementState::Settled | SettlementState::Failed);
                last = Some(row);
                if done {
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(settlement_id = %id, error = %e, "facilitator settle: reading the settlement failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tx = last.as_ref().and_then(|r| r.transfer_tx.clone()).unwrap_or_default();
    let body = match last.as_ref().map(|r| r.state) {
        Some(SettlementState::Settled) => json!({"success": true, "payer": payer, "transaction": tx, "network": req.network}),
        Some(SettlementState::Failed) => obj(vec![
            ("success", json!(false)),
            ("errorReason", json!("transaction_failed")),
            ("errorMessage", last.as_ref().and_then(|r| r.error.clone()).map(Value::from).unwrap_or(Value::Null)),
            ("payer", json!(payer)),
            ("transaction", json!(tx)),
            ("network", json!(req.network)),
        ]),
        _ => json!({"success": false, "errorReason": "settlement_pending",
            "errorMessage": format!("not settled within {} s; settlement {id} continues in the background", st.settle_timeout.as_secs()),
            "payer": payer, "transaction": tx, "network": req.network}),
    };
    no_store((StatusCode::OK, Json(body)).into_response())
}

pub async fn get_supported(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = check_api_secret(&st, &headers) {
        return r.into_response();
    }
    let mut networks: Vec<&Network> = st.chains.by_network.keys().collect();
    networks.sort();
    let kinds: Vec<Value> = networks.iter().map(|n| json!({"x402Version": 2, "scheme": "exact", "network": n.to_string()})).collect();
    let mut signers: Vec<Address> = st.chains.by_network.values().map(|c| c.signer()).collect();
    signers.sort();
    signers.dedup();
    Json(json!({"kinds": kinds, "extensions": [], "signers": {"eip155:*": signers}})).into_response()
}
